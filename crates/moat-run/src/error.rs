//! Why a run could not start or finish: [`RunError`], and the fix each
//! failure hands on.

use moat_credentials::{CredentialError, ResolveError};
use moat_daemon::ClientError;
use moat_sandbox::DriverError;
use moat_storage::StorageError;

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An `--allow-write`/`allow_write:` path that cannot be allowed alone.
    #[error(
        "cannot allow writes to {}: it is inside {}, which is protected as a whole.",
        allow.display(),
        inside.display()
    )]
    AllowWrite {
        /// As asked (relative to the workspace).
        allow: std::path::PathBuf,
        /// The protected path it lies in.
        inside: std::path::PathBuf,
    },
    /// Grants missing, expired or unreadable (all listed).
    #[error(transparent)]
    Grants(#[from] ResolveError),
    /// An MCP server's grant is not stored.
    #[error("MCP server '{server}' requires grant 'mcp-{server}' but it's not configured")]
    McpGrantMissing {
        /// The MCP server's name.
        server: String,
    },
    /// An MCP server's `auth.grant` names a grant that is neither its own
    /// token nor one the run holds for the server's host.
    #[error(
        "MCP server '{server}' may not use grant '{grant}': {why}.\n\
         Moat would hand that credential to the MCP server's host."
    )]
    McpGrantMisused {
        /// The MCP server's name.
        server: String,
        /// The grant it names.
        grant: String,
        /// Why it may not.
        why: String,
    },
    /// A grant's provider injects headers on a host that is not a host
    /// pattern (a hand-edited provider definition).
    #[error("grant '{grant}' cannot be injected: {error}")]
    InjectionHost {
        /// The grant.
        grant: String,
        /// Why its host does not parse.
        error: moat_policy::PolicyError,
    },
    /// Another active run has this name.
    #[error("agent \"{0}\" is already running.")]
    AlreadyRunning(String),
    /// The proxy daemon failed.
    #[error(transparent)]
    Daemon(#[from] ClientError),
    /// The sandbox's runtime failed (its own words).
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// No runtime could be chosen.
    #[error(transparent)]
    Selection(#[from] crate::drivers::SelectionError),
    /// A local operation failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// Run storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The credential store failed.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// SSH grants or the SSH agent.
    #[error(transparent)]
    Ssh(#[from] moat_ssh::SshError),
    /// A mount, or the workspace, would put a protected host path into
    /// the sandbox (the message names the mount, the path and why).
    #[error(transparent)]
    MountRefused(#[from] crate::mounts::MountRefused),
    /// The workspace's configuration changed during a run and was not
    /// reviewed, or its trust record could not be kept.
    #[error(transparent)]
    Trust(#[from] moat_trust::TrustError),
    /// The disk filled up: the run was recorded as failed, with why.
    #[error("{reason}")]
    DiskFull {
        /// What could not be written, and the fix.
        reason: String,
    },
    /// The proxy daemon went away during the run and could not be
    /// brought back, so the run was stopped.
    #[error(transparent)]
    DaemonLost(Box<crate::watchdog::DaemonLost>),
}

impl moat_hint::Hint for RunError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            RunError::McpGrantMissing { server } => Some(moat_hint::Fix::new(format!(
                "To fix:\n  moat grant mcp {server}\nThen run again."
            ))),
            RunError::McpGrantMisused { server, .. } => Some(moat_hint::Fix::new(format!(
                "To fix: store a token for the server and use it:\n  moat grant mcp {server}\n\
                 and in moat.yaml: auth: {{grant: mcp:{server}, header: ...}}"
            ))),
            RunError::AlreadyRunning(_) => Some(moat_hint::Fix::new(
                "Use --name to specify a different name, or stop the existing agent first",
            )),
            RunError::AllowWrite { inside, .. } => Some(moat_hint::Fix::new(format!(
                "To fix: allow {} (everything in it becomes writable for the run).",
                inside.display()
            ))),
            // A transparent variant hides its inner error from the chain
            // of sources, so it hands on that error's fix.
            RunError::Driver(e) => e.hint(),
            RunError::Selection(e) => e.hint(),
            RunError::Storage(e) => e.hint(),
            RunError::MountRefused(e) => e.hint(),
            RunError::Grants(e) => e.hint(),
            RunError::Daemon(e) => e.hint(),
            RunError::Credentials(e) => e.hint(),
            RunError::Ssh(e) => e.hint(),
            RunError::Trust(e) => e.hint(),
            RunError::InjectionHost { .. }
            | RunError::Io { .. }
            | RunError::DiskFull { .. }
            | RunError::DaemonLost(_) => None,
        }
    }
}

impl From<moat_home::HomeError> for RunError {
    fn from(e: moat_home::HomeError) -> Self {
        RunError::Storage(StorageError::Home(e))
    }
}
