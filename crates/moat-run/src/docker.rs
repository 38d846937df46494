//! Running a plan in a Docker container: image from `dependencies:`,
//! gVisor by default, strict policy through the runtime's network guard,
//! output teed to the terminal and `logs.jsonl`, Ctrl-C stops the
//! container, and nothing is left behind unless `--keep`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use moat_runtime_docker::{
    BuildHooks, ContainerSpec, DockerRuntime, ImageMap, ImageRequest, InjectedFile, NetworkPolicy,
    SandboxRuntime, HOST_GATEWAY_NAME,
};
use moat_storage::{LogStream, LogWriter, RunMetadata, RunStore};
use tokio::io::AsyncWrite;

use crate::environment::SandboxEnv;
use crate::plan::DockerPlan;
use crate::supervise::RunError;
use crate::RunPlan;

/// Runs the container; returns its exit code.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_container(
    plan: &RunPlan,
    docker: &DockerPlan,
    resolved: &[moat_credentials::ResolvedGrant],
    ssh: Option<(&crate::ssh::SshAccess, &crate::ssh::RunningSsh)>,
    meta: &mut RunMetadata,
    run_dir: &std::path::Path,
    registration: &moat_daemon::Registration,
    store: &RunStore,
    home_root: &std::path::Path,
) -> Result<i32, RunError> {
    let rt = DockerRuntime::connect().await.map_err(docker_err)?;
    let runtime = if docker.gvisor {
        // Some installations register gVisor under another name.
        let name = std::env::var("MOAT_GVISOR_RUNTIME")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| moat_runtime_docker::GVISOR_RUNTIME.to_string());
        rt.require_gvisor(&name).await.map_err(docker_err)?;
        if ssh.is_some() {
            require_host_uds(&rt, &name).await?;
        }
        SandboxRuntime::Gvisor { runtime: name }
    } else {
        SandboxRuntime::Runc
    };

    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let map = ImageMap::load(Some(home_root)).map_err(docker_err)?;
    let mut request = ImageRequest::new(
        docker.dependencies.clone(),
        uid,
        gid,
        run_dir.join("build.log"),
    );
    request.base_image = docker.base_image.clone();
    request.hooks = BuildHooks {
        post_build_root: docker.post_build_root.iter().cloned().collect(),
        post_build: docker.post_build.iter().cloned().collect(),
    };
    request.rebuild = docker.rebuild;
    request.verbose = docker.verbose;
    request.cache_dir = Some(home_root.join("cache"));
    let image = rt.resolve_image(&request, &map).await.map_err(docker_err)?;
    for note in &image.notes {
        let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("moat: {note}\n"));
    }
    meta.image = Some(image.tag.clone());
    meta.image_ready_at = Some(chrono::Utc::now());

    let proxy_authority = format!("{HOST_GATEWAY_NAME}:{}", registration.port);
    let env = SandboxEnv {
        run_id: meta.id.as_str(),
        run_name: &meta.name,
        proxy_url: format!(
            "http://moat:{}@{proxy_authority}",
            registration.token.expose()
        ),
        proxy_authority: proxy_authority.clone(),
        ca_pem: &registration.ca_cert_pem,
        grants: resolved,
        user_env: &plan.env,
        interactive: plan.interactive,
    };
    let mut spec = ContainerSpec::new(
        meta.id.as_str(),
        &image.tag,
        plan.workspace.clone(),
        plan.command.clone(),
    );
    spec.env = env.variables();
    spec.env.push((
        "MOAT_HOST_GATEWAY".to_owned(),
        moat_capture::HOST_GATEWAY_NAME.to_owned(),
    ));
    spec.files = env
        .files()
        .into_iter()
        .map(|f| InjectedFile {
            path_in_sandbox: f.path_in_sandbox,
            contents: f.contents,
            mode: f.mode,
        })
        .collect();
    spec.mounts = plan
        .mounts
        .iter()
        .map(|m| moat_runtime_docker::BindMount {
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
        })
        .collect();
    if let Some((access, running)) = ssh {
        let ssh = access.sandbox(running)?;
        spec.mounts
            .extend(ssh.mounts.into_iter().map(|(source, target, read_only)| {
                moat_runtime_docker::BindMount {
                    source,
                    target,
                    read_only,
                }
            }));
        spec.env.retain(|(k, _)| *k != ssh.auth_sock.0);
        spec.env.push(ssh.auth_sock);
        spec.files
            .extend(ssh.files.into_iter().map(|f| InjectedFile {
                path_in_sandbox: f.path_in_sandbox,
                contents: f.contents,
                mode: f.mode,
            }));
    }
    spec.user = Some((
        if uid == 0 {
            moat_runtime_docker::FALLBACK_UID
        } else {
            uid
        },
        if gid == 0 {
            moat_runtime_docker::FALLBACK_UID
        } else {
            gid
        },
    ));
    // `-i`: stdin attached, and a terminal of the container's own when
    // ours is one (never our terminal itself).
    let tty_size = if plan.interactive {
        crate::terminal::size()
    } else {
        None
    };
    spec.interactive = plan.interactive;
    spec.tty = tty_size.is_some();
    if let (Some((rows, cols)), false) = (tty_size, spec.command.is_empty()) {
        // Engines before API 1.42 cannot size a TTY before the container
        // starts, and resizing after the start races with the command's
        // first look at its window: size it in the container, then exec.
        let mut command = vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("stty rows {rows} cols {cols} 2>/dev/null; exec \"$@\""),
            "sh".to_string(),
        ];
        command.append(&mut spec.command);
        spec.command = command;
    }
    spec.memory_mb = plan.limits.memory_mb;
    spec.cpus = plan.limits.cpus;
    spec.runtime = runtime;
    spec.hostname = meta.name.replace('_', "-");
    // Whatever the policy, the container's only way out is the proxy:
    // clients that ignore the proxy variables are captured by the guard.
    let relay_binary = std::env::current_exe().map_err(|e| {
        RunError::Other(format!(
            "locating the moat binary for the container's capture relay: {e}"
        ))
    })?;
    spec.network = NetworkPolicy::Captured {
        proxy_host: HOST_GATEWAY_NAME.to_string(),
        proxy_port: registration.port,
        authorization: moat_capture::ProxyAuthorization::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("moat:{}", registration.token.expose()))
        )),
        relay_binary,
    };

    let container = rt.create(&spec).await.map_err(docker_err)?;
    meta.container_id = Some(container.id.clone());
    store.save(meta)?;

    let logs = Arc::new(
        LogWriter::open(&run_dir.join("logs.jsonl"))
            .map_err(|e| RunError::Other(format!("opening the run log: {e}")))?,
    );
    let result = async {
        if plan.interactive {
            return run_attached(&rt, &container, tty_size, meta, store).await;
        }
        // Attached before the start, drained to its end before the exit is
        // reported: the engine's log, followed after the start, loses
        // output of short commands, and a last line without a newline.
        let attached = rt.attach_output(&container).await.map_err(docker_err)?;
        rt.start(&container).await.map_err(docker_err)?;
        meta.state = moat_storage::RunState::Running;
        meta.started_at = Some(chrono::Utc::now());
        store.save_progress(meta)?;
        let mut out = Tee::new(tokio::io::stdout(), LogStream::Stdout, logs.clone());
        let mut err = Tee::new(tokio::io::stderr(), LogStream::Stderr, logs.clone());
        // SIGINT or SIGTERM stops the container; its output is still read
        // to the end.
        let stopper = {
            let (rt, container) = (rt.clone(), container.clone());
            tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut i), Ok(mut t)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    return;
                };
                tokio::select! { _ = i.recv() => {}, _ = t.recv() => {} }
                let _ = rt.stop(&container, 10).await;
            })
        };
        let drained = rt.drain_output(attached, &mut out, &mut err).await;
        stopper.abort();
        // A closed terminal (`moat run ... | head -1`) is no reason to lose
        // the exit code: the run log has the output.
        if let Err(e) = drained {
            tracing::warn!(error = %e, "copying the container's output");
        }
        out.finish();
        err.finish();
        rt.wait(&container).await.map_err(docker_err)
    }
    .await;
    if !docker.keep {
        if let Err(e) = rt.remove(&container).await {
            tracing::warn!(error = %e, "removing the container");
        }
    }
    let code = result?;
    Ok(i32::try_from(code).unwrap_or(1))
}

/// `moat run -i` on Docker: our stdin goes to the container, its output to
/// our terminal (not to `logs.jsonl`, as on the native runtime). With a
/// terminal, ours is in raw mode, so keys (Ctrl-C included) reach the
/// container's own terminal, which follows our window size.
async fn run_attached(
    rt: &DockerRuntime,
    container: &moat_runtime_docker::Container,
    tty_size: Option<(u16, u16)>,
    meta: &mut RunMetadata,
    store: &RunStore,
) -> Result<i64, RunError> {
    let attached = rt.attach(container).await.map_err(docker_err)?;
    rt.start(container).await.map_err(docker_err)?;
    meta.state = moat_storage::RunState::Running;
    meta.started_at = Some(chrono::Utc::now());
    store.save(meta)?;
    let raw = tty_size.map(|_| crate::terminal::RawMode::enter());
    let resizer = tty_size.map(|(rows, cols)| {
        let (rt, container) = (rt.clone(), container.clone());
        tokio::spawn(async move {
            let _ = rt.resize(&container, rows, cols).await;
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some((rows, cols)) = crate::terminal::size() {
                    let _ = rt.resize(&container, rows, cols).await;
                }
            }
        })
    });
    let (keys, stdin) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    // Blocks in read(2) until input or end of file; not joined, it ends
    // with the process.
    let _ = std::thread::Builder::new()
        .name("moat-stdin".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            let mut input = std::io::stdin().lock();
            loop {
                match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if keys.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
    let pumped = rt
        .pump_attached(
            attached,
            stdin,
            &mut tokio::io::stdout(),
            &mut tokio::io::stderr(),
        )
        .await;
    if let Some(r) = resizer {
        r.abort();
    }
    drop(raw);
    pumped.map_err(docker_err)?;
    rt.wait(container).await.map_err(docker_err)
}

/// gVisor refuses connections to host Unix sockets, such as the SSH agent
/// socket moat mounts, unless runsc runs with `--host-uds=open`.
async fn require_host_uds(rt: &DockerRuntime, name: &str) -> Result<(), RunError> {
    let args = rt.runtime_args(name).await.map_err(docker_err)?;
    let allowed = args.iter().any(|a| {
        matches!(
            a.as_str(),
            "--host-uds=open" | "--host-uds=all" | "-host-uds=open" | "-host-uds=all"
        ) || a.starts_with("--fsgofer-host-uds")
    });
    if allowed {
        return Ok(());
    }
    Err(RunError::Other(format!(
        "SSH grants under gVisor need runsc to open host Unix sockets (the SSH agent socket), \
         and the {name:?} runtime is registered without --host-uds=open.\n\
         To fix: add \"--host-uds=open\" to its runtimeArgs in /etc/docker/daemon.json, e.g.\n  \
         {{\"runtimes\":{{\"{name}\":{{\"path\":\"/usr/bin/runsc\",\"runtimeArgs\":[\"--network=host\",\"--host-uds=open\"]}}}}}}\n\
         then restart dockerd; or run this project without gVisor: moat run --no-sandbox"
    )))
}

fn docker_err(e: moat_runtime_docker::DockerError) -> RunError {
    RunError::Other(e.to_string())
}

/// Writes through to `inner` and records complete lines in the run log.
/// When `inner` fails (the terminal or pipe went away), the output is
/// still recorded to the end: the container is never left blocked on a
/// reader that stopped.
struct Tee<W> {
    inner: W,
    stream: LogStream,
    logs: Arc<LogWriter>,
    pending: Vec<u8>,
    inner_gone: bool,
}

impl<W> Tee<W> {
    fn new(inner: W, stream: LogStream, logs: Arc<LogWriter>) -> Self {
        Tee {
            inner,
            stream,
            logs,
            pending: Vec::new(),
            inner_gone: false,
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            let _ = self
                .logs
                .write_line(self.stream, text.trim_end_matches('\r'));
        }
    }

    fn finish(&mut self) {
        if !self.pending.is_empty() {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            let _ = self.logs.write_line(self.stream, &text);
            self.pending.clear();
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tee<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.inner_gone {
            this.record(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.record(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "the run's output can no longer be shown; still recorded");
                this.inner_gone = true;
                this.record(buf);
                Poll::Ready(Ok(buf.len()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.inner_gone {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(_)) => {
                self.inner_gone = true;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.inner_gone {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
