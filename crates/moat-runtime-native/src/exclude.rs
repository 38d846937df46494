//! Excluded paths of a mount (`moat_sandbox::BindMount::exclude`, the
//! workspace's `workspace_exclude`), hidden behind an empty tmpfs.
//!
//! Done by PID 1 in the sandbox's mount namespace once the mount is in
//! place: each path is resolved beneath the mount's target without
//! following any symbolic link (a link planted by an earlier run cannot
//! point the tmpfs elsewhere), and a fresh tmpfs, the sandbox user's, is
//! attached on what was opened, never by name. The tmpfs is writable even
//! under a read-only mount; what the sandbox writes there never reaches
//! the host.
//!
//! An excluded directory that does not exist yet is created first (an
//! empty directory, its mount point) when the mount is writable, as a
//! container engine does: otherwise the sandbox could create it and write
//! through to the host. Under a read-only mount nothing can be written
//! there, and it is left alone.

use std::ffi::OsStr;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags, FsOpenFlags,
    MountAttrFlags, MoveMountFlags,
};

use crate::error::SetupError;
use crate::setup::{Ids, SetupResult};

/// The excluded paths of one mount.
pub(crate) struct Excluded<'a> {
    /// The mount's target inside the sandbox.
    pub(crate) target: &'a Path,
    /// Relative to `target`.
    pub(crate) paths: &'a [PathBuf],
    /// The mount is read-only: missing paths are left alone.
    pub(crate) read_only: bool,
}

/// Covers every excluded path of `mount` with a tmpfs of at most
/// `tmpfs_size` bytes owned by `ids`.
pub(crate) fn apply(mount: &Excluded<'_>, ids: Ids, tmpfs_size: u64) -> SetupResult<()> {
    if mount.paths.is_empty() {
        return Ok(());
    }
    let root = rustix::fs::open(
        mount.target,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError::path("cannot open", mount.target, e))?;
    for path in mount.paths {
        let fail = |what: &'static str, error: Errno| SetupError::Exclude {
            target: mount.target.to_owned(),
            path: path.clone(),
            what,
            error: error.into(),
        };
        let Some(dir) =
            open_beneath(&root, path, !mount.read_only).map_err(|e| fail(refusal(e), e))?
        else {
            continue;
        };
        let options = format!(
            "mode=0755,uid={},gid={},size={tmpfs_size}",
            ids.uid, ids.gid
        );
        cover_with_tmpfs(&dir, &options).map_err(|e| fail("mounting a tmpfs on it", e))?;
    }
    Ok(())
}

/// What a failed resolution means, for the message.
fn refusal(error: Errno) -> &'static str {
    match error {
        Errno::LOOP | Errno::XDEV => "it is, or passes through, a symbolic link",
        Errno::NOTDIR => "it is not a directory",
        _ => "opening it",
    }
}

/// The directory `path` beneath `root`, reached without a symbolic link,
/// one component at a time; a missing component is created when `create`
/// (else `None`).
fn open_beneath(root: &OwnedFd, path: &Path, create: bool) -> Result<Option<OwnedFd>, Errno> {
    let mut dir = root
        .try_clone()
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    for component in path.components() {
        let Component::Normal(name) = component else {
            return Err(Errno::INVAL);
        };
        dir = match open_dir(&dir, name) {
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e),
                }
                open_dir(&dir, name)?
            }
            Err(Errno::NOENT) => return Ok(None),
            other => other?,
        };
    }
    Ok(Some(dir))
}

/// The directory `name` in `dir`, not a link to one (`LOOP`) nor another
/// file (`NOTDIR`).
fn open_dir(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    use rustix::fs::FileType;
    let fd = rustix::fs::openat2(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    match FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) {
        FileType::Directory => Ok(fd),
        FileType::Symlink => Err(Errno::LOOP),
        _ => Err(Errno::NOTDIR),
    }
}

/// Attaches a new tmpfs with `options` (`key=value`, comma-separated)
/// onto the directory `dir`.
fn cover_with_tmpfs(dir: &OwnedFd, options: &str) -> Result<(), Errno> {
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for option in options.split(',') {
        if let Some((key, value)) = option.split_once('=') {
            fsconfig_set_string(&fs, key, value)?;
        }
    }
    fsconfig_create(&fs)?;
    let mnt = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    move_mount(
        mnt.as_fd(),
        "",
        dir.as_fd(),
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
}
