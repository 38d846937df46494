//! Volume mode (`workspace.mode: volume`): `/workspace` is an overlayfs
//! whose lower layer is the host workspace, read-only, and whose upper
//! layer is the run's own directory (`MOAT_HOME/runs/<id>/workspace-copy/
//! upper`), so the run works on a copy-on-write copy and the host tree is
//! never written. Mounted by PID 1 inside the sandbox's user and mount
//! namespaces, with `userxattr` (overlay's own attributes as `user.*`,
//! which is what an unprivileged mount may write). A root caller's layers
//! are ID-mapped trees like the workspace of a bind run (see
//! [`crate::identity`]).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};

use crate::setup::{err, options_text, SetupResult};

/// Where the lower layer (the host workspace) is staged in the new root
/// until the overlay holds it.
pub(crate) const LOWER_STAGE: &str = "/.moat-lower";
/// Where the run's copy directory (`upper/`, `work/`) is staged.
pub(crate) const COPY_STAGE: &str = "/.moat-copy";

/// Creates `copy`'s `upper/` and `work/`, 0700, on the host side (as the
/// caller, before the sandbox exists); returns `copy` canonicalised.
pub(crate) fn prepare_copy_dir(copy: &Path) -> SetupResult<PathBuf> {
    for sub in ["", "upper", "work"] {
        let dir = copy.join(sub);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| err("cannot create the run's workspace copy", &dir, e))?;
    }
    fs::canonicalize(copy).map_err(|e| err("cannot resolve", copy, e))
}

/// Mounts the overlay at `target` from the staged layers, then detaches
/// the stages: the overlay keeps its own references to them.
pub(crate) fn mount_at(target: &Path) -> SetupResult<()> {
    fs::create_dir_all(target).map_err(|e| err("cannot create directory", target, e))?;
    let options = format!(
        "lowerdir={LOWER_STAGE},upperdir={COPY_STAGE}/upper,workdir={COPY_STAGE}/work,userxattr"
    );
    let data = options_text(&options)?;
    mount(
        "overlay",
        target,
        "overlay",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(data.as_c_str()),
    )
    .map_err(|e| {
        err(
            "cannot mount the copy-on-write workspace (overlayfs) at",
            target,
            e,
        )
    })?;
    for stage in [LOWER_STAGE, COPY_STAGE] {
        let stage = Path::new(stage);
        unmount(stage, UnmountFlags::DETACH).map_err(|e| err("cannot detach", stage, e))?;
        fs::remove_dir(stage).map_err(|e| err("cannot remove", stage, e))?;
    }
    Ok(())
}

/// Removes the overlay's `work/` once the sandbox is gone: the kernel
/// leaves a `work/work` of mode 000 in it, which would keep a non-root
/// caller from removing the run's directory (`moat destroy`). The upper
/// layer stays: it is the run's copy.
pub(crate) fn remove_work_dir(work: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let inner = work.join("work");
    let _ = fs::set_permissions(&inner, fs::Permissions::from_mode(0o700));
    // Best effort: failing here must not turn the run's exit into an
    // error; a leftover `work/` only costs an empty directory.
    let _ = fs::remove_dir_all(work);
}
