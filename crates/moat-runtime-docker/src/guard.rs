//! The network guard: a small runc container holding the sandbox's
//! network namespace, whose entrypoint applies the firewall (and, with
//! capture, runs the relay to the proxy) before the workload joins it.

use std::path::PathBuf;

use bollard::container::AttachContainerResults;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{AttachContainerOptionsBuilder, WaitContainerOptionsBuilder};
use futures_util::StreamExt;

use crate::connect::DockerRuntime;
use crate::error::DockerError;
use crate::gate::MOAT_IN_CONTAINER;
use crate::spec::labels_for;
use crate::spec::{ContainerSpec, CAPTURE_DNS_PORT, CAPTURE_RELAY_PORT};

/// How long the network guard may take to apply its firewall and start
/// its relay.
const GUARD_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a guard whose output ended may take to report its exit code.
const GUARD_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the network guard prints once the workload may start: its
/// firewall is in place and, with capture, the relay is listening.
pub const GUARD_READY: &str = "moat: guard ready";

/// The network guard's entrypoint: applies the firewall in the guard's
/// network namespace, as root with NET_ADMIN, then becomes the guard's
/// main process (`exec "$@"` after the four arguments): the capture relay,
/// which prints [`GUARD_READY`] once listening, or `sleep`, after this
/// script printed it. `$1` is the proxy host, `$2` its port; with capture,
/// `$3` and `$4` are the relay's TCP and DNS ports (empty without).
/// Applying it at start instead of with `docker exec` afterwards saves an
/// exec round trip (about 70 ms) on every run.
const GUARD_SCRIPT: &str = r#"set -e
if ! command -v iptables >/dev/null 2>&1 || ! command -v iptables-restore >/dev/null 2>&1; then
  echo "the image has no iptables (moat's dependency images always include it; add it to a custom base_image)"
  exit 127
fi
proxy_ip=$(getent ahostsv4 "$1" | awk 'NR==1 {print $1}')
if [ -z "$proxy_ip" ]; then echo "cannot resolve the proxy host $1"; exit 1; fi
# One ruleset, applied at once by iptables-restore (each iptables call
# re-reads and rewrites the whole table).
{
  echo "*filter"
  echo ":INPUT DROP [0:0]"
  echo ":OUTPUT DROP [0:0]"
  echo "-A OUTPUT -o lo -j ACCEPT"
  # Redirected packets keep their original output interface in this
  # chain; their destination is already the relay's.
  echo "-A OUTPUT -d 127.0.0.0/8 -j ACCEPT"
  echo "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
  for ns in $(awk '/^nameserver/ {print $2}' /etc/resolv.conf | grep -v ':' || true); do
    echo "-A OUTPUT -p udp -d $ns --dport 53 -j ACCEPT"
    echo "-A OUTPUT -p tcp -d $ns --dport 53 -j ACCEPT"
  done
  echo "-A OUTPUT -p tcp -d $proxy_ip --dport $2 -j ACCEPT"
  # docker:dind's network of the run's own (internal: no way out).
  [ -z "${MOAT_DIRECT_NET:-}" ] || echo "-A OUTPUT -d $MOAT_DIRECT_NET -j ACCEPT"
  echo "-A OUTPUT -j REJECT"
  echo "-A INPUT -i lo -j ACCEPT"
  echo "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
  echo "COMMIT"
  if [ -n "${3:-}" ]; then
    echo "*nat"
    echo ":OUTPUT ACCEPT [0:0]"
    echo "-A OUTPUT -d 127.0.0.0/8 -j RETURN"
    echo "-A OUTPUT -d $proxy_ip -j RETURN"
    [ -z "${MOAT_DIRECT_NET:-}" ] || echo "-A OUTPUT -d $MOAT_DIRECT_NET -j RETURN"
    echo "-A OUTPUT -p udp --dport 53 -j REDIRECT --to-ports $4"
    echo "-A OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports $4"
    # Every other TCP connection, whatever its port (the host gateway's
    # included): the relay reads where it was going.
    echo "-A OUTPUT -p tcp -j REDIRECT --to-ports $3"
    echo "COMMIT"
  fi
} | iptables-restore
if command -v ip6tables-restore >/dev/null 2>&1 && ip6tables -S >/dev/null 2>&1; then
  printf '*filter\n:INPUT DROP [0:0]\n:OUTPUT DROP [0:0]\n-A OUTPUT -o lo -j ACCEPT\n-A OUTPUT -j REJECT\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n' \
    | ip6tables-restore
elif grep -qv ' lo$' /proc/net/if_inet6 2>/dev/null; then
  echo "IPv6 is configured but ip6tables is unusable"
  exit 1
fi
relay=${3:-}
shift 4
[ -n "$relay" ] || echo "moat: guard ready"
exec "$@"
"#;

/// What the guard runs after its firewall, with what it needs for that.
struct GuardRole {
    entrypoint: Vec<String>,
    env: Option<Vec<String>>,
    binds: Option<Vec<String>>,
}

/// The guard's entrypoint: the firewall script for `proxy_host:proxy_port`,
/// then `sleep`, or with `capture` the capture relay (the moat binary,
/// mounted, with the run's proxy authorization).
fn guard_role(
    proxy_host: &str,
    proxy_port: u16,
    capture: Option<(&moat_capture::ProxyAuthorization, &PathBuf)>,
) -> GuardRole {
    let mut entrypoint = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        GUARD_SCRIPT.to_owned(),
        "moat-guard".to_owned(),
        proxy_host.to_owned(),
        proxy_port.to_string(),
    ];
    let (env, binds) = match capture {
        None => {
            // A shell as PID 1 ends on SIGTERM only with a trap of its
            // own (see `DockerRuntime::remove`).
            entrypoint.extend(
                [
                    "",
                    "",
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM INT; sleep 2147483647 & wait",
                ]
                .map(String::from),
            );
            (None, None)
        }
        Some((authorization, relay_binary)) => {
            entrypoint.extend([
                CAPTURE_RELAY_PORT.to_string(),
                CAPTURE_DNS_PORT.to_string(),
                MOAT_IN_CONTAINER.to_owned(),
                "__capture-relay".to_owned(),
                format!("{proxy_host}:{proxy_port}"),
                CAPTURE_RELAY_PORT.to_string(),
                CAPTURE_DNS_PORT.to_string(),
            ]);
            (
                Some(vec![format!(
                    "MOAT_CAPTURE_AUTHORIZATION={}",
                    authorization.expose()
                )]),
                Some(vec![format!(
                    "{}:{MOAT_IN_CONTAINER}:ro",
                    relay_binary.display()
                )]),
            )
        }
    };
    GuardRole {
        entrypoint,
        env,
        binds,
    }
}

/// Where the guard sees the directory of the run's endpoint socket.
const ENDPOINTS_IN_GUARD: &str = "/moat-endpoints";

/// The guard's way in to the run's endpoints (`ports:`): the directory
/// of the endpoint socket, mounted into the guard only, and the relay's
/// arguments to serve it. The directory is created open to all: the
/// guard's root is not the caller on the host (rootful engines) and has no
/// `CAP_DAC_OVERRIDE`; the run's storage around it is the caller's only.
fn endpoint_relay(
    socket: &std::path::Path,
    ports: &[u16],
) -> Result<(String, Vec<String>), DockerError> {
    use std::os::unix::fs::PermissionsExt as _;
    let (Some(dir), Some(file)) = (socket.parent(), socket.file_name()) else {
        return Err(DockerError::InvalidSpec {
            message: format!("the endpoint socket {} has no directory", socket.display()),
        });
    };
    let io = |e: std::io::Error| DockerError::Io {
        context: format!("preparing the endpoint directory {}", dir.display()),
        error: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).map_err(io)?;
    let in_guard = std::path::Path::new(ENDPOINTS_IN_GUARD).join(file);
    let mut args = vec![
        "--endpoint-socket".to_owned(),
        in_guard.display().to_string(),
    ];
    for port in ports {
        args.extend(["--endpoint-port".to_owned(), port.to_string()]);
    }
    Ok((format!("{}:{ENDPOINTS_IN_GUARD}", dir.display()), args))
}

impl DockerRuntime {
    /// Creates the network guard (runc, NET_ADMIN; its entrypoint applies
    /// the firewall in its network namespace, then runs only `sleep`, or
    /// the capture relay, which serves as `nobody`); [`Self::start_guard`]
    /// starts it.
    pub(crate) async fn create_guard(
        &self,
        spec: &ContainerSpec,
        proxy_host: &str,
        proxy_port: u16,
        capture: Option<(&moat_capture::ProxyAuthorization, &PathBuf)>,
        dind: Option<&crate::dind::Dind>,
    ) -> Result<String, DockerError> {
        let name = format!("{}-netguard", spec.container_name());
        let GuardRole {
            mut entrypoint,
            mut env,
            mut binds,
        } = guard_role(proxy_host, proxy_port, capture);
        if let Some((socket, ports)) = &spec.endpoints {
            if capture.is_none() {
                return Err(DockerError::InvalidSpec {
                    message:
                        "endpoints (ports:) need the network guard's relay (a captured network)"
                            .into(),
                });
            }
            let (bind, args) = endpoint_relay(socket, ports)?;
            binds.get_or_insert_with(Vec::new).push(bind);
            entrypoint.extend(args);
        }
        if let Some(d) = dind {
            env.get_or_insert_with(Vec::new)
                .push(format!("MOAT_DIRECT_NET={}", d.subnet));
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(entrypoint),
            cmd: Some(Vec::new()),
            // The firewall needs root here; the relay then drops to nobody
            // once its sockets are bound.
            user: Some("0:0".to_owned()),
            env,
            hostname: Some(spec.hostname.clone()),
            labels: Some(labels_for(spec, "netguard")),
            host_config: Some(HostConfig {
                binds,
                runtime: Some("runc".into()),
                network_mode: self.own_network_mode(),
                // The workload's /etc/hosts is the guard's; sidecars
                // share its loopback.
                extra_hosts: Some(self.guard_hosts(spec, dind)),
                cap_drop: Some(vec!["ALL".into()]),
                // SETUID/SETGID: the capture relay drops to nobody.
                cap_add: Some(
                    ["NET_ADMIN", "NET_RAW", "SETUID", "SETGID"]
                        .map(String::from)
                        .to_vec(),
                ),
                security_opt: Some(vec!["no-new-privileges".into()]),
                memory: Some(32 * 1024 * 1024),
                // Removed by the engine once it exits (see
                // `DockerRuntime::remove`), without moat waiting for it.
                auto_remove: Some(true),
                ulimits: self.container_ulimits(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .create_named(&name, body)
            .await
            .map_err(|e| DockerError::engine(format!("creating the network guard {name}"), e))?;
        Ok(created)
    }

    /// The guard's `/etc/hosts` entries: the host gateway under both its
    /// names, each sidecar on loopback, the dind daemon.
    fn guard_hosts(&self, spec: &ContainerSpec, dind: Option<&crate::dind::Dind>) -> Vec<String> {
        [
            self.host_gateway_entry(),
            format!(
                "{}:{}",
                moat_capture::HOST_GATEWAY_NAME,
                moat_capture::HOST_GATEWAY_ADDR
            ),
        ]
        .into_iter()
        .chain(
            spec.sidecars
                .iter()
                .map(|s| format!("{}:127.0.0.1", s.name)),
        )
        .chain(dind.map(|d| format!("{}:{}", crate::dind::DIND_HOST, d.address)))
        .collect()
    }

    /// Starts the guard and reads its output until [`GUARD_READY`]; when it
    /// exits first, its output (and exit code) is the error.
    pub(crate) async fn start_guard(&self, id: &str) -> Result<(), DockerError> {
        self.launch_guard(id).await?.ready().await
    }

    /// Starts the guard; [`LaunchedGuard::ready`] then waits until it is
    /// ready.
    pub(crate) async fn launch_guard(&self, id: &str) -> Result<LaunchedGuard, DockerError> {
        let setup_failed = |cause: String| DockerError::FirewallSetup { cause };
        // Attached before the start, so that no line is missed.
        let AttachContainerResults { output, .. } = self
            .docker
            .attach_container(
                id,
                Some(
                    AttachContainerOptionsBuilder::new()
                        .stdout(true)
                        .stderr(true)
                        .stream(true)
                        .build(),
                ),
            )
            .await
            .map_err(|e| setup_failed(format!("attaching to the network guard: {e}")))?;
        // Its exit code, should it exit: waited for from before the start,
        // since an auto-removing guard may be gone once its output ends.
        let exit_code = {
            let options = WaitContainerOptionsBuilder::new()
                .condition("removed")
                .build();
            let mut wait = self.docker.wait_container(id, Some(options));
            tokio::spawn(async move {
                match wait.next().await {
                    Some(Ok(response)) => Some(response.status_code),
                    Some(Err(bollard::errors::Error::DockerContainerWaitError {
                        code, ..
                    })) => Some(code),
                    _ => None,
                }
            })
        };
        let abort_wait = exit_code.abort_handle();
        if let Err(e) = self
            .docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
        {
            abort_wait.abort();
            return Err(setup_failed(format!("starting the network guard: {e}")));
        }
        Ok(LaunchedGuard { output, exit_code })
    }
}

/// A guard's output, as the engine's attach streams it.
type GuardOutput = std::pin::Pin<
    Box<
        dyn futures_util::Stream<
                Item = Result<bollard::container::LogOutput, bollard::errors::Error>,
            > + Send,
    >,
>;

/// A started network guard, not known to be ready yet.
pub(crate) struct LaunchedGuard {
    output: GuardOutput,
    exit_code: tokio::task::JoinHandle<Option<i64>>,
}

impl LaunchedGuard {
    /// Reads the guard's output until [`GUARD_READY`]; when it exits first,
    /// its output (and exit code) is the error.
    pub(crate) async fn ready(self) -> Result<(), DockerError> {
        let setup_failed = |cause: String| DockerError::FirewallSetup { cause };
        let LaunchedGuard {
            mut output,
            exit_code,
        } = self;
        let abort_wait = exit_code.abort_handle();
        let mut said = String::new();
        let ready = tokio::time::timeout(GUARD_START_TIMEOUT, async {
            while let Some(chunk) = output.next().await {
                match chunk {
                    Ok(chunk) => said.push_str(&String::from_utf8_lossy(&chunk.into_bytes())),
                    Err(_) => break,
                }
                if said.lines().any(|l| l == GUARD_READY) {
                    return true;
                }
            }
            false
        })
        .await;
        if ready != Ok(false) {
            abort_wait.abort();
        }
        match ready {
            Ok(true) => Ok(()),
            Err(_) => Err(setup_failed(format!(
                "the network guard did not get ready within {} s: {}",
                GUARD_START_TIMEOUT.as_secs(),
                said.trim()
            ))),
            Ok(false) => {
                let code = tokio::time::timeout(GUARD_EXIT_WAIT, exit_code)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten();
                let said = said.trim();
                let exit = code
                    .map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default();
                Err(setup_failed(if code == Some(127) && said.is_empty() {
                    "the image has no shell or iptables".to_owned()
                } else if said.is_empty() {
                    format!("the network guard exited{exit}; can the image run the moat binary?")
                } else {
                    format!("{said}{exit}")
                }))
            }
        }
    }
}

/// The readiness of a guard started with its workload, watched on the
/// driver's runtime from the start on; taken once, by the workload's start.
#[derive(Clone)]
pub(crate) struct PendingGuard(std::sync::Arc<std::sync::Mutex<Option<ReadinessWatch>>>);

/// The task reading a guard's output until it is ready.
type ReadinessWatch = tokio::task::JoinHandle<Result<(), DockerError>>;

impl std::fmt::Debug for PendingGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingGuard")
    }
}

impl PendingGuard {
    /// Watches `guard` until it is ready (or has failed).
    pub(crate) fn watch(guard: LaunchedGuard) -> PendingGuard {
        PendingGuard(std::sync::Arc::new(std::sync::Mutex::new(Some(
            tokio::spawn(guard.ready()),
        ))))
    }

    /// Waits for the guard's readiness (once; later calls return at once).
    pub(crate) async fn ready(&self) -> Result<(), DockerError> {
        let watch = match self.0.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        match watch {
            None => Ok(()),
            Some(watch) => watch.await.unwrap_or_else(|e| {
                Err(DockerError::FirewallSetup {
                    cause: format!("watching the network guard: {e}"),
                })
            }),
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        // The last handle gone (the run failed before its start): the
        // watch has nobody to tell.
        if std::sync::Arc::strong_count(&self.0) == 1 {
            if let Ok(mut slot) = self.0.lock() {
                if let Some(watch) = slot.take() {
                    watch.abort();
                }
            }
        }
    }
}
