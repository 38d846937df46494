//! What the caller asks for: the description of one sandboxed run.

use std::path::PathBuf;

use moat_capture::ProxyAuthorization;
use serde::{Deserialize, Serialize};

use crate::error::SandboxError;

/// Where the Unix socket of the host proxy appears inside an isolated
/// sandbox: a link into [`PROXY_SOCKET_DIR_IN_SANDBOX`].
pub const PROXY_SOCKET_IN_SANDBOX: &str = "/run/moat/proxy.sock";

/// Where the directory holding the host proxy's socket is shown (read-only)
/// inside an isolated sandbox. The directory, not the socket, is bound, so
/// a socket bound again by a restarted daemon is the one the sandbox reaches.
pub const PROXY_SOCKET_DIR_IN_SANDBOX: &str = "/run/moat/proxy";

/// Where the project directory appears inside the sandbox (and the working
/// directory of the command).
pub use moat_sandbox::WORKSPACE_IN_SANDBOX;

/// `PATH` given to the command when the spec does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One sandboxed run: what to run, what it sees, how it talks to the world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Hostname inside the sandbox (its own UTS namespace).
    pub hostname: String,
    /// Name of the sandbox user (`/etc/passwd` entry, `USER`, `/home/<user>`).
    pub user: String,
    /// What runs and what it sees of the host. Its environment is the
    /// command's whole environment, apart from the defaults for `HOME`,
    /// `USER` and `PATH` (used only when not given here): nothing is
    /// inherited from the caller's. A program without `/` is looked up in
    /// the sandbox's `PATH`; files are read-only inside.
    #[serde(flatten)]
    pub workload: Workload,
    /// How (and whether) the sandbox reaches the network.
    pub network: NetworkMode,
    /// Where the command's stdin, stdout and stderr go.
    pub stdio: StdioMode,
    /// What the whole sandbox may consume.
    #[serde(default)]
    pub limits: ResourceLimits,
    /// A host path where the sandbox serves [`crate::exec`] for its whole
    /// life (`moat exec`); `None`: no more commands after the first.
    #[serde(default)]
    pub exec_socket: Option<PathBuf>,
    /// A host path where the sandbox serves [`crate::ports`]: the way in
    /// to `127.0.0.1:<port>` inside for each of [`SandboxSpec::ports`].
    #[serde(default)]
    pub port_socket: Option<PathBuf>,
    /// The ports a connection through [`SandboxSpec::port_socket`] may
    /// reach (the run's endpoints).
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// Resource limits of one sandbox, so that one runaway command cannot take
/// the machine down.
///
/// Processes (per user namespace, so only the sandbox's count) and open
/// files are limited with rlimits, which work for every caller. Memory and
/// CPU, when asked for, are enforced with a cgroup of the sandbox's own
/// (root, with cgroup v1 controllers or cgroup v2), which also holds the
/// process count; a memory or CPU limit asked for where no cgroup can be
/// made is an error, not silently dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Memory of all the sandbox's processes together, tmpfs pages
    /// included. `None`: no limit beyond the machine's.
    pub memory_bytes: Option<u64>,
    /// CPU time in thousandths of a CPU (`1500` = one and a half CPUs).
    pub millicpus: Option<u32>,
    /// Processes and threads of the sandbox together.
    pub pids: u64,
    /// Open files of each process.
    pub open_files: u64,
    /// Size cap of each writable tmpfs (`/tmp`, the home directory,
    /// `/dev/shm`). `None`: a quarter of the machine's memory.
    pub tmpfs_bytes: Option<u64>,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            memory_bytes: None,
            millicpus: None,
            pids: 4096,
            open_files: 65536,
            tmpfs_bytes: None,
        }
    }
}

pub use moat_sandbox::{BindMount, InjectedFile, Workload};

/// Network access of the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// Share the host network namespace. The caller is expected to set the
    /// proxy environment variables; nothing is enforced.
    Host,
    /// A private network namespace with only loopback up. A relay listens on
    /// `127.0.0.1:relay_port` inside and forwards every connection to the
    /// host Unix socket `proxy_socket` (also visible inside at
    /// [`PROXY_SOCKET_IN_SANDBOX`]). Nothing else is reachable.
    Isolated {
        /// TCP port of the relay on the sandbox's loopback.
        relay_port: u16,
        /// Host path of the proxy's Unix socket.
        proxy_socket: PathBuf,
        /// Also hand connections of clients that ignore the proxy
        /// settings to the proxy (see [`CaptureSpec`]).
        #[serde(default)]
        capture: Option<CaptureSpec>,
    },
}

/// Transparent capture in an isolated network: every IPv4 address is
/// routed to the sandbox's loopback, a DNS responder inside gives every
/// name an address, and connections to `ports` on any address are handed
/// to the proxy as `CONNECT` requests (named by TLS SNI or by the name the
/// responder gave out) carrying `proxy_authorization`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSpec {
    /// `Proxy-Authorization` value for the proxy (e.g. `Basic …`).
    pub proxy_authorization: ProxyAuthorization,
    /// TCP ports captured on every address, e.g. `[80, 443]`.
    pub ports: Vec<u16>,
    /// Host TCP ports the sandbox may reach at [`HOST_GATEWAY_NAME`]
    /// (the proxy must allow `CONNECT 127.0.0.1:PORT` tunnels for them).
    #[serde(default)]
    pub host_ports: Vec<u16>,
}

pub use moat_capture::{HOST_GATEWAY_ADDR, HOST_GATEWAY_NAME};

/// Where the command's standard streams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdioMode {
    /// stdin, stdout and stderr are the caller's (e.g. its terminal).
    Inherit,
    /// stdin is `/dev/null`; stdout and stderr are pipes the caller reads
    /// through [`crate::Sandbox::take_stdout`] and
    /// [`crate::Sandbox::take_stderr`].
    Piped,
    /// stdin is the caller's (so `moat run -- cat < file` works); stdout and
    /// stderr are pipes, as with [`StdioMode::Piped`].
    PipedOutput,
    /// A new pseudo-terminal: the command runs in its own session with the
    /// terminal's slave side as stdin, stdout, stderr and controlling
    /// terminal; the caller gets the master side from
    /// [`crate::Sandbox::take_pty`] and relays it. The sandbox never holds
    /// the caller's own terminal (so it cannot push input into it with
    /// `TIOCSTI`), and Ctrl-C, job control and window sizes work inside.
    Pty {
        /// Initial window size: rows.
        rows: u16,
        /// Initial window size: columns.
        cols: u16,
    },
}

impl SandboxSpec {
    /// A spec with the usual defaults: host network, inherited stdio, no
    /// extra mounts, files or environment.
    pub fn new(workspace: impl Into<PathBuf>, command: Vec<String>) -> Self {
        SandboxSpec {
            hostname: "moat".to_owned(),
            user: "moat".to_owned(),
            workload: Workload {
                workspace: workspace.into(),
                command,
                ..Workload::default()
            },
            network: NetworkMode::Host,
            stdio: StdioMode::Inherit,
            limits: ResourceLimits::default(),
            exec_socket: None,
            port_socket: None,
            ports: Vec::new(),
        }
    }

    /// Checks what can be checked before anything is started.
    pub fn validate(&self) -> Result<(), SandboxError> {
        self.workload
            .validate(&["/proc", "/dev"])
            .map_err(|e| SandboxError::InvalidSpec {
                message: e.to_string(),
            })?;
        self.validate_names()?;
        self.validate_limits()?;
        self.validate_network()
    }

    /// The sandbox user's name and the hostname.
    fn validate_names(&self) -> Result<(), SandboxError> {
        if !valid_user_name(&self.user) {
            return invalid(format!(
                "invalid user name {:?}: use 1-32 characters of a-z, 0-9, '_' or '-', not starting with a digit or '-'",
                self.user
            ));
        }
        if self.user == "root" || self.user == "nobody" {
            return invalid(format!(
                "the sandbox user may not be called {:?}: that name is reserved",
                self.user
            ));
        }
        if self.hostname.is_empty()
            || self.hostname.len() > 64
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return invalid(format!(
                "invalid hostname {:?}: use 1-64 characters of letters, digits, '-' or '.'",
                self.hostname
            ));
        }
        Ok(())
    }

    /// Limits under which nothing could start.
    fn validate_limits(&self) -> Result<(), SandboxError> {
        let limits = &self.limits;
        if limits.pids < 16 || limits.open_files < 64 {
            return invalid(format!(
                "limits too low to start anything: {} processes, {} open files (at least 16 and 64)",
                limits.pids, limits.open_files
            ));
        }
        if limits.memory_bytes.is_some_and(|m| m < 16 << 20) {
            return invalid("the memory limit must be at least 16 MiB");
        }
        if limits.millicpus == Some(0) {
            return invalid("the CPU limit must be more than 0");
        }
        Ok(())
    }

    /// The relay, the proxy socket and the captured ports of an isolated
    /// network.
    fn validate_network(&self) -> Result<(), SandboxError> {
        let NetworkMode::Isolated {
            relay_port,
            proxy_socket,
            capture,
        } = &self.network
        else {
            return Ok(());
        };
        if let Some(capture) = capture {
            if !capture.proxy_authorization.is_valid() {
                return invalid("the proxy authorization must be one printable header value");
            }
            if capture.host_ports.contains(&0) {
                return invalid("host port 0 cannot be reached");
            }
            if capture.ports.contains(relay_port)
                || capture.ports.contains(&0)
                || capture.ports.contains(&53)
            {
                return invalid(format!(
                    "captured ports {:?} may not include 0, 53 or the relay port {relay_port}",
                    capture.ports
                ));
            }
        }
        if *relay_port == 0 {
            return invalid("the relay port must not be 0");
        }
        if !proxy_socket.is_absolute() {
            return invalid(format!(
                "the proxy socket path must be absolute: {}",
                proxy_socket.display()
            ));
        }
        Ok(())
    }

    /// The sandbox user's home directory inside the sandbox.
    pub fn home_in_sandbox(&self) -> PathBuf {
        PathBuf::from("/home").join(&self.user)
    }
}

/// An inconsistent spec, with what is wrong.
fn invalid(message: impl Into<String>) -> Result<(), SandboxError> {
    Err(SandboxError::InvalidSpec {
        message: message.into(),
    })
}

fn valid_user_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 32
        && !bytes[0].is_ascii_digit()
        && bytes[0] != b'-'
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec::new("/tmp/ws", vec!["true".into()])
    }

    #[test]
    fn default_spec_is_valid() {
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn rejects_bad_values() {
        let mut s = spec();
        s.workload.command.clear();
        assert!(s.validate().is_err());

        let mut s = spec();
        s.user = "Root;rm".into();
        assert!(s.validate().is_err());

        // The workload's own checks (moat-sandbox's tests) apply, with
        // /proc and /dev reserved too.
        let mut s = spec();
        s.workload.mounts.push(BindMount {
            source: "/etc".into(),
            target: "/proc/x".into(),
            read_only: true,
            exclude: Vec::new(),
        });
        assert!(s.validate().is_err());
    }
}
