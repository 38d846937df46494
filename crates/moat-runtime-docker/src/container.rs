//! A container's life cycle: created (behind its network guard, with its
//! sidecars), started, waited for, stopped and removed; leftovers found by
//! label. The spec is in `spec.rs`, the guard in `guard.rs`, the streams
//! in `attach.rs`.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::io::AsyncWrite;

use crate::connect::DockerRuntime;
use crate::dind::Dind;
use crate::error::DockerError;
use crate::gate::{gated_entrypoint, MOAT_IN_CONTAINER};
use crate::guard::PendingGuard;
pub use crate::guard::GUARD_READY;
pub use crate::spec::*;

/// How much more the kernel's OOM killer prefers a workload's processes
/// than the host's (`oom_score_adj`).
const WORKLOAD_OOM_SCORE_ADJ: i64 = 500;

/// A created container (and its network guard under the strict policy).
#[derive(Debug, Clone)]
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
    /// Engine ids of its service sidecars (and of its Docker daemon).
    pub sidecar_ids: Vec<String>,
    /// The network moat created for the run (`docker:dind`'s).
    pub network: Option<String>,
    /// The guard was started with the workload created, not known to be
    /// ready yet: the workload's entrypoint waits for it, and
    /// [`crate::DockerRuntime::start`] reports its failure.
    pub(crate) guard_pending: Option<crate::guard::PendingGuard>,
}

/// Over the workspace's bind: what the host acts on, read-only (a
/// container cannot be given a private copy of .git/config, which needs a
/// mount inside it, so git there cannot change it); then the extra mounts.
fn protected_and_mount_binds(spec: &ContainerSpec) -> Vec<String> {
    let protected = spec.workload.protected.iter().map(|p| {
        format!(
            "{}:{}:ro",
            spec.workload.workspace.join(&p.path).display(),
            Path::new(WORKSPACE_IN_CONTAINER).join(&p.path).display()
        )
    });
    let mounts = spec.workload.mounts.iter().map(|m| {
        let mode = if m.read_only { ":ro" } else { "" };
        format!("{}:{}{mode}", m.source.display(), m.target.display())
    });
    protected.chain(mounts).collect()
}

/// The workspace at `/workspace`: bound from the host, or in volume mode
/// the run's volume, with the host workspace read-only beside it.
fn workspace_binds(spec: &ContainerSpec) -> Vec<String> {
    let host = spec.workload.workspace.display();
    match spec.workload.workspace_overlay {
        None => vec![format!("{host}:{WORKSPACE_IN_CONTAINER}")],
        Some(_) => vec![
            format!(
                "{}:{WORKSPACE_IN_CONTAINER}",
                crate::volume::volume_name(&spec.run_id)
            ),
            format!("{host}:{}:ro", crate::volume::HOST_WORKSPACE),
        ],
    }
}

/// Options of the tmpfs over an excluded path: writable by whoever runs
/// inside, programs allowed (`node_modules/.bin`), never set-id or devices.
const EXCLUDE_TMPFS_OPTIONS: &str = "rw,exec,nosuid,nodev,mode=1777";

/// The excluded paths inside, the workspace's and the mounts'
/// (`<target>/<exclude>`).
fn excluded_paths(spec: &ContainerSpec) -> Vec<String> {
    let workload = &spec.workload;
    let workspace = workload
        .workspace_exclude
        .iter()
        .map(|e| Path::new(WORKSPACE_IN_CONTAINER).join(e));
    let mounts = workload
        .mounts
        .iter()
        .flat_map(|m| m.exclude.iter().map(|e| m.target.join(e)));
    workspace
        .chain(mounts)
        .map(|p| p.display().to_string())
        .collect()
}

/// A tmpfs over each excluded path (`HostConfig.Tmpfs`, mounted after the
/// binds it lies in): empty inside, and what the sandbox writes there never
/// reaches the host. Podman copies what the path holds into a new tmpfs
/// unless told `notmpcopyup` (that would show the host's files), and makes
/// it root's, mode 0755, unless told `U` (owned by the container's user).
fn excluded_tmpfs(
    paths: &[String],
    podman: bool,
) -> Option<std::collections::HashMap<String, String>> {
    let options = if podman {
        format!("{EXCLUDE_TMPFS_OPTIONS},notmpcopyup,U")
    } else {
        EXCLUDE_TMPFS_OPTIONS.to_owned()
    };
    let tmpfs: std::collections::HashMap<String, String> =
        paths.iter().map(|p| (p.clone(), options.clone())).collect();
    (!tmpfs.is_empty()).then_some(tmpfs)
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

/// How often, and how many times, [`DockerRuntime::wait`] looks at a
/// Podman container's state before it uses the wait endpoint.
const PODMAN_EXIT_POLL: std::time::Duration = std::time::Duration::from_millis(10);
const PODMAN_EXIT_POLLS: u32 = 50;

/// Where a Podman container's slirp4netns network reaches the host's
/// loopback.
const SLIRP_HOST_LOOPBACK: &str = "10.0.2.2";

impl DockerRuntime {
    /// Creates a container called `name`; its id.
    pub(crate) async fn create_named(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, bollard::errors::Error> {
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map(|response| response.id)
    }

    /// The network of a container that does not join another's: Docker's
    /// default bridge; for Podman, slirp4netns with the host's loopback
    /// reachable. Podman's bridge (netavark) exists only while a container
    /// uses it, so the proxy could not listen on its gateway before the
    /// first container starts; through slirp4netns the container reaches
    /// the proxy where it already listens (and the guard's firewall lets
    /// it reach nothing else there).
    pub(crate) fn own_network_mode(&self) -> Option<String> {
        (self.engine_kind() == crate::connect::Engine::Podman)
            .then(|| "slirp4netns:allow_host_loopback=true".to_owned())
    }

    /// The `/etc/hosts` entry naming the host for the container.
    pub(crate) fn host_gateway_entry(&self) -> String {
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
        let dind = self.dind_for(spec).await?;
        let guard_id = match self.guard_for(spec, dind.as_ref()).await {
            Ok(g) => g,
            Err(e) => {
                self.remove_partial(None, None, dind.as_ref()).await;
                return Err(e);
            }
        };
        // The workload's entrypoint is the gate (see `gate.rs`) whenever
        // the guard runs the relay: it installs the setuid/setgid filter,
        // and it waits for the relay, which listens once the firewall
        // holds. Without services to wait for, the workload then starts
        // with the guard started but not ready yet; with them, the guard is
        // ready first, and the gate's wait ends at once.
        let gate = match (&spec.network, &guard_id) {
            (NetworkPolicy::Captured { relay_binary, .. }, Some(_)) => Some(relay_binary.as_path()),
            _ => None,
        };
        let guard_waited_by_gate = gate.is_some() && spec.sidecars.is_empty() && dind.is_none();
        // The workload is created while the guard starts (and the services
        // get ready in its namespace): joining a created container's
        // network is allowed; the workload starts only once all are up.
        let (workload, guard_up) = tokio::join!(
            self.create_workload(spec, guard_id.as_deref(), gate),
            self.bring_up_guard(
                spec,
                guard_id.as_deref(),
                dind.as_ref(),
                guard_waited_by_gate
            )
        );
        let (created, failure) = match (workload, guard_up) {
            (Ok(id), Ok((mut sidecar_ids, guard_pending))) => {
                sidecar_ids.extend(dind.as_ref().map(|d| d.container.clone()));
                return Ok(Container {
                    id,
                    name: spec.container_name(),
                    guard_id,
                    tty: spec.tty,
                    sidecar_ids,
                    network: dind.map(|d| d.network),
                    guard_pending,
                });
            }
            // The guard's or a service's failure explains more than the
            // workload's.
            (workload, Err(e)) => (workload.ok(), e),
            (Err(e), Ok((sidecar_ids, _))) => {
                self.remove_all(&sidecar_ids).await;
                (None, e)
            }
        };
        self.remove_partial(created.as_deref(), guard_id.as_deref(), dind.as_ref())
            .await;
        Err(failure)
    }

    /// `docker:dind`: its daemon started, which needs the network guard.
    async fn dind_for(&self, spec: &ContainerSpec) -> Result<Option<Dind>, DockerError> {
        match &spec.dind {
            Some(image) if !matches!(spec.network, NetworkPolicy::Permissive) => {
                Ok(Some(self.start_dind(spec, image).await?))
            }
            Some(_) => Err(DockerError::InvalidSpec {
                message: "docker:dind needs the network guard (a strict or captured network)"
                    .into(),
            }),
            None => Ok(None),
        }
    }

    /// The network guard the policy asks for (created, not started), on
    /// the dind daemon's network too when there is one; none when
    /// permissive, which sidecars cannot be.
    async fn guard_for(
        &self,
        spec: &ContainerSpec,
        dind: Option<&Dind>,
    ) -> Result<Option<String>, DockerError> {
        let guard = match &spec.network {
            NetworkPolicy::Permissive if !spec.sidecars.is_empty() => {
                return Err(DockerError::InvalidSpec {
                    message:
                        "service sidecars need the network guard (a strict or captured network)"
                            .into(),
                })
            }
            NetworkPolicy::Permissive => return Ok(None),
            NetworkPolicy::Strict {
                proxy_host,
                proxy_port,
            } => {
                self.create_guard(spec, proxy_host, *proxy_port, None, dind)
                    .await?
            }
            NetworkPolicy::Captured {
                proxy_host,
                proxy_port,
                authorization,
                relay_binary,
            } => {
                self.create_guard(
                    spec,
                    proxy_host,
                    *proxy_port,
                    Some((authorization, relay_binary)),
                    dind,
                )
                .await?
            }
        };
        if let Some(d) = dind {
            if let Err(e) = self.connect_guard(d, &guard).await {
                self.remove_by_id(&guard).await.ok();
                return Err(e);
            }
        }
        Ok(Some(guard))
    }

    /// Starts the guard, then the dind daemon and the sidecars in its
    /// namespace, each ready; or, when the gate waits for it, launches it
    /// and returns the watch on its readiness. Returns the sidecars' ids.
    async fn bring_up_guard(
        &self,
        spec: &ContainerSpec,
        guard_id: Option<&str>,
        dind: Option<&Dind>,
        waited_by_gate: bool,
    ) -> Result<(Vec<String>, Option<PendingGuard>), DockerError> {
        let Some(g) = guard_id else {
            return Ok((Vec::new(), None));
        };
        if waited_by_gate {
            let launched = self.launch_guard(g).await?;
            return Ok((Vec::new(), Some(PendingGuard::watch(launched))));
        }
        self.start_guard(g).await?;
        if let Some(d) = dind {
            self.dind_ready(spec, d).await?;
        }
        if spec.sidecars.is_empty() {
            return Ok((Vec::new(), None));
        }
        let ids = self.start_sidecars(spec, g).await?;
        match self
            .sidecars_ready(spec, &ids, spec.sidecar_logs.as_deref())
            .await
        {
            Ok(()) => Ok((ids, None)),
            Err(e) => {
                self.remove_all(&ids).await;
                Err(e)
            }
        }
    }

    /// Removes what a failed [`DockerRuntime::create`] made.
    async fn remove_partial(
        &self,
        workload: Option<&str>,
        guard: Option<&str>,
        dind: Option<&Dind>,
    ) {
        for id in [workload, guard].into_iter().flatten() {
            self.remove_by_id(id).await.ok();
        }
        if let Some(d) = dind {
            self.remove_by_id(&d.container).await.ok();
            self.remove_network(&d.network).await;
        }
    }

    /// Creates the workload; with `gate` (the host's moat binary), its
    /// entrypoint first waits for the guard's firewall and installs the
    /// setuid/setgid filter.
    async fn create_workload(
        &self,
        spec: &ContainerSpec,
        guard: Option<&str>,
        gate: Option<&Path>,
    ) -> Result<String, DockerError> {
        let mut binds = workspace_binds(spec);
        // The command, or the image's own when none is given: with the gate
        // as entrypoint, the engine would no longer add the image's.
        let mut command = spec.workload.command.clone();
        let entrypoint = match gate {
            Some(moat) => {
                // An SSH grant mounts the same binary there already. Any
                // other mount there makes the engine refuse the container
                // (a duplicate mount point): nothing else may stand in for
                // the wait.
                if !spec
                    .workload
                    .mounts
                    .iter()
                    .any(|m| m.target == Path::new(MOAT_IN_CONTAINER) && m.source == moat)
                {
                    binds.push(format!("{}:{MOAT_IN_CONTAINER}:ro", moat.display()));
                }
                let (image_entrypoint, image_cmd) = self.image_entrypoint(&spec.image).await?;
                if command.is_empty() {
                    command = image_cmd;
                }
                Some(gated_entrypoint(&image_entrypoint))
            }
            None => None,
        };
        binds.extend(protected_and_mount_binds(spec));
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint,
            cmd: Some(command),
            env: Some(
                spec.workload
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
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
            host_config: Some(self.workload_host_config(spec, binds, guard)),
            ..Default::default()
        };
        let name = spec.container_name();
        let created = self.create_named(&name, body).await.map_err(|e| {
            DockerError::engine(format!("creating container {name} from {}", spec.image), e)
        })?;
        let mut filled = self.upload_files(&created, spec).await;
        if filled.is_ok() && spec.workload.workspace_overlay.is_some() {
            filled = self.fill_workspace(&created, spec).await;
        }
        if let Err(e) = filled {
            self.remove_by_id(&created).await.ok();
            return Err(e);
        }
        Ok(created)
    }

    /// The workload's binds, limits and network: the guard's namespace, or
    /// its own with the host gateway entry. Every capability dropped.
    fn workload_host_config(
        &self,
        spec: &ContainerSpec,
        binds: Vec<String>,
        guard: Option<&str>,
    ) -> HostConfig {
        let (network_mode, extra_hosts) = match guard {
            // /etc/hosts (with host.docker.internal) comes from the guard.
            Some(g) => (Some(format!("container:{g}")), None),
            None => (
                self.own_network_mode(),
                Some(vec![self.host_gateway_entry()]),
            ),
        };
        let podman = self.engine_kind() == crate::connect::Engine::Podman;
        HostConfig {
            binds: Some(binds),
            tmpfs: excluded_tmpfs(&excluded_paths(spec), podman),
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
            // As for native runs: the run's processes go first when the
            // host runs out of memory, before the engine, moat's daemon
            // and the user's own programs.
            oom_score_adj: Some(WORKLOAD_OOM_SCORE_ADJ),
            group_add: (!spec.groups.is_empty())
                .then(|| spec.groups.iter().map(u32::to_string).collect()),
            ..Default::default()
        }
    }

    /// Puts the injected files into the created container.
    async fn upload_files(&self, created: &str, spec: &ContainerSpec) -> Result<(), DockerError> {
        if spec.workload.files.is_empty() {
            return Ok(());
        }
        let archive = tar_files(&spec.workload.files)?;
        self.docker
            .upload_to_container(
                created,
                Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| DockerError::engine("putting the injected files into the container", e))
    }

    /// Starts a created container; when its guard was started with it, also
    /// waits until the guard is ready (the guard's failure is the error).
    pub async fn start(&self, container: &Container) -> Result<(), DockerError> {
        self.docker
            .start_container(
                &container.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| DockerError::engine(format!("starting {}", container.name), e))?;
        match &container.guard_pending {
            Some(pending) => pending.ready().await,
            None => Ok(()),
        }
    }

    /// The image's own entrypoint, which the gate runs after its wait, and
    /// its default command.
    async fn image_entrypoint(
        &self,
        image: &str,
    ) -> Result<(Vec<String>, Vec<String>), DockerError> {
        let inspected = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| DockerError::engine(format!("inspecting image {image}"), e))?;
        let config = inspected.config.unwrap_or_default();
        Ok((
            config.entrypoint.unwrap_or_default(),
            config.cmd.unwrap_or_default(),
        ))
    }

    /// Waits for the container to exit; returns its exit code as is.
    pub async fn wait(&self, container: &Container) -> Result<i64, DockerError> {
        // Callers wait once the container's output has ended, so it has
        // exited or is about to. Podman's wait endpoint answers a few
        // hundred milliseconds after the exit (it polls); its state is
        // there at once.
        if self.engine_kind() == crate::connect::Engine::Podman {
            for _ in 0..PODMAN_EXIT_POLLS {
                if let Some(code) = self.exit_code(&container.id).await {
                    return Ok(code);
                }
                tokio::time::sleep(PODMAN_EXIT_POLL).await;
            }
        }
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
        // The workload and the sidecars at once, the guard last: they live
        // in its network namespace (Podman refuses to remove it before).
        let sidecars = container.sidecar_ids.iter().map(|id| self.remove_by_id(id));
        let (workload, sidecars) = tokio::join!(
            self.remove_by_id(&container.id),
            futures_util::future::join_all(sidecars)
        );
        let mut result = sidecars.into_iter().fold(workload, Result::and);
        match (&container.guard_id, &container.network) {
            // The run's own network (docker:dind's) goes after the guard,
            // whose removal is therefore waited for.
            (Some(guard), Some(_)) => result = result.and(self.remove_by_id(guard).await),
            // The engine removes the guard itself once it exits (created
            // with AutoRemove), and its relay exits on SIGTERM, which the
            // engine delivers without waiting. A SIGKILL, or a removal,
            // waits until the engine has torn down the guard's network:
            // about 100 ms of every run.
            (Some(guard), None) => result = result.and(self.kill_guard(guard).await),
            (None, _) => {}
        }
        if let Some(network) = &container.network {
            self.remove_network(network).await;
        }
        result
    }

    /// Asks an auto-removing guard's relay to exit (SIGTERM, which the
    /// engine delivers without waiting for the exit); one already gone (or
    /// being removed) is fine.
    async fn kill_guard(&self, id: &str) -> Result<(), DockerError> {
        let options = bollard::query_parameters::KillContainerOptionsBuilder::new()
            .signal("TERM")
            .build();
        match self.docker.kill_container(id, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine(
                format!("stopping the network guard {id}"),
                e,
            )),
        }
    }

    /// Forcibly removes one container by id or name (already gone, or
    /// being removed by the engine, is fine), e.g. an orphan found by
    /// [`Self::list_managed`].
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
            // A guard the engine removes itself after its run (AutoRemove):
            // a forced removal conflicts only with one in progress.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message,
            }) if message.contains("already in progress") => Ok(()),
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
                    home: labels.get(crate::spec::LABEL_HOME).cloned(),
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
