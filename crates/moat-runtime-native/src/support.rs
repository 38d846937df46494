//! `check_support`: can this machine, for this user, run a native sandbox?

use std::fs;
use std::io::Read;

use crate::error::SandboxError;
use crate::spec::{SandboxSpec, StdioMode};

use crate::userns::{namespace_hint, read_sysctl};

/// Checks that native sandboxes work here, for `moat doctor`.
///
/// Reads the relevant sysctls, then starts a real sandbox running `true`
/// in a throw-away workspace. On failure the error says what blocks it and
/// how to fix it (sysctl `user.max_user_namespaces`,
/// `kernel.unprivileged_userns_clone`,
/// `kernel.apparmor_restrict_unprivileged_userns`). Like [`crate::spawn`],
/// it requires [`crate::init::maybe_run_init`] in the binary's `main`.
pub fn check_support() -> Result<(), SandboxError> {
    if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Err(SandboxError::Unsupported {
            message: namespace_hint(),
        });
    }
    let dir = std::env::temp_dir().join(format!("moat-check-{}", std::process::id()));
    fs::create_dir_all(&dir)
        .map_err(|e| SandboxError::io(format!("cannot create {}", dir.display()), e))?;
    let mut spec = SandboxSpec::new(&dir, vec!["true".into()]);
    spec.stdio = StdioMode::Piped;
    let result = run_probe(&spec);
    let _ = fs::remove_dir(&dir);
    result
}

fn run_probe(spec: &SandboxSpec) -> Result<(), SandboxError> {
    let mut sandbox = match crate::spawn(spec) {
        Ok(sandbox) => sandbox,
        Err(SandboxError::Setup { message }) => {
            return Err(SandboxError::Unsupported {
                message: format!("{message} ({})", namespace_hint()),
            })
        }
        Err(e) => return Err(e),
    };
    let mut stderr = String::new();
    if let Some(mut err) = sandbox.take_stderr() {
        let _ = err.read_to_string(&mut stderr);
    }
    let exit = sandbox.wait()?;
    if exit.success() {
        Ok(())
    } else {
        Err(SandboxError::Unsupported {
            message: format!(
                "a test sandbox running `true` exited with {}: {}",
                exit.code,
                stderr.trim()
            ),
        })
    }
}

/// How sandboxes started by this user are confined, in one line for
/// `moat doctor`: the host identity, the system-call filter and where
/// resource limits come from.
pub fn protections() -> String {
    let identity = if rustix::process::getuid().is_root() {
        let (uid, gid) = crate::identity::host_ids_for_root();
        format!("runs as host uid {uid}/gid {gid} with the workspace ID-mapped")
    } else {
        "runs as you".to_owned()
    };
    let limits = match crate::cgroup::hierarchy() {
        Some(kind) => format!(
            "process and file limits as rlimits; container.memory and container.cpus in a {kind} cgroup"
        ),
        None => "process and file limits as rlimits (no cgroup: container.memory and container.cpus are refused)".to_owned(),
    };
    format!("{identity}; seccomp filter, no capabilities; {limits}")
}
