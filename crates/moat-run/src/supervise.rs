//! Running one plan to completion.

use std::io::Write;
use std::sync::Arc;

use base64::Engine as _;
use chrono::Utc;
use moat_credentials::{resolve_grants, CredentialStore, GrantName, ProviderRegistry};
use moat_daemon::{
    ClientError, DaemonClient, HeaderSpec, InjectionSpec, McpSpec, RunSpec, Secret, StartOptions,
};
use moat_home::{FileLock, MoatHome};
use moat_sandbox::{
    Limits, OutputSinks, ProxyAccess, ProxyAuthorization, ProxyRoute, SandboxControl,
    SandboxDriver, SandboxRequest, Stdio,
};
use moat_storage::{generate_name, LogStream, LogWriter, RunId, RunMetadata, RunState, RunStore};

use crate::environment::SandboxEnv;
use crate::{RunError, RunPlan};

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Run id.
    pub id: String,
    /// Run name.
    pub name: String,
    /// Exit code (128+N for signal N).
    pub exit_code: i32,
    /// What the user must hear once the run is over (a git repository
    /// the run created was disarmed…), one sentence each.
    pub notices: Vec<String>,
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
        let host = moat_daemon::url_host(&mcp.url).unwrap_or_default();
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
                server: mcp.name.to_string(),
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

/// Runs `plan` to completion in the sandbox `driver` provides and returns
/// its exit code. Blocks; sets up its own async runtime for talking to the
/// daemon.
pub fn execute(
    home: &MoatHome,
    plan: &RunPlan,
    driver: &mut dyn SandboxDriver,
) -> Result<RunOutcome, RunError> {
    // Before anything is resolved or started: from here on the plan's
    // mount sources are real paths that passed the floors.
    let floors = crate::mounts::Floors::from_env(home);
    // A worktree's git directories come first: the user's mounts may
    // cover parts of them, never the other way round.
    let git_dirs = plan.worktree.iter().flat_map(|w| w.mounts());
    let mounts: Vec<_> = (git_dirs.map(|m| crate::MountPlan {
        source: m.source,
        target: m.target,
        read_only: m.read_only,
        relative: false,
        exclude: Vec::new(),
    }))
    .chain(plan.mounts.iter().cloned())
    .collect();
    let plan = &RunPlan {
        mounts: crate::mounts::prepare(&floors, &plan.workspace, &mounts)?,
        ..plan.clone()
    };
    let credentials = CredentialStore::new(home.clone(), plan.profile.clone());
    let registry = ProviderRegistry::load(&home.providers_file())?;
    let grants = grants_with_mcp(plan, &credentials)?;
    let resolved = resolve_grants(&credentials, &registry, &grants, Utc::now())?;
    check_mcp_hosts(plan, &resolved)?;
    let ssh = crate::ssh::SshAccess::resolve(home, plan.profile.as_ref(), &grants)?;

    let runs = RunStore::new(home.clone());
    moat_home::ensure_private_dir(&home.runs_dir())?;
    let mut meta = record_start(&runs, home, plan, &grants, driver.name())?;
    let run_dir = runs.dir(&meta.id);
    let pre_run = plan
        .snapshots
        .pre_run()
        .then_some(&plan.snapshots.exclude[..]);
    moat_snapshot::pre_run(home, &plan.workspace, meta.id.as_str(), pre_run);
    let triggers = crate::snapshot_triggers::Triggers::start(
        home,
        &plan.workspace,
        meta.id.as_str(),
        &plan.snapshots,
    );
    let (result, notices) = run_in_workspace(
        home,
        plan,
        driver,
        &resolved,
        ssh.as_ref(),
        &mut meta,
        &run_dir,
    );
    drop(triggers);
    record_end(&runs, &mut meta, &result)?;
    if result.is_err() {
        for notice in &notices {
            tracing::warn!("{notice}");
        }
    }
    let exit_code = result?;
    Ok(RunOutcome {
        id: meta.id.to_string(),
        name: meta.name.clone(),
        exit_code,
        notices,
    })
}

/// The run's grants and its MCP servers' own tokens. MCP servers are
/// checked first: their message names the server, which is what the user
/// wrote in moat.yaml.
fn grants_with_mcp(
    plan: &RunPlan,
    credentials: &CredentialStore,
) -> Result<Vec<GrantName>, RunError> {
    let mut grants: Vec<GrantName> = plan.grants.clone();
    for mcp in &plan.mcp {
        let Some((grant, _)) = &mcp.auth else {
            continue;
        };
        if !matches!(grant, GrantName::Mcp(_)) {
            // Another service's grant: only one the run already holds,
            // and only for one of its hosts (checked once resolved).
            if !plan.grants.contains(grant) {
                return Err(RunError::McpGrantMisused {
                    server: mcp.name.to_string(),
                    grant: grant.to_string(),
                    why: "the run does not hold it (add it to grants: or --grant, or use the server's own token)".into(),
                });
            }
            continue;
        }
        let stem = grant.file_stem().unwrap_or_default();
        if !credentials.contains(&stem) {
            return Err(RunError::McpGrantMissing {
                server: mcp.name.to_string(),
            });
        }
        grants.push(grant.clone());
    }
    Ok(grants)
}

/// Claims the run's name and records the run as created. Both happen
/// under one lock, so two runs cannot take the same name.
fn record_start(
    runs: &RunStore,
    home: &MoatHome,
    plan: &RunPlan,
    grants: &[GrantName],
    runtime: &str,
) -> Result<RunMetadata, RunError> {
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
        None => runs.free_name(generate_name)?,
    };
    let mut meta = RunMetadata::new(
        RunId::generate(),
        name,
        plan.workspace.clone(),
        plan.command.clone(),
    );
    meta.grants = grants.iter().map(ToString::to_string).collect();
    meta.policy = plan.network.policy.to_string();
    meta.runtime = runtime.into();
    meta.interactive = plan.interactive;
    meta.detached = plan.detached;
    meta.agent = plan.agent.clone();
    meta.ports = plan.ports.clone();
    meta.supervisor_pid = Some(std::process::id());
    meta.supervisor_start = moat_storage::process_start_time(std::process::id());
    if let Some(worktree) = &plan.worktree {
        worktree.record(&mut meta);
    }
    if plan.workspace_mode == moat_config::WorkspaceMode::Volume {
        meta.workspace_mode = Some(plan.workspace_mode.to_string());
    }
    runs.create(&meta)?;
    // Room to record the run's end even if MOAT_HOME fills up meanwhile.
    if let Err(e) = runs.reserve(&meta.id) {
        tracing::warn!(error = %e, "setting space aside for the run's final state");
    }
    Ok(meta)
}

/// Runs the sandbox while the run is open on its workspace and its
/// protected paths are in place. Opened before the sandbox exists, closed
/// on every way out that returns here: a run killed before closing stays
/// open, which is what makes its changes suspect. Returns the exit code
/// and what the user must hear (repositories the run created, disarmed).
fn run_in_workspace(
    home: &MoatHome,
    plan: &RunPlan,
    driver: &mut dyn SandboxDriver,
    resolved: &[moat_credentials::ResolvedGrant],
    ssh: Option<&crate::ssh::SshAccess>,
    meta: &mut RunMetadata,
    run_dir: &std::path::Path,
) -> (Result<i32, RunError>, Vec<String>) {
    if let Err(e) = moat_trust::open_run(
        home,
        &plan.workspace,
        meta.id.as_str(),
        &meta.name,
        plan.config_used.as_ref(),
    ) {
        return (Err(e.into()), Vec::new());
    }
    let mut notices = Vec::new();
    let protection = crate::protect::Protection::prepare(&plan.workspace, &plan.allow_write);
    let result = match &protection {
        Ok(protection) => {
            let mut protected = protection.paths.clone();
            if plan.worktree.is_some() {
                // The worktree's `.git` file names its git directory.
                protected.push(moat_sandbox::ProtectedPath {
                    path: ".git".into(),
                    view: moat_sandbox::ProtectedView::ReadOnly,
                });
            }
            let plan = &RunPlan {
                protected,
                ..plan.clone()
            };
            let result = start_and_wait(home, plan, driver, resolved, ssh, meta, run_dir);
            notices = protection.disarm_created_repositories();
            result
        }
        Err(_) => Ok(0),
    };
    if let Err(e) = moat_trust::close_run(
        home,
        &plan.workspace,
        meta.id.as_str(),
        plan.config_used.as_ref(),
    ) {
        tracing::warn!(error = %e, "recording the run's end in the trust record");
    }
    let result = match protection {
        Ok(protection) => {
            // Placeholders stay while another run may show them.
            let others = moat_trust::open_runs(home, &plan.workspace).map_or(true, |n| n > 0);
            protection.release(others);
            result
        }
        Err(e) => Err(e),
    };
    (result, notices)
}

/// Records how the run ended. On a full disk this records the run as
/// failed, with the reason, and says so.
fn record_end(
    runs: &RunStore,
    meta: &mut RunMetadata,
    result: &Result<i32, RunError>,
) -> Result<(), RunError> {
    match result {
        Ok(code) => {
            meta.state = RunState::Stopped;
            meta.exit_code = Some(*code);
        }
        Err(e) => {
            meta.state = RunState::Failed;
            meta.error = Some(moat_sandbox::error_chain(e));
        }
    }
    meta.stopped_at = Some(Utc::now());
    if let Some(reason) = runs.save_final(meta)? {
        return Err(RunError::DiskFull { reason });
    }
    Ok(())
}

fn start_and_wait(
    home: &MoatHome,
    plan: &RunPlan,
    driver: &mut dyn SandboxDriver,
    resolved: &[moat_credentials::ResolvedGrant],
    ssh: Option<&crate::ssh::SshAccess>,
    meta: &mut RunMetadata,
    run_dir: &std::path::Path,
) -> Result<i32, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Io {
            context: "starting the async runtime".into(),
            error: e,
        })?;

    // Container runtimes reach the proxy on their bridge's gateway
    // address; the daemon listens there too, on the same port.
    let route = driver.proxy_route()?;
    let mut spec = run_spec(route.listen.clone(), plan, resolved, meta, run_dir)?;
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

    // A sandbox running under another uid than ours must be able to open
    // the agent socket.
    let foreign_uid = !driver.runs_as_caller();
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

    let result = run_sandbox(
        driver,
        &route,
        plan,
        resolved,
        ssh_ctx,
        meta,
        run_dir,
        &registration,
        home,
    );
    drop(running_ssh);
    let failure = watchdog.failure();
    drop(watchdog);
    unregister(&runtime);
    match failure {
        Some(lost) => Err(RunError::DaemonLost(Box::new(lost))),
        None => result,
    }
}

fn run_spec(
    listen: Vec<String>,
    plan: &RunPlan,
    resolved: &[moat_credentials::ResolvedGrant],
    meta: &RunMetadata,
    run_dir: &std::path::Path,
) -> Result<RunSpec, RunError> {
    let mut injections = Vec::new();
    for grant in resolved {
        for inj in &grant.injections {
            let host = moat_policy::HostPattern::parse(&inj.host).map_err(|error| {
                RunError::InjectionHost {
                    grant: grant.grant.to_string(),
                    error,
                }
            })?;
            injections.push(InjectionSpec {
                host,
                name: inj.name.clone(),
                value: Secret::new(inj.value.expose()),
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
                        vec![HeaderSpec {
                            name: header.clone(),
                            value: Secret::new(r.credential.secret.expose()),
                            grant: grant.to_string(),
                        }]
                    })
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok(RunSpec {
        run_id: meta.id.to_string(),
        name: meta.name.clone(),
        supervisor_pid: Some(std::process::id()),
        policy: plan.network.policy,
        rules: plan.network.rules.clone(),
        allow_hosts: plan.network.allow_hosts.clone(),
        injections,
        mcp,
        trace_path: Some(run_dir.join("network.jsonl")),
        audit_path: Some(run_dir.join("audit.jsonl")),
        ssh_hosts: Vec::new(),
        host_ports: plan.network.host_ports.clone(),
        changes: Vec::new(),
        listen,
        profile: plan.profile.as_ref().map(|p| p.to_string()),
        token: None,
        endpoints: endpoint_specs(plan, run_dir),
    })
}

/// The run's endpoints as the daemon reaches them: through the run's port
/// socket, which the native sandbox's helper or a container's network
/// guard serves.
fn endpoint_specs(plan: &RunPlan, run_dir: &std::path::Path) -> Vec<moat_daemon::EndpointSpec> {
    plan.ports
        .iter()
        .map(|(name, port)| moat_daemon::EndpointSpec {
            name: name.clone(),
            port: *port,
            socket: Some(run_dir.join(moat_storage::PORT_SOCKET)),
            addr: None,
        })
        .collect()
}

/// The sandbox request: the environment, files and mounts every runtime
/// gets, in terms of the sandbox only.
#[allow(clippy::too_many_arguments)]
fn sandbox_request(
    route: &ProxyRoute,
    plan: &RunPlan,
    resolved: &[moat_credentials::ResolvedGrant],
    ssh: Option<(&crate::ssh::SshAccess, &crate::ssh::RunningSsh)>,
    meta: &RunMetadata,
    run_dir: &std::path::Path,
    registration: &moat_daemon::Registration,
    home: &MoatHome,
) -> Result<SandboxRequest, RunError> {
    let port = registration.port.max(1);
    let env = sandbox_env(route, plan, resolved, meta, registration);
    let mut variables = env.variables();
    variables.push((
        "MOAT_HOST_GATEWAY".to_owned(),
        moat_sandbox::HOST_GATEWAY_NAME.to_owned(),
    ));
    if let Some(routing) = registration.routing_port {
        // Each endpoint's own URL, for OAuth callbacks and webhooks.
        for endpoint in plan.ports.keys() {
            variables.push((
                format!(
                    "MOAT_URL_{}",
                    endpoint.to_ascii_uppercase().replace('-', "_")
                ),
                format!("https://{endpoint}.{}.localhost:{routing}", meta.name),
            ));
        }
    }
    let sidecars = plan_sidecars(plan, &mut variables);
    let (mounts, workspace_exclude) = crate::mounts::for_sandbox(&plan.workspace, &plan.mounts);
    let relay_binary = std::env::current_exe().map_err(|e| RunError::Io {
        context: "locating the moat binary for the sandbox's capture relay".into(),
        error: e,
    })?;
    Ok(SandboxRequest {
        run_id: meta.id.to_string(),
        hostname: meta.name.replace('_', "-"),
        workspace: plan.workspace.clone(),
        workspace_mode: plan.workspace_mode,
        ports: plan.ports.clone(),
        workspace_copy: run_dir.join(moat_sandbox::WORKSPACE_COPY_DIR),
        command: plan.command.clone(),
        env: variables,
        mounts,
        protected: plan.protected.clone(),
        workspace_exclude,
        files: env
            .files()
            .into_iter()
            .chain(plan.files.iter().cloned())
            .collect(),
        ssh: ssh
            .map(|(access, running)| access.sandbox(running))
            .transpose()?,
        proxy: ProxyAccess {
            port,
            socket: registration.proxy_socket.clone(),
            authorization: ProxyAuthorization::new(env.proxy_authorization.clone()),
            host_ports: plan.network.host_ports.clone(),
            relay_binary,
        },
        stdio: if plan.interactive {
            Stdio::Terminal
        } else if plan.detached {
            Stdio::Detached
        } else {
            Stdio::Logged
        },
        limits: Limits {
            memory_mb: plan.limits.memory_mb,
            cpus: plan.limits.cpus,
        },
        image: plan.image.clone(),
        build_log: run_dir.join("build.log"),
        settings_dir: Some(home.root().to_path_buf()),
        extra_isolation: plan.extra_isolation,
        keep: plan.keep,
        sidecars,
        sidecar_logs: run_dir.join("services"),
        exec_socket: run_dir.join(moat_storage::EXEC_SOCKET),
        port_socket: run_dir.join(moat_storage::PORT_SOCKET),
    })
}

/// What the sandbox's environment is made from: the proxy as the sandbox
/// reaches it, with the run's token, and the grants' placeholders.
fn sandbox_env<'a>(
    route: &ProxyRoute,
    plan: &'a RunPlan,
    resolved: &'a [moat_credentials::ResolvedGrant],
    meta: &'a RunMetadata,
    registration: &'a moat_daemon::Registration,
) -> SandboxEnv<'a> {
    let port = registration.port.max(1);
    let proxy_authority = format!("{}:{port}", route.host_in_sandbox);
    let token = registration.token.expose();
    SandboxEnv {
        run_id: meta.id.as_str(),
        run_name: &meta.name,
        proxy_url: format!("http://moat:{token}@{proxy_authority}"),
        proxy_authority,
        proxy_authorization: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("moat:{token}"))
        ),
        ca_pem: &registration.ca_cert_pem,
        grants: resolved,
        user_env: &plan.env,
        interactive: plan.interactive,
    }
}

/// The sidecars of the plan's services, each with a fresh password; their
/// variables join the sandbox's (the user's own of the same name win),
/// and `NO_PROXY` names them: services are reached directly, never
/// through the proxy.
fn plan_sidecars(
    plan: &RunPlan,
    variables: &mut Vec<(String, String)>,
) -> Vec<moat_sandbox::Sidecar> {
    let mut sidecars = Vec::new();
    for service in &plan.services {
        let planned = service.plan(&service_password());
        for (name, value) in planned.env {
            if !plan.env.iter().any(|(k, _)| *k == name) {
                variables.push((name, value));
            }
        }
        sidecars.push(planned.sidecar);
    }
    let user_no_proxy = plan
        .env
        .iter()
        .any(|(k, _)| k == "NO_PROXY" || k == "no_proxy");
    if !sidecars.is_empty() && !user_no_proxy {
        for (name, value) in variables.iter_mut() {
            if name == "NO_PROXY" || name == "no_proxy" {
                for sidecar in &sidecars {
                    value.push(',');
                    value.push_str(&sidecar.name);
                }
            }
        }
    }
    sidecars
}

/// A service's password: 32 random letters and digits, fresh for each run.
fn service_password() -> String {
    use rand::Rng as _;
    rand::rngs::OsRng
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_sandbox(
    driver: &mut dyn SandboxDriver,
    route: &ProxyRoute,
    plan: &RunPlan,
    resolved: &[moat_credentials::ResolvedGrant],
    ssh: Option<(&crate::ssh::SshAccess, &crate::ssh::RunningSsh)>,
    meta: &mut RunMetadata,
    run_dir: &std::path::Path,
    registration: &moat_daemon::Registration,
    home: &MoatHome,
) -> Result<i32, RunError> {
    let request = sandbox_request(
        route,
        plan,
        resolved,
        ssh,
        meta,
        run_dir,
        registration,
        home,
    )?;
    let prepared = driver.prepare(&request)?;
    for note in &prepared.notes {
        let _ = writeln!(std::io::stderr(), "moat: {note}");
    }
    if let Some(image) = &prepared.image {
        meta.image = Some(image.clone());
        meta.image_ready_at = Some(Utc::now());
    }

    let logs =
        Arc::new(
            LogWriter::open(&run_dir.join("logs.jsonl")).map_err(|e| RunError::Io {
                context: "opening the run log".into(),
                error: e,
            })?,
        );
    // A worktree's `.git` file is not what a refused write under the
    // repository's git directory (`/…/.git/hooks`) is about.
    let explained: Vec<_> = (plan.protected.iter())
        .filter(|p| plan.worktree.is_none() || p.path != std::path::Path::new(".git"))
        .cloned()
        .collect();
    let hint = Arc::new(crate::protect::RefusedWriteHint::new(&explained));
    let output = OutputSinks {
        stdout: Box::new(LoggedOutput::new(
            std::io::stdout(),
            LogStream::Stdout,
            logs.clone(),
            hint.clone(),
        )),
        stderr: Box::new(LoggedOutput::new(
            std::io::stderr(),
            LogStream::Stderr,
            logs,
            hint,
        )),
    };
    let running = driver.start(&request, &prepared, output)?;
    meta.container_id = running.runtime_id();
    meta.state = RunState::Running;
    meta.started_at = Some(Utc::now());
    RunStore::new(home.clone()).save_progress(meta)?;

    let forwarder = forward_signals(running.control(), request.stdio == Stdio::Terminal);
    let code = running.wait()?;
    drop(forwarder);
    Ok(code)
}

/// Writes a sandbox's output through to ours as it arrives (partial
/// lines included, so prompts show), and records complete lines in the
/// run log. When ours fails (the terminal or pipe went away), the output
/// is still recorded to the end: the sandbox is never left blocked on a
/// reader that stopped, and the exit code is not lost.
pub(crate) struct LoggedOutput<W: Write> {
    inner: W,
    stream: LogStream,
    logs: Arc<LogWriter>,
    pending: Vec<u8>,
    inner_gone: bool,
    /// Explains, on our stderr, a write refused on a protected path.
    hint: Arc<crate::protect::RefusedWriteHint>,
}

impl<W: Write> LoggedOutput<W> {
    pub(crate) fn new(
        inner: W,
        stream: LogStream,
        logs: Arc<LogWriter>,
        hint: Arc<crate::protect::RefusedWriteHint>,
    ) -> Self {
        LoggedOutput {
            inner,
            stream,
            logs,
            pending: Vec::new(),
            inner_gone: false,
            hint,
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
            if let Some(hint) = self.hint.scan(&text) {
                let _ = writeln!(std::io::stderr(), "moat: {hint}");
                let _ = self
                    .logs
                    .write_line(LogStream::Stderr, &format!("moat: {hint}"));
            }
        }
        // A very long line without a newline is recorded in pieces.
        if self.pending.len() > 64 * 1024 {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            let _ = self.logs.write_line(self.stream, &text);
            self.pending.clear();
        }
    }
}

impl<W: Write> Write for LoggedOutput<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !self.inner_gone {
            if let Err(e) = self.inner.write_all(buf) {
                tracing::debug!(error = %e, "the run's output can no longer be shown; still recorded");
                self.inner_gone = true;
            }
        }
        self.record(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.inner_gone && self.inner.flush().is_err() {
            self.inner_gone = true;
        }
        Ok(())
    }
}

impl<W: Write> Drop for LoggedOutput<W> {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            let _ = self.logs.write_line(self.stream, &text);
        }
    }
}

/// Forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT (and, with a terminal,
/// window size changes) to the sandbox until dropped.
pub(crate) fn forward_signals(control: Arc<dyn SandboxControl>, terminal: bool) -> SignalForwarder {
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
            if terminal {
                if let Ok(mut s) = signal(SignalKind::window_change()) {
                    let control = control.clone();
                    tokio::spawn(async move {
                        while s.recv().await.is_some() {
                            control.window_changed();
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
                    Some(sig) = rx.recv() => control.signal(sig),
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

pub(crate) struct SignalForwarder {
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
