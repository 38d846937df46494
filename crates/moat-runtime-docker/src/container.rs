//! Containers: the spec, their life cycle, output, exit codes, and the
//! strict network policy (see the crate documentation for its design).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use bollard::container::{AttachContainerResults, LogOutput};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::connect::{DockerRuntime, GVISOR_RUNTIME};
use crate::error::DockerError;

/// Where the project directory appears in the container (also its cwd).
pub const WORKSPACE_IN_CONTAINER: &str = "/workspace";

/// Host name under which the container reaches the host (the bridge
/// gateway): every container gets `host.docker.internal:host-gateway`.
pub const HOST_GATEWAY_NAME: &str = "host.docker.internal";

/// Label holding the run id.
pub const LABEL_RUN_ID: &str = "moat.run-id";
/// Label marking everything moat created (`moat.managed=true`).
pub const LABEL_MANAGED: &str = "moat.managed";
/// Label telling the workload (`workload`) from its network guard
/// (`netguard`) and its service sidecars (`service`).
pub const LABEL_ROLE: &str = "moat.role";

/// Which OCI runtime runs the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxRuntime {
    /// gVisor: the default on Linux. `runtime` is the name under which it
    /// is registered with dockerd, normally [`GVISOR_RUNTIME`].
    Gvisor {
        /// The registered OCI runtime name.
        runtime: String,
    },
    /// Plain runc (`--no-sandbox`): the caller prints
    /// [`crate::NO_SANDBOX_WARNING`].
    Runc,
}

impl SandboxRuntime {
    /// gVisor under its usual name.
    pub fn gvisor() -> Self {
        SandboxRuntime::Gvisor {
            runtime: GVISOR_RUNTIME.to_owned(),
        }
    }

    /// gVisor on Linux; runc elsewhere (Docker Desktop's VM has no runsc).
    pub fn default_for_host() -> Self {
        if cfg!(target_os = "linux") {
            SandboxRuntime::gvisor()
        } else {
            SandboxRuntime::Runc
        }
    }

    pub(crate) fn oci_name(&self) -> &str {
        match self {
            SandboxRuntime::Gvisor { runtime } => runtime,
            SandboxRuntime::Runc => "runc",
        }
    }
}

/// Network access of the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkPolicy {
    /// Docker's default bridge: everything is reachable; the caller sets
    /// the proxy environment variables and nothing is enforced.
    Permissive,
    /// Only the proxy is reachable (plus loopback and the DNS servers of
    /// the container's resolv.conf); every other connection is refused.
    Strict {
        /// Address of the proxy as seen from the container: an IP, or a
        /// name such as [`HOST_GATEWAY_NAME`] (resolved inside, once, when
        /// the rules are applied).
        proxy_host: String,
        /// TCP port of the proxy.
        proxy_port: u16,
    },
    /// The strict firewall, plus transparent capture: the guard runs
    /// moat's capture relay (`moat __capture-relay`, from `relay_binary`
    /// on the host), DNS and connections to ports 80 and 443 are
    /// redirected to it, and it hands them to the proxy as `CONNECT`s with
    /// `authorization` (see `moat-capture`). Clients that ignore the proxy
    /// variables are then injected, policed and traced like the others.
    Captured {
        /// As for [`NetworkPolicy::Strict`].
        proxy_host: String,
        /// As for [`NetworkPolicy::Strict`].
        proxy_port: u16,
        /// The run's `Proxy-Authorization` value.
        authorization: moat_capture::ProxyAuthorization,
        /// Host path of the moat binary run by the guard; it must run in
        /// the container's image (same libc).
        relay_binary: PathBuf,
    },
}

/// Where the capture relay listens inside the guard's network namespace.
pub const CAPTURE_RELAY_PORT: u16 = 15001;
/// Where its DNS responder listens.
pub const CAPTURE_DNS_PORT: u16 = 15353;
/// Where the guard sees the moat binary.
const RELAY_IN_GUARD: &str = "/run/moat/bin/moat";

/// How long the network guard may take to apply its firewall and start
/// its relay.
const GUARD_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub use moat_sandbox::{BindMount, InjectedFile};

/// One container run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Run id: names the container `moat-<run_id>` and labels it
    /// `moat.run-id`. Letters, digits, `_`, `.` and `-`.
    pub run_id: String,
    /// Image (usually [`crate::ResolvedImage::tag`]).
    pub image: String,
    /// Host project directory, bound read-write at `/workspace` (the cwd).
    pub workspace: PathBuf,
    /// Extra binds.
    pub mounts: Vec<BindMount>,
    /// Files uploaded before start.
    pub files: Vec<InjectedFile>,
    /// Environment of the command (on top of the image's `PATH`, `HOME`).
    pub env: Vec<(String, String)>,
    /// Program and arguments.
    pub command: Vec<String>,
    /// `uid:gid` to run as; `None` keeps the image's user (`moatuser`).
    pub user: Option<(u32, u32)>,
    /// Memory limit in MiB.
    pub memory_mb: Option<u64>,
    /// CPU limit (e.g. 1.5).
    pub cpus: Option<f64>,
    /// Allocate a TTY (stdout and stderr are then one stream).
    pub tty: bool,
    /// Keep stdin open for [`DockerRuntime::attach`].
    pub interactive: bool,
    /// OCI runtime of the workload.
    pub runtime: SandboxRuntime,
    /// Network policy.
    pub network: NetworkPolicy,
    /// Host name inside.
    pub hostname: String,
    /// More labels (on top of `moat.run-id`, `moat.managed`, `moat.role`).
    pub labels: Vec<(String, String)>,
    /// Service sidecars, started in the guard's network namespace before
    /// the workload (their images already mapped and present).
    pub sidecars: Vec<moat_sandbox::Sidecar>,
    /// Where a failed sidecar's output is saved, for `moat logs`.
    pub sidecar_logs: Option<PathBuf>,
    /// Supplementary groups of the command (the engine socket's, for
    /// `docker:host`).
    pub groups: Vec<u32>,
}

impl ContainerSpec {
    /// A spec with the defaults: gVisor on Linux, permissive network, the
    /// image's user, no limits, no TTY.
    pub fn new(
        run_id: impl Into<String>,
        image: impl Into<String>,
        workspace: impl Into<PathBuf>,
        command: Vec<String>,
    ) -> Self {
        ContainerSpec {
            run_id: run_id.into(),
            image: image.into(),
            workspace: workspace.into(),
            mounts: Vec::new(),
            files: Vec::new(),
            env: Vec::new(),
            command,
            user: None,
            memory_mb: None,
            cpus: None,
            tty: false,
            interactive: false,
            runtime: SandboxRuntime::default_for_host(),
            network: NetworkPolicy::Permissive,
            hostname: "moat".to_owned(),
            labels: Vec::new(),
            sidecars: Vec::new(),
            sidecar_logs: None,
            groups: Vec::new(),
        }
    }

    /// Checks what can be checked before talking to the engine.
    pub fn validate(&self) -> Result<(), DockerError> {
        let invalid = |message: String| Err(DockerError::InvalidSpec { message });
        if self.run_id.is_empty()
            || self.run_id.len() > 64
            || !self
                .run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return invalid(format!(
                "run id {:?} must be 1-64 letters, digits, '_', '.' or '-'",
                self.run_id
            ));
        }
        if self.image.is_empty() {
            return invalid("the image is empty".into());
        }
        if self.command.is_empty() || self.command[0].is_empty() {
            return invalid("the command is empty: give at least a program name".into());
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return invalid("a command argument contains a NUL byte".into());
        }
        if !self.workspace.is_absolute() || !self.workspace.is_dir() {
            return invalid(format!(
                "the workspace must be an existing absolute directory: {}",
                self.workspace.display()
            ));
        }
        for m in &self.mounts {
            if !m.source.is_absolute() || !m.source.exists() {
                return invalid(format!(
                    "bind source must be an existing absolute path: {}",
                    m.source.display()
                ));
            }
            if !clean_absolute(&m.target) || m.target.starts_with(WORKSPACE_IN_CONTAINER) {
                return invalid(format!(
                    "bind target must be an absolute path other than / and outside /workspace: {}",
                    m.target.display()
                ));
            }
            for p in [&m.source, &m.target] {
                if p.to_string_lossy().contains(':') {
                    return invalid(format!("bind paths may not contain ':': {}", p.display()));
                }
            }
        }
        for f in &self.files {
            let under_host = f.path_in_sandbox.starts_with(WORKSPACE_IN_CONTAINER)
                || self
                    .mounts
                    .iter()
                    .any(|m| f.path_in_sandbox.starts_with(&m.target));
            if !clean_absolute(&f.path_in_sandbox) || under_host {
                return invalid(format!(
                    "injected file {} must be an absolute path without '.' or '..', outside /workspace and the binds",
                    f.path_in_sandbox.display()
                ));
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return invalid(format!("invalid environment variable name or value: {k:?}"));
            }
        }
        if self.memory_mb == Some(0) {
            return invalid("memory_mb must be positive".into());
        }
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c > 0.0) {
                return invalid(format!("cpus must be a positive number, not {c}"));
            }
        }
        if let NetworkPolicy::Strict {
            proxy_host,
            proxy_port,
        } = &self.network
        {
            if *proxy_port == 0
                || proxy_host.is_empty()
                || !proxy_host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
            {
                return invalid(format!("invalid proxy address {proxy_host}:{proxy_port}"));
            }
        }
        if self.hostname.is_empty()
            || self.hostname.len() > 63
            || !self
                .hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return invalid(format!("invalid hostname {:?}", self.hostname));
        }
        Ok(())
    }

    /// The container's name.
    pub fn container_name(&self) -> String {
        format!("moat-{}", self.run_id)
    }
}

/// `172.17.0.0/16` → `172.17.0.1` (IPv4 only).
fn first_host(subnet: &str) -> Option<String> {
    let (addr, len) = subnet.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if !(1..=30).contains(&len) {
        return None;
    }
    let mask = u32::MAX << (32 - len);
    Some(std::net::Ipv4Addr::from((u32::from(addr) & mask) + 1).to_string())
}

fn clean_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path.components().count() > 1
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// A created container (and its network guard under the strict policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Engine id of the workload container.
    pub id: String,
    /// Its name (`moat-<run_id>`).
    pub name: String,
    /// Engine id of the network guard holding the firewalled network
    /// namespace, under [`NetworkPolicy::Strict`].
    pub guard_id: Option<String>,
    /// Whether it was created with a TTY.
    pub tty: bool,
    /// Engine ids of its service sidecars.
    pub sidecar_ids: Vec<String>,
}

/// A container carrying `moat.managed=true`, as found by
/// [`DockerRuntime::list_managed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    /// Engine id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// `moat.run-id`.
    pub run_id: Option<String>,
    /// `moat.role`: `workload` or `netguard`.
    pub role: Option<String>,
    /// Image name.
    pub image: String,
    /// Engine state (`running`, `exited`, `created`...).
    pub state: String,
}

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
  echo "-A OUTPUT -j REJECT"
  echo "-A INPUT -i lo -j ACCEPT"
  echo "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
  echo "COMMIT"
  if [ -n "${3:-}" ]; then
    echo "*nat"
    echo ":OUTPUT ACCEPT [0:0]"
    echo "-A OUTPUT -d 127.0.0.0/8 -j RETURN"
    echo "-A OUTPUT -d $proxy_ip -j RETURN"
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

fn labels_for(spec: &ContainerSpec, role: &str) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
    labels.insert(LABEL_RUN_ID.into(), spec.run_id.clone());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_ROLE.into(), role.into());
    labels
}

/// Writes one chunk of a container's output where it belongs (a TTY's
/// output is all `stdout`), flushed so prompts show.
async fn write_chunk<O, E>(chunk: LogOutput, stdout: &mut O, stderr: &mut E) -> std::io::Result<()>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    match chunk {
        LogOutput::StdErr { message } => {
            stderr.write_all(&message).await?;
            stderr.flush().await
        }
        LogOutput::StdOut { message } | LogOutput::Console { message } => {
            stdout.write_all(&message).await?;
            stdout.flush().await
        }
        LogOutput::StdIn { .. } => Ok(()),
    }
}

fn tar_files(files: &[InjectedFile]) -> Result<Vec<u8>, DockerError> {
    let mut builder = tar::Builder::new(Vec::new());
    for f in files {
        let relative = f
            .path_in_sandbox
            .strip_prefix("/")
            .unwrap_or(&f.path_in_sandbox);
        let mut header = tar::Header::new_gnu();
        header.set_size(f.contents.len() as u64);
        header.set_mode(f.mode & 0o7777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, relative, f.contents.as_slice())
            .map_err(|e| DockerError::io(format!("packing {}", f.path_in_sandbox.display()), e))?;
    }
    builder
        .into_inner()
        .map_err(|e| DockerError::io("packing injected files", e))
}

/// `(name, resource, ceiling)` of the rlimits moat sets on Podman
/// containers.
const PODMAN_RLIMITS: [(&str, rustix::process::Resource, u64); 2] = [
    ("nofile", rustix::process::Resource::Nofile, 65536),
    ("nproc", rustix::process::Resource::Nproc, 4096),
];

/// Where a Podman container's slirp4netns network reaches the host's
/// loopback.
const SLIRP_HOST_LOOPBACK: &str = "10.0.2.2";

impl DockerRuntime {
    /// The network of a container that does not join another's: Docker's
    /// default bridge; for Podman, slirp4netns with the host's loopback
    /// reachable. Podman's bridge (netavark) exists only while a container
    /// uses it, so the proxy could not listen on its gateway before the
    /// first container starts; through slirp4netns the container reaches
    /// the proxy where it already listens (and the guard's firewall lets
    /// it reach nothing else there).
    fn own_network_mode(&self) -> Option<String> {
        (self.engine_kind() == crate::connect::Engine::Podman)
            .then(|| "slirp4netns:allow_host_loopback=true".to_owned())
    }

    /// The `/etc/hosts` entry naming the host for the container.
    fn host_gateway_entry(&self) -> String {
        match self.engine_kind() {
            crate::connect::Engine::Docker => format!("{HOST_GATEWAY_NAME}:host-gateway"),
            crate::connect::Engine::Podman => format!("{HOST_GATEWAY_NAME}:{SLIRP_HOST_LOOPBACK}"),
        }
    }

    /// Host addresses the proxy must listen on for containers to reach
    /// it: Docker's bridge gateway; none for Podman, whose containers
    /// reach the host's loopback.
    pub async fn proxy_listen_addresses(&self) -> Result<Vec<String>, DockerError> {
        match self.engine_kind() {
            crate::connect::Engine::Docker => {
                Ok(self.bridge_gateway().await?.into_iter().collect())
            }
            crate::connect::Engine::Podman => Ok(Vec::new()),
        }
    }

    /// Podman gives containers rlimits of its own choosing (nofile
    /// 1048576...), which the OCI runtime cannot set above the caller's
    /// hard limits without CAP_SYS_RESOURCE (`error setting rlimit type 7:
    /// operation not permitted`). Explicit ones, no higher than ours, always
    /// apply. Docker inherits its daemon's, which are fine.
    pub(crate) fn container_ulimits(&self) -> Option<Vec<bollard::models::ResourcesUlimits>> {
        if self.engine_kind() != crate::connect::Engine::Podman {
            return None;
        }
        Some(
            PODMAN_RLIMITS
                .iter()
                .map(|(name, resource, ceiling)| {
                    let hard = rustix::process::getrlimit(*resource)
                        .maximum
                        .unwrap_or(u64::MAX);
                    let limit = i64::try_from((*ceiling).min(hard)).unwrap_or(i64::MAX);
                    bollard::models::ResourcesUlimits {
                        name: Some((*name).to_owned()),
                        soft: Some(limit),
                        hard: Some(limit),
                    }
                })
                .collect(),
        )
    }

    /// Creates the container (not started): checks the OCI runtime, sets up
    /// the network guard and its firewall under the strict policy, uploads
    /// the injected files. On failure nothing is left behind.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<Container, DockerError> {
        spec.validate()?;
        if let SandboxRuntime::Gvisor { runtime } = &spec.runtime {
            self.require_gvisor(runtime).await?;
        }
        let guard_id = match &spec.network {
            NetworkPolicy::Permissive if !spec.sidecars.is_empty() => {
                return Err(DockerError::InvalidSpec {
                    message:
                        "service sidecars need the network guard (a strict or captured network)"
                            .into(),
                })
            }
            NetworkPolicy::Permissive => None,
            NetworkPolicy::Strict {
                proxy_host,
                proxy_port,
            } => Some(
                self.create_guard(spec, proxy_host, *proxy_port, None)
                    .await?,
            ),
            NetworkPolicy::Captured {
                proxy_host,
                proxy_port,
                authorization,
                relay_binary,
            } => Some(
                self.create_guard(
                    spec,
                    proxy_host,
                    *proxy_port,
                    Some((authorization, relay_binary)),
                )
                .await?,
            ),
        };
        let sidecar_ids = match &guard_id {
            Some(g) if !spec.sidecars.is_empty() => {
                match self
                    .start_sidecars(spec, g, spec.sidecar_logs.as_deref())
                    .await
                {
                    Ok(ids) => ids,
                    Err(e) => {
                        self.remove_by_id(g).await.ok();
                        return Err(e);
                    }
                }
            }
            _ => Vec::new(),
        };
        match self.create_workload(spec, guard_id.as_deref()).await {
            Ok(id) => Ok(Container {
                id,
                name: spec.container_name(),
                guard_id,
                tty: spec.tty,
                sidecar_ids,
            }),
            Err(e) => {
                for id in sidecar_ids.iter().chain(&guard_id) {
                    self.remove_by_id(id).await.ok();
                }
                Err(e)
            }
        }
    }

    async fn create_workload(
        &self,
        spec: &ContainerSpec,
        guard: Option<&str>,
    ) -> Result<String, DockerError> {
        let mut binds = vec![format!(
            "{}:{WORKSPACE_IN_CONTAINER}",
            spec.workspace.display()
        )];
        for m in &spec.mounts {
            let mode = if m.read_only { ":ro" } else { "" };
            binds.push(format!(
                "{}:{}{mode}",
                m.source.display(),
                m.target.display()
            ));
        }
        let (network_mode, extra_hosts) = match guard {
            // /etc/hosts (with host.docker.internal) comes from the guard.
            Some(g) => (Some(format!("container:{g}")), None),
            None => (
                self.own_network_mode(),
                Some(vec![self.host_gateway_entry()]),
            ),
        };
        let host_config = HostConfig {
            binds: Some(binds),
            memory: spec
                .memory_mb
                .map(|m| (m as i64).saturating_mul(1024 * 1024)),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            runtime: Some(spec.runtime.oci_name().to_owned()),
            network_mode,
            extra_hosts,
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            ulimits: self.container_ulimits(),
            group_add: (!spec.groups.is_empty())
                .then(|| spec.groups.iter().map(u32::to_string).collect()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: Some(WORKSPACE_IN_CONTAINER.into()),
            user: spec.user.map(|(u, g)| format!("{u}:{g}")),
            hostname: guard.is_none().then(|| spec.hostname.clone()),
            labels: Some(labels_for(spec, "workload")),
            tty: Some(spec.tty),
            open_stdin: Some(spec.interactive),
            stdin_once: Some(spec.interactive),
            attach_stdin: Some(spec.interactive),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = spec.container_name();
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| {
                DockerError::engine(format!("creating container {name} from {}", spec.image), e)
            })?;
        if !spec.files.is_empty() {
            let upload = async {
                let archive = tar_files(&spec.files)?;
                self.docker
                    .upload_to_container(
                        &created.id,
                        Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                        bollard::body_full(archive.into()),
                    )
                    .await
                    .map_err(|e| {
                        DockerError::engine("putting the injected files into the container", e)
                    })
            };
            if let Err(e) = upload.await {
                self.remove_by_id(&created.id).await.ok();
                return Err(e);
            }
        }
        Ok(created.id)
    }

    /// Starts the network guard (runc, NET_ADMIN; its entrypoint applies
    /// the firewall in its network namespace, then runs only `sleep`, or
    /// the capture relay, which serves as `nobody`) and waits until it says
    /// the workload may start.
    async fn create_guard(
        &self,
        spec: &ContainerSpec,
        proxy_host: &str,
        proxy_port: u16,
        capture: Option<(&moat_capture::ProxyAuthorization, &PathBuf)>,
    ) -> Result<String, DockerError> {
        let name = format!("{}-netguard", spec.container_name());
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
                entrypoint.extend(["", "", "sleep", "2147483647"].map(String::from));
                (None, None)
            }
            Some((authorization, relay_binary)) => {
                entrypoint.extend([
                    CAPTURE_RELAY_PORT.to_string(),
                    CAPTURE_DNS_PORT.to_string(),
                    RELAY_IN_GUARD.to_owned(),
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
                        "{}:{RELAY_IN_GUARD}:ro",
                        relay_binary.display()
                    )]),
                )
            }
        };
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
                extra_hosts: Some(
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
                    .collect(),
                ),
                cap_drop: Some(vec!["ALL".into()]),
                // SETUID/SETGID: the capture relay drops to nobody.
                cap_add: Some(
                    ["NET_ADMIN", "NET_RAW", "SETUID", "SETGID"]
                        .map(String::from)
                        .to_vec(),
                ),
                security_opt: Some(vec!["no-new-privileges".into()]),
                memory: Some(32 * 1024 * 1024),
                ulimits: self.container_ulimits(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| DockerError::engine(format!("creating the network guard {name}"), e))?;
        let id = created.id;
        match self.start_guard(&id).await {
            Ok(()) => Ok(id),
            Err(e) => {
                self.remove_by_id(&id).await.ok();
                Err(e)
            }
        }
    }

    /// Starts the guard and reads its output until [`GUARD_READY`]; when it
    /// exits first, its output (and exit code) is the error.
    async fn start_guard(&self, id: &str) -> Result<(), DockerError> {
        let setup_failed = |cause: String| DockerError::FirewallSetup { cause };
        // Attached before the start, so that no line is missed.
        let AttachContainerResults { mut output, .. } = self
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
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| setup_failed(format!("starting the network guard: {e}")))?;
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
        match ready {
            Ok(true) => Ok(()),
            Err(_) => Err(setup_failed(format!(
                "the network guard did not get ready within {} s: {}",
                GUARD_START_TIMEOUT.as_secs(),
                said.trim()
            ))),
            Ok(false) => {
                let code = self
                    .docker
                    .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>)
                    .next()
                    .await
                    .and_then(|r| r.ok())
                    .map(|r| r.status_code)
                    .unwrap_or(-1);
                let said = said.trim();
                Err(setup_failed(if code == 127 && said.is_empty() {
                    "the image has no shell or iptables".to_owned()
                } else if said.is_empty() {
                    format!("the network guard exited (exit code {code}); can the image run the moat binary?")
                } else {
                    format!("{said} (exit code {code})")
                }))
            }
        }
    }

    /// Attaches to the container's streams; call before [`Self::start`] so
    /// that no output is missed. For interactive and TTY runs.
    pub async fn attach(
        &self,
        container: &Container,
    ) -> Result<AttachContainerResults, DockerError> {
        let options = AttachContainerOptionsBuilder::new()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        self.docker
            .attach_container(&container.id, Some(options))
            .await
            .map_err(|e| DockerError::engine(format!("attaching to {}", container.name), e))
    }

    /// Attaches to the container's standard output and error only; call
    /// before [`Self::start`] and hand the result to [`Self::drain_output`].
    /// Unlike following the engine's log, the attach stream carries every
    /// byte the command writes, a last line without a newline included,
    /// and ends only when the container has closed both streams.
    pub async fn attach_output(
        &self,
        container: &Container,
    ) -> Result<AttachContainerResults, DockerError> {
        let options = AttachContainerOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        self.docker
            .attach_container(&container.id, Some(options))
            .await
            .map_err(|e| DockerError::engine(format!("attaching to {}", container.name), e))
    }

    /// Copies an output-only attach ([`Self::attach_output`]) to the
    /// writers, flushing each chunk, until the stream ends: when this
    /// returns, everything the container wrote has been written.
    pub async fn drain_output<O, E>(
        &self,
        attached: AttachContainerResults,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<(), DockerError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let mut output = attached.output;
        while let Some(item) = output.next().await {
            let chunk =
                item.map_err(|e| DockerError::engine("reading the container's output", e))?;
            write_chunk(chunk, stdout, stderr)
                .await
                .map_err(|e| DockerError::io("writing the container's output", e))?;
        }
        stdout
            .flush()
            .await
            .and(stderr.flush().await)
            .map_err(|e| DockerError::io("writing the container's output", e))
    }

    /// Sends what arrives on `stdin` (closed channel: end of input) into
    /// an attached container and copies its output to the writers (with a
    /// TTY everything goes to `stdout`) until the container closes its
    /// streams. The caller reads its own stdin (a blocking read has no
    /// place on the async runtime, which must be able to shut down).
    pub async fn pump_attached<O, E>(
        &self,
        attached: AttachContainerResults,
        mut stdin: tokio::sync::mpsc::Receiver<Vec<u8>>,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<(), DockerError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let mut input = attached.input;
        let feeder = tokio::spawn(async move {
            while let Some(bytes) = stdin.recv().await {
                if input.write_all(&bytes).await.is_err() || input.flush().await.is_err() {
                    return;
                }
            }
            let _ = input.shutdown().await;
        });
        let mut output = attached.output;
        let mut result = Ok(());
        while let Some(item) = output.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => {
                    result = Err(DockerError::engine(
                        "reading an attached container's output",
                        e,
                    ));
                    break;
                }
            };
            if let Err(e) = write_chunk(chunk, stdout, stderr).await {
                result = Err(DockerError::io("writing the container's output", e));
                break;
            }
        }
        feeder.abort();
        result
    }

    /// Sets the size of a TTY container's terminal.
    pub async fn resize(
        &self,
        container: &Container,
        rows: u16,
        cols: u16,
    ) -> Result<(), DockerError> {
        let options = bollard::query_parameters::ResizeContainerTTYOptionsBuilder::new()
            .h(i32::from(rows))
            .w(i32::from(cols))
            .build();
        self.docker
            .resize_container_tty(&container.id, options)
            .await
            .map_err(|e| {
                DockerError::engine(format!("resizing the terminal of {}", container.name), e)
            })
    }

    /// Starts a created container.
    pub async fn start(&self, container: &Container) -> Result<(), DockerError> {
        self.docker
            .start_container(
                &container.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| DockerError::engine(format!("starting {}", container.name), e))
    }

    /// Waits for the container to exit; returns its exit code as is.
    pub async fn wait(&self, container: &Container) -> Result<i64, DockerError> {
        let options = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut stream = self.docker.wait_container(&container.id, Some(options));
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(DockerError::engine(
                format!("waiting for {}", container.name),
                e,
            )),
            None => Err(DockerError::InvalidSpec {
                message: format!(
                    "the engine ended the wait for {} without an exit code",
                    container.name
                ),
            }),
        }
    }

    /// Stops the container (SIGTERM, then SIGKILL after `timeout_secs`) and
    /// its network guard.
    pub async fn stop(&self, container: &Container, timeout_secs: u32) -> Result<(), DockerError> {
        let t = i32::try_from(timeout_secs).unwrap_or(i32::MAX);
        let result = self
            .docker
            .stop_container(
                &container.id,
                Some(StopContainerOptionsBuilder::new().t(t).build()),
            )
            .await;
        for id in container.sidecar_ids.iter().chain(&container.guard_id) {
            self.docker
                .stop_container(id, Some(StopContainerOptionsBuilder::new().t(0).build()))
                .await
                .ok();
        }
        match result {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine(
                format!("stopping {}", container.name),
                e,
            )),
        }
    }

    /// Removes the container and its network guard (forcibly: running ones
    /// are killed).
    pub async fn remove(&self, container: &Container) -> Result<(), DockerError> {
        let mut result = self.remove_by_id(&container.id).await;
        // The guard last: the sidecars live in its network namespace.
        for id in container.sidecar_ids.iter().chain(&container.guard_id) {
            if let Err(e) = self.remove_by_id(id).await {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Forcibly removes one container by id or name (already gone is fine),
    /// e.g. an orphan found by [`Self::list_managed`].
    pub async fn remove_by_id(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine(format!("removing container {id}"), e)),
        }
    }

    /// Every container labelled `moat.managed=true`, running or not.
    pub async fn list_managed(&self) -> Result<Vec<ManagedContainer>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("label", vec![format!("{LABEL_MANAGED}=true")]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| DockerError::engine("listing moat containers", e))?;
        Ok(found
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                ManagedContainer {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_owned())
                        .unwrap_or_default(),
                    run_id: labels.get(LABEL_RUN_ID).cloned(),
                    role: labels.get(LABEL_ROLE).cloned(),
                    image: c.image.unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                }
            })
            .collect())
    }

    /// The gateway address of Docker's default bridge (what
    /// `host.docker.internal` resolves to inside): where the proxy must
    /// listen to be reachable from containers.
    pub async fn bridge_gateway(&self) -> Result<Option<String>, DockerError> {
        let network = self
            .docker
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .map_err(|e| DockerError::engine("inspecting the bridge network", e))?;
        let configs = network.ipam.and_then(|i| i.config).unwrap_or_default();
        if let Some(gateway) = configs.iter().find_map(|c| c.gateway.clone()) {
            return Ok(Some(gateway));
        }
        // The default bridge often lists only its subnet; its gateway
        // (docker0's address) is then the subnet's first host.
        Ok(configs
            .iter()
            .find_map(|c| c.subnet.as_deref().and_then(first_host)))
    }

    /// Runs a container to completion: create, start, copy its output,
    /// wait, remove (also on error). Returns the exit code.
    pub async fn run<O, E>(
        &self,
        spec: &ContainerSpec,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<i64, DockerError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let container = self.create(spec).await?;
        let result = async {
            let attached = self.attach_output(&container).await?;
            self.start(&container).await?;
            self.drain_output(attached, stdout, stderr).await?;
            self.wait(&container).await
        }
        .await;
        let removed = self.remove(&container).await;
        let code = result?;
        removed?;
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec::new("r1", "img", std::env::temp_dir(), vec!["true".into()])
    }

    #[test]
    fn first_host_of_subnet() {
        assert_eq!(first_host("172.17.0.0/16").as_deref(), Some("172.17.0.1"));
        assert_eq!(first_host("10.1.2.128/25").as_deref(), Some("10.1.2.129"));
        assert_eq!(first_host("fd00::/64"), None);
    }

    #[test]
    fn default_spec_is_valid() {
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn rejects_bad_specs() {
        let mut s = spec();
        s.run_id = "a/b".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.command.clear();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.files.push(InjectedFile {
            path_in_sandbox: "/workspace/x".into(),
            contents: vec![],
            mode: 0o644,
        });
        assert!(s.validate().is_err());
        let mut s = spec();
        s.files.push(InjectedFile {
            path_in_sandbox: "/etc/../x".into(),
            contents: vec![],
            mode: 0o644,
        });
        assert!(s.validate().is_err());
        let mut s = spec();
        s.network = NetworkPolicy::Strict {
            proxy_host: "h;x".into(),
            proxy_port: 1,
        };
        assert!(s.validate().is_err());
        let mut s = spec();
        s.cpus = Some(f64::NAN);
        assert!(s.validate().is_err());
    }

    #[test]
    fn injected_files_tar_has_relative_paths() {
        let tar = tar_files(&[InjectedFile {
            path_in_sandbox: "/etc/ssl/certs/moat-ca/ca.crt".into(),
            contents: b"pem".to_vec(),
            mode: 0o644,
        }])
        .unwrap_or_default();
        let mut archive = tar::Archive::new(tar.as_slice());
        let names: Vec<String> = archive
            .entries()
            .map(|es| {
                es.filter_map(Result::ok)
                    .filter_map(|e| e.path().ok().map(|p| p.display().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names, vec!["etc/ssl/certs/moat-ca/ca.crt".to_owned()]);
    }
}
