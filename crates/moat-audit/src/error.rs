use std::path::PathBuf;
use std::sync::Arc;

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
        "the audit log {} is damaged at line {line} ({reason}); moat will not append to it.",
        path.display()
    )]
    Damaged {
        /// The log.
        path: PathBuf,
        /// The damaged line (1-based).
        line: usize,
        /// What is wrong with it.
        reason: LineError,
    },
    /// The signing key file is unusable.
    #[error("audit signing key {}: {problem}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        problem: KeyProblem,
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
        reason: WriteFailure,
    },
}

/// What is wrong with the signing key file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// Others may read it.
    #[error("has permissions {mode:04o} (expected 0600)")]
    Permissions {
        /// Its mode bits.
        mode: u32,
    },
    /// Not a 32-byte seed.
    #[error("is {len} bytes long (expected 32): the file is damaged")]
    WrongLength {
        /// Its length.
        len: usize,
    },
    /// 32 bytes that are no Ed25519 seed.
    #[error("is not a valid Ed25519 seed")]
    NotASeed,
}

/// Why the writer thread could not write or seal the log. Shared: the
/// thread keeps the first failure and reports it to every later request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteFailure {
    /// Writing or syncing the file.
    #[error("{0}")]
    Io(Arc<std::io::Error>),
    /// An entry could not be encoded.
    #[error("encoding an entry: {0}")]
    Encode(Arc<serde_json::Error>),
    /// The attestations file beside the log is not valid.
    #[error("{} is damaged ({error})", path.display())]
    DamagedSignatures {
        /// The attestations file.
        path: PathBuf,
        /// The parser's error.
        error: Arc<serde_json::Error>,
    },
    /// Reading or writing the attestations file.
    #[error("{0}")]
    Home(Arc<moat_home::HomeError>),
}

impl moat_hint::Hint for AuditError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            AuditError::Damaged { .. } => {
                "Check it with: moat audit <run>, then move it away to start a new log".to_owned()
            }
            AuditError::Key { path, problem } => match problem {
                KeyProblem::Permissions { .. } => {
                    format!("Restrict them with: chmod 600 {}", path.display())
                }
                KeyProblem::WrongLength { .. } => "Move it away to create a new key (logs \
                                                   signed by the old key then need its \
                                                   signing.pub to verify)"
                    .to_owned(),
                KeyProblem::NotASeed => "Move it away to create a new key".to_owned(),
            },
            AuditError::Write {
                reason: WriteFailure::DamagedSignatures { path, .. },
                ..
            } => format!("Move {} away.", path.display()),
            // Transparent: the inner error is hidden from the chain.
            AuditError::Home(inner) => return moat_hint::Hint::hint(inner),
            AuditError::Io { .. }
            | AuditError::Format { .. }
            | AuditError::WriterGone { .. }
            | AuditError::Write { .. } => return None,
        };
        Some(moat_hint::Fix::new(fix))
    }
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

/// Why a line of the log is not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Nothing on it.
    #[error("empty line")]
    Empty,
    /// Not JSON of an entry's shape; the parser's message (kept as text so
    /// a report can be cloned and compared).
    #[error("{message}")]
    NotAnEntry {
        /// What the JSON parser said.
        message: String,
    },
    /// The last line has no newline after it.
    #[error("no newline at the end")]
    Unterminated,
}
