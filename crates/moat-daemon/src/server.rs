//! The daemon process.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use moat_home::{ensure_private_dir, FileLock, MoatHome};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::Audits;
use crate::lockfile::{process_alive, process_start_time, write_info, DaemonInfo, DaemonPaths};
use crate::protocol::{self, Request, Response, RunSpec, RunSummary, API_VERSION};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// State directory.
    pub home: MoatHome,
    /// Proxy TCP port (0: any free port).
    pub port: u16,
    /// Exit this long after the last run unregisters.
    pub idle_timeout: Duration,
    /// Where the routing to the runs' endpoints listens
    /// (`MOAT_ROUTING_LISTEN`, default `127.0.0.1:8081`).
    pub routing_listen: std::net::SocketAddr,
}

impl DaemonConfig {
    /// Reads `MOAT_PROXY_PORT` (default 8080) and `MOAT_DAEMON_IDLE_TIMEOUT`
    /// (seconds, default 300).
    pub fn from_env(home: MoatHome) -> Result<Self, DaemonError> {
        let port = match std::env::var("MOAT_PROXY_PORT") {
            Ok(v) if !v.trim().is_empty() => {
                v.trim().parse().map_err(|_| DaemonError::Setting {
                    name: "MOAT_PROXY_PORT",
                    value: v.clone(),
                    expected: "a port number",
                })?
            }
            _ => crate::DEFAULT_PORT,
        };
        let idle = match std::env::var("MOAT_DAEMON_IDLE_TIMEOUT") {
            Ok(v) if !v.trim().is_empty() => {
                v.trim().parse().map_err(|_| DaemonError::Setting {
                    name: "MOAT_DAEMON_IDLE_TIMEOUT",
                    value: v.clone(),
                    expected: "a number of seconds",
                })?
            }
            _ => 300,
        };
        let routing_listen = match std::env::var("MOAT_ROUTING_LISTEN") {
            Ok(v) if !v.trim().is_empty() => {
                v.trim().parse().map_err(|_| DaemonError::Setting {
                    name: "MOAT_ROUTING_LISTEN",
                    value: v.clone(),
                    expected: "an address and port (127.0.0.1:8081)",
                })?
            }
            _ => std::net::SocketAddr::from(([127, 0, 0, 1], crate::DEFAULT_ROUTING_PORT)),
        };
        Ok(DaemonConfig {
            home,
            port,
            idle_timeout: Duration::from_secs(idle),
            routing_listen,
        })
    }
}

impl moat_hint::Hint for DaemonError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            DaemonError::PortInUse { port, .. } => Some(moat_hint::Fix::new(format!(
                "Set MOAT_PROXY_PORT to a free port (or stop the program using {port})"
            ))),
            DaemonError::AlreadyRunning(_) => {
                Some("See it with: moat proxy status; stop it with: moat proxy stop".into())
            }
            DaemonError::Setting { name, .. } => {
                Some(format!("Fix {name}, or unset it for the default.").into())
            }
            DaemonError::Home(e) => e.hint(),
            DaemonError::Ca(_) | DaemonError::Proxy(_) | DaemonError::Io { .. } => None,
        }
    }
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A setting from the environment that does not parse.
    #[error("{name}={value:?} is not {expected}")]
    Setting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// Another daemon holds this MOAT_HOME.
    #[error("another moat proxy daemon already serves {0}")]
    AlreadyRunning(String),
    /// The port is taken.
    #[error("proxy port {port} is not available: {cause}")]
    PortInUse {
        /// The port.
        port: u16,
        /// OS message.
        cause: String,
    },
    /// The interception CA could not be loaded or created.
    #[error("TLS interception CA")]
    Ca(#[source] moat_proxy::ProxyError),
    /// The proxy refused its configuration (`MOAT_UPSTREAM_*`, ...).
    #[error(transparent)]
    Proxy(moat_proxy::ProxyError),
    /// Other I/O.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was done.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// File operations under MOAT_HOME.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),
}

struct RunEntry {
    spec_summary: RunSummary,
    /// The supervisor's pid and its start time, read when it registered:
    /// a reused pid is not taken for the supervisor.
    supervisor: Option<(u32, Option<u64>)>,
    /// Its policy, with `moat allow` / `moat deny` changes.
    live: crate::live::LivePolicy,
}

struct State {
    proxy: moat_proxy::Proxy,
    runs: BTreeMap<String, RunEntry>,
    idle_since: Option<Instant>,
    info: DaemonInfo,
    paths: DaemonPaths,
    ca_pem: String,
    idle_timeout: Duration,
    /// Addresses listened on besides 127.0.0.1.
    extra_listeners: std::collections::BTreeSet<std::net::IpAddr>,
    /// The runs' audit logs.
    audits: Arc<Audits>,
    /// Hostname routing to the runs' endpoints, when it listens.
    router: Option<Arc<moat_proxy::Router>>,
    /// Resident memory with no run registered, taken as the first run of
    /// a busy spell registers: what each run costs is measured from it.
    idle_rss: u64,
}

/// This process's resident memory in bytes (VmRSS).
fn own_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs the daemon until it is stopped or idle. Removes its lock and
/// sockets on the way out.
pub async fn serve(config: DaemonConfig) -> Result<(), DaemonError> {
    let paths = DaemonPaths::new(&config.home);
    ensure_private_dir(&paths.dir)?;
    let _instance = acquire_instance(&config, &paths).await?;
    let (proxy, ca_pem, audits) = start_proxy(&config, &paths)?;
    let (tcp, port, proxy_unix, control) = bind_listeners(&config, &paths).await?;
    let router = crate::routes::start(&config, &paths).await;

    let info = DaemonInfo {
        pid: std::process::id(),
        port,
        version: env!("CARGO_PKG_VERSION").to_string(),
        api: API_VERSION,
        started_at: Utc::now(),
    };
    let state = Arc::new(Mutex::new(State {
        proxy: proxy.clone(),
        runs: BTreeMap::new(),
        idle_since: Some(Instant::now()),
        info: info.clone(),
        paths: paths.clone(),
        ca_pem,
        idle_timeout: config.idle_timeout,
        extra_listeners: Default::default(),
        audits: audits.clone(),
        router,
        idle_rss: own_rss(),
    }));

    let tcp_task = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.serve_tcp(tcp).await }
    });
    let unix_task = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.serve_unix(proxy_unix).await }
    });

    // Only now that everything listens do clients learn of us.
    write_info(&paths.lock, &info)?;
    tracing::info!(pid = info.pid, port, "proxy daemon serving");
    control_loop(&control, &state, config.idle_timeout).await;

    tcp_task.abort();
    unix_task.abort();
    shut_down(&state, &proxy, &audits, &paths, &info).await;
    Ok(())
}

/// This `MOAT_HOME`'s instance lock. A CLI probing whether a daemon runs
/// holds it for a moment: retry briefly before concluding another daemon
/// has it.
async fn acquire_instance(
    config: &DaemonConfig,
    paths: &DaemonPaths,
) -> Result<FileLock, DaemonError> {
    for _ in 0..20 {
        if let Some(lock) = FileLock::try_acquire(&paths.instance_lock)? {
            return Ok(lock);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(DaemonError::AlreadyRunning(
        config.home.root().display().to_string(),
    ))
}

/// The interception CA, the proxy engine and the audit logs it reports to.
fn start_proxy(
    config: &DaemonConfig,
    paths: &DaemonPaths,
) -> Result<(moat_proxy::Proxy, String, Arc<Audits>), DaemonError> {
    let ca =
        moat_proxy::CertificateAuthority::load_or_create(&paths.ca_dir).map_err(DaemonError::Ca)?;
    let ca_pem = ca.cert_pem().to_string();
    let proxy_config = moat_proxy::ProxyConfig::from_env().map_err(DaemonError::Proxy)?;
    let trace_max_bytes = proxy_config.trace_max_bytes;
    let proxy = moat_proxy::Proxy::new(proxy_config, ca).map_err(DaemonError::Proxy)?;
    let audits = Audits::new(&config.home, trace_max_bytes);
    proxy.set_observer(audits.clone());
    Ok((proxy, ca_pem, audits))
}

/// The proxy's TCP port on 127.0.0.1 (and the port it got), its Unix
/// socket for network-isolated sandboxes, and the control socket.
async fn bind_listeners(
    config: &DaemonConfig,
    paths: &DaemonPaths,
) -> Result<(TcpListener, u16, UnixListener, UnixListener), DaemonError> {
    let tcp = TcpListener::bind(("127.0.0.1", config.port))
        .await
        .map_err(|e| DaemonError::PortInUse {
            port: config.port,
            cause: e.to_string(),
        })?;
    let port = tcp
        .local_addr()
        .map_err(|e| DaemonError::Io {
            action: "reading address of",
            path: "proxy listener".into(),
            error: e,
        })?
        .port();
    if let Some(sock_dir) = paths.proxy_socket.parent() {
        ensure_private_dir(sock_dir)?;
    }
    let proxy_unix = bind_private_unix(&paths.proxy_socket)?;
    let control = bind_private_unix(&paths.control_socket)?;
    Ok((tcp, port, proxy_unix, control))
}

/// Serves control requests until a stop request, a signal, or the idle
/// timeout.
async fn control_loop(control: &UnixListener, state: &Arc<Mutex<State>>, idle_timeout: Duration) {
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            accepted = control.accept() => {
                if let Ok((stream, _)) = accepted {
                    let state = state.clone();
                    let shutdown = shutdown_tx.clone();
                    tokio::spawn(async move {
                        handle_control(stream, state, shutdown).await;
                    });
                }
            }
            _ = tick.tick() => {
                if housekeeping(state, idle_timeout) {
                    tracing::info!("idle timeout reached; exiting");
                    return;
                }
            }
            _ = shutdown_rx.changed() => {
                tracing::info!("stop requested; exiting");
                return;
            }
            _ = shutdown_signal() => {
                tracing::info!("signal received; exiting");
                return;
            }
        }
    }
}

/// Ends every run's registration and audit log, then removes the lock
/// (only if it is still ours) and the sockets.
async fn shut_down(
    state: &Arc<Mutex<State>>,
    proxy: &moat_proxy::Proxy,
    audits: &Arc<Audits>,
    paths: &DaemonPaths,
    info: &DaemonInfo,
) {
    let run_ids: Vec<String> = match state.lock() {
        Ok(s) => s.runs.keys().cloned().collect(),
        Err(_) => Vec::new(),
    };
    for id in run_ids {
        proxy.unregister(&id);
    }
    for id in audits.run_ids() {
        audits.stop(&id, Some("daemon stopped")).await;
    }
    if let Ok(Some(current)) = crate::lockfile::read_info(&paths.lock) {
        if current.pid == info.pid {
            let _ = std::fs::remove_file(&paths.lock);
        }
    }
    let _ = std::fs::remove_file(&paths.control_socket);
    let _ = std::fs::remove_file(&paths.proxy_socket);
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// Unregisters runs whose supervisor died; returns true when the idle
/// timeout has passed.
fn housekeeping(state: &Arc<Mutex<State>>, idle_timeout: Duration) -> bool {
    let Ok(mut s) = state.lock() else {
        return true;
    };
    let dead: Vec<String> = s
        .runs
        .iter()
        .filter(|(_, r)| {
            r.supervisor
                .is_some_and(|(pid, start)| !process_alive(pid, start))
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in dead {
        tracing::info!(run_id = %id, "supervisor exited; unregistering run");
        crate::routes::remove(s.router.as_deref(), &id);
        s.proxy.unregister(&id);
        s.runs.remove(&id);
        let audits = s.audits.clone();
        tokio::spawn(async move { audits.stop(&id, Some("supervisor exited")).await });
    }
    if s.runs.is_empty() {
        let since = *s.idle_since.get_or_insert_with(Instant::now);
        since.elapsed() >= idle_timeout
    } else {
        s.idle_since = None;
        false
    }
}

fn bind_private_unix(path: &std::path::Path) -> Result<UnixListener, DaemonError> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| DaemonError::Io {
        action: "binding",
        path: path.to_path_buf(),
        error: e,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        DaemonError::Io {
            action: "setting permissions on",
            path: path.to_path_buf(),
            error: e,
        }
    })?;
    Ok(listener)
}

async fn handle_control(
    stream: UnixStream,
    state: Arc<Mutex<State>>,
    shutdown: watch::Sender<bool>,
) {
    // Who asks, from the kernel: the audit log's `by` of a policy change.
    let by = match stream.peer_cred() {
        Ok(c) => format!("uid {} pid {}", c.uid(), c.pid().unwrap_or(0)),
        Err(_) => "unknown".to_owned(),
    };
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let line = match tokio::time::timeout(Duration::from_secs(10), protocol::read_line(&mut reader))
        .await
    {
        Ok(Ok(line)) => line,
        Ok(Err(protocol::ProtocolError::Closed)) | Err(_) => return,
        Ok(Err(e)) => {
            let _ = write
                .write_all(&protocol::encode(&Response::Error {
                    message: e.to_string(),
                }))
                .await;
            return;
        }
    };
    let response = match protocol::decode::<Request>(&line) {
        Ok(Request::Unregister { run_id }) => {
            let audits = state.lock().ok().map(|s| s.audits.clone());
            let response = answer(
                Request::Unregister {
                    run_id: run_id.clone(),
                },
                &state,
                &shutdown,
                &by,
            );
            // Answer only once the log is sealed, so `moat audit` right
            // after the run sees the attestation.
            if let Some(audits) = audits {
                audits.stop(&run_id, None).await;
            }
            response
        }
        Ok(request) => answer(request, &state, &shutdown, &by),
        Err(e) => {
            tracing::warn!(error = %e, "rejected control message");
            Response::Error {
                message: e.to_string(),
            }
        }
    };
    let _ = write.write_all(&protocol::encode(&response)).await;
}

fn answer(
    request: Request,
    state: &Arc<Mutex<State>>,
    shutdown: &watch::Sender<bool>,
    by: &str,
) -> Response {
    let Ok(mut s) = state.lock() else {
        return Response::Error {
            message: "daemon state is poisoned; restart it with: moat proxy restart".into(),
        };
    };
    match request {
        Request::Hello { .. } => Response::Hello {
            api: API_VERSION,
            version: s.info.version.clone(),
            pid: s.info.pid,
            port: s.info.port,
        },
        Request::Register { run } => match register(&mut s, *run) {
            Ok(r) => r,
            Err(message) => Response::Error { message },
        },
        Request::Unregister { run_id } => {
            crate::routes::remove(s.router.as_deref(), &run_id);
            s.proxy.unregister(&run_id);
            s.runs.remove(&run_id);
            if s.runs.is_empty() {
                s.idle_since = Some(Instant::now());
            }
            Response::Ok
        }
        Request::Status => Response::Status {
            pid: s.info.pid,
            port: s.info.port,
            version: s.info.version.clone(),
            started_at: s.info.started_at,
            runs: s.runs.values().map(|r| r.spec_summary.clone()).collect(),
            idle_exit_in_secs: if s.runs.is_empty() {
                s.idle_since
                    .map(|since| s.idle_timeout.saturating_sub(since.elapsed()).as_secs())
            } else {
                None
            },
            routing_port: s.router.as_ref().map(|r| r.port()),
            rss_bytes: own_rss(),
            idle_rss_bytes: s.idle_rss,
        },
        Request::Audit { run_id, kind, data } => match s.audits.append(&run_id, &kind, data) {
            Ok(()) => Response::Ok,
            Err(message) => Response::Error { message },
        },
        Request::PolicyChange { run_id, change } => change_policy(&mut s, &run_id, change, by),
        Request::PolicyShow { run_id } => match s.runs.get(&run_id) {
            Some(r) => Response::Policy {
                view: r.live.view(&run_id),
            },
            None => not_registered(&run_id),
        },
        Request::Stop => {
            let _ = shutdown.send(true);
            Response::Ok
        }
    }
}

fn not_registered(run_id: &str) -> Response {
    Response::Error {
        message: format!(
            "run {run_id} is not registered with the proxy daemon (it is not running). \
             List running runs with: moat list"
        ),
    }
}

/// `moat allow` / `moat deny`: the run's policy is replaced in the proxy
/// at once, and the change goes to its audit log.
fn change_policy(
    s: &mut State,
    run_id: &str,
    change: moat_policy::LiveChange,
    by: &str,
) -> Response {
    let started = std::time::Instant::now();
    let Some(entry) = s.runs.get_mut(run_id) else {
        return not_registered(run_id);
    };
    let data = serde_json::json!({
        "action": change.action,
        "host": change.host,
        "rules": change.rules,
        "by": by,
    });
    let policy = entry.live.change(change);
    if !s.proxy.set_policy(run_id, policy) {
        return not_registered(run_id);
    }
    // On disk before the answer: a daemon killed right after it must not
    // lose the change, which its successor reads back from the log.
    if let Err(e) = (s.audits.append(run_id, "policy", data)).and_then(|()| s.audits.flush(run_id))
    {
        tracing::warn!(run_id, error = %e, "policy change not audited");
    }
    tracing::info!(
        run_id,
        micros = started.elapsed().as_micros() as u64,
        "policy changed"
    );
    Response::Policy {
        view: entry.live.view(run_id),
    }
}

fn register(s: &mut State, run: RunSpec) -> Result<Response, String> {
    let mut registration = crate::translate::registration(&run).map_err(|e| e.to_string())?;
    let mut live = crate::live::LivePolicy::new(&run, registration.policy.clone());
    for change in &run.changes {
        registration.policy = live.change(change.clone());
    }
    for addr in &run.listen {
        let ip: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("invalid listen address {addr:?}"))?;
        if ip.is_unspecified() {
            return Err("refusing to listen on all interfaces".into());
        }
        if s.extra_listeners.contains(&ip) {
            continue;
        }
        let listener = std::net::TcpListener::bind((ip, s.info.port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("listening on {ip}:{}: {e}", s.info.port))?;
        let proxy = s.proxy.clone();
        tokio::spawn(async move { proxy.serve_tcp(listener).await });
        tracing::info!(%ip, port = s.info.port, "proxy also listening for containers");
        s.extra_listeners.insert(ip);
    }
    let token = match &run.token {
        Some(kept) => {
            let kept = moat_proxy::RunToken::from_existing(kept.expose())
                .ok_or("the token to keep is not a moat run token")?;
            s.proxy.register_with_token(registration, kept)
        }
        None => s.proxy.register(registration),
    };
    let mut grants: Vec<String> = run.injections.iter().map(|i| i.grant.clone()).collect();
    grants.sort();
    grants.dedup();
    if s.runs.is_empty() {
        s.idle_rss = own_rss();
    }
    s.runs.insert(
        run.run_id.clone(),
        RunEntry {
            spec_summary: RunSummary {
                run_id: run.run_id.clone(),
                policy: run.policy,
                grants,
                registered_at: Utc::now(),
            },
            supervisor: run.supervisor_pid.map(|pid| (pid, process_start_time(pid))),
            live,
        },
    );
    s.idle_since = None;
    crate::routes::insert(s.router.as_deref(), &run);
    if let Some(entry) = s.runs.get(&run.run_id) {
        s.audits.open(&run, &entry.spec_summary.grants);
    }
    Ok(Response::Registered {
        token: crate::protocol::Secret::new(token.expose()),
        port: s.info.port,
        proxy_socket: s.paths.proxy_socket.clone(),
        ca_cert_pem: s.ca_pem.clone(),
        routing_port: s.router.as_ref().map(|r| r.port()),
    })
}
