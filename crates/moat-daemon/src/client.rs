//! The CLI side: find the daemon, start it if needed, talk to it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use moat_home::{ensure_private_dir, FileLock, MoatHome};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::lockfile::{daemon_running, read_info, DaemonInfo, DaemonPaths};
use crate::protocol::{self, Request, Response, RunSpec, API_VERSION};

/// How long a spawned daemon may go without using any CPU before its
/// start is declared stuck: a start is judged by its progress, not by a
/// clock that a saturated machine would make it miss.
pub const START_STALL: Duration = Duration::from_secs(5);

/// The longest a start may take even while it keeps working.
pub const START_LIMIT: Duration = Duration::from_secs(120);

/// Errors a CLI meets talking to the daemon. The wording of each is part
/// of the product: the troubleshooting guide lists them with their fixes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A daemon holds this MOAT_HOME (its instance lock) but connecting
    /// or talking to it failed. (A daemon that died leaves nothing in the
    /// way: its state is cleaned up by the next client.)
    #[error(
        "connecting to daemon: {cause}\n\
         A moat daemon (pid {pid} in {lock}) holds this MOAT_HOME but does not answer: it may be hung."
    )]
    Connect {
        /// What failed.
        cause: String,
        /// The daemon's pid, from its lock file.
        pid: u32,
        /// Lock file path.
        lock: String,
        /// Socket path.
        socket: String,
    },
    /// The spawned daemon exited before it answered.
    #[error("the proxy daemon exited while starting ({status})")]
    StartExited {
        /// How it ended.
        status: String,
        /// The daemon log.
        log: String,
    },
    /// The spawned daemon runs but made no progress (no CPU used) for
    /// [`START_STALL`], or has not answered within [`START_LIMIT`].
    #[error(
        "daemon did not start within {seconds} seconds\n\
         The proxy daemon (pid {pid}) is alive but {why}."
    )]
    StartStuck {
        /// Its pid.
        pid: u32,
        /// The window it missed: without progress, or in all.
        seconds: u64,
        /// What it was doing meanwhile.
        why: String,
        /// The daemon log.
        log: String,
    },
    /// The running daemon listens on another port than requested.
    #[error("proxy port mismatch: running on {running}, requested {requested}")]
    PortMismatch {
        /// The daemon's port.
        running: u16,
        /// `MOAT_PROXY_PORT`.
        requested: u16,
    },
    /// The daemon refused the run (incompatible version, bad policy...).
    #[error("registering run with proxy daemon: {cause}")]
    Register {
        /// The daemon's reason.
        cause: String,
    },
    /// The daemon's answer could not be decoded.
    #[error("proxy daemon: undecodable answer")]
    Decode(#[source] protocol::ProtocolError),
    /// The daemon refused a request.
    #[error("proxy daemon: {0}")]
    Refused(String),
    /// The daemon answered with another kind of response than asked for.
    #[error("proxy daemon: unexpected answer {0}")]
    Unexpected(&'static str),
    /// `MOAT_PROXY_PORT` is not a port number.
    #[error("MOAT_PROXY_PORT={0:?} is not a port number (0-65535)")]
    BadPort(String),
    /// Spawning the daemon failed.
    #[error("starting proxy daemon: {action}")]
    Spawn {
        /// What failed ("locating the moat executable", "running /usr/bin/moat", ...).
        action: String,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// File operations under MOAT_HOME failed.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),
}

impl moat_hint::Hint for ClientError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            ClientError::Connect { pid, socket, .. } => format!(
                "Stop it and retry: kill {pid}\n\
                 If that does not help, check whether another process uses {socket}."
            ),
            ClientError::StartExited { log, .. } => {
                format!("Check its log: {log}\nThen start the run again.")
            }
            ClientError::StartStuck { pid, log, .. } => {
                format!("Check its log: {log}\nStop it and retry: kill {pid}")
            }
            ClientError::PortMismatch { .. } => {
                "Either unset MOAT_PROXY_PORT, or stop all agents to restart the proxy".to_owned()
            }
            ClientError::Register { .. } => "Stop active runs so the daemon shuts down \
                 (it exits 5 minutes after the last run), or stop it now with: moat proxy stop\n\
                 Then start the run again."
                .to_owned(),
            ClientError::Home(error) => return error.hint(),
            ClientError::BadPort(_) => "Set MOAT_PROXY_PORT to a port number, or unset it \
                                        for the default (8080)."
                .to_owned(),
            ClientError::Decode(_)
            | ClientError::Refused(_)
            | ClientError::Unexpected(_)
            | ClientError::Spawn { .. } => return None,
        };
        Some(fix.into())
    }
}

/// How to start the daemon when none runs.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `MOAT_PROXY_PORT` or `-p`: `None` means the default (8080), `Some(0)`
    /// any free port.
    pub port: Option<u16>,
    /// Idle timeout override, seconds.
    pub idle_timeout_secs: Option<u64>,
    /// Where the routing to the runs' endpoints listens (`--routing-listen`);
    /// `None`: `MOAT_ROUTING_LISTEN` or the default, as the daemon reads.
    pub routing_listen: Option<std::net::SocketAddr>,
}

/// The default proxy port.
pub const DEFAULT_PORT: u16 = 8080;

impl StartOptions {
    /// Reads `MOAT_PROXY_PORT` and `MOAT_DAEMON_IDLE_TIMEOUT`.
    pub fn from_env() -> Result<Self, ClientError> {
        let port = match std::env::var("MOAT_PROXY_PORT") {
            Ok(v) if !v.trim().is_empty() => Some(
                v.trim()
                    .parse::<u16>()
                    .map_err(|_| ClientError::BadPort(v.clone()))?,
            ),
            _ => None,
        };
        let idle_timeout_secs = std::env::var("MOAT_DAEMON_IDLE_TIMEOUT")
            .ok()
            .and_then(|v| v.trim().parse().ok());
        Ok(StartOptions {
            port,
            idle_timeout_secs,
            routing_listen: None,
        })
    }
}

/// A connection-per-request client of the control socket.
#[derive(Debug, Clone)]
pub struct DaemonClient {
    paths: DaemonPaths,
    /// The daemon's lock file content when connected.
    pub info: DaemonInfo,
}

impl DaemonClient {
    /// Connects to the running daemon, if there is one and it answers.
    pub async fn connect_existing(home: &MoatHome) -> Result<Option<Self>, ClientError> {
        let paths = DaemonPaths::new(home);
        let Some(info) = read_info(&paths.lock)? else {
            return Ok(None);
        };
        // The pid in the lock may belong to an unrelated process by now.
        if !daemon_running(&paths) {
            return Ok(None);
        }
        let client = DaemonClient { paths, info };
        match client.request(&Request::Status).await {
            Ok(_) => Ok(Some(client)),
            Err(e) => Err(e),
        }
    }

    /// Connects to the daemon, starting it (detached) if none runs.
    pub async fn connect_or_start(
        home: &MoatHome,
        opts: &StartOptions,
    ) -> Result<Self, ClientError> {
        let paths = DaemonPaths::new(home);
        ensure_private_dir(&paths.dir)?;
        if let Some(client) = Self::connect_existing(home).await? {
            client.check_port(opts)?;
            return Ok(client);
        }
        // Serialise spawning so two CLIs starting at once share one daemon.
        let lock_path = paths.spawn_lock.clone();
        let _spawn = tokio::task::spawn_blocking(move || FileLock::acquire(&lock_path))
            .await
            .map_err(|e| spawn_err("waiting for the spawn lock", e.into()))??;
        if let Some(client) = Self::connect_existing(home).await? {
            client.check_port(opts)?;
            return Ok(client);
        }
        cleanup_stale(&paths);
        let child = spawn_daemon(home, &paths, opts)?;
        Self::await_start(&paths, child).await
    }

    /// Waits for the daemon `child` to answer, as long as it is alive and
    /// working; it is then reaped in the background, whatever happened.
    async fn await_start(
        paths: &DaemonPaths,
        mut child: std::process::Child,
    ) -> Result<Self, ClientError> {
        let pid = child.id();
        let begun = Instant::now();
        let mut progress = Progress::new(pid);
        let outcome = loop {
            if let Some(info) = read_info(&paths.lock)? {
                if daemon_running(paths) {
                    let client = DaemonClient {
                        paths: paths.clone(),
                        info,
                    };
                    if client.request(&Request::Status).await.is_ok() {
                        break Ok(client);
                    }
                }
            }
            let log = paths.log.display().to_string();
            if let Ok(Some(status)) = child.try_wait() {
                break Err(ClientError::StartExited {
                    status: status.to_string(),
                    log,
                });
            }
            let stuck = if progress.stalled() {
                let why = format!(
                    "has used no CPU in the last {} s: it is stuck, not slow",
                    START_STALL.as_secs()
                );
                Some((START_STALL, why))
            } else if begun.elapsed() >= START_LIMIT {
                Some((START_LIMIT, "kept working without answering".to_owned()))
            } else {
                None
            };
            if let Some((window, why)) = stuck {
                break Err(ClientError::StartStuck {
                    pid,
                    seconds: window.as_secs(),
                    why,
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Reap it if it exits, so it never lingers as a zombie of ours.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        outcome
    }

    fn check_port(&self, opts: &StartOptions) -> Result<(), ClientError> {
        match opts.port {
            Some(requested) if requested != 0 && requested != self.info.port => {
                Err(ClientError::PortMismatch {
                    running: self.info.port,
                    requested,
                })
            }
            _ => Ok(()),
        }
    }

    /// Sends one request and reads the answer.
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let connect_err = |cause: String| ClientError::Connect {
            cause,
            pid: self.info.pid,
            lock: self.paths.lock.display().to_string(),
            socket: self.paths.control_socket.display().to_string(),
        };
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            UnixStream::connect(&self.paths.control_socket),
        )
        .await
        .map_err(|_| connect_err("timed out".into()))?
        .map_err(|e| connect_err(format!("{}: {e}", self.paths.control_socket.display())))?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(&protocol::encode(request))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let mut reader = BufReader::new(read);
        let line = tokio::time::timeout(Duration::from_secs(10), protocol::read_line(&mut reader))
            .await
            .map_err(|_| connect_err("no answer within 10 seconds".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        protocol::decode(&line).map_err(ClientError::Decode)
    }

    /// Version handshake, then registration. Returns the daemon's answer
    /// (token, port, CA).
    pub async fn register(&self, run: RunSpec) -> Result<Registration, ClientError> {
        match self
            .request(&Request::Hello {
                api: API_VERSION,
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .await?
        {
            Response::Hello { api, version, .. } if api != API_VERSION => {
                return Err(ClientError::Register {
                    cause: format!(
                        "the running daemon (moat {version}, API v{api}) is incompatible with \
                         this moat ({}, API v{API_VERSION})",
                        env!("CARGO_PKG_VERSION")
                    ),
                })
            }
            Response::Hello { .. } => {}
            Response::Error { message } => return Err(ClientError::Register { cause: message }),
            other => {
                return Err(ClientError::Register {
                    cause: format!("unexpected answer to hello: {}", other.kind()),
                })
            }
        }
        match self
            .request(&Request::Register { run: Box::new(run) })
            .await?
        {
            Response::Registered {
                token,
                port,
                proxy_socket,
                ca_cert_pem,
                routing_port,
            } => Ok(Registration {
                token,
                port,
                proxy_socket,
                ca_cert_pem,
                routing_port,
            }),
            Response::Error { message } => Err(ClientError::Register { cause: message }),
            other => Err(ClientError::Register {
                cause: format!("unexpected answer: {}", other.kind()),
            }),
        }
    }

    /// Unregisters a run; its token stops working at once.
    pub async fn unregister(&self, run_id: &str) -> Result<(), ClientError> {
        match self
            .request(&Request::Unregister {
                run_id: run_id.to_string(),
            })
            .await?
        {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Appends `kind` with `data` (a JSON object) to an active run's audit
    /// log.
    pub async fn audit(
        &self,
        run_id: &str,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<(), ClientError> {
        match self
            .request(&Request::Audit {
                run_id: run_id.to_string(),
                kind: kind.to_string(),
                data,
            })
            .await?
        {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// `PolicyChange` or `PolicyShow`: the run's policy now in force.
    pub async fn policy(&self, request: &Request) -> Result<crate::PolicyView, ClientError> {
        match self.request(request).await? {
            Response::Policy { view } => Ok(view),
            Response::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }

    /// Asks the daemon to exit and waits (up to 5 s) until it has.
    pub async fn stop(&self) -> Result<(), ClientError> {
        let _ = self.request(&Request::Stop).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while daemon_running(&self.paths) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// What a run receives when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Proxy token (secret).
    pub token: crate::protocol::Secret,
    /// Proxy TCP port.
    pub port: u16,
    /// The proxy on a Unix socket.
    pub proxy_socket: PathBuf,
    /// The CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The routing listener's port, when it listens.
    pub routing_port: Option<u16>,
}

/// Removes a lock naming a dead process and sockets nobody serves.
fn cleanup_stale(paths: &DaemonPaths) {
    if daemon_running(paths) {
        return;
    }
    for path in [&paths.lock, &paths.control_socket, &paths.proxy_socket] {
        let _ = std::fs::remove_file(path);
    }
}

fn spawn_err(action: &str, error: std::io::Error) -> ClientError {
    ClientError::Spawn {
        action: action.to_owned(),
        error,
    }
}

fn spawn_daemon(
    home: &MoatHome,
    paths: &DaemonPaths,
    opts: &StartOptions,
) -> Result<std::process::Child, ClientError> {
    let exe = match std::env::var_os("MOAT_EXECUTABLE").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => {
            std::env::current_exe().map_err(|e| spawn_err("locating the moat executable", e))?
        }
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(|e| spawn_err(&format!("opening {}", paths.log.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| spawn_err(&format!("opening {}", paths.log.display()), e))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("__daemon")
        .env("MOAT_HOME", home.root())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    if let Some(port) = opts.port {
        cmd.env("MOAT_PROXY_PORT", port.to_string());
    } else {
        cmd.env("MOAT_PROXY_PORT", DEFAULT_PORT.to_string());
    }
    if let Some(addr) = opts.routing_listen {
        cmd.env("MOAT_ROUTING_LISTEN", addr.to_string());
    }
    if let Some(idle) = opts.idle_timeout_secs {
        cmd.env("MOAT_DAEMON_IDLE_TIMEOUT", idle.to_string());
    }
    // Its own process group: a Ctrl-C meant for the run must not reach
    // the daemon that other runs share.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn()
        .map_err(|e| spawn_err(&format!("running {}", exe.display()), e))
}

/// Whether a starting daemon still works: the last time its CPU time grew.
struct Progress {
    pid: u32,
    ticks: Option<u64>,
    since: Instant,
}

impl Progress {
    fn new(pid: u32) -> Self {
        Progress {
            pid,
            ticks: crate::lockfile::process_cpu_ticks(pid),
            since: Instant::now(),
        }
    }

    /// Whether no CPU was used for [`START_STALL`].
    fn stalled(&mut self) -> bool {
        let now = crate::lockfile::process_cpu_ticks(self.pid);
        if now != self.ticks {
            self.ticks = now;
            self.since = Instant::now();
        }
        self.since.elapsed() >= START_STALL
    }
}
