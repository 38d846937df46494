//! Docker and Podman behind the sandbox interface of `moat-sandbox`: one
//! driver, parameterised by [`Engine`], over the same Engine API code.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use moat_sandbox::{
    terminal, CheckStatus, DoctorCheck, DriverError, ExecRequest, Leftover, OutputSinks, Prepared,
    ProxyRoute, RunningSandbox, SandboxControl, SandboxDriver, SandboxRequest, Stdio,
};
use tokio::io::AsyncWrite;

use crate::connect::{DockerRuntime, Engine, GVISOR_RUNTIME};
use crate::container::{Container, ContainerSpec, NetworkPolicy, SandboxRuntime};
use crate::error::DockerError;
use crate::image::{BuildHooks, ImageMap, ImageRequest, FALLBACK_UID};
use crate::HOST_GATEWAY_NAME;

/// Where `docker:host` puts the engine's socket in the sandbox.
const ENGINE_SOCKET_IN_SANDBOX: &str = "/var/run/docker.sock";

/// Printed for every run with `docker:host`.
pub const DOCKER_HOST_WARNING: &str =
    "Warning: docker:host gives this run the host's container engine: \
     it can start privileged containers and mount any host path, outside moat's sandbox and proxy. \
     Use it only for code you trust.";

/// Printed for every run with `docker:dind`.
pub const DOCKER_DIND_WARNING: &str =
    "Warning: docker:dind runs a privileged Docker daemon for this run: \
     containers the sandbox starts through it run with that daemon's privileges on this machine, \
     outside gVisor. Its network has no way out, and it is removed with the run.";

/// Whether `dependencies:` has `docker:<kind>`.
fn wants_docker(request: &SandboxRequest, kind: &str) -> bool {
    request
        .image
        .dependencies
        .iter()
        .any(|d| d.kind == moat_config::DependencyKind::Docker && d.name == kind)
}

/// How long a stopped container may take to exit before it is killed.
const STOP_TIMEOUT_SECS: u32 = 10;

/// A connected Docker or Podman engine as a [`SandboxDriver`]. It owns a
/// single-threaded tokio runtime and blocks on it in each call (see the
/// `moat-sandbox` documentation for why the trait is synchronous).
#[derive(Debug)]
pub struct ContainerDriver {
    runtime: tokio::runtime::Runtime,
    engine: DockerRuntime,
    /// The OCI runtime the workload uses, decided by [`SandboxDriver::prepare`].
    oci: Option<SandboxRuntime>,
    /// The request's sidecars with their images mapped and present, from
    /// [`SandboxDriver::prepare`].
    sidecars: Vec<moat_sandbox::Sidecar>,
    /// `docker:host`: the engine's socket and its group, from
    /// [`SandboxDriver::prepare`].
    engine_socket: Option<(std::path::PathBuf, u32)>,
    /// `docker:dind`: the daemon's image, mapped and present.
    dind_image: Option<String>,
}

impl ContainerDriver {
    /// Connects to `engine` (for Podman, starting its API service when it
    /// is installed and its socket is absent, unless `may_start` is false).
    pub fn connect(engine: Engine, may_start: bool) -> Result<Self, DockerError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DockerError::io("starting the async runtime", e))?;
        let connected = runtime.block_on(DockerRuntime::connect_engine(engine, may_start))?;
        Ok(ContainerDriver {
            runtime,
            engine: connected,
            oci: None,
            sidecars: Vec::new(),
            engine_socket: None,
            dind_image: None,
        })
    }

    /// The connection, for what the trait does not cover.
    pub fn engine(&self) -> &DockerRuntime {
        &self.engine
    }

    /// A handle to this driver's runtime, for work spawned from other
    /// threads (it runs while the main thread blocks in a call).
    pub(crate) fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// Runs `future` on this driver's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// gVisor when asked for and available; runc otherwise (with the
    /// caller warned through `notes`). Docker refuses a missing gVisor:
    /// its users install it. Podman uses it only when registered, as it
    /// rarely is, and says so.
    async fn oci_runtime(
        &self,
        request: &SandboxRequest,
        notes: &mut Vec<String>,
    ) -> Result<SandboxRuntime, DockerError> {
        if !request.extra_isolation {
            notes.push(crate::NO_SANDBOX_WARNING.to_owned());
            return Ok(SandboxRuntime::Runc);
        }
        // Some installations register gVisor under another name.
        let name = std::env::var("MOAT_GVISOR_RUNTIME")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| GVISOR_RUNTIME.to_string());
        match self.engine.engine_kind() {
            Engine::Docker => self.engine.require_gvisor(&name).await?,
            Engine::Podman => {
                if !crate::connect::podman_registers_runtime(&name) {
                    notes.push(format!(
                        "gVisor ({name}) is not registered with Podman; running under runc. {}",
                        crate::NO_SANDBOX_WARNING
                    ));
                    return Ok(SandboxRuntime::Runc);
                }
            }
        }
        if request.ssh.is_some() {
            self.require_host_uds(&name, "SSH grants", "the SSH agent socket")
                .await?;
        }
        if wants_docker(request, "host") {
            self.require_host_uds(&name, "Sandboxes with docker:host", "the engine's socket")
                .await?;
        }
        Ok(SandboxRuntime::Gvisor { runtime: name })
    }

    /// gVisor refuses connections to host Unix sockets, such as the SSH
    /// agent socket moat mounts, unless runsc runs with `--host-uds=open`.
    async fn require_host_uds(
        &self,
        name: &str,
        purpose: &'static str,
        socket: &'static str,
    ) -> Result<(), DockerError> {
        let args = self.engine.runtime_args(name).await?;
        let allowed = args.iter().any(|a| {
            matches!(
                a.as_str(),
                "--host-uds=open" | "--host-uds=all" | "-host-uds=open" | "-host-uds=all"
            ) || a.starts_with("--fsgofer-host-uds")
        });
        if allowed {
            return Ok(());
        }
        Err(DockerError::GvisorHostUdsClosed {
            purpose,
            socket,
            runtime: name.to_owned(),
        })
    }

    /// The request's sidecars with their images mapped, pulled unless
    /// local.
    fn prepare_sidecars(
        &mut self,
        request: &SandboxRequest,
        map: &ImageMap,
    ) -> Result<(), DriverError> {
        let sidecars: Vec<moat_sandbox::Sidecar> = request
            .sidecars
            .iter()
            .map(|s| moat_sandbox::Sidecar {
                image: map.resolve(&s.image).to_owned(),
                ..s.clone()
            })
            .collect();
        self.block_on(self.engine.ensure_sidecar_images(&sidecars))
            .map_err(DriverError::hinted)?;
        self.sidecars = sidecars;
        Ok(())
    }

    /// `docker:dind`: the daemon's image, mapped and present. Docker only.
    fn prepare_dind(&mut self, map: &ImageMap) -> Result<(), DriverError> {
        let engine = self.engine.engine_kind();
        if engine != Engine::Docker {
            return Err(DriverError::hinted(DockerError::DindNeedsDocker {
                runtime: engine.name(),
            }));
        }
        let image = map.resolve(crate::dind::DIND_IMAGE).to_owned();
        self.block_on(self.engine.ensure_image(&image))
            .map_err(|cause| {
                DriverError::hinted(DockerError::ServiceImageUnavailable {
                    service: "docker:dind".into(),
                    image: image.clone(),
                    cause,
                })
            })?;
        self.dind_image = Some(image);
        Ok(())
    }

    /// `docker:host`: the engine's Unix socket and its group.
    fn prepare_engine_socket(&mut self) -> Result<(), DriverError> {
        let socket = self.engine.unix_socket().ok_or_else(|| {
            DriverError::hinted(DockerError::InvalidDependency {
                name: "docker:host".into(),
                message: format!(
                    "the engine listens at {}, not on a Unix socket moat could mount",
                    self.engine.endpoint()
                ),
            })
        })?;
        let gid = std::fs::metadata(&socket)
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
            .map_err(|e| DriverError::io(format!("reading {}", socket.display()), e))?;
        self.engine_socket = Some((socket, gid));
        Ok(())
    }

    /// `docker:host` or `docker:dind`: the engine the sandbox reaches, and
    /// `DOCKER_HOST` naming it.
    fn add_engine(&self, spec: &mut ContainerSpec) {
        if let Some((socket, gid)) = &self.engine_socket {
            spec.workload.mounts.push(moat_sandbox::BindMount {
                source: socket.clone(),
                target: ENGINE_SOCKET_IN_SANDBOX.into(),
                read_only: false,
                exclude: Vec::new(),
            });
            spec.workload.env.retain(|(k, _)| k != "DOCKER_HOST");
            spec.workload.env.push((
                "DOCKER_HOST".into(),
                format!("unix://{ENGINE_SOCKET_IN_SANDBOX}"),
            ));
            spec.groups.push(*gid);
        }
        if let Some(image) = &self.dind_image {
            spec.dind = Some(image.clone());
            spec.workload.env.retain(|(k, _)| k != "DOCKER_HOST");
            spec.workload.env.push((
                "DOCKER_HOST".into(),
                format!(
                    "tcp://{}:{}",
                    crate::dind::DIND_HOST,
                    crate::dind::DIND_PORT
                ),
            ));
            // The docker CLI honours the proxy variables for a tcp://
            // daemon; this one is reached directly.
            for (name, value) in spec.workload.env.iter_mut() {
                if name == "NO_PROXY" || name == "no_proxy" {
                    value.push(',');
                    value.push_str(crate::dind::DIND_HOST);
                }
            }
        }
    }

    fn container_spec(&self, request: &SandboxRequest, image: &str) -> ContainerSpec {
        let (uid, gid) = caller_ids();
        let mut spec = ContainerSpec::new(
            request.run_id.as_str(),
            image,
            request.workspace.clone(),
            Vec::new(),
        );
        spec.workload = request.workload();
        spec.user = Some((
            if uid == 0 { FALLBACK_UID } else { uid },
            if gid == 0 { FALLBACK_UID } else { gid },
        ));
        // `-i`: stdin attached, and a terminal of the container's own when
        // ours is one (never our terminal itself).
        let interactive = request.stdio == Stdio::Terminal;
        let tty_size = interactive.then(terminal::size).flatten();
        spec.interactive = interactive;
        spec.tty = tty_size.is_some();
        if let (Some((rows, cols)), false) = (tty_size, spec.workload.command.is_empty()) {
            // Engines before API 1.42 cannot size a TTY before the container
            // starts, and resizing after the start races with the command's
            // first look at its window: size it in the container, then exec.
            let mut command = vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                format!("stty rows {rows} cols {cols} 2>/dev/null; exec \"$@\""),
                "sh".to_string(),
            ];
            command.append(&mut spec.workload.command);
            spec.workload.command = command;
        }
        spec.memory_mb = request.limits.memory_mb;
        spec.cpus = request.limits.cpus;
        spec.runtime = self.oci.clone().unwrap_or(SandboxRuntime::Runc);
        spec.hostname = request.hostname.clone();
        if let Some(home) = &request.settings_dir {
            spec.labels
                .push((crate::spec::LABEL_HOME.into(), home.display().to_string()));
        }
        spec.sidecars = self.sidecars.clone();
        spec.sidecar_logs = Some(request.sidecar_logs.clone());
        if !request.ports.is_empty() {
            spec.endpoints = Some((
                request.port_socket.clone(),
                request.ports.values().copied().collect(),
            ));
        }
        self.add_engine(&mut spec);
        // Whatever the policy, the container's only way out is the proxy:
        // clients that ignore the proxy variables are captured by the guard.
        spec.network = NetworkPolicy::Captured {
            proxy_host: HOST_GATEWAY_NAME.to_string(),
            proxy_port: request.proxy.port,
            authorization: request.proxy.authorization.clone(),
            relay_binary: request.proxy.relay_binary.clone(),
        };
        spec
    }
}

/// The image the request's recipe asks for, built as the caller's ids.
fn image_request(request: &SandboxRequest) -> ImageRequest {
    let (uid, gid) = caller_ids();
    let recipe = &request.image;
    let mut image_request = ImageRequest::new(
        recipe.dependencies.clone(),
        uid,
        gid,
        request.build_log.clone(),
    );
    image_request.base_image = recipe.base_image.clone();
    image_request.hooks = BuildHooks {
        post_build_root: recipe.post_build_root.iter().cloned().collect(),
        post_build: recipe.post_build.iter().cloned().collect(),
    };
    image_request.rebuild = recipe.rebuild;
    image_request.verbose = recipe.verbose;
    image_request.cache_dir = request.settings_dir.as_ref().map(|d| d.join("cache"));
    image_request
}

fn caller_ids() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    )
}

impl SandboxDriver for ContainerDriver {
    fn name(&self) -> &'static str {
        self.engine.engine_kind().name()
    }

    fn doctor(&mut self) -> Vec<DoctorCheck> {
        let mut checks = vec![DoctorCheck::ok(
            self.name(),
            self.engine.describe_endpoint(),
        )];
        let gvisor = self.block_on(self.engine.has_runtime(GVISOR_RUNTIME));
        let host_uds = self
            .block_on(self.engine.runtime_args(GVISOR_RUNTIME))
            .map(|args| {
                args.iter()
                    .any(|a| a.contains("host-uds=open") || a.contains("host-uds=all"))
            })
            .unwrap_or(false);
        checks.push(match self.engine.engine_kind() {
            Engine::Podman => {
                if crate::connect::podman_registers_runtime(GVISOR_RUNTIME) {
                    DoctorCheck::ok("gvisor (podman)", "runsc is registered with Podman")
                } else {
                    DoctorCheck::problem(
                        CheckStatus::Warn,
                        "gvisor (podman)",
                        "runsc is not registered with Podman: Podman runs use runc",
                        "register runsc in /etc/containers/containers.conf:\n\
                         [engine.runtimes]\n\
                         runsc = [\"/usr/bin/runsc\"]",
                    )
                }
            }
            Engine::Docker => match gvisor {
                Ok(true) if host_uds => DoctorCheck::ok("gvisor", "runsc is registered with Docker (host sockets open: SSH grants work)"),
                Ok(true) => DoctorCheck::problem(
                    CheckStatus::Warn,
                    "gvisor",
                    "runsc is registered without --host-uds=open: SSH grants fail under gVisor",
                    "add \"--host-uds=open\" to runsc's runtimeArgs in /etc/docker/daemon.json:\n\
                     {\"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=host\", \"--host-uds=open\"]}}}\n\
                     then: sudo systemctl restart docker",
                ),
                Ok(false) => DoctorCheck::problem(
                    CheckStatus::Warn,
                    "gvisor",
                    "runsc is not registered with Docker: Docker runs need --no-sandbox",
                    "install gVisor and register it in /etc/docker/daemon.json:\n\
                     {\"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=host\", \"--host-uds=open\"]}}}\n\
                     then: sudo systemctl restart docker",
                ),
                Err(e) => DoctorCheck::problem(
                    CheckStatus::Warn,
                    "gvisor",
                    format!(
                        "cannot list Docker runtimes: {}",
                        e.to_string().lines().next().unwrap_or_default()
                    ),
                    "check the Docker daemon: docker info",
                ),
            },
        });
        checks
    }

    fn runs_as_caller(&self) -> bool {
        // A root caller's containers run as an unprivileged uid.
        !rustix::process::getuid().is_root()
    }

    fn home_in_sandbox(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(crate::image::HOME_IN_IMAGE)
    }

    fn uses_host_programs(&self) -> bool {
        false
    }

    fn proxy_route(&mut self) -> Result<ProxyRoute, DriverError> {
        let listen = self
            .block_on(self.engine.proxy_listen_addresses())
            .map_err(DriverError::hinted)?;
        Ok(ProxyRoute {
            listen,
            host_in_sandbox: HOST_GATEWAY_NAME.into(),
        })
    }

    fn prepare(&mut self, request: &SandboxRequest) -> Result<Prepared, DriverError> {
        let mut notes = Vec::new();
        let oci = self
            .block_on(self.oci_runtime(request, &mut notes))
            .map_err(DriverError::hinted)?;
        self.oci = Some(oci);
        let map = ImageMap::load(request.settings_dir.as_deref()).map_err(DriverError::hinted)?;
        let image = self
            .block_on(self.engine.resolve_image(&image_request(request), &map))
            .map_err(DriverError::hinted)?;
        notes.extend(image.notes);
        self.prepare_sidecars(request, &map)?;
        self.engine_socket = None;
        self.dind_image = None;
        if wants_docker(request, "dind") {
            self.prepare_dind(&map)?;
            notes.push(DOCKER_DIND_WARNING.to_owned());
        }
        if wants_docker(request, "host") {
            self.prepare_engine_socket()?;
            notes.push(DOCKER_HOST_WARNING.to_owned());
        }
        Ok(Prepared {
            image: Some(image.tag),
            notes,
        })
    }

    fn start(
        &mut self,
        request: &SandboxRequest,
        prepared: &Prepared,
        output: OutputSinks,
    ) -> Result<Box<dyn RunningSandbox + '_>, DriverError> {
        let image = prepared.image.clone().ok_or_else(|| {
            DriverError::hinted(DockerError::InvalidSpec {
                message: "no image was prepared for the container".into(),
            })
        })?;
        let spec = self.container_spec(request, &image);
        let engine = self.engine.clone();
        let handle = self.runtime.handle().clone();
        let started = self.block_on(async {
            let container = engine.create(&spec).await?;
            let started = async {
                if spec.interactive {
                    let attached = engine.attach(&container).await?;
                    engine.start(&container).await?;
                    Ok(Attached::Terminal(attached))
                } else {
                    // Attached before the start, drained to its end before
                    // the exit is reported: the engine's log, followed after
                    // the start, loses output of short commands, and a last
                    // line without a newline.
                    let attached = engine.attach_output(&container).await?;
                    engine.start(&container).await?;
                    Ok::<_, DockerError>(Attached::Output(attached))
                }
            }
            .await;
            match started {
                Ok(attached) => Ok((container, attached)),
                Err(e) => {
                    engine.remove(&container).await.ok();
                    Err(e)
                }
            }
        });
        let volume = spec
            .workload
            .workspace_overlay
            .clone()
            .map(|copy| WorkspaceVolume {
                run_id: spec.run_id.clone(),
                copy,
                // Protected paths are the host's, bound read-only over
                // the volume: the run cannot have changed them.
                excluded: (spec.workload.workspace_exclude.iter().cloned())
                    .chain(spec.workload.protected.iter().map(|p| p.path.clone()))
                    .collect(),
            });
        if started.is_err() {
            if let Some(v) = &volume {
                self.block_on(self.engine.remove_workspace_volume(&v.run_id))
                    .ok();
            }
        }
        let (container, attached) = started.map_err(DriverError::hinted)?;
        let control = Arc::new(ContainerControl {
            engine: self.engine.clone(),
            container: container.clone(),
            handle,
        });
        let raw = (spec.tty).then(terminal::RawMode::enter);
        if spec.tty {
            control.window_changed();
        }
        Ok(Box::new(ContainerRunning {
            driver: self,
            container,
            attached: Some(attached),
            output: Some(output),
            raw,
            keep: request.keep,
            sidecar_logs: request.sidecar_logs.clone(),
            control,
            volume,
        }))
    }

    fn exec(
        &mut self,
        request: &ExecRequest,
        output: OutputSinks,
    ) -> Result<Box<dyn RunningSandbox + '_>, DriverError> {
        crate::exec::start(self, request, output)
    }

    fn leftovers(&mut self) -> Result<Vec<Leftover>, DriverError> {
        let found = self
            .block_on(self.engine.list_managed())
            .map_err(DriverError::hinted)?;
        Ok(found
            .into_iter()
            .map(|c| Leftover {
                id: c.id,
                run_id: c.run_id,
                owner: c.home,
            })
            .collect())
    }

    fn remove_leftover(&mut self, leftover: &Leftover) -> Result<(), DriverError> {
        self.block_on(self.engine.remove_by_id(&leftover.id))
            .map_err(DriverError::hinted)?;
        // The run's own network goes with its last container.
        if let Some(run) = &leftover.run_id {
            self.block_on(
                self.engine
                    .remove_network(&crate::dind::run_network_name(run)),
            );
        }
        Ok(())
    }
}

enum Attached {
    Output(bollard::container::AttachContainerResults),
    Terminal(bollard::container::AttachContainerResults),
}

struct ContainerControl {
    engine: DockerRuntime,
    container: Container,
    /// The driver's runtime: the main thread blocks on it in `wait`, which
    /// runs what is spawned here.
    handle: tokio::runtime::Handle,
}

impl SandboxControl for ContainerControl {
    fn signal(&self, sig: i32) {
        // Any of the caller's stop signals stops the container; its output
        // is still read to the end.
        if matches!(
            sig,
            libc::SIGINT | libc::SIGTERM | libc::SIGHUP | libc::SIGQUIT
        ) {
            let (engine, container) = (self.engine.clone(), self.container.clone());
            self.handle.spawn(async move {
                let _ = engine.stop(&container, STOP_TIMEOUT_SECS).await;
            });
        }
    }

    fn window_changed(&self) {
        if !self.container.tty {
            return;
        }
        if let Some((rows, cols)) = terminal::size() {
            let (engine, container) = (self.engine.clone(), self.container.clone());
            self.handle.spawn(async move {
                let _ = engine.resize(&container, rows, cols).await;
            });
        }
    }
}

struct ContainerRunning<'d> {
    driver: &'d ContainerDriver,
    container: Container,
    attached: Option<Attached>,
    output: Option<OutputSinks>,
    raw: Option<terminal::RawMode>,
    keep: bool,
    sidecar_logs: std::path::PathBuf,
    control: Arc<ContainerControl>,
    volume: Option<WorkspaceVolume>,
}

/// Volume mode: the run's workspace volume, and where its tree goes.
struct WorkspaceVolume {
    run_id: String,
    copy: std::path::PathBuf,
    excluded: Vec<std::path::PathBuf>,
}

impl RunningSandbox for ContainerRunning<'_> {
    fn runtime_id(&self) -> Option<String> {
        Some(self.container.id.clone())
    }

    fn control(&self) -> Arc<dyn SandboxControl> {
        self.control.clone()
    }

    fn wait(mut self: Box<Self>) -> Result<i32, DriverError> {
        let engine = &self.driver.engine;
        let container = self.container.clone();
        let attached = self.attached.take();
        let output = self.output.take();
        let result = self.driver.block_on(async {
            match (attached, output) {
                (Some(Attached::Output(attached)), Some(sinks)) => {
                    let mut out = SyncSink(sinks.stdout);
                    let mut err = SyncSink(sinks.stderr);
                    // A closed terminal is no reason to lose the exit code:
                    // the sinks record what they cannot show.
                    if let Err(e) = engine.drain_output(attached, &mut out, &mut err).await {
                        let _ = writeln!(err.0, "moat: copying the container's output: {e}");
                    }
                }
                (Some(Attached::Terminal(attached)), _) => {
                    engine
                        .pump_attached(
                            attached,
                            stdin_channel(),
                            &mut tokio::io::stdout(),
                            &mut tokio::io::stderr(),
                        )
                        .await?;
                }
                _ => {}
            }
            engine.wait(&container).await
        });
        drop(self.raw.take());
        if !container.sidecar_ids.is_empty() {
            self.driver.block_on(engine.save_sidecar_logs(
                &self.driver.sidecars,
                &container.sidecar_ids,
                &self.sidecar_logs,
            ));
        }
        if let Some(v) = &self.volume {
            let copy = engine.extract_workspace(&container.id, &v.run_id, &v.copy, &v.excluded);
            if let Err(e) = self.driver.block_on(copy) {
                let _ = writeln!(std::io::stderr(), "moat: keeping the run's workspace: {e}");
            }
        }
        if !self.keep {
            if let Err(e) = self.driver.block_on(engine.remove(&container)) {
                let _ = writeln!(std::io::stderr(), "moat: removing the container: {e}");
            }
            if let Some(v) = &self.volume {
                if let Err(e) = self
                    .driver
                    .block_on(engine.remove_workspace_volume(&v.run_id))
                {
                    let _ = writeln!(
                        std::io::stderr(),
                        "moat: removing the workspace volume: {e}"
                    );
                }
            }
        }
        let code = result.map_err(DriverError::hinted)?;
        Ok(i32::try_from(code).unwrap_or(1))
    }
}

/// Our stdin as a channel (a blocking read has no place on the async
/// runtime, which must be able to shut down).
pub(crate) fn stdin_channel() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (keys, stdin) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let _ = terminal::forward_stdin("moat-stdin", move |bytes| {
        keys.blocking_send(bytes.to_vec()).is_ok()
    });
    stdin
}

/// A caller's blocking sink as an async writer: the sinks write to a
/// terminal or a file, quickly, and this runtime does nothing else
/// meanwhile.
pub(crate) struct SyncSink(pub(crate) Box<dyn Write + Send>);

impl AsyncWrite for SyncSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.0.write(buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.0.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}
