//! The fixes the binary prints after an error.
//!
//! Library errors say what went wrong; their fixes come from
//! [`moat_hint::Hint`]. Walking an error's chain of sources, the binary
//! asks each error of a type listed here for its fix. A type missing from
//! the list prints no fix, so every library error type that implements
//! `Hint` is listed (the test below names them).

use std::error::Error as StdError;
use std::fmt;

use moat_hint::{Fix, Hint};

/// The fix of one error in a chain, if its type is one moat knows.
fn fix_of(error: &(dyn StdError + 'static)) -> Option<Fix> {
    macro_rules! ask {
        ($($ty:ty),* $(,)?) => {
            $(
                if let Some(error) = error.downcast_ref::<$ty>() {
                    return error.hint();
                }
            )*
        };
    }
    ask!(
        Failure,
        moat_agents::AgentError,
        moat_agents::install::InstallError,
        moat_audit::AuditError,
        moat_audit::PinError,
        moat_config::ConfigError,
        moat_config::SpecError,
        moat_home::HomeError,
        moat_home::BoundedReadError,
        moat_storage::StorageError,
        moat_storage::InvalidName,
        moat_credentials::CredentialError,
        moat_credentials::ResolveError,
        moat_credentials::MissingGrants,
        moat_credentials::NoSecret,
        moat_credentials::Rejection,
        moat_daemon::ClientError,
        moat_daemon::DaemonError,
        moat_run::PlanError,
        moat_run::RunError,
        moat_run::WorkspaceError,
        moat_run::SelectionError,
        moat_run::AgentRunError,
        moat_run::StopError,
        moat_run::ExecError,
        moat_run::LivePolicyError,
        moat_run::OpenError,
        moat_run::worktree::WorktreeError,
        moat_sandbox::DriverError,
        moat_runtime_docker::DockerError,
        moat_ssh::SshError,
        moat_snapshot::SnapshotError,
        moat_overlay::OverlayError,
        moat_trust::TrustError,
    );
    None
}

/// The fixes along `error`'s chain, outermost first, each once.
pub fn fixes(error: &anyhow::Error) -> Vec<Fix> {
    let mut found: Vec<Fix> = Vec::new();
    for cause in error.chain() {
        if let Some(fix) = fix_of(cause) {
            if !found.contains(&fix) {
                found.push(fix);
            }
        }
    }
    found
}

/// An error the binary itself raises: what went wrong and its fix, kept
/// apart as library errors keep them.
#[derive(Debug)]
pub struct Failure {
    message: String,
    fix: Fix,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for Failure {}

impl Hint for Failure {
    fn hint(&self) -> Option<Fix> {
        Some(self.fix.clone())
    }
}

/// An error with its fix, for checks the binary makes itself.
pub fn failure(message: impl Into<String>, fix: impl Into<Fix>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        message: message.into(),
        fix: fix.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_fix_is_found_beneath_context() {
        let error = anyhow::Error::new(moat_storage::StorageError::NoRuns).context("listing runs");
        assert_eq!(
            fixes(&error),
            vec![Fix::new("Start one with: moat run -- <command>")]
        );
    }

    #[test]
    fn a_fix_found_twice_is_printed_once() {
        let inner = failure("inner", "Run: moat list");
        let error = inner.context(Failure {
            message: "outer".into(),
            fix: Fix::new("Run: moat list"),
        });
        assert_eq!(fixes(&error).len(), 1);
    }
}
