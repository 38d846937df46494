//! `docker:dind`: a Docker daemon of the run's own, in a sidecar.
//!
//! The daemon needs a privileged container, so it must not share the
//! sandbox's firewalled network namespace (a privileged process there
//! could rewrite the firewall). It gets a network of its own instead: an
//! engine network created per run with `internal: true` (no route out),
//! which the network guard also joins. The sandbox reaches the daemon as
//! `dind:2375` over that network, and nothing else: the daemon, and what
//! it runs, have no way out of the machine, and the daemon listens on
//! nothing else the host could reach.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
};

use crate::connect::DockerRuntime;
use crate::error::DockerError;
use crate::spec::{ContainerSpec, LABEL_MANAGED, LABEL_ROLE, LABEL_RUN_ID};

/// The daemon's host name in the sandbox.
pub const DIND_HOST: &str = "dind";

/// Its unencrypted API port (reachable only over the run's network).
pub const DIND_PORT: u16 = 2375;

/// The official image, mapped through the image map like every image.
pub const DIND_IMAGE: &str = "docker:dind";

/// The role label of the daemon's container.
pub const DIND_ROLE: &str = "dind";

/// How long the daemon may take to answer.
const DIND_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Every capability Linux 6 knows: 0 to 40.
const ALL_CAPS: u64 = (1 << 41) - 1;

/// A started daemon.
#[derive(Debug, Clone)]
pub(crate) struct Dind {
    /// Its container.
    pub(crate) container: String,
    /// The run's network.
    pub(crate) network: String,
    /// The network's subnet (`172.20.0.0/16`), reachable from the guard.
    pub(crate) subnet: String,
    /// The daemon's address on it.
    pub(crate) address: String,
}

/// The run's network name: `moat-<run id>`.
pub fn run_network_name(run_id: &str) -> String {
    format!("moat-{run_id}")
}

/// Capabilities missing from this process's bounding set: an engine on
/// the same host cannot grant them either, so `privileged` would fail
/// ("unable to apply caps"); the daemon then gets every other one.
fn missing_capabilities() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(ALL_CAPS);
    const NAMES: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) == 0)
        .map(|(_, name)| (*name).to_owned())
        .collect()
}

impl DockerRuntime {
    /// Creates the run's internal network and starts the daemon on it.
    /// On failure it removes what it created.
    pub(crate) async fn start_dind(
        &self,
        spec: &ContainerSpec,
        image: &str,
    ) -> Result<Dind, DockerError> {
        let failed = |cause: String| DockerError::ServiceStart {
            service: "docker:dind".into(),
            cause,
        };
        let network = run_network_name(&spec.run_id);
        let mut labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
        labels.insert(LABEL_RUN_ID.to_owned(), spec.run_id.clone());
        labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
        self.docker
            .create_network(NetworkCreateRequest {
                name: network.clone(),
                internal: Some(true),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| failed(format!("creating the network {network}: {e}")))?;
        match self.create_dind(spec, image, &network, labels).await {
            Ok(dind) => Ok(dind),
            Err(e) => {
                self.remove_by_id(&format!("moat-dind-{}", spec.run_id))
                    .await
                    .ok();
                self.remove_network(&network).await;
                Err(e)
            }
        }
    }

    async fn create_dind(
        &self,
        spec: &ContainerSpec,
        image: &str,
        network: &str,
        mut labels: HashMap<String, String>,
    ) -> Result<Dind, DockerError> {
        let failed = |cause: String| DockerError::ServiceStart {
            service: "docker:dind".into(),
            cause,
        };
        labels.insert(LABEL_ROLE.to_owned(), DIND_ROLE.to_owned());
        let missing = missing_capabilities();
        let host_config = if missing.is_empty() {
            HostConfig {
                privileged: Some(true),
                network_mode: Some(network.to_owned()),
                ..Default::default()
            }
        } else {
            HostConfig {
                cap_add: Some(vec!["ALL".to_owned()]),
                cap_drop: Some(missing),
                security_opt: Some(vec![
                    "seccomp=unconfined".to_owned(),
                    "apparmor=unconfined".to_owned(),
                ]),
                network_mode: Some(network.to_owned()),
                ..Default::default()
            }
        };
        let name = format!("moat-dind-{}", spec.run_id);
        let created = self
            .create_named(
                &name,
                ContainerCreateBody {
                    image: Some(image.to_owned()),
                    // The official image's contract: no TLS directory means
                    // tcp://0.0.0.0:2375 beside the Unix socket.
                    env: Some(vec!["DOCKER_TLS_CERTDIR=".to_owned()]),
                    cmd: Some(vec!["--storage-driver=vfs".to_owned()]),
                    labels: Some(labels),
                    host_config: Some(host_config),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed(format!("creating {name} from {image}: {e}")))?;
        self.docker
            .start_container(
                &created,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| failed(format!("starting {name}: {e}")))?;
        let inspect = self
            .docker
            .inspect_network(
                network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .map_err(|e| failed(format!("inspecting {network}: {e}")))?;
        let subnet = inspect
            .ipam
            .and_then(|ipam| ipam.config)
            .and_then(|configs| configs.into_iter().find_map(|c| c.subnet))
            .ok_or_else(|| failed(format!("{network} has no subnet")))?;
        let address = inspect
            .containers
            .and_then(|c| c.get(&created).and_then(|e| e.ipv4_address.clone()))
            .and_then(|cidr| cidr.split('/').next().map(str::to_owned))
            .ok_or_else(|| failed(format!("{name} has no address on {network}")))?;
        Ok(Dind {
            container: created,
            network: network.to_owned(),
            subnet,
            address,
        })
    }

    /// Joins the guard to the daemon's network (before the guard starts).
    pub(crate) async fn connect_guard(&self, dind: &Dind, guard: &str) -> Result<(), DockerError> {
        self.docker
            .connect_network(
                &dind.network,
                NetworkConnectRequest {
                    container: Some(guard.to_owned()),
                    endpoint_config: Some(EndpointSettings::default()),
                },
            )
            .await
            .map_err(|e| DockerError::ServiceStart {
                service: "docker:dind".into(),
                cause: format!("joining the guard to {}: {e}", dind.network),
            })
    }

    /// Waits until the daemon answers `docker version` inside its
    /// container.
    pub(crate) async fn dind_ready(
        &self,
        spec: &ContainerSpec,
        dind: &Dind,
    ) -> Result<(), DockerError> {
        let deadline = tokio::time::Instant::now() + DIND_READY_TIMEOUT;
        let check = ["docker".to_owned(), "version".to_owned()];
        loop {
            if let Some(code) = self.exit_code(&dind.container).await {
                return Err(DockerError::ServiceNotReady {
                    service: "docker:dind".into(),
                    cause: format!("its container exited (code {code}) before it was ready"),
                    log: self.log_tail(&dind.container, 15).await,
                    run_id: spec.run_id.clone(),
                });
            }
            let last = match self.exec(&dind.container, &check).await {
                Ok(outcome) if outcome.code == 0 => return Ok(()),
                Ok(outcome) => outcome.output,
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(DockerError::ServiceNotReady {
                    service: "docker:dind".into(),
                    cause: format!(
                        "`docker version` did not succeed within {} s (last answer: {})",
                        DIND_READY_TIMEOUT.as_secs(),
                        last.trim()
                    ),
                    log: self.log_tail(&dind.container, 15).await,
                    run_id: spec.run_id.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Removes a network moat created (already gone is fine; one still in
    /// use stays, and `moat clean` retries).
    pub(crate) async fn remove_network(&self, name: &str) {
        let _ = self.docker.remove_network(name).await;
    }
}
