//! Service sidecars (`dependencies: [postgres@17, mysql@8, redis@7]`):
//! starting them beside a sandbox. What each service is (image, port,
//! credentials, readiness check, the variables the sandbox gets) is
//! `moat-sandbox`'s catalogue ([`moat_sandbox::services`]).
//!
//! A sidecar joins the network namespace of the sandbox's network guard:
//! the sandbox reaches it on loopback under the service's name (an
//! `/etc/hosts` entry), nothing outside the run reaches it, and its own
//! traffic goes through the guard's firewall like the sandbox's. No
//! engine network is created, so Docker and Podman (whose containers use
//! slirp4netns) work the same way, and start-up saves a network create.

use std::path::Path;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig};
use bollard::query_parameters::LogsOptionsBuilder;
use futures_util::StreamExt;
use moat_sandbox::Sidecar;

use crate::connect::DockerRuntime;
use crate::container::{ContainerSpec, LABEL_MANAGED, LABEL_ROLE, LABEL_RUN_ID};
use crate::deps::Dependency;
use crate::error::DockerError;

/// How long a service may take to pass its readiness check.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Overrides [`READY_TIMEOUT`], in seconds.
pub const READY_TIMEOUT_ENV: &str = "MOAT_SERVICE_READY_TIMEOUT";

/// Between two readiness checks.
const READY_POLL: Duration = Duration::from_millis(250);

/// Lines of a failed sidecar's log quoted in the error.
const LOG_LINES_QUOTED: usize = 15;

/// The role label of sidecar containers.
pub const SERVICE_ROLE: &str = "service";

pub use moat_sandbox::services::{service_def, ServiceDef, ServiceOptions, SERVICES};

/// The sidecar for `dep` (a service dependency) with `options`, and the
/// variables the sandbox gets (`moat deps info` shows them). `password`
/// is used unless `options` sets the service's password variable.
pub fn plan_sidecar(
    dep: &Dependency,
    options: &ServiceOptions,
    password: &str,
) -> Result<(Sidecar, Vec<(String, String)>), DockerError> {
    let service = service_def(dep.info.name).ok_or_else(|| DockerError::InvalidDependency {
        name: dep.spec.clone(),
        message: "it is not a service".into(),
    })?;
    let planned = moat_sandbox::services::ServiceRequest {
        service,
        version: dep.version.clone(),
        options: options.clone(),
    }
    .plan(password);
    Ok((planned.sidecar, planned.env))
}

/// `text` with every secret of `sidecar` replaced by `****`.
fn redact(sidecar: &Sidecar, text: &str) -> String {
    sidecar
        .secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "****"))
}

/// The sidecar container's name: `moat-<service>-<run id>`.
pub fn sidecar_container_name(service: &str, run_id: &str) -> String {
    format!("moat-{service}-{run_id}")
}

fn ready_timeout() -> Duration {
    std::env::var(READY_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map_or(READY_TIMEOUT, Duration::from_secs)
}

/// How a command run inside a sidecar ended.
pub(crate) struct ExecOutcome {
    pub(crate) code: i64,
    pub(crate) output: String,
}

impl DockerRuntime {
    /// Pulls each sidecar's image unless it is local (after the image map
    /// was applied by the caller).
    pub async fn ensure_sidecar_images(&self, sidecars: &[Sidecar]) -> Result<(), DockerError> {
        for sidecar in sidecars {
            self.ensure_image(&sidecar.image).await.map_err(|cause| {
                DockerError::ServiceImageUnavailable {
                    service: sidecar.name.clone(),
                    image: sidecar.image.clone(),
                    cause,
                }
            })?;
        }
        Ok(())
    }

    /// Creates and starts the sidecars in the guard's network namespace.
    /// Returns their ids; on failure it removes what it created.
    pub(crate) async fn start_sidecars(
        &self,
        spec: &ContainerSpec,
        guard_id: &str,
    ) -> Result<Vec<String>, DockerError> {
        let mut ids = Vec::new();
        for sidecar in &spec.sidecars {
            match self.create_sidecar(spec, sidecar, guard_id).await {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.remove_all(&ids).await;
                    return Err(e);
                }
            }
        }
        Ok(ids)
    }

    /// Waits until every sidecar with `wait` is ready, in parallel (the
    /// slowest decides, not the sum), and runs its provisioning commands.
    /// On failure their output is saved in `log_dir`; removing them is the
    /// caller's.
    pub(crate) async fn sidecars_ready(
        &self,
        spec: &ContainerSpec,
        ids: &[String],
        log_dir: Option<&Path>,
    ) -> Result<(), DockerError> {
        let checks = spec
            .sidecars
            .iter()
            .zip(ids)
            .filter(|(s, _)| s.wait)
            .map(|(s, id)| self.ready_and_provisioned(spec, s, id));
        let results = futures_util::future::join_all(checks).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            if let Some(dir) = log_dir {
                self.save_sidecar_logs(&spec.sidecars, ids, dir).await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes containers, all at once.
    pub(crate) async fn remove_all(&self, ids: &[String]) {
        futures_util::future::join_all(ids.iter().map(|id| self.remove_by_id(id))).await;
    }

    async fn create_sidecar(
        &self,
        spec: &ContainerSpec,
        sidecar: &Sidecar,
        guard_id: &str,
    ) -> Result<String, DockerError> {
        let name = sidecar_container_name(&sidecar.name, &spec.run_id);
        let mut labels: std::collections::HashMap<String, String> =
            spec.labels.iter().cloned().collect();
        labels.insert(LABEL_RUN_ID.into(), spec.run_id.clone());
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_ROLE.into(), SERVICE_ROLE.into());
        labels.insert("moat.service".into(), sidecar.name.clone());
        let body = ContainerCreateBody {
            image: Some(sidecar.image.clone()),
            cmd: (!sidecar.command.is_empty()).then(|| sidecar.command.clone()),
            env: Some(
                sidecar
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            labels: Some(labels),
            host_config: Some(HostConfig {
                // The sandbox's own network: loopback shared with it, the
                // guard's firewall for the sidecar's own traffic.
                network_mode: Some(format!("container:{guard_id}")),
                runtime: Some(spec.runtime.oci_name().to_owned()),
                memory: sidecar.memory_mb.map(|m| {
                    i64::try_from(m)
                        .unwrap_or(i64::MAX)
                        .saturating_mul(1024 * 1024)
                }),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ulimits: self.container_ulimits(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created =
            self.create_named(&name, body)
                .await
                .map_err(|e| DockerError::ServiceStart {
                    service: sidecar.name.clone(),
                    cause: format!("creating {name} from {}: {e}", sidecar.image),
                })?;
        if let Err(e) = self
            .docker
            .start_container(
                &created,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            self.remove_by_id(&created).await.ok();
            return Err(DockerError::ServiceStart {
                service: sidecar.name.clone(),
                cause: format!("starting {name}: {e}"),
            });
        }
        Ok(created)
    }

    async fn ready_and_provisioned(
        &self,
        spec: &ContainerSpec,
        sidecar: &Sidecar,
        id: &str,
    ) -> Result<(), DockerError> {
        let not_ready = |cause: String, log: String| DockerError::ServiceNotReady {
            service: sidecar.name.clone(),
            cause,
            log: redact(sidecar, &log),
            run_id: spec.run_id.clone(),
        };
        let timeout = ready_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(exited) = self.exit_code(id).await {
                let log = self.log_tail(id, LOG_LINES_QUOTED).await;
                return Err(not_ready(
                    format!("its container exited (code {exited}) before it was ready"),
                    log,
                ));
            }
            let last = match self.exec(id, &sidecar.ready).await {
                Ok(outcome) if outcome.code == 0 => break,
                Ok(outcome) => outcome.output,
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                let log = self.log_tail(id, LOG_LINES_QUOTED).await;
                let check = sidecar.ready.join(" ");
                let said = last.trim();
                return Err(not_ready(
                    format!(
                        "`{check}` did not succeed within {} s{}",
                        timeout.as_secs(),
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(" (last answer: {said})")
                        }
                    ),
                    log,
                ));
            }
            tokio::time::sleep(READY_POLL).await;
        }
        for command in &sidecar.provision {
            let outcome =
                self.exec(id, command)
                    .await
                    .map_err(|e| DockerError::ServiceProvisioning {
                        service: sidecar.name.clone(),
                        command: command.last().cloned().unwrap_or_default(),
                        cause: e.to_string(),
                        image: sidecar.image.clone(),
                    })?;
            if outcome.code != 0 {
                return Err(DockerError::ServiceProvisioning {
                    service: sidecar.name.clone(),
                    command: command.last().cloned().unwrap_or_default(),
                    cause: redact(
                        sidecar,
                        &match outcome.output.trim() {
                            "" => format!("exit code {}", outcome.code),
                            said => format!("exit code {}: {said}", outcome.code),
                        },
                    ),
                    image: sidecar.image.clone(),
                });
            }
        }
        Ok(())
    }

    /// The exit code of a container that is no longer running.
    pub(crate) async fn exit_code(&self, id: &str) -> Option<i64> {
        let inspect = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()?;
        let state = inspect.state?;
        if state.running == Some(true) || state.restarting == Some(true) {
            return None;
        }
        // Created but not yet running counts as running.
        match state.status {
            Some(bollard::models::ContainerStateStatusEnum::EXITED)
            | Some(bollard::models::ContainerStateStatusEnum::DEAD) => state.exit_code,
            _ => None,
        }
    }

    pub(crate) async fn exec(&self, id: &str, argv: &[String]) -> Result<ExecOutcome, DockerError> {
        let created = self
            .docker
            .create_exec(
                id,
                ExecConfig {
                    cmd: Some(argv.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| DockerError::engine("running a command in a service container", e))?;
        let mut output = String::new();
        if let bollard::exec::StartExecResults::Attached {
            output: mut stream, ..
        } = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| DockerError::engine("running a command in a service container", e))?
        {
            while let Some(Ok(chunk)) = stream.next().await {
                output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
        let inspect = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| DockerError::engine("reading a command's exit code", e))?;
        Ok(ExecOutcome {
            code: inspect.exit_code.unwrap_or(-1),
            output,
        })
    }

    /// The last `lines` lines of a container's output.
    pub(crate) async fn log_tail(&self, id: &str, lines: usize) -> String {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        text
    }

    /// Writes each sidecar's whole output to `<dir>/<service>.log`
    /// (secrets replaced), for `moat logs`.
    pub async fn save_sidecar_logs(&self, sidecars: &[Sidecar], ids: &[String], dir: &Path) {
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        for (sidecar, id) in sidecars.iter().zip(ids) {
            let log = self.log_tail(id, 100_000).await;
            let _ = std::fs::write(
                dir.join(format!("{}.log", sidecar.name)),
                redact(sidecar, &log),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deps::parse_dependencies;

    fn dep(spec: &str) -> Dependency {
        parse_dependencies(&[spec.to_owned()]).unwrap().remove(0)
    }

    #[test]
    fn a_service_dependency_plans_its_sidecar_and_secrets_are_redacted() {
        let options = ServiceOptions {
            provision: vec!["psql -c 'select 1'".into()],
            ..ServiceOptions::default()
        };
        let (sidecar, vars) = plan_sidecar(&dep("postgres@16"), &options, "s3cret").unwrap();
        assert_eq!(sidecar.image, "postgres:16");
        assert!(vars.contains(&("MOAT_POSTGRES_PASSWORD".into(), "s3cret".into())));
        assert_eq!(redact(&sidecar, "auth s3cret failed"), "auth **** failed");
        assert!(plan_sidecar(&dep("git"), &options, "pw").is_err());
    }

    #[test]
    fn every_service_of_the_registry_is_in_the_catalogue() {
        for info in crate::deps_list(Some(crate::DepType::Service)) {
            assert!(service_def(info.name).is_some(), "{}", info.name);
        }
        assert_eq!(
            crate::deps_list(Some(crate::DepType::Service)).len(),
            SERVICES.len()
        );
    }
}
