//! Errors of the native runtime.

use std::io;

/// Why a sandbox could not be started, signalled or waited for.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec is inconsistent (empty command, relative path, ...).
    #[error("invalid sandbox spec: {message}")]
    InvalidSpec {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The kernel does not let this user create the namespaces we need.
    #[error("user namespaces are not available: {message}")]
    Unsupported {
        /// What is blocking it and how to enable it.
        message: String,
    },

    /// A resource limit was asked for that cannot be enforced here.
    #[error("{message}")]
    LimitUnavailable {
        /// Which limit, why, and what to do instead.
        message: String,
    },

    /// Building the sandbox failed inside the init process (a mount that
    /// failed, a missing workspace...). The message names the path and, when
    /// known, the fix.
    #[error("sandbox setup failed: {message}")]
    Setup {
        /// The init's own explanation.
        message: String,
    },

    /// A system call on the caller's side failed.
    #[error("{context}: {error}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        error: io::Error,
    },

    /// The sandbox has already been waited for.
    #[error("the sandbox has already exited and been waited for")]
    AlreadyWaited,

    /// The signal number is not a signal this platform knows.
    #[error("unknown signal number {0}")]
    UnknownSignal(i32),
}

impl SandboxError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        SandboxError::Io {
            context: context.into(),
            error: source,
        }
    }
}
