//! The checks of `moat doctor`: what moat needs on this host, one
//! [`DoctorCheck`] each, every problem with the command that fixes it.
//!
//! This crate owns the gathering and the text report. The checks of a
//! runtime come from its driver (`moat_run::doctor_checks`), the SSH
//! agent probe from `moat-ssh`; here they are put in order beside the
//! checks of moat's own state (daemon, CA, keys, credentials, disk) and of
//! each agent. It changes nothing on the host, except that the injection
//! check of `moat doctor AGENT` starts one short run.

mod agent;
mod daemon;
mod host;
mod report;

use moat_home::{MoatHome, Profile};

pub use agent::{agent_binary, agent_checks};
pub use moat_sandbox::{CheckStatus, DoctorCheck};
pub use report::{failures, render};

/// Every check of a plain `moat doctor`, in the order they print.
pub fn host_checks(home: &MoatHome, profile: Option<&Profile>) -> Vec<DoctorCheck> {
    let mut checks = moat_run::doctor_checks();
    checks.extend(daemon::daemon(home));
    checks.push(daemon::ca_files(home));
    checks.push(host::private_file(
        "key file",
        &home.key_file(),
        "no key file (the OS keychain holds the key, or the first grant creates the file)",
    ));
    checks.push(host::private_file(
        "audit signing key",
        &moat_audit::SigningKey::key_path(&home.audit_dir()),
        "not created yet (the proxy daemon creates it)",
    ));
    checks.extend(host::credentials(home, profile));
    checks.push(host::ssh_agent());
    checks.push(host::disk(home.root()));
    checks.extend(moat_agents::all().into_iter().map(agent_binary));
    checks
}

/// A failed check from an error: its message, and its fix when it has
/// one.
fn from_error<E>(status: CheckStatus, name: &str, error: &E) -> DoctorCheck
where
    E: std::fmt::Display + moat_hint::Hint,
{
    match error.hint() {
        Some(fix) => DoctorCheck::problem(status, name, error.to_string(), fix.to_string()),
        None => DoctorCheck {
            name: name.to_owned(),
            status,
            message: error.to_string(),
            fix: None,
        },
    }
}
