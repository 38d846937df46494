//! Which directory a run works in: the path given (or the current
//! directory) as its real path, or the git worktree `--worktree` names.

use std::path::{Path, PathBuf};

use moat_home::MoatHome;

use crate::worktree::{self, Worktree, WorktreeError};

/// Why a run's workspace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The current directory cannot be read (it was removed).
    #[error("reading the current directory")]
    CurrentDir(#[source] std::io::Error),
    /// The path does not lead to an existing directory.
    #[error("workspace {} does not exist", path.display())]
    Missing {
        /// As given.
        path: PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// The path is a file or something else.
    #[error("workspace {} is not a directory", path.display())]
    NotADirectory {
        /// As given.
        path: PathBuf,
    },
    /// The worktree asked for cannot be opened.
    #[error(transparent)]
    Worktree(#[from] WorktreeError),
}

impl moat_hint::Hint for WorkspaceError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            WorkspaceError::Worktree(e) => e.hint(),
            WorkspaceError::Missing { .. } | WorkspaceError::NotADirectory { .. } => {
                Some("Give the project's directory, or run moat from inside it.".into())
            }
            WorkspaceError::CurrentDir(_) => None,
        }
    }
}

/// The workspace of `moat run`, `moat trust` and the agent commands:
/// `path`, else the current directory, as its real path.
pub fn resolve_workspace(path: Option<&Path>) -> Result<PathBuf, WorkspaceError> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => std::env::current_dir().map_err(WorkspaceError::CurrentDir)?,
    };
    let canonical = std::fs::canonicalize(&path).map_err(|error| WorkspaceError::Missing {
        path: path.clone(),
        error,
    })?;
    if !canonical.is_dir() {
        return Err(WorkspaceError::NotADirectory { path });
    }
    Ok(canonical)
}

/// The directory a run works in: the resolved `path`, or, with `branch`,
/// that branch's worktree of the repository `path` is in (created when
/// missing).
pub fn run_workspace(
    home: &MoatHome,
    path: Option<&Path>,
    branch: Option<&str>,
) -> Result<(PathBuf, Option<Worktree>), WorkspaceError> {
    Ok(worktree::workspace(home, resolve_workspace(path)?, branch)?)
}
