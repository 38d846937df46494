//! Why the trust check could not pass: [`TrustError`], and the fix each
//! failure hands on.

use std::path::{Path, PathBuf};

use moat_home::HomeError;

use crate::review::Review;

/// Why the trust check could not pass.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The configuration changed during a run and the user has not
    /// reviewed it.
    #[error("{0}")]
    Untrusted(Box<Review>),
    /// `moat trust` was answered for one version and the files changed
    /// before it was recorded.
    #[error(
        "the configuration in {} changed again while you were reviewing it; nothing was \
         accepted.",
        workspace.display()
    )]
    ChangedDuringReview {
        /// The workspace.
        workspace: PathBuf,
    },
    /// The config file changed between the moment the run read it and
    /// the moment it opened on the workspace.
    #[error(
        "{file} in {} changed while the run was starting (after moat read it, before the \
         sandbox opened); nothing was run.",
        workspace.display()
    )]
    ChangedWhileStarting {
        /// The workspace.
        workspace: PathBuf,
        /// `moat.yaml` or `agent.yaml`.
        file: String,
    },
    /// A workspace file could not be read.
    #[error("reading {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A workspace file moat reads is a link, a FIFO, a device or too
    /// large.
    #[error(transparent)]
    File(#[from] moat_home::BoundedReadError),
    /// `.moat/` is too large to fingerprint.
    #[error(
        "{} holds more than {limit} entries; moat fingerprints it before every run so that a \
         run cannot change it unnoticed.",
        dir.display()
    )]
    TooManyFiles {
        /// The `.moat` directory.
        dir: PathBuf,
        /// The limit.
        limit: usize,
    },
    /// The trust record is not valid JSON.
    #[error("the trust record {} is damaged ({message}).", path.display())]
    DamagedRecord {
        /// The record file.
        path: PathBuf,
        /// The workspace.
        workspace: PathBuf,
        /// The parse error.
        message: String,
    },
    /// Writing the record, or its lock.
    #[error(transparent)]
    Home(#[from] HomeError),
}

impl moat_hint::Hint for TrustError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            TrustError::Untrusted(review) => review.fix(),
            TrustError::ChangedDuringReview { workspace } => {
                format!("To fix: run moat trust {} again.", workspace.display())
            }
            TrustError::ChangedWhileStarting { file, .. } => format!(
                "To fix: run again; if something else is editing {file}, let it finish first."
            ),
            TrustError::TooManyFiles { .. } => {
                "To fix: keep caches and large data out of .moat/.".to_owned()
            }
            TrustError::DamagedRecord { workspace, .. } => format!(
                "To fix: review the workspace's moat.yaml and .moat/, then run moat trust {}",
                workspace.display()
            ),
            // Transparent: the inner error is hidden from the chain.
            TrustError::File(inner) => return inner.hint(),
            TrustError::Home(inner) => return inner.hint(),
            TrustError::Read { .. } => return None,
        };
        Some(moat_hint::Fix::new(fix))
    }
}

impl TrustError {
    pub(crate) fn read(path: &Path, source: std::io::Error) -> Self {
        TrustError::Read {
            path: path.to_owned(),
            error: source,
        }
    }
}
