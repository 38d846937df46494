//! `moat run`: merge flags with `moat.yaml` into a plan and execute it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use moat_credentials::GrantName;
use moat_daemon::HostRuleSpec;
use moat_run::{ImageRecipe, LimitsPlan, McpPlan, MountPlan, NetworkPlan, RunPlan};

use super::Context;
use crate::cli::RunArgs;

/// Set in the background process that supervises a detached run.
const DETACHED_CHILD: &str = "MOAT_RUN_DETACHED_CHILD";

pub fn run(ctx: &Context, args: RunArgs) -> Result<ExitCode> {
    let detached_child = std::env::var_os(DETACHED_CHILD).is_some();
    let workspace = resolve_workspace(args.path.as_deref())?;
    // moat.yaml is only read once it is trusted. The background supervisor
    // of `run -d` was checked by its parent, which can still ask the user;
    // `moat_run::execute` re-checks under the trust lock as it opens the run.
    if !detached_child {
        super::trust::ensure_trusted(ctx, &workspace, args.no_prompt)?;
    }
    if args.detach && !detached_child {
        return detach(ctx);
    }
    // The background supervisor of `run -d` is this same command without
    // `-d`, marked by the environment.
    let detached = args.detach || detached_child;
    let config = moat_config::load(&workspace)?;

    // `--runtime`, then `MOAT_RUNTIME`, then moat.yaml `runtime:`; with
    // none, the first runtime available.
    let requested = args
        .runtime
        .clone()
        .or_else(|| {
            std::env::var("MOAT_RUNTIME")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.runtime.map(|r| r.to_string()))
        });
    let selection = moat_run::select_driver(requested.as_deref())?;
    if let Some(notice) = &selection.notice {
        errln!("moat: {notice}");
    }
    let mut driver = selection.driver;
    let command = if !args.command.is_empty() {
        args.command.clone()
    } else if let Some(cmd) = config.as_ref().and_then(|c| c.command.clone()) {
        cmd
    } else {
        bail!(
            "no command to run: give one after --, e.g. moat run -- echo hello, \
             or set `command:` in moat.yaml"
        );
    };

    // hooks.pre_run runs in /workspace before the command, every start; a
    // failing hook stops the run with its exit code.
    let command = match config.as_ref().and_then(|c| c.hooks.pre_run.clone()) {
        Some(hook) => {
            let mut wrapped = vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                format!("set -e\n{hook}\nexec \"$@\""),
                "moat-pre-run".to_string(),
            ];
            wrapped.extend(command);
            wrapped
        }
        None => command,
    };

    let mut grants: Vec<GrantName> = Vec::new();
    let config_grants = config
        .as_ref()
        .map(|c| c.grants.clone())
        .unwrap_or_default();
    for g in config_grants.iter().chain(args.grants.iter()) {
        let grant = GrantName::parse(g)?;
        if !grants.contains(&grant) {
            grants.push(grant);
        }
    }

    let mut env: Vec<(String, String)> = config
        .as_ref()
        .map(|c| c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for pair in &args.env {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("invalid --env {pair:?}: expected KEY=VALUE");
        };
        if k.is_empty() {
            bail!("invalid --env {pair:?}: the variable name is empty");
        }
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }

    let mut mounts: Vec<MountPlan> = config
        .as_ref()
        .map(|c| {
            c.mounts
                .iter()
                .map(|m| MountPlan {
                    source: m.source.clone(),
                    target: m.target.clone(),
                    read_only: m.read_only,
                    relative: m.relative,
                })
                .collect()
        })
        .unwrap_or_default();
    for spec in &args.mounts {
        let m = moat_config::Mount::parse_cli(spec, &workspace)?;
        mounts.retain(|x| x.target != m.target);
        mounts.push(MountPlan {
            source: m.source,
            target: m.target,
            read_only: m.read_only,
            relative: m.relative,
        });
    }

    let network = match &config {
        Some(c) => NetworkPlan {
            strict: c.network.policy == moat_policy::Policy::Strict,
            rules: c
                .network
                .rules
                .iter()
                .map(|h| HostRuleSpec {
                    host: h.host.to_string(),
                    rules: h.rules.iter().map(|r| r.to_string()).collect(),
                })
                .collect(),
            allow_hosts: args.allow_hosts.clone(),
            host_ports: c.network.host_ports.clone(),
        },
        None => NetworkPlan {
            strict: false,
            rules: Vec::new(),
            allow_hosts: args.allow_hosts.clone(),
            host_ports: Vec::new(),
        },
    };

    let mut mcp = Vec::new();
    if let Some(c) = &config {
        for server in &c.mcp {
            let auth = match &server.auth {
                Some(a) => Some((GrantName::parse(&a.grant)?, a.header.clone())),
                None => None,
            };
            mcp.push(McpPlan {
                name: server.name.clone(),
                url: server.url.to_string(),
                auth,
            });
        }
    }

    let name = args
        .name
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.name.clone()));
    if let Some(n) = &name {
        moat_storage::validate_name(n).map_err(anyhow::Error::msg)?;
    }

    let no_sandbox = args.no_sandbox
        || moat_credentials::source::env_flag("MOAT_NO_SANDBOX")
        || config
            .as_ref()
            .is_some_and(|c| c.sandbox == moat_config::SandboxMode::Disabled);
    let image = ImageRecipe {
        dependencies: config
            .as_ref()
            .map(|c| c.dependencies.iter().map(|d| d.to_string()).collect())
            .unwrap_or_default(),
        base_image: config.as_ref().and_then(|c| c.base_image.clone()),
        post_build_root: config
            .as_ref()
            .and_then(|c| c.hooks.post_build_root.clone()),
        post_build: config.as_ref().and_then(|c| c.hooks.post_build.clone()),
        rebuild: args.rebuild,
        verbose: ctx.verbose,
    };

    let limits = LimitsPlan {
        memory_mb: config.as_ref().and_then(|c| c.container.memory_mb),
        cpus: config.as_ref().and_then(|c| c.container.cpus),
    };
    let plan = RunPlan {
        limits,
        runtime: requested,
        image,
        extra_isolation: !no_sandbox,
        keep: args.keep,
        workspace,
        name,
        command,
        grants,
        env,
        mounts,
        network,
        mcp,
        interactive: !detached
            && (args.interactive || config.as_ref().is_some_and(|c| c.interactive)),
        detached,
        profile: ctx.profile.clone(),
    };
    let outcome = moat_run::execute(&ctx.home, &plan, driver.as_mut())?;
    tracing::debug!(run_id = %outcome.id, code = outcome.exit_code, "run finished");
    Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
}

pub(super) fn resolve_workspace(path: Option<&Path>) -> Result<PathBuf> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => std::env::current_dir().context("reading the current directory")?,
    };
    let canonical = std::fs::canonicalize(&path)
        .with_context(|| format!("workspace {} does not exist", path.display()))?;
    if !canonical.is_dir() {
        bail!("workspace {} is not a directory", path.display());
    }
    Ok(canonical)
}

/// Starts the same `moat run` (without `-d`) as a background supervisor in
/// its own process group, and returns once its run is recorded as running.
/// If it fails before that, its error is shown here with its exit code.
fn detach(ctx: &Context) -> Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    use std::time::{Duration, Instant};

    let exe = std::env::current_exe().context("locating the moat executable")?;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut after_dashes = false;
    for arg in std::env::args_os().skip(1) {
        if !after_dashes && (arg == "-d" || arg == "--detach") {
            continue;
        }
        if arg == "--" {
            after_dashes = true;
        }
        args.push(arg);
    }
    moat_home::ensure_private_dir(&ctx.home.runs_dir())?;
    let log_path = ctx
        .home
        .runs_dir()
        .join(format!(".detach-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = std::process::Command::new(exe)
        .args(&args)
        .env(DETACHED_CHILD, "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the background run")?;
    let store = moat_storage::RunStore::new(ctx.home.clone());
    let child_pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((runs, _)) = store.list() {
            if let Some(run) = runs.iter().find(|r| {
                r.supervisor_pid == Some(child_pid)
                    && matches!(
                        r.state,
                        moat_storage::RunState::Running | moat_storage::RunState::Stopped
                    )
            }) {
                let _ = std::fs::remove_file(&log_path);
                outln!("{}", run.id);
                errln!(
                    "Started {} ({}) in the background.\nFollow its output: moat logs -f {}\nStop it: moat stop {}",
                    run.name, run.id, run.name, run.name
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
        if let Some(status) = child.try_wait()? {
            let output = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = std::fs::remove_file(&log_path);
            err!("{output}");
            return Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ));
        }
        if Instant::now() >= deadline {
            bail!(
                "the background run did not start within 30 seconds; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
