//! Why a run's changes cannot be listed or applied.

use std::path::PathBuf;

/// A failure of [`crate::perform`], [`crate::changes`] or [`crate::apply`].
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The run bound the workspace itself: there is no copy to compare.
    #[error("run {run} worked on the workspace itself (workspace.mode: bind), so it has no copy to diff: its changes are already in the workspace")]
    NotAVolumeRun {
        /// The run's id.
        run: String,
    },
    /// A volume run whose copy is gone (or never made: it failed early).
    #[error("run {run} has no workspace copy at {}", path.display())]
    NoCopy {
        /// The run's id.
        run: String,
        /// Where it should be.
        path: PathBuf,
    },
    /// `--apply` while the run can still change its copy.
    #[error("run {run} is still running: its changes are not final")]
    StillRunning {
        /// The run's id.
        run: String,
    },
    /// Reading the copy or writing the workspace failed.
    #[error("{context} {}: {error}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// Finding the run failed.
    #[error(transparent)]
    Storage(#[from] moat_storage::StorageError),
    /// Printing JSON failed.
    #[error("cannot print JSON: {0}")]
    Json(serde_json::Error),
}

impl OverlayError {
    pub(crate) fn io(
        context: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |error| OverlayError::Io {
            context,
            path,
            error,
        }
    }
}

impl moat_hint::Hint for OverlayError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let text = match self {
            OverlayError::NotAVolumeRun { .. } => "To fix: run with --workspace-mode volume (or `workspace: {mode: volume}` in moat.yaml) to get a copy moat diff can show; for a bind run use git diff, or moat snapshot restore RUN --to DIR to compare with its pre-run snapshot.".to_owned(),
            OverlayError::NoCopy { .. } => "To fix: nothing to show: the run's directory was removed or the run failed before its sandbox started.".to_owned(),
            OverlayError::StillRunning { run } => format!("To fix: wait for it to end (moat logs -f {run}) or stop it (moat stop {run}), then apply; moat diff {run} without --apply shows the changes so far."),
            OverlayError::Storage(e) => return moat_hint::Hint::hint(e),
            OverlayError::Io { .. } | OverlayError::Json(_) => return None,
        };
        Some(text.into())
    }
}
