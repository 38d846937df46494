//! Running one plan to completion.

use std::io::{Read, Write};
use std::sync::Arc;

use base64::Engine as _;
use chrono::Utc;
use moat_credentials::{
    resolve_grants, CredentialError, CredentialStore, GrantName, ProviderRegistry, ResolveError,
};
use moat_daemon::{
    ClientError, DaemonClient, InjectionSpec, McpSpec, RunSpec, SecretString, StartOptions,
};
use moat_home::{FileLock, MoatHome};
use moat_runtime_native::{
    BindMount, CaptureSpec, NetworkMode, ProxyAuthorization, SandboxError, SandboxSpec, StdioMode,
};
use moat_storage::{
    generate_name, LogStream, LogWriter, RunId, RunMetadata, RunState, RunStore, StorageError,
};

use crate::environment::SandboxEnv;
use crate::RunPlan;

/// Ports whose connections are handed to the proxy from every native
/// sandbox, for clients that ignore the proxy variables.
const CAPTURED_PORTS: &[u16] = &[80, 443];

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Run id.
    pub id: String,
    /// Run name.
    pub name: String,
    /// Exit code (128+N for signal N).
    pub exit_code: i32,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Grants missing, expired or unreadable (all listed).
    #[error(transparent)]
    Grants(#[from] ResolveError),
    /// An MCP server's grant is not stored.
    #[error(
        "MCP server '{server}' requires grant 'mcp-{server}' but it's not configured\n\
         To fix:\n  moat grant mcp {server}\nThen run again."
    )]
    McpGrantMissing {
        /// The MCP server's name.
        server: String,
    },
    /// An MCP server's `auth.grant` names a grant that is neither its own
    /// token nor one the run holds for the server's host.
    #[error(
        "MCP server '{server}' may not use grant '{grant}': {why}.\n\
         Moat would hand that credential to the MCP server's host.\n\
         To fix: store a token for the server and use it:\n  moat grant mcp {server}\n\
         and in moat.yaml: auth: {{grant: mcp:{server}, header: ...}}"
    )]
    McpGrantMisused {
        /// The MCP server's name.
        server: String,
        /// The grant it names.
        grant: String,
        /// Why it may not.
        why: String,
    },
    /// Another active run has this name.
    #[error(
        "agent \"{0}\" is already running. Use --name to specify a different name, or stop the existing agent first"
    )]
    AlreadyRunning(String),
    /// The proxy daemon failed.
    #[error(transparent)]
    Daemon(#[from] ClientError),
    /// The sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// Run storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The credential store failed.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// SSH grants or the SSH agent.
    #[error(transparent)]
    Ssh(#[from] moat_ssh::SshError),
    /// A mount, or the workspace, would put a protected host path into
    /// the sandbox (the message names the mount, the path and why).
    #[error("{0}")]
    MountRefused(String),
    /// The workspace's configuration changed during a run and was not
    /// reviewed, or its trust record could not be kept.
    #[error(transparent)]
    Trust(#[from] moat_trust::TrustError),
    /// Anything else, with its explanation.
    #[error("{0}")]
    Other(String),
}

impl From<moat_home::HomeError> for RunError {
    fn from(e: moat_home::HomeError) -> Self {
        RunError::Storage(StorageError::Home(e))
    }
}

/// An MCP server may carry a non-MCP grant only when one of that grant's
/// hosts covers the server's host: otherwise the relay would send, say,
/// the GitHub token to whatever URL moat.yaml names.
fn check_mcp_hosts(
    plan: &RunPlan,
    resolved: &[moat_credentials::ResolvedGrant],
) -> Result<(), RunError> {
    for mcp in &plan.mcp {
        let Some((grant, _)) = &mcp.auth else {
            continue;
        };
        if matches!(grant, GrantName::Mcp(_)) {
            continue;
        }
        let host = url_host(&mcp.url).unwrap_or_default();
        let hosts: Vec<&str> = resolved
            .iter()
            .filter(|r| &r.grant == grant)
            .flat_map(|r| r.injections.iter().map(|i| i.host.as_str()))
            .collect();
        let covered = hosts.iter().any(|h| {
            moat_policy::HostPattern::parse(h).is_ok_and(|p| !host.is_empty() && p.matches(&host))
        });
        if !covered {
            return Err(RunError::McpGrantMisused {
                server: mcp.name.clone(),
                grant: grant.to_string(),
                why: format!(
                    "the server's host {host} is not one of its hosts ({})",
                    hosts.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The host of an absolute URL (IPv6 in brackets), without port.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let host = if authority.starts_with('[') {
        authority.get(..=authority.find(']')?)?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Runs `plan` to completion and returns its exit code. Blocks; sets up
/// its own async runtime for talking to the daemon.
pub fn execute(home: &MoatHome, plan: &RunPlan) -> Result<RunOutcome, RunError> {
    // Before anything is resolved or started: from here on the plan's
    // mount sources are real paths that passed the floors.
    let floors = crate::mounts::Floors::from_env(home);
    let plan = &RunPlan {
        mounts: crate::mounts::prepare(&floors, &plan.workspace, &plan.mounts)?,
        ..plan.clone()
    };
    let credentials = CredentialStore::new(home.clone(), plan.profile.clone());
    let registry = ProviderRegistry::load(&home.providers_file())?;

    // MCP servers first: their message names the server, which is what the
    // user wrote in moat.yaml.
    let mut grants: Vec<GrantName> = plan.grants.clone();
    for mcp in &plan.mcp {
        if let Some((grant, _)) = &mcp.auth {
            if !matches!(grant, GrantName::Mcp(_)) {
                // Another service's grant: only one the run already holds,
                // and only for one of its hosts (checked once resolved).
                if !plan.grants.contains(grant) {
                    return Err(RunError::McpGrantMisused {
                        server: mcp.name.clone(),
                        grant: grant.to_string(),
                        why: "the run does not hold it (add it to grants: or --grant, or use the server's own token)".into(),
                    });
                }
                continue;
            }
            let stem = grant.file_stem().unwrap_or_default();
            if !credentials.contains(&stem) {
                return Err(RunError::McpGrantMissing {
                    server: mcp.name.clone(),
                });
            }
            grants.push(grant.clone());
        }
    }
    let resolved = resolve_grants(&credentials, &registry, &grants, Utc::now())?;
    check_mcp_hosts(plan, &resolved)?;
    let ssh = crate::ssh::SshAccess::resolve(home, plan.profile.as_ref(), &grants)?;

    let runs = RunStore::new(home.clone());
    moat_home::ensure_private_dir(&home.runs_dir())?;
    let mut meta = {
        // Claiming a name and recording the run happen under one lock, so
        // two runs cannot take the same name.
        let _names = FileLock::acquire(&home.runs_dir().join(".names.lock"))?;
        let name = match &plan.name {
            Some(name) => {
                if let Some(mut existing) = runs.active_named(name)? {
                    runs.reconcile(&mut existing)?;
                    if existing.state.is_active() {
                        return Err(RunError::AlreadyRunning(name.clone()));
                    }
                }
                name.clone()
            }
            None => unique_name(&runs)?,
        };
        let mut meta = RunMetadata::new(
            RunId::generate(),
            name,
            plan.workspace.clone(),
            plan.command.clone(),
        );
        meta.grants = grants.iter().map(ToString::to_string).collect();
        meta.policy = if plan.network.strict {
            "strict"
        } else {
            "permissive"
        }
        .into();
        meta.runtime = match plan.runtime {
            crate::RuntimePlan::Native => "native",
            crate::RuntimePlan::Docker(_) => "docker",
        }
        .into();
        meta.interactive = plan.interactive;
        meta.detached = plan.detached;
        meta.supervisor_pid = Some(std::process::id());
        meta.supervisor_start = moat_storage::process_start_time(std::process::id());
        runs.create(&meta)?;
        // Room to record the run's end even if MOAT_HOME fills up meanwhile.
        if let Err(e) = runs.reserve(&meta.id) {
            tracing::warn!(error = %e, "setting space aside for the run's final state");
        }
        meta
    };
    let run_dir = runs.dir(&meta.id);

    // Open on the workspace before the sandbox exists, closed on every way
    // out that returns here: a run killed before closing stays open, which
    // is what makes its changes suspect.
    let result = match moat_trust::open_run(home, &plan.workspace, meta.id.as_str(), &meta.name) {
        Ok(()) => {
            let result = start_and_wait(home, plan, &resolved, ssh.as_ref(), &mut meta, &run_dir);
            if let Err(e) = moat_trust::close_run(home, &plan.workspace, meta.id.as_str()) {
                tracing::warn!(error = %e, "recording the run's end in the trust record");
            }
            result
        }
        Err(e) => Err(e.into()),
    };
    match &result {
        Ok(code) => {
            meta.state = RunState::Stopped;
            meta.exit_code = Some(*code);
        }
        Err(e) => {
            meta.state = RunState::Failed;
            meta.error = Some(e.to_string());
        }
    }
    meta.stopped_at = Some(Utc::now());
    // On a full disk this records the run as failed, with the reason.
    if let Some(reason) = runs.save_final(&mut meta)? {
        return Err(RunError::Other(reason));
    }
    let exit_code = result?;
    Ok(RunOutcome {
        id: meta.id.to_string(),
        name: meta.name.clone(),
        exit_code,
    })
}

fn unique_name(runs: &RunStore) -> Result<String, RunError> {
    for _ in 0..20 {
        let name = generate_name();
        if runs.active_named(&name)?.is_none() {
            return Ok(name);
        }
    }
    Ok(format!(
        "{}-{}",
        generate_name(),
        &RunId::generate().as_str()[4..8]
    ))
}

fn start_and_wait(
    home: &MoatHome,
    plan: &RunPlan,
    resolved: &[moat_credentials::ResolvedGrant],
    ssh: Option<&crate::ssh::SshAccess>,
    meta: &mut RunMetadata,
    run_dir: &std::path::Path,
) -> Result<i32, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Other(format!("starting the async runtime: {e}")))?;

    // Containers reach the proxy on the Docker bridge's gateway address;
    // the daemon listens there too, on the same port.
    let listen = match &plan.runtime {
        crate::RuntimePlan::Native => Vec::new(),
        crate::RuntimePlan::Docker(_) => runtime.block_on(async {
            let rt = moat_runtime_docker::DockerRuntime::connect()
                .await
                .map_err(|e| RunError::Other(e.to_string()))?;
            let gateway = rt
                .bridge_gateway()
                .await
                .map_err(|e| RunError::Other(e.to_string()))?;
            Ok::<_, RunError>(gateway.into_iter().collect())
        })?,
    };
    let mut spec = run_spec(listen, plan, resolved, meta, run_dir);
    spec.ssh_hosts = ssh.map(|s| s.host_specs()).unwrap_or_default();
    let kept_spec = spec.clone();
    let (client, registration) = runtime.block_on(async {
        let client = DaemonClient::connect_or_start(home, &StartOptions::from_env()?).await?;
        let registration = client.register(spec).await?;
        Ok::<_, ClientError>((client, registration))
    })?;
    // From here on, a daemon that dies is replaced and the run registered
    // again with the same token.
    let watchdog = crate::watchdog::Watchdog::start(
        home.clone(),
        &client,
        kept_spec,
        &registration,
        Some(run_dir.join("network.jsonl")),
    );
    let run_id = meta.id.to_string();
    let unregister = |runtime: &tokio::runtime::Runtime| {
        if let Err(e) = runtime.block_on(client.unregister(&run_id)) {
            tracing::warn!(error = %e, "unregistering run from the proxy daemon");
        }
    };

    // A root caller's containers run as an unprivileged uid, which must
    // be able to open the agent socket; native sandboxes map our own uid.
    let foreign_uid = matches!(
        (&plan.runtime, rustix::process::getuid().is_root()),
        (crate::RuntimePlan::Docker(_), true)
    );
    let running_ssh = match ssh
        .map(|s| s.start(&run_id, &client, foreign_uid))
        .transpose()
    {
        Ok(r) => r,
        Err(e) => {
            unregister(&runtime);
            return Err(e);
        }
    };
    let ssh_ctx = ssh.zip(running_ssh.as_ref());

    let result = match &plan.runtime {
        crate::RuntimePlan::Native => {
            run_sandbox(plan, resolved, ssh_ctx, meta, run_dir, &registration, home)
        }
        crate::RuntimePlan::Docker(docker) => runtime.block_on(crate::docker::run_container(
            plan,
            docker,
            resolved,
            ssh_ctx,
            meta,
            run_dir,
            &registration,
            &RunStore::new(home.clone()),
            home.root(),
        )),
    };
    drop(running_ssh);
    let failure = watchdog.failure();
    drop(watchdog);
    unregister(&runtime);
    match failure {
        Some(cause) => Err(RunError::Other(cause)),
        None => result,
    }
}

fn run_spec(
    listen: Vec<String>,
    plan: &RunPlan,
    resolved: &[moat_credentials::ResolvedGrant],
    meta: &RunMetadata,
    run_dir: &std::path::Path,
) -> RunSpec {
    let mut injections = Vec::new();
    for grant in resolved {
        for inj in &grant.injections {
            injections.push(InjectionSpec {
                host: inj.host.clone(),
                name: inj.name.clone(),
                value: SecretString::new(inj.value.expose()),
                grant: grant.grant.to_string(),
            });
        }
    }
    let mcp = plan
        .mcp
        .iter()
        .map(|m| McpSpec {
            name: m.name.clone(),
            url: m.url.clone(),
            headers: m
                .auth
                .as_ref()
                .and_then(|(grant, header)| {
                    resolved.iter().find(|r| &r.grant == grant).map(|r| {
                        vec![InjectionSpec {
                            host: String::new(),
                            name: header.clone(),
                            value: SecretString::new(r.credential.secret.expose()),
                            grant: grant.to_string(),
                        }]
                    })
                })
                .unwrap_or_default(),
        })
        .collect();
    RunSpec {
        run_id: meta.id.to_string(),
        supervisor_pid: Some(std::process::id()),
        policy: meta.policy.clone(),
        rules: plan.network.rules.clone(),
        allow_hosts: plan.network.allow_hosts.clone(),
        injections,
        mcp,
        trace_path: Some(run_dir.join("network.jsonl")),
        audit_path: Some(run_dir.join("audit.jsonl")),
        ssh_hosts: Vec::new(),
        host_ports: plan.network.host_ports.clone(),
        listen,
        profile: plan.profile.as_ref().map(|p| p.to_string()),
        token: None,
    }
}

fn run_sandbox(
    plan: &RunPlan,
    resolved: &[moat_credentials::ResolvedGrant],
    ssh: Option<(&crate::ssh::SshAccess, &crate::ssh::RunningSsh)>,
    meta: &mut RunMetadata,
    run_dir: &std::path::Path,
    registration: &moat_daemon::Registration,
    home: &MoatHome,
) -> Result<i32, RunError> {
    // Every sandbox has a network of its own whatever the policy; its one
    // way out is the proxy, also for clients that ignore the proxy
    // variables (their connections to ports 80 and 443 are captured).
    let relay_port = registration.port.max(1);
    let network = NetworkMode::Isolated {
        relay_port,
        proxy_socket: registration.proxy_socket.clone(),
        capture: Some(CaptureSpec {
            proxy_authorization: ProxyAuthorization::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("moat:{}", registration.token.expose()))
            )),
            ports: CAPTURED_PORTS
                .iter()
                .copied()
                .filter(|p| *p != relay_port)
                .collect(),
            host_ports: plan.network.host_ports.clone(),
        }),
    };
    let proxy_authority = format!("127.0.0.1:{relay_port}");
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
    let mut spec = SandboxSpec::new(plan.workspace.clone(), plan.command.clone());
    spec.hostname = meta.name.replace('_', "-");
    spec.env = env.variables();
    spec.env.push((
        "MOAT_HOST_GATEWAY".to_owned(),
        moat_runtime_native::HOST_GATEWAY_NAME.to_owned(),
    ));
    spec.files = env.files();
    spec.network = network;
    spec.mounts = plan
        .mounts
        .iter()
        .map(|m| BindMount {
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
        })
        .collect();
    if let Some((access, running)) = ssh {
        let ssh = access.sandbox(running)?;
        spec.mounts.extend(
            ssh.mounts
                .into_iter()
                .map(|(source, target, read_only)| BindMount {
                    source,
                    target,
                    read_only,
                }),
        );
        spec.env.retain(|(k, _)| *k != ssh.auth_sock.0);
        spec.env.push(ssh.auth_sock);
        spec.files.extend(ssh.files);
    }
    spec.limits.memory_bytes = plan.limits.memory_mb.map(|mb| mb.saturating_mul(1 << 20));
    spec.limits.millicpus = plan
        .limits
        .cpus
        .map(|cpus| (cpus * 1000.0).round().clamp(1.0, f64::from(u32::MAX)) as u32);
    spec.stdio = if plan.interactive {
        match crate::terminal::size() {
            Some((rows, cols)) => StdioMode::Pty { rows, cols },
            // Not a terminal (a pipe, a file): nothing to relay.
            None => StdioMode::Inherit,
        }
    } else if plan.detached {
        StdioMode::Piped
    } else {
        StdioMode::PipedOutput
    };

    let mut sandbox = moat_runtime_native::spawn(&spec)?;
    meta.state = RunState::Running;
    meta.started_at = Some(Utc::now());
    RunStore::new(home.clone()).save_progress(meta)?;

    let logs = Arc::new(
        LogWriter::open(&run_dir.join("logs.jsonl"))
            .map_err(|e| RunError::Other(format!("opening the run log: {e}")))?,
    );
    let mut pumps = Vec::new();
    if let Some(out) = sandbox.take_stdout() {
        pumps.push(pump(
            out,
            std::io::stdout(),
            LogStream::Stdout,
            logs.clone(),
        ));
    }
    if let Some(err) = sandbox.take_stderr() {
        pumps.push(pump(
            err,
            std::io::stderr(),
            LogStream::Stderr,
            logs.clone(),
        ));
    }

    let (relay, winch) = match sandbox.take_pty() {
        Some(master) => {
            let winch = master.try_clone().ok();
            let relay = crate::terminal::TerminalRelay::start(master)
                .map_err(|e| RunError::Other(format!("relaying the terminal: {e}")))?;
            (Some(relay), winch)
        }
        None => (None, None),
    };

    let signaller = sandbox.signaller();
    let forwarder = forward_signals(signaller, winch);
    let exit = sandbox.wait()?;
    for p in pumps {
        let _ = p.join();
    }
    drop(forwarder);
    if let Some(relay) = relay {
        relay.finish();
    }
    Ok(exit.code)
}

/// Copies a sandbox stream to ours as it arrives (partial lines included,
/// so prompts show), and records complete lines in the run log.
fn pump<R, W>(
    mut from: R,
    mut to: W,
    stream: LogStream,
    logs: Arc<LogWriter>,
) -> std::thread::JoinHandle<()>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let _ = to.write_all(&buf[..n]);
            let _ = to.flush();
            pending.extend_from_slice(&buf[..n]);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                let _ = logs.write_line(stream, text.trim_end_matches('\r'));
            }
            if pending.len() > 64 * 1024 {
                let text = String::from_utf8_lossy(&pending).into_owned();
                let _ = logs.write_line(stream, &text);
                pending.clear();
            }
        }
        if !pending.is_empty() {
            let _ = logs.write_line(stream, &String::from_utf8_lossy(&pending));
        }
    })
}

/// Forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to the sandbox until
/// dropped.
fn forward_signals(
    signaller: moat_runtime_native::Signaller,
    winch: Option<std::os::fd::OwnedFd>,
) -> SignalForwarder {
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let kinds = [
                (SignalKind::interrupt(), libc::SIGINT),
                (SignalKind::terminate(), libc::SIGTERM),
                (SignalKind::hangup(), libc::SIGHUP),
                (SignalKind::quit(), libc::SIGQUIT),
            ];
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<i32>();
            // A resized window is copied onto the sandbox's terminal, which
            // signals its own foreground job.
            if let Some(master) = winch {
                if let Ok(mut s) = signal(SignalKind::window_change()) {
                    tokio::spawn(async move {
                        while s.recv().await.is_some() {
                            crate::terminal::copy_size(&master);
                        }
                    });
                }
            }
            for (kind, raw) in kinds {
                if let Ok(mut s) = signal(kind) {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while s.recv().await.is_some() {
                            let _ = tx.send(raw);
                        }
                    });
                }
            }
            // Stopping is an event too: the run's exit must not wait for
            // a polling interval.
            loop {
                tokio::select! {
                    Some(sig) = rx.recv() => { let _ = signaller.signal(sig); }
                    _ = &mut stop_rx => break,
                }
            }
        });
    });
    SignalForwarder {
        stop: Some(stop_tx),
        handle: Some(handle),
    }
}

struct SignalForwarder {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SignalForwarder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
