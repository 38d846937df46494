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
    /// `proxy.sock`: the proxy served on a Unix socket.
    pub proxy_socket: PathBuf,
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
            proxy_socket: dir.join("proxy.sock"),
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

/// Whether `pid` is a live process.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}
