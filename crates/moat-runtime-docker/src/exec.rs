//! `moat exec` on a container runtime: the engine's exec, through the
//! same gate as the workload's command so the exec'd command gets the
//! setuid/setgid filter too (the engine's exec knows nothing of it). It
//! runs as the container's user, in its working directory, with its
//! environment (the proxy variables and the run's token included), in its
//! network namespace behind the guard.
//!
//! The engine has no call to signal an exec'd process: with a terminal,
//! Ctrl-C reaches the command through it; without one, a signal to
//! `moat exec` ends the attachment and the command runs on to its end
//! (as `docker exec` does).

use std::io::Write;
use std::sync::Arc;

use futures_util::StreamExt as _;

use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use moat_sandbox::{
    terminal, DriverError, ExecRequest, OutputSinks, RunningSandbox, SandboxControl, Stdio,
};

use crate::driver::{stdin_channel, ContainerDriver, SyncSink};
use crate::error::DockerError;
use crate::gate::{AWAIT_GUARD_SUBCOMMAND, MOAT_IN_CONTAINER};

/// Starts `request` in its run's container.
pub(crate) fn start<'d>(
    driver: &'d ContainerDriver,
    request: &ExecRequest,
    output: OutputSinks,
) -> Result<Box<dyn RunningSandbox + 'd>, DriverError> {
    let container = request.runtime_id.clone().ok_or_else(|| {
        DriverError::hinted(DockerError::InvalidSpec {
            message: format!("run {} has no container recorded", request.run_id),
        })
    })?;
    let tty = match request.stdio {
        Stdio::Terminal => terminal::size(),
        _ => None,
    };
    let stdin = request.stdio != Stdio::Detached;
    let mut command = vec![
        MOAT_IN_CONTAINER.to_owned(),
        AWAIT_GUARD_SUBCOMMAND.to_owned(),
        "--".to_owned(),
    ];
    command.extend(request.command.iter().cloned());
    let mut env = Vec::new();
    if let (Some(_), Ok(term)) = (tty, std::env::var("TERM")) {
        env.push(format!("TERM={term}"));
    }
    let docker = driver.engine().client().clone();
    let started = driver.block_on(async {
        let created = docker
            .create_exec(
                &container,
                CreateExecOptions {
                    cmd: Some(command),
                    env: Some(env),
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty.is_some()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| DockerError::engine("running a command in the run's container", e))?;
        let results = docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: tty.is_some(),
                    output_capacity: None,
                }),
            )
            .await
            .map_err(|e| DockerError::engine("running a command in the run's container", e))?;
        if let Some((rows, cols)) = tty {
            let size = ResizeExecOptions {
                height: rows,
                width: cols,
            };
            let _ = docker.resize_exec(&created.id, size).await;
        }
        Ok::<_, DockerError>((created.id, results))
    });
    let (exec_id, results) = started.map_err(DriverError::hinted)?;
    let StartExecResults::Attached {
        output: stream,
        input,
    } = results
    else {
        return Err(DriverError::hinted(DockerError::InvalidSpec {
            message: "the engine started the command detached".into(),
        }));
    };
    let control = Arc::new(ExecControl {
        docker: docker.clone(),
        exec_id: exec_id.clone(),
        handle: driver.handle(),
        tty: tty.is_some(),
    });
    let raw = tty.map(|_| terminal::RawMode::enter());
    Ok(Box::new(ExecRunning {
        driver,
        container,
        exec_id,
        attached: Some(bollard::container::AttachContainerResults {
            output: stream,
            input,
        }),
        output: Some(output),
        stdin,
        raw,
        control,
    }))
}

struct ExecControl {
    docker: bollard::Docker,
    exec_id: String,
    handle: tokio::runtime::Handle,
    tty: bool,
}

impl SandboxControl for ExecControl {
    fn signal(&self, _sig: i32) {
        // No engine call signals an exec'd process (see the module
        // documentation): the attachment ends with moat exec.
    }

    fn window_changed(&self) {
        if !self.tty {
            return;
        }
        if let Some((rows, cols)) = terminal::size() {
            let (docker, id) = (self.docker.clone(), self.exec_id.clone());
            self.handle.spawn(async move {
                let size = ResizeExecOptions {
                    height: rows,
                    width: cols,
                };
                let _ = docker.resize_exec(&id, size).await;
            });
        }
    }
}

struct ExecRunning<'d> {
    driver: &'d ContainerDriver,
    container: String,
    exec_id: String,
    attached: Option<bollard::container::AttachContainerResults>,
    output: Option<OutputSinks>,
    stdin: bool,
    raw: Option<terminal::RawMode>,
    control: Arc<ExecControl>,
}

impl RunningSandbox for ExecRunning<'_> {
    fn runtime_id(&self) -> Option<String> {
        None
    }

    fn control(&self) -> Arc<dyn SandboxControl> {
        self.control.clone()
    }

    fn wait(mut self: Box<Self>) -> Result<i32, DriverError> {
        let engine = self.driver.engine();
        let docker = engine.client().clone();
        let (Some(attached), Some(sinks)) = (self.attached.take(), self.output.take()) else {
            return Ok(moat_sandbox::EXEC_RUN_ENDED);
        };
        let input = if self.stdin {
            stdin_channel()
        } else {
            // Closed at once: the command reads end-of-file.
            tokio::sync::mpsc::channel(1).1
        };
        let mut out = SyncSink(sinks.stdout);
        let mut err = SyncSink(sinks.stderr);
        let container = self.container.clone();
        let code = self.driver.block_on(async {
            // The engine does not always close an exec's stream when its
            // container stops (seen under gVisor): the container's end
            // ends the wait too.
            let stopped = async {
                let options = bollard::query_parameters::WaitContainerOptionsBuilder::new()
                    .condition("not-running")
                    .build();
                let _ = docker
                    .wait_container(&container, Some(options))
                    .next()
                    .await;
            };
            tokio::select! {
                pumped = engine.pump_attached(attached, input, &mut out, &mut err) => {
                    if let Err(e) = pumped {
                        let _ = writeln!(err.0, "moat: copying the command's output: {e}");
                    }
                }
                () = stopped => return None,
            }
            // The engine may record the exit a moment after the stream ends.
            for _ in 0..40 {
                match docker.inspect_exec(&self.exec_id).await {
                    Ok(inspect) if inspect.running == Some(true) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Ok(inspect) => return inspect.exit_code,
                    Err(_) => return None,
                }
            }
            None
        });
        drop(self.raw.take());
        // An exec killed with its container may still have a code.
        let killed = matches!(code, Some(c) if c == 137 || c == 143);
        let container_runs = self.driver.block_on(async {
            // A container being stopped kills its execs a moment before
            // it is seen stopped.
            for _ in 0..if killed { 40 } else { 1 } {
                let inspect = docker
                    .inspect_container(
                        &container,
                        None::<bollard::query_parameters::InspectContainerOptions>,
                    )
                    .await
                    .ok();
                if inspect.and_then(|i| i.state).and_then(|s| s.running) != Some(true) {
                    return false;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            true
        });
        if code.is_none() || !container_runs {
            let _ = writeln!(err.0, "{}", moat_sandbox::EXEC_RUN_ENDED_NOTE);
        }
        Ok(code.map_or(moat_sandbox::EXEC_RUN_ENDED, |c| {
            i32::try_from(c).unwrap_or(1)
        }))
    }
}
