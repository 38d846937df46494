//! The workload's wait for its network guard.
//!
//! The workload joins the guard's network namespace as soon as the guard
//! runs, and is started at the same time as the guard applies its firewall
//! (about 40 ms that a run no longer waits for). What keeps the workload's
//! command from running before the firewall holds is its entrypoint: the
//! moat binary, mounted read-only, waits until the guard's relay accepts
//! connections on loopback (the guard starts the relay only once the rules
//! are in place), then runs the image's entrypoint and the command: in its
//! place on a terminal, else as its child, staying the container's init
//! (PID 1 gets no default action for signals, so a server without a
//! SIGTERM handler would outlast `moat stop` until the engine's SIGKILL).
//! The workload has no capability and `no-new-privileges`: nothing it runs
//! can change the rules, before or after.
//!
//! Just before it does, the gate installs the system-call filter that no
//! setuid or setgid file gets past ([`moat_sandbox::setid`], the native
//! sandbox's rule too): the workspace is a bind mount of the caller's
//! directory, so such a file would run as its owner on the host, whatever
//! mount options the container sees it through. The engine's own seccomp
//! profile stays in force; this filter only adds to it, and the command
//! and everything it starts inherit it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::spec::CAPTURE_RELAY_PORT;

/// Where the guard and the workload see the moat binary.
pub(crate) const MOAT_IN_CONTAINER: &str = "/run/moat/bin/moat";

/// The hidden subcommand of the moat binary that runs [`await_guard_then_exec`].
pub const AWAIT_GUARD_SUBCOMMAND: &str = "__await-guard";

/// How long the workload waits for its guard before giving up (moat
/// reports the guard's own error well before, and removes the workload).
const GUARD_WAIT: Duration = Duration::from_secs(30);

/// The workload's entrypoint: the gate, then the image's own entrypoint.
pub(crate) fn gated_entrypoint(image_entrypoint: &[String]) -> Vec<String> {
    [MOAT_IN_CONTAINER, AWAIT_GUARD_SUBCOMMAND, "--"]
        .into_iter()
        .map(str::to_owned)
        .chain(image_entrypoint.iter().cloned())
        .collect()
}

/// Why the gate did not hand over to the command.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Nothing to run.
    #[error("no command to run")]
    NoCommand,
    /// The guard's relay never listened.
    #[error("{0}")]
    GuardNotReady(std::io::Error),
    /// The setuid/setgid filter could not be installed: the command does
    /// not run without it.
    #[error("{0}")]
    Filter(moat_sandbox::setid::SetidFilterError),
    /// The command does not exist (the native runtime's words).
    #[error("command not found in sandbox: {program}")]
    NotFound {
        /// What was to run.
        program: String,
    },
    /// The command exists but could not be executed.
    #[error("cannot run {program}: {error}")]
    Exec {
        /// What was to run.
        program: String,
        /// The OS's reason.
        error: std::io::Error,
    },
}

impl GateError {
    /// The exit code the workload ends with: 127 for a command that does
    /// not exist and 126 for one that cannot run (as a shell, and as the
    /// native runtime, say), 125 when the gate itself failed (as `docker
    /// run` does).
    pub fn exit_code(&self) -> u8 {
        match self {
            GateError::NotFound { .. } => 127,
            GateError::Exec { .. } => 126,
            GateError::NoCommand | GateError::GuardNotReady(_) | GateError::Filter(_) => 125,
        }
    }
}

/// Waits for the guard's relay, installs the setuid/setgid filter, then
/// executes `command` (its first word looked up in `PATH`): in place of
/// this process on a terminal, otherwise as its child, this process
/// staying as the container's init ([`init`]). Returns the command's exit
/// code when it ran as the child.
pub fn await_guard_then_exec(command: &[OsString]) -> Result<u8, GateError> {
    let Some((program, args)) = command.split_first() else {
        return Err(GateError::NoCommand);
    };
    moat_capture::await_relay(CAPTURE_RELAY_PORT, GUARD_WAIT).map_err(GateError::GuardNotReady)?;
    // On this thread, the one that starts the command: a filter binds
    // the thread that installs it and survives fork and execve.
    moat_sandbox::setid::SetidFilter::build()
        .and_then(|filter| filter.install())
        .map_err(GateError::Filter)?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    let error = if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // The terminal's job control (Ctrl-C to the foreground group)
        // needs the command as the session's leader; an interactive
        // command handles its signals itself.
        cmd.exec()
    } else {
        match init(cmd) {
            Ok(code) => return Ok(code),
            Err(error) => error,
        }
    };
    let program = program.to_string_lossy().into_owned();
    Err(if error.kind() == std::io::ErrorKind::NotFound {
        GateError::NotFound { program }
    } else {
        GateError::Exec { program, error }
    })
}

/// The signals the init passes on to the command (a container engine's
/// stop is SIGTERM, then SIGKILL, which ends everything anyway).
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Runs `cmd` as the container's init would: the kernel gives PID 1 no
/// default action for signals, so a command as PID 1 that installs no
/// handler (a Python or Node server) ignores the engine's SIGTERM, and
/// `moat stop` would wait for the engine's SIGKILL. The gate stays PID 1
/// instead, passes those signals on, reaps orphans, and returns the
/// command's exit code (128+N for signal N).
fn init(mut cmd: std::process::Command) -> std::io::Result<u8> {
    let mut set = SigSet::empty();
    for sig in FORWARDED.into_iter().chain([Signal::SIGCHLD]) {
        set.add(sig);
    }
    let child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    // Blocked once the child exists (a mask would be inherited, and the
    // standard library does not reset it): a stop signal that came before
    // is lost, as for any PID 1 without a handler, and the engine's SIGKILL
    // follows; an exit is not, as every turn starts with the reaping.
    set.thread_block().map_err(std::io::Error::from)?;
    loop {
        if let Some(code) = reap(pid) {
            return Ok(code);
        }
        let sig = set.wait().map_err(std::io::Error::from)?;
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(pid, sig);
        }
    }
}

/// Reaps every child that has ended, the command and orphans it left to
/// PID 1 alike (a separate wait for orphans could take the command's
/// status); the command's exit code once it has ended.
fn reap(command: Pid) -> Option<u8> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p == command => {
                return Some(u8::try_from(code).unwrap_or(1))
            }
            Ok(WaitStatus::Signaled(p, sig, _)) if p == command => {
                return Some(u8::try_from(128 + sig as i32).unwrap_or(1))
            }
            Ok(WaitStatus::StillAlive) => return None,
            // No child at all: the command is gone and was reaped.
            Err(_) => return Some(1),
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_comes_before_the_images_entrypoint() {
        assert_eq!(
            gated_entrypoint(&["/docker-entrypoint.sh".to_owned()]),
            [
                MOAT_IN_CONTAINER,
                AWAIT_GUARD_SUBCOMMAND,
                "--",
                "/docker-entrypoint.sh"
            ]
        );
    }

    #[test]
    fn exit_codes_follow_the_shells() {
        let missing = GateError::NotFound {
            program: "nope".into(),
        };
        let denied = GateError::Exec {
            program: "/etc/passwd".into(),
            error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert_eq!(missing.exit_code(), 127);
        assert_eq!(denied.exit_code(), 126);
        assert_eq!(GateError::NoCommand.exit_code(), 125);
    }
}
