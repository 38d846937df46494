//! Finding and talking to the Docker daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::{ClientVersion, Docker, API_DEFAULT_VERSION};

use crate::error::{
    DaemonCause, DockerError, EndpointError, PodmanCause, PodmanServiceError, SocketState,
};

/// How long the first contact with the daemon may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Timeout of every other request, in seconds. Long on purpose: a build or
/// a `wait` legitimately takes minutes.
const REQUEST_TIMEOUT_SECS: u64 = 24 * 3600;

/// The name of the gVisor OCI runtime as registered with dockerd.
pub const GVISOR_RUNTIME: &str = "runsc";

impl EndpointError {
    fn no_answer(endpoint: &str) -> Self {
        EndpointError::NoAnswer {
            endpoint: endpoint.to_owned(),
            seconds: PING_TIMEOUT.as_secs(),
        }
    }
}

impl PodmanServiceError {
    fn io(context: impl Into<String>, error: std::io::Error) -> Self {
        PodmanServiceError::Io {
            context: context.into(),
            error,
        }
    }
}

/// How long a Podman API service that moat started may take to answer.
const PODMAN_SERVICE_START: Duration = Duration::from_secs(10);

/// Which engine answers the Engine API. Podman serves the same API (its
/// Docker-compatible one), so one code path drives both; what differs is
/// where it listens, how gVisor is registered, and Podman's default
/// rlimits (see `container.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Docker Engine (dockerd), Docker Desktop, colima, Rancher Desktop.
    Docker,
    /// Podman's API service (`podman system service`).
    Podman,
}

impl Engine {
    /// The runtime's name as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
        }
    }
}

/// A connection to a Docker daemon or a Podman API service.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    pub(crate) docker: Docker,
    endpoint: String,
    kind: Engine,
    /// moat started the Podman service behind `endpoint` for this connection.
    started_service: bool,
}

/// Where Podman's API service listens: `CONTAINER_HOST` when set; else
/// the rootful socket for root, the rootless one under
/// `XDG_RUNTIME_DIR` for everyone else.
pub fn podman_endpoint(
    container_host: Option<&str>,
    root: bool,
    xdg_runtime_dir: Option<&Path>,
) -> (String, bool) {
    if let Some(host) = container_host.filter(|h| !h.trim().is_empty()) {
        return (host.trim().to_owned(), true);
    }
    let path = match (root, xdg_runtime_dir) {
        (false, Some(xdg)) => xdg.join("podman/podman.sock"),
        _ => PathBuf::from("/run/podman/podman.sock"),
    };
    (format!("unix://{}", path.display()), false)
}

/// Whether the `podman` program is on `PATH`.
fn podman_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("podman").is_file()))
}

/// What [`ensure_podman_service`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodmanService {
    /// A service already answers on the socket.
    Running,
    /// moat started one, detached; it keeps running after this process.
    Started {
        /// The service's process id (its own process group too).
        pid: u32,
    },
}

/// Whether something accepts connections on the Unix socket `path`. A
/// socket file left by a service that died (killed with its session, a
/// reboot without a tmpfs `/run`) refuses them: that one is stale.
fn socket_answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Makes sure Podman's API service answers on `socket`: nothing to do when
/// it already does; otherwise removes a stale socket file and starts
/// `podman system service` there. Concurrent callers (parallel runs) are
/// serialised by a lock beside the socket, so only one service starts.
pub async fn ensure_podman_service(socket: &Path) -> Result<PodmanService, PodmanServiceError> {
    if socket_answers(socket) {
        return Ok(PodmanService::Running);
    }
    let dir = socket
        .parent()
        .ok_or_else(|| PodmanServiceError::NoParent(socket.to_owned()))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| PodmanServiceError::io(format!("creating {}", dir.display()), e))?;
    let lock_path = dir.join(".moat-service.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| PodmanServiceError::io(format!("opening {}", lock_path.display()), e))?;
    let lock = tokio::task::spawn_blocking(move || {
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map(|()| lock)
    })
    .await
    .map_err(|e| PodmanServiceError::io(format!("waiting for {}", lock_path.display()), e.into()))?
    .map_err(|e| PodmanServiceError::io(format!("locking {}", lock_path.display()), e.into()))?;
    // Another caller may have started it while this one waited.
    if socket_answers(socket) {
        return Ok(PodmanService::Running);
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(PodmanServiceError::io(
                format!("removing the stale socket {}", socket.display()),
                e,
            ))
        }
    }
    let pid = start_podman_service(socket).await?;
    drop(lock);
    Ok(PodmanService::Started { pid })
}

/// Starts `podman system service` on `socket`, detached from this process
/// (its own session, no standard streams, no timeout), so that later runs
/// reuse it; waits until the socket answers.
async fn start_podman_service(socket: &Path) -> Result<u32, PodmanServiceError> {
    use std::os::unix::process::CommandExt as _;
    let mut command = std::process::Command::new("podman");
    // It outlives this process: it must not keep this process's working
    // directory (a project that may be deleted; Podman's container set-up
    // then fails with "write child: broken pipe"), nor its variables
    // (tokens among them), only what locates Podman's own configuration.
    command.current_dir("/").env_clear();
    for (key, value) in std::env::vars_os() {
        let keep = key.to_str().is_some_and(|k| {
            matches!(
                k,
                "PATH" | "HOME" | "USER" | "LOGNAME" | "LANG" | "TMPDIR" | "TZ"
            ) || k.starts_with("XDG_")
                || k.starts_with("CONTAINERS_")
                || k.starts_with("LC_")
        });
        if keep {
            command.env(key, value);
        }
    }
    command
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| PodmanServiceError::io("starting podman system service", e))?;
    let deadline = tokio::time::Instant::now() + PODMAN_SERVICE_START;
    while !socket_answers(socket) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(PodmanServiceError::ExitedAtOnce(status));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PodmanServiceError::NoAnswer {
                socket: socket.to_owned(),
                seconds: PODMAN_SERVICE_START.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id();
    // Reaped by nobody on purpose: it outlives this process.
    std::mem::forget(child);
    Ok(pid)
}

/// Whether a Podman configuration registers the OCI runtime `name`
/// (`[engine.runtimes]` in a `containers.conf`). Podman's API lists its
/// built-in candidates (runsc among them) whether or not anyone set them
/// up, so only an explicit registration counts.
pub fn podman_registers_runtime(name: &str) -> bool {
    let mut files = vec![PathBuf::from("/etc/containers/containers.conf")];
    if let Ok(dir) = std::fs::read_dir("/etc/containers/containers.conf.d") {
        files.extend(dir.flatten().map(|e| e.path()));
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(home) = config_home {
        files.push(home.join("containers/containers.conf"));
    }
    files
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|text| registers_runtime(&text, name)))
}

fn registers_runtime(config: &str, name: &str) -> bool {
    let mut in_runtimes = false;
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') {
            in_runtimes = line == "[engine.runtimes]";
        } else if in_runtimes {
            if let Some((key, _)) = line.split_once('=') {
                if key.trim().trim_matches('"') == name {
                    return true;
                }
            }
        }
    }
    false
}

/// Where a daemon may be listening, in the order tried: `DOCKER_HOST` alone
/// when it is set; otherwise the usual sockets of Docker Engine, Docker
/// Desktop, rootless Docker, colima and Rancher Desktop.
pub fn candidate_endpoints(
    docker_host: Option<&str>,
    home: Option<&Path>,
    xdg_runtime_dir: Option<&Path>,
) -> Vec<String> {
    if let Some(host) = docker_host.filter(|h| !h.trim().is_empty()) {
        return vec![host.trim().to_owned()];
    }
    let mut paths: Vec<PathBuf> = vec![PathBuf::from("/var/run/docker.sock")];
    if let Some(home) = home {
        paths.push(home.join(".docker/run/docker.sock"));
    }
    if let Some(xdg) = xdg_runtime_dir {
        paths.push(xdg.join("docker.sock"));
    }
    if let Some(home) = home {
        paths.push(home.join(".colima/default/docker.sock"));
        paths.push(home.join(".rd/docker.sock"));
    }
    paths
        .into_iter()
        .map(|p| format!("unix://{}", p.display()))
        .collect()
}

fn open(endpoint: &str, version: &ClientVersion) -> Result<Docker, EndpointError> {
    let result = if let Some(path) = endpoint.strip_prefix("unix://") {
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, version)
    } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
        Docker::connect_with_http(endpoint, REQUEST_TIMEOUT_SECS, version)
    } else if endpoint.starts_with('/') {
        Docker::connect_with_unix(endpoint, REQUEST_TIMEOUT_SECS, version)
    } else {
        return Err(EndpointError::Unsupported(endpoint.to_owned()));
    };
    result.map_err(EndpointError::Open)
}

/// Pings the daemon and agrees on an API version: bollard speaks a recent
/// one, and an older daemon rejects it naming the newest it supports.
async fn handshake(endpoint: &str) -> Result<Docker, EndpointError> {
    let docker = open(endpoint, API_DEFAULT_VERSION)?;
    let first = tokio::time::timeout(PING_TIMEOUT, docker.clone().negotiate_version()).await;
    match first {
        Err(_) => Err(EndpointError::no_answer(endpoint)),
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => {
            let Some(version) = max_supported_version(&e.to_string()) else {
                return Err(EndpointError::Refused {
                    endpoint: endpoint.to_owned(),
                    error: e,
                });
            };
            ping_at(endpoint, &version).await
        }
    }
}

/// Opens `endpoint` at API `version` and pings it within [`PING_TIMEOUT`].
async fn ping_at(endpoint: &str, version: &ClientVersion) -> Result<Docker, EndpointError> {
    let docker = open(endpoint, version)?;
    match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
        Err(_) => Err(EndpointError::no_answer(endpoint)),
        Ok(Err(e)) => Err(EndpointError::Refused {
            endpoint: endpoint.to_owned(),
            error: e,
        }),
        Ok(Ok(_)) => Ok(docker),
    }
}

/// The Docker API version moat speaks to Podman: its compatible API has
/// served 1.40 since Podman 3 (4.x serves 1.41).
const PODMAN_COMPAT_API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 40,
};

/// Pings Podman's API at a fixed version: negotiating asks `/version`,
/// which Podman answers in about 500 ms (it gathers its whole host
/// information); `/_ping` answers at once.
async fn handshake_podman(endpoint: &str) -> Result<Docker, EndpointError> {
    ping_at(endpoint, &PODMAN_COMPAT_API).await
}

/// Parses "... Maximum supported API version is 1.41" from an engine error.
fn max_supported_version(message: &str) -> Option<ClientVersion> {
    let rest = message.split("Maximum supported API version is ").nth(1)?;
    let version: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let (major, minor) = version.split_once('.')?;
    Some(ClientVersion {
        major_version: major.parse().ok()?,
        minor_version: minor.parse().ok()?,
    })
}

impl DockerRuntime {
    /// Connects to the daemon named by `DOCKER_HOST`, or else to the first
    /// usual socket that answers a ping within [`PING_TIMEOUT`].
    pub async fn connect() -> Result<DockerRuntime, DockerError> {
        let docker_host = std::env::var("DOCKER_HOST").ok();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        let candidates =
            candidate_endpoints(docker_host.as_deref(), home.as_deref(), xdg.as_deref());
        Self::connect_to(&candidates, docker_host.is_some()).await
    }

    /// Connects to the first of `endpoints` that answers. With `explicit`
    /// (the endpoint came from `DOCKER_HOST`), a missing socket file is
    /// tried anyway and reported as is.
    pub async fn connect_to(
        endpoints: &[String],
        explicit: bool,
    ) -> Result<DockerRuntime, DockerError> {
        let mut causes = Vec::new();
        for endpoint in endpoints {
            if !explicit {
                if let Some(path) = endpoint.strip_prefix("unix://") {
                    if !Path::new(path).exists() {
                        continue;
                    }
                }
            }
            match handshake(endpoint).await {
                Ok(docker) => {
                    return Ok(DockerRuntime {
                        docker,
                        endpoint: endpoint.clone(),
                        kind: Engine::Docker,
                        started_service: false,
                    })
                }
                Err(cause) => causes.push(cause),
            }
        }
        let cause = if causes.is_empty() {
            DaemonCause::NoSocket {
                tried: endpoints
                    .iter()
                    .map(|e| e.strip_prefix("unix://").unwrap_or(e).to_owned())
                    .collect(),
            }
        } else {
            DaemonCause::Endpoints(causes)
        };
        Err(DockerError::DaemonNotAccessible { cause })
    }

    /// Connects to `engine`: Docker as [`Self::connect`] does; Podman on
    /// [`podman_endpoint`], first starting its API service when `may_start`,
    /// the socket is absent, it is not named by `CONTAINER_HOST` and
    /// `podman` is installed.
    pub async fn connect_engine(
        engine: Engine,
        may_start: bool,
    ) -> Result<DockerRuntime, DockerError> {
        if engine == Engine::Docker {
            return Self::connect().await;
        }
        let container_host = std::env::var("CONTAINER_HOST").ok();
        let xdg = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
        let (endpoint, explicit) = podman_endpoint(
            container_host.as_deref(),
            rustix::process::getuid().is_root(),
            xdg.as_deref(),
        );
        let not_accessible = |cause: PodmanCause| DockerError::PodmanNotAccessible {
            cause,
            endpoint: endpoint.clone(),
        };
        let mut started_service = false;
        if let Some(path) = endpoint.strip_prefix("unix://").map(Path::new) {
            if !socket_answers(path) {
                let socket = SocketState {
                    path: path.to_owned(),
                    exists: path.exists(),
                };
                if explicit {
                    return Err(not_accessible(PodmanCause::NamedSocketDown(socket)));
                }
                if !podman_installed() {
                    return Err(not_accessible(PodmanCause::NotInstalled));
                }
                if !may_start {
                    return Err(not_accessible(PodmanCause::ServiceNotRunning(socket)));
                }
                let service = ensure_podman_service(path)
                    .await
                    .map_err(|e| not_accessible(PodmanCause::Service(e)))?;
                started_service = matches!(service, PodmanService::Started { .. });
            }
        }
        let docker = handshake_podman(&endpoint)
            .await
            .map_err(|e| not_accessible(PodmanCause::Endpoint(e)))?;
        Ok(DockerRuntime {
            docker,
            endpoint,
            kind: Engine::Podman,
            started_service,
        })
    }

    /// The endpoint this connection uses (`unix:///var/run/docker.sock`...).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The engine's Unix socket on this machine, when it listens on one.
    pub fn unix_socket(&self) -> Option<PathBuf> {
        let path = self
            .endpoint
            .strip_prefix("unix://")
            .unwrap_or(&self.endpoint);
        path.starts_with('/').then(|| PathBuf::from(path))
    }

    /// Which engine this is.
    pub fn engine_kind(&self) -> Engine {
        self.kind
    }

    /// Where the engine was found, for `moat doctor` and `moat status`.
    pub fn describe_endpoint(&self) -> String {
        if self.started_service {
            format!(
                "reachable at {} (moat started `podman system service` there, detached)",
                self.endpoint
            )
        } else {
            format!("reachable at {}", self.endpoint)
        }
    }

    /// The underlying bollard client, for what this crate does not wrap.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The OCI runtimes registered with the daemon (`runc`, `runsc`...).
    pub async fn runtimes(&self) -> Result<Vec<String>, DockerError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| DockerError::engine("reading the daemon's info", e))?;
        let mut names: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        names.sort();
        Ok(names)
    }

    /// The arguments the daemon passes to the OCI runtime `name`
    /// (`runtimeArgs` in `daemon.json`); empty when it has none or is not
    /// registered.
    pub async fn runtime_args(&self, name: &str) -> Result<Vec<String>, DockerError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| DockerError::engine("reading the daemon's info", e))?;
        Ok(info
            .runtimes
            .unwrap_or_default()
            .remove(name)
            .and_then(|r| r.runtime_args)
            .unwrap_or_default())
    }

    /// Whether the daemon has the OCI runtime `name` registered.
    pub async fn has_runtime(&self, name: &str) -> Result<bool, DockerError> {
        Ok(self.runtimes().await?.iter().any(|r| r == name))
    }

    /// Fails with [`DockerError::GvisorUnavailable`] unless the gVisor
    /// runtime `name` (normally [`GVISOR_RUNTIME`]) is registered.
    pub async fn require_gvisor(&self, name: &str) -> Result<(), DockerError> {
        let runtimes = self.runtimes().await?;
        if runtimes.iter().any(|r| r == name) {
            return Ok(());
        }
        Err(DockerError::GvisorUnavailable {
            detail: format!(
                "the Docker daemon has no OCI runtime named {name:?} (registered: {})",
                if runtimes.is_empty() {
                    "none".to_owned()
                } else {
                    runtimes.join(", ")
                }
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_wins() {
        let c = candidate_endpoints(Some("tcp://1.2.3.4:2375"), Some(Path::new("/h")), None);
        assert_eq!(c, vec!["tcp://1.2.3.4:2375".to_owned()]);
    }

    #[test]
    fn usual_sockets_in_order() {
        let c = candidate_endpoints(None, Some(Path::new("/h")), Some(Path::new("/run/user/7")));
        assert_eq!(
            c,
            vec![
                "unix:///var/run/docker.sock",
                "unix:///h/.docker/run/docker.sock",
                "unix:///run/user/7/docker.sock",
                "unix:///h/.colima/default/docker.sock",
                "unix:///h/.rd/docker.sock",
            ]
        );
    }

    #[test]
    fn parses_max_version() {
        let v = max_supported_version(
            "Docker responded with status code 400: client version 1.49 is too new. Maximum supported API version is 1.41",
        );
        assert_eq!(
            v,
            Some(ClientVersion {
                major_version: 1,
                minor_version: 41
            })
        );
        assert_eq!(max_supported_version("other"), None);
    }

    #[test]
    fn podman_sockets() {
        assert_eq!(
            podman_endpoint(None, true, Some(Path::new("/run/user/0"))),
            ("unix:///run/podman/podman.sock".to_owned(), false)
        );
        assert_eq!(
            podman_endpoint(None, false, Some(Path::new("/run/user/7"))),
            ("unix:///run/user/7/podman/podman.sock".to_owned(), false)
        );
        assert_eq!(
            podman_endpoint(Some("unix:///x.sock"), false, None),
            ("unix:///x.sock".to_owned(), true)
        );
    }

    #[test]
    fn only_an_explicit_registration_counts() {
        let conf = "[engine]\nfoo = 1\n[engine.runtimes]\nrunsc = [\"/usr/bin/runsc\"]\n";
        assert!(registers_runtime(conf, "runsc"));
        assert!(!registers_runtime(conf, "kata"));
        assert!(!registers_runtime("[engine]\nrunsc = 1\n", "runsc"));
        assert!(!registers_runtime(
            "[engine.runtimes]\n# runsc = []\n",
            "runsc"
        ));
    }

    #[tokio::test]
    async fn missing_sockets_give_the_product_message() {
        use moat_hint::Hint as _;
        let Err(err) =
            DockerRuntime::connect_to(&["unix:///nonexistent/docker.sock".into()], false).await
        else {
            panic!("connected to a socket that does not exist");
        };
        assert_eq!(
            err.to_string(),
            "docker daemon not accessible: no Docker socket found (tried /nonexistent/docker.sock)"
        );
        let fix = err.hint().map(|f| f.to_string()).unwrap_or_default();
        assert!(
            fix.starts_with("To fix:\n  - Start the daemon: sudo systemctl start docker"),
            "{fix}"
        );
        assert!(fix.contains("sudo usermod -aG docker $USER"), "{fix}");
    }
}
