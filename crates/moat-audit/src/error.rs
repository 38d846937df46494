use std::path::PathBuf;

/// A failure to read, write or sign an audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An I/O operation failed.
    #[error("{action} {}: {error}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// A file under `MOAT_HOME` could not be written.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),
    /// The log cannot be appended to because its last record is damaged.
    #[error(
        "the audit log {} is damaged at line {line} ({reason}); moat will not append to it. \
         Check it with: moat audit <run>, then move it away to start a new log",
        path.display()
    )]
    Damaged {
        /// The log.
        path: PathBuf,
        /// The damaged line (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The signing key file is unusable.
    #[error("audit signing key {}: {problem}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// A bundle or attestations file is not valid JSON of the right shape.
    #[error("{} is not a valid {what}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What it should be.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The writer thread is gone.
    #[error("the audit writer for {} stopped", path.display())]
    WriterGone {
        /// The log.
        path: PathBuf,
    },
    /// Writing the log failed in the background.
    #[error("writing the audit log {}: {reason}", path.display())]
    Write {
        /// The log.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
}

impl AuditError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        AuditError::Io {
            action,
            path: path.to_path_buf(),
            error: source,
        }
    }

    /// Whether the error is a missing file.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AuditError::Io { error: source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}
