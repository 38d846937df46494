//! Finding and talking to the Docker daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::{ClientVersion, Docker, API_DEFAULT_VERSION};

use crate::error::DockerError;

/// How long the first contact with the daemon may take.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Timeout of every other request, in seconds. Long on purpose: a build or
/// a `wait` legitimately takes minutes.
const REQUEST_TIMEOUT_SECS: u64 = 24 * 3600;

/// The name of the gVisor OCI runtime as registered with dockerd.
pub const GVISOR_RUNTIME: &str = "runsc";

/// A connection to a Docker daemon.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    pub(crate) docker: Docker,
    endpoint: String,
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

fn open(endpoint: &str, version: &ClientVersion) -> Result<Docker, String> {
    let result = if let Some(path) = endpoint.strip_prefix("unix://") {
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, version)
    } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
        Docker::connect_with_http(endpoint, REQUEST_TIMEOUT_SECS, version)
    } else if endpoint.starts_with('/') {
        Docker::connect_with_unix(endpoint, REQUEST_TIMEOUT_SECS, version)
    } else {
        return Err(format!(
            "unsupported DOCKER_HOST {endpoint:?} (use unix:///path/to/docker.sock or tcp://host:port)"
        ));
    };
    result.map_err(|e| e.to_string())
}

/// Pings the daemon and agrees on an API version: bollard speaks a recent
/// one, and an older daemon rejects it naming the newest it supports.
async fn handshake(endpoint: &str) -> Result<Docker, String> {
    let docker = open(endpoint, API_DEFAULT_VERSION)?;
    let first = tokio::time::timeout(PING_TIMEOUT, docker.clone().negotiate_version()).await;
    match first {
        Err(_) => Err(format!(
            "no answer from {endpoint} within {} s",
            PING_TIMEOUT.as_secs()
        )),
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(e)) => {
            let message = e.to_string();
            let Some(version) = max_supported_version(&message) else {
                return Err(format!("{endpoint}: {message}"));
            };
            let docker = open(endpoint, &version)?;
            match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
                Err(_) => Err(format!(
                    "no answer from {endpoint} within {} s",
                    PING_TIMEOUT.as_secs()
                )),
                Ok(Err(e)) => Err(format!("{endpoint}: {e}")),
                Ok(Ok(_)) => Ok(docker),
            }
        }
    }
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
                    })
                }
                Err(cause) => causes.push(cause),
            }
        }
        let cause = if causes.is_empty() {
            let tried: Vec<&str> = endpoints
                .iter()
                .map(|e| e.strip_prefix("unix://").unwrap_or(e))
                .collect();
            format!("no Docker socket found (tried {})", tried.join(", "))
        } else {
            causes.join("; ")
        };
        Err(DockerError::DaemonNotAccessible { cause })
    }

    /// The endpoint this connection uses (`unix:///var/run/docker.sock`...).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
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

    #[tokio::test]
    async fn missing_sockets_give_the_product_message() {
        let err = DockerRuntime::connect_to(&["unix:///nonexistent/docker.sock".into()], false)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("docker daemon not accessible: no Docker socket found (tried /nonexistent/docker.sock)"), "{err}");
        assert!(err.contains("sudo systemctl start docker"));
        assert!(err.contains("sudo usermod -aG docker $USER"));
    }
}
