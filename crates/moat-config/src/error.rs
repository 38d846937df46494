use std::path::PathBuf;

use moat_policy::PolicyError;

/// Why `moat.yaml` (or a `--mount` flag) was refused.
///
/// Every variant tied to a file renders as `FILE:LINE: ...` (plus the
/// column for YAML syntax errors), names the key path (`network.policy`,
/// `mounts[1].target`), says what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {error}", .file.display())]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },

    /// A link, a FIFO, a device or a file over the size limit.
    #[error(transparent)]
    File(#[from] moat_home::BoundedReadError),

    #[error("{}:{line}:{column}: invalid YAML: {message}", .file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{}:{line}: unknown key {key:?} {}{help}", .file.display(), where_(.parent))]
    UnknownKey {
        file: PathBuf,
        line: usize,
        key: String,
        /// Key path of the enclosing mapping; empty at top level.
        parent: String,
        /// `. Did you mean "x"? (known keys: ...)` or ` (known keys: ...)`.
        help: String,
    },

    #[error(
        "{}:{line}: {path}: this setting is not supported by this version of moat yet; remove it",
        .file.display()
    )]
    Unsupported {
        file: PathBuf,
        line: usize,
        path: String,
    },

    #[error("{}:{line}: {path}: expected {expected}, found {found}{hint}", .file.display())]
    WrongType {
        file: PathBuf,
        line: usize,
        path: String,
        expected: &'static str,
        /// "a number", or `the string "..."` for strings.
        found: String,
        /// Starts with ". " when present.
        hint: String,
    },

    #[error("{}:{line}: {path}: {message}", .file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        path: String,
        message: String,
    },

    #[error("{}:{line}: {path}: {error}", .file.display())]
    Policy {
        file: PathBuf,
        line: usize,
        path: String,
        error: PolicyError,
    },

    /// A command-line value (`--mount`, a dependency spec) with no file
    /// behind it.
    #[error("invalid {what} {spec:?}: {message}")]
    InvalidSpec {
        what: &'static str,
        spec: String,
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error points at, when it comes from a file.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } | Self::File(_) | Self::InvalidSpec { .. } => None,
            Self::Syntax { line, .. }
            | Self::UnknownKey { line, .. }
            | Self::Unsupported { line, .. }
            | Self::WrongType { line, .. }
            | Self::Invalid { line, .. }
            | Self::Policy { line, .. } => Some(*line),
        }
    }
}

fn where_(parent: &str) -> String {
    if parent.is_empty() {
        "at top level".to_owned()
    } else {
        format!("in {parent}")
    }
}
