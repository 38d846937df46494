//! `MOAT_HOME/proxy/daemon.lock`: how a CLI finds the running daemon.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use moat_home::{read_if_exists, write_private_atomic, MoatHome};
use serde::{Deserialize, Serialize};

/// What the daemon writes once it serves, and removes when it exits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonInfo {
    /// Daemon process id.
    pub pid: u32,
    /// Proxy TCP port.
    pub port: u16,
    /// moat version of the daemon.
    pub version: String,
    /// Control API version.
    pub api: u32,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// The files of the daemon under `MOAT_HOME/proxy`.
#[derive(Debug, Clone)]
pub struct DaemonPaths {
    /// `proxy/`.
    pub dir: PathBuf,
    /// `daemon.lock`.
    pub lock: PathBuf,
    /// `daemon.spawn.lock`: serialises spawning.
    pub spawn_lock: PathBuf,
    /// `daemon.sock`: the control socket.
    pub control_socket: PathBuf,
    /// `sock/proxy.sock`: the proxy served on a Unix socket, alone in its
    /// directory: strict native sandboxes see the directory, so a socket
    /// bound again by a new daemon is the one they reach.
    pub proxy_socket: PathBuf,
    /// `daemon.instance.lock`: held (`flock`) by the daemon for its whole
    /// life. Whether it is held, not the pid in `daemon.lock`, says whether
    /// a daemon runs: a pid can be reused by an unrelated process.
    pub instance_lock: PathBuf,
    /// `daemon.log`: the daemon's stderr.
    pub log: PathBuf,
    /// `ca/`: the interception CA.
    pub ca_dir: PathBuf,
}

impl DaemonPaths {
    /// The daemon files in `home`.
    pub fn new(home: &MoatHome) -> Self {
        let dir = home.proxy_dir();
        DaemonPaths {
            lock: dir.join("daemon.lock"),
            spawn_lock: dir.join("daemon.spawn.lock"),
            control_socket: dir.join("daemon.sock"),
            proxy_socket: dir.join("sock").join("proxy.sock"),
            instance_lock: dir.join("daemon.instance.lock"),
            log: dir.join("daemon.log"),
            ca_dir: home.ca_dir(),
            dir,
        }
    }
}

/// Reads the lock file; `Ok(None)` when absent or unreadable as JSON (a
/// damaged lock is treated as stale).
pub fn read_info(path: &Path) -> Result<Option<DaemonInfo>, moat_home::HomeError> {
    Ok(read_if_exists(path)?.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// Writes the lock file atomically, mode 0600.
pub fn write_info(path: &Path, info: &DaemonInfo) -> Result<(), moat_home::HomeError> {
    let bytes = serde_json::to_vec_pretty(info).unwrap_or_default();
    write_private_atomic(path, &bytes)
}

/// Whether a daemon is running for these paths: its instance lock is
/// held. Never judged by a pid, which another process may have reused
/// since. Probing takes the lock for a moment when free; the daemon
/// retries its own acquisition briefly for that reason.
pub fn daemon_running(paths: &DaemonPaths) -> bool {
    if !paths.instance_lock.exists() {
        return false;
    }
    match moat_home::FileLock::try_acquire(&paths.instance_lock) {
        Ok(Some(_free)) => false,
        Ok(None) => true,
        // Cannot tell (permissions): fall back to the control socket.
        Err(_) => paths.control_socket.exists(),
    }
}

/// Fields of `/proc/PID/stat` after the parenthesised command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`).
pub fn process_start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The CPU time `pid` and its waited-for children have used, in clock
/// ticks (fields 14 to 17 of `/proc/PID/stat`): whether a process is
/// working, whatever the machine's load.
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum()
}

/// Whether `pid` is a live process and, when `start` is known, the same
/// process that started then (not a later one given the same pid).
pub fn process_alive(pid: u32, start: Option<u64>) -> bool {
    let Some(fields) = stat_fields(pid) else {
        return false;
    };
    let running = fields.first().is_some_and(|s| s != "Z" && s != "X");
    running
        && start
            .is_none_or(|start| fields.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_means_the_instance_lock_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = DaemonPaths::new(&MoatHome::at(tmp.path()));
        assert!(!daemon_running(&paths));
        // A lock file naming a live pid (ours) proves nothing.
        write_info(
            &paths.lock,
            &DaemonInfo {
                pid: std::process::id(),
                port: 1,
                version: "0".into(),
                api: 1,
                started_at: Utc::now(),
            },
        )
        .unwrap();
        assert!(!daemon_running(&paths));
        let held = moat_home::FileLock::try_acquire(&paths.instance_lock)
            .unwrap()
            .unwrap();
        assert!(daemon_running(&paths));
        drop(held);
        assert!(!daemon_running(&paths));
    }
}
