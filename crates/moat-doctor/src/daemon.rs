//! The proxy daemon and its interception CA.

use moat_daemon::{lockfile, DaemonClient, DaemonPaths};
use moat_home::MoatHome;
use moat_sandbox::{CheckStatus, DoctorCheck};

const NAME: &str = "proxy daemon";

/// The daemon's lock, process, socket and answer; then its version and
/// port against this binary's and `MOAT_PROXY_PORT`.
pub(crate) fn daemon(home: &MoatHome) -> Vec<DoctorCheck> {
    let paths = DaemonPaths::new(home);
    let info = match lockfile::read_info(&paths.lock) {
        Ok(Some(info)) => info,
        Ok(None) if paths.lock.exists() => {
            return vec![DoctorCheck::problem(
                CheckStatus::Fail,
                NAME,
                format!("{} is damaged", paths.lock.display()),
                format!("rm {}", paths.lock.display()),
            )]
        }
        Ok(None) => return vec![not_running()],
        Err(e) => {
            return vec![DoctorCheck::problem(
                CheckStatus::Fail,
                NAME,
                e.to_string(),
                format!("rm {}", paths.lock.display()),
            )]
        }
    };
    if let Some(problem) = unreachable(&paths, &info) {
        return vec![problem];
    }
    let answer = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(DaemonClient::connect_existing(home)),
        Err(e) => {
            return vec![DoctorCheck::problem(
                CheckStatus::Warn,
                NAME,
                format!("cannot start the async runtime to ask it: {e}"),
                "",
            )]
        }
    };
    let mut checks = match answer {
        Ok(Some(_)) => vec![DoctorCheck::ok(
            NAME,
            format!(
                "running (pid {}, port {}, version {})",
                info.pid, info.port, info.version
            ),
        )],
        Ok(None) => vec![not_running()],
        Err(e) => return vec![crate::from_error(CheckStatus::Fail, NAME, &e)],
    };
    checks.extend(version_and_port(&info));
    checks
}

fn not_running() -> DoctorCheck {
    DoctorCheck::ok(NAME, "not running (it starts with the next run)")
}

/// A lock naming a dead process, or a live one without its socket.
fn unreachable(paths: &DaemonPaths, info: &lockfile::DaemonInfo) -> Option<DoctorCheck> {
    if !lockfile::daemon_running(paths) {
        return Some(DoctorCheck::problem(
            CheckStatus::Warn,
            NAME,
            format!(
                "stale lock file: pid {} in {} is not running",
                info.pid,
                paths.lock.display()
            ),
            format!(
                "rm -f {} {}",
                paths.lock.display(),
                paths.control_socket.display()
            ),
        ));
    }
    if !paths.control_socket.exists() {
        return Some(DoctorCheck::problem(
            CheckStatus::Fail,
            NAME,
            format!(
                "pid {} runs but its control socket {} is missing",
                info.pid,
                paths.control_socket.display()
            ),
            "restart it: moat proxy restart",
        ));
    }
    None
}

/// A daemon of another moat version, or on another port than
/// `MOAT_PROXY_PORT` asks for.
fn version_and_port(info: &lockfile::DaemonInfo) -> Vec<DoctorCheck> {
    let mut checks = Vec::new();
    let ours = env!("CARGO_PKG_VERSION");
    if info.version != ours {
        checks.push(DoctorCheck::problem(
            CheckStatus::Warn,
            "proxy daemon version",
            format!("the daemon is moat {}, this is moat {ours}", info.version),
            "once no run is active: moat proxy restart",
        ));
    }
    let requested = std::env::var("MOAT_PROXY_PORT")
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok());
    if let Some(port) = requested.filter(|&p| p != 0 && p != info.port) {
        checks.push(DoctorCheck::problem(
            CheckStatus::Fail,
            "proxy port",
            format!(
                "proxy port mismatch: running on {}, requested {port}",
                info.port
            ),
            "unset MOAT_PROXY_PORT, or stop all runs so the proxy exits and restarts on \
             the new port",
        ));
    }
    checks
}

/// The CA's certificate and key: both or neither, the key private.
pub(crate) fn ca_files(home: &MoatHome) -> DoctorCheck {
    const NAME: &str = "interception CA";
    let dir = home.ca_dir();
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (cert.exists(), key.exists()) {
        (false, false) => DoctorCheck::ok(NAME, "not created yet (the proxy daemon creates it)"),
        (true, true) => match moat_home::mode_of(&key) {
            Ok(mode) if mode & 0o077 == 0 => DoctorCheck::ok(NAME, format!("{}", dir.display())),
            Ok(mode) => DoctorCheck::problem(
                CheckStatus::Fail,
                NAME,
                format!(
                    "{} has permissions {mode:04o} (expected 0600)",
                    key.display()
                ),
                format!("chmod 600 {}", key.display()),
            ),
            Err(e) => DoctorCheck::problem(
                CheckStatus::Fail,
                NAME,
                e.to_string(),
                format!("check the permissions of {}", dir.display()),
            ),
        },
        _ => DoctorCheck::problem(
            CheckStatus::Fail,
            NAME,
            format!("only one of ca.crt and ca.key exists in {}", dir.display()),
            format!(
                "remove both so the daemon creates a new CA: moat proxy stop && rm -f {} {}",
                cert.display(),
                key.display()
            ),
        ),
    }
}
