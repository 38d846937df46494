use std::path::{Path, PathBuf};

/// A failure to take, list, restore or prune snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done ("reading", "restoring", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// A file under `MOAT_HOME` could not be written.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),
    /// The run store could not be read.
    #[error(transparent)]
    Storage(#[from] moat_storage::StorageError),
    /// No snapshot of the workspace has this id (or id prefix).
    #[error("no snapshot {id:?} of {workspace}")]
    NotFound {
        /// The id asked for.
        id: String,
        /// The workspace.
        workspace: PathBuf,
    },
    /// The run has no snapshot yet.
    #[error("run {run} has no snapshots")]
    NoSnapshots {
        /// The run id.
        run: String,
    },
    /// In-place restore for a volume-mode run: its snapshots are of the
    /// host tree it never wrote.
    #[error("run {run} worked on a copy of its workspace (workspace.mode: volume): restoring in place would change the host tree the run never touched")]
    VolumeRunInPlace {
        /// The run id.
        run: String,
    },
    /// An id prefix matches several snapshots.
    #[error("{id:?} matches {count} snapshots")]
    Ambiguous {
        /// The prefix.
        id: String,
        /// How many snapshots it matches.
        count: usize,
    },
    /// An in-place restore while a run has the workspace mounted.
    #[error(
        "{} is mounted by active run {}: restoring in place would change files under it",
        workspace.display(), runs.join(", ")
    )]
    WorkspaceInUse {
        /// The workspace.
        workspace: PathBuf,
        /// The active runs holding it.
        runs: Vec<String>,
    },
    /// `--to DIR` exists and is not an empty directory.
    #[error("{} is not an empty directory", path.display())]
    DestinationNotEmpty {
        /// The destination.
        path: PathBuf,
    },
    /// A stored snapshot file is damaged.
    #[error("{}: damaged snapshot data ({reason})", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl SnapshotError {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |error| SnapshotError::Io {
            action,
            path,
            error,
        }
    }

    pub(crate) fn damaged(path: &Path, reason: impl ToString) -> Self {
        SnapshotError::Damaged {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

impl moat_hint::Hint for SnapshotError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            SnapshotError::Home(e) => return moat_hint::Hint::hint(e),
            SnapshotError::Storage(e) => return moat_hint::Hint::hint(e),
            SnapshotError::NotFound { .. } | SnapshotError::Ambiguous { .. } => {
                "List snapshots with: moat snapshot list <run>".to_owned()
            }
            SnapshotError::NoSnapshots { run } => format!("Take one with: moat snapshot {run}"),
            SnapshotError::VolumeRunInPlace { run } => format!(
                "To fix: restore into another directory with --to DIR, or bring the run's \
                 changes into the workspace with moat diff {run} --apply"
            ),
            SnapshotError::WorkspaceInUse { runs, .. } => {
                let run = runs.first().map(String::as_str).unwrap_or("<run>");
                format!(
                    "Stop the run first (moat stop {run}), or restore beside it: \
                     moat snapshot restore <run> <id> --to DIR"
                )
            }
            SnapshotError::DestinationNotEmpty { .. } => {
                "Name a new or empty directory with --to.".to_owned()
            }
            SnapshotError::Damaged { .. } | SnapshotError::Io { .. } => return None,
        };
        Some(fix.into())
    }
}
