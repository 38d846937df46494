//! What a container run is: the spec, its network policy and OCI runtime,
//! and the handles of what was created.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::connect::GVISOR_RUNTIME;
use crate::error::DockerError;

/// Where the project directory appears in the container (also its cwd).
pub use moat_sandbox::WORKSPACE_IN_SANDBOX as WORKSPACE_IN_CONTAINER;

/// Host name under which the container reaches the host (the bridge
/// gateway): every container gets `host.docker.internal:host-gateway`.
pub const HOST_GATEWAY_NAME: &str = "host.docker.internal";

/// Label holding the run id.
pub const LABEL_RUN_ID: &str = "moat.run-id";
/// Label marking everything moat created (`moat.managed=true`).
pub const LABEL_MANAGED: &str = "moat.managed";
/// Label naming the moat installation (its `MOAT_HOME`) a container
/// belongs to: one installation's `moat clean` leaves another's alone on
/// a shared engine.
pub const LABEL_HOME: &str = "moat.home";
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

pub use moat_sandbox::{BindMount, InjectedFile, Workload};

/// One container run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Run id: names the container `moat-<run_id>` and labels it
    /// `moat.run-id`. Letters, digits, `_`, `.` and `-`.
    pub run_id: String,
    /// Image (usually [`crate::ResolvedImage::tag`]).
    pub image: String,
    /// What runs and what it sees of the host (the environment on top of
    /// the image's `PATH` and `HOME`; files uploaded before the start).
    #[serde(flatten)]
    pub workload: Workload,
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
    /// `docker:dind`: the daemon's image (mapped), started on a network
    /// of the run's own.
    pub dind: Option<String>,
    /// `ports:`: the host path of the run's endpoint socket, which the
    /// network guard's relay serves, and the ports it may reach.
    pub endpoints: Option<(PathBuf, Vec<u16>)>,
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
            workload: Workload {
                workspace: workspace.into(),
                command,
                ..Workload::default()
            },
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
            dind: None,
            endpoints: None,
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
        self.workload.validate(&[]).map_err(DockerError::Workload)?;
        self.validate_binds()?;
        self.validate_protected()?;
        self.validate_limits_and_proxy()?;
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

    /// The engine's own requirements: what it binds must exist, and its
    /// bind syntax (`source:target`) has no room for a ':'.
    fn validate_binds(&self) -> Result<(), DockerError> {
        let invalid = |message: String| Err(DockerError::InvalidSpec { message });
        if !self.workload.workspace.is_dir() {
            return invalid(format!(
                "the workspace must be an existing directory: {}",
                self.workload.workspace.display()
            ));
        }
        for m in &self.workload.mounts {
            if !m.source.exists() {
                return invalid(format!("bind source must exist: {}", m.source.display()));
            }
            for p in [&m.source, &m.target] {
                if p.to_string_lossy().contains(':') {
                    return invalid(format!("bind paths may not contain ':': {}", p.display()));
                }
            }
        }
        Ok(())
    }

    /// Protected workspace paths are bound read-only over themselves.
    /// The engine follows a link in a bind's source: a protected name
    /// that is a link would show the container whatever it points to on
    /// the host, so such a workspace is refused rather than half
    /// protected (the native runtime pins the link itself).
    fn validate_protected(&self) -> Result<(), DockerError> {
        let invalid = |message: String| Err(DockerError::InvalidSpec { message });
        for p in &self.workload.protected {
            let host = self.workload.workspace.join(&p.path);
            if p.path.to_string_lossy().contains(':') {
                return invalid(format!(
                    "bind paths may not contain ':': {} (protected in the workspace)",
                    host.display()
                ));
            }
            if std::fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(DockerError::ProtectedLink {
                    host,
                    path: p.path.clone(),
                });
            }
        }
        Ok(())
    }

    /// Positive limits, and under the strict policy a proxy address that
    /// is one.
    fn validate_limits_and_proxy(&self) -> Result<(), DockerError> {
        let invalid = |message: String| Err(DockerError::InvalidSpec { message });
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
        Ok(())
    }

    /// The container's name.
    pub fn container_name(&self) -> String {
        format!("moat-{}", self.run_id)
    }
}

/// `172.17.0.0/16` → `172.17.0.1` (IPv4 only).
pub(crate) fn first_host(subnet: &str) -> Option<String> {
    let (addr, len) = subnet.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    if !(1..=30).contains(&len) {
        return None;
    }
    let mask = u32::MAX << (32 - len);
    Some(std::net::Ipv4Addr::from((u32::from(addr) & mask) + 1).to_string())
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
    /// `moat.home`: the installation it belongs to.
    pub home: Option<String>,
    /// Image name.
    pub image: String,
    /// Engine state (`running`, `exited`, `created`...).
    pub state: String,
}

/// The labels of a container moat creates for `spec` in `role`
/// (`workload`, `guard`, …): the user's, then moat's own.
pub(crate) fn labels_for(
    spec: &ContainerSpec,
    role: &str,
) -> std::collections::HashMap<String, String> {
    let mut labels: std::collections::HashMap<String, String> =
        spec.labels.iter().cloned().collect();
    labels.insert(LABEL_RUN_ID.into(), spec.run_id.clone());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_ROLE.into(), role.into());
    labels
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
        // The workload's own checks (moat-sandbox's tests) apply.
        let mut s = spec();
        s.workload.command.clear();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.workload.mounts.push(BindMount {
            source: std::env::temp_dir(),
            target: "/a:b".into(),
            read_only: true,
            exclude: Vec::new(),
        });
        assert!(s.validate().is_err(), "':' has no place in a bind");
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
}
