//! A volume-mode run's copy-on-write workspace (`workspace.mode: volume`).
//!
//! On the native runtime the run's `/workspace` is an overlayfs: the host
//! workspace is its read-only lower layer, and everything the run changed
//! is in its upper layer, `MOAT_HOME/runs/<id>/workspace-copy/upper`.
//! This crate reads that layer back:
//!
//! - [`changes`]: what the run added, modified and deleted compared to the
//!   workspace (`moat diff <run>`). Whiteouts (character devices 0:0) are
//!   deletions; an opaque directory (`user.overlay.opaque`) hides all of
//!   the lower directory's entries it does not re-add; a file copied up but
//!   left with the same bytes and mode is not a change.
//! - [`apply`]: writes those changes into the host workspace
//!   (`moat diff <run> --apply`).
//! - [`tree_changes`]: the same for a container run (Docker, Podman),
//!   whose volume's tree was extracted into `workspace-copy/tree` when it
//!   ended: compared with the workspace whole.
//! - [`perform`]: both, for a run named by id, id prefix or name.

mod changes;
mod error;

pub use crate::changes::{apply, changes, tree_changes, Change, ChangeKind};
pub use crate::error::OverlayError;

use std::path::PathBuf;

use moat_home::MoatHome;
use moat_storage::{RunMetadata, RunStore};

/// The directory of a run's copy in its run directory; the same name as
/// `moat_sandbox::WORKSPACE_COPY_DIR`.
pub const WORKSPACE_COPY_DIR: &str = "workspace-copy";

/// `moat diff <run> [--apply]`: the run's changes, one per line
/// (`A path`, `M path`, `D path`, sorted) or as JSON; with `apply`, also
/// written into the workspace, which needs the run to have ended.
pub fn perform(
    home: &MoatHome,
    run: &str,
    apply_changes: bool,
    json: bool,
) -> Result<String, OverlayError> {
    let runs = RunStore::new(home.clone());
    let mut meta: RunMetadata = runs.find(Some(run), |_| true)?;
    runs.reconcile(&mut meta)?;
    let id = meta.id.to_string();
    if meta.workspace_mode.as_deref() != Some("volume") {
        return Err(OverlayError::NotAVolumeRun { run: id });
    }
    let copy: PathBuf = runs.dir(&meta.id).join(WORKSPACE_COPY_DIR);
    let (upper, tree) = (copy.join("upper"), copy.join("tree"));
    let (source, list) = if upper.is_dir() {
        (upper.clone(), changes(&upper, &meta.workspace)?)
    } else if tree.is_dir() {
        let excluded = std::fs::read_to_string(copy.join("excluded")).unwrap_or_default();
        let excluded: Vec<PathBuf> = excluded.lines().map(PathBuf::from).collect();
        (
            tree.clone(),
            tree_changes(&tree, &meta.workspace, &excluded)?,
        )
    } else if meta.state.is_active() {
        // A container run's tree is extracted when it ends.
        return Err(OverlayError::StillRunning { run: id });
    } else {
        return Err(OverlayError::NoCopy {
            run: id,
            path: copy,
        });
    };
    if apply_changes && meta.state.is_active() {
        return Err(OverlayError::StillRunning { run: id });
    }
    if apply_changes {
        apply(&list, &source, &meta.workspace)?;
    }
    if json {
        let text = serde_json::to_string_pretty(&list).map_err(OverlayError::Json)?;
        return Ok(format!("{text}\n"));
    }
    let mut out: String = list.iter().map(|c| format!("{c}\n")).collect();
    if apply_changes {
        out.push_str(&format!(
            "applied {} change(s) to {}\n",
            list.len(),
            meta.workspace.display()
        ));
    }
    Ok(out)
}
