//! `moat run`: merge flags with `moat.yaml` into a plan and execute it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use moat_run::RunPlan;

use super::Context;
use crate::cli::RunArgs;

/// Set in the background process that supervises a detached run.
pub(super) const DETACHED_CHILD: &str = "MOAT_RUN_DETACHED_CHILD";

pub fn run(ctx: &Context, args: RunArgs) -> Result<ExitCode> {
    let detached_child = std::env::var_os(DETACHED_CHILD).is_some();
    let workspace = resolve_workspace(args.path.as_deref())?;
    // moat.yaml is only read once it is trusted. The background supervisor
    // of `run -d` was checked by its parent, which can still ask the user;
    // `moat_run::execute` re-checks under the trust lock as it opens the run.
    if !detached_child {
        super::trust::ensure_trusted(ctx, &workspace, args.run.no_prompt)?;
    }
    if args.detach && !detached_child {
        return detach(ctx);
    }
    // The background supervisor of `run -d` is this same command without
    // `-d`, marked by the environment.
    let detached = args.detach || detached_child;
    let config = moat_config::load(&workspace)?;
    let flags = args.run.flags(
        args.command.clone(),
        args.interactive,
        detached,
        ctx.verbose,
    );
    let plan = super::plan_run(ctx, workspace, &flags, config.as_ref())?;
    execute(ctx, &plan)
}

/// Picks the plan's runtime and runs it; the exit code is the command's.
pub(super) fn execute(ctx: &Context, plan: &RunPlan) -> Result<ExitCode> {
    let selection = moat_run::select_driver(plan.runtime.as_deref())?;
    if let Some(notice) = &selection.notice {
        errln!("moat: {notice}");
    }
    let mut driver = selection.driver;
    let outcome = moat_run::execute(&ctx.home, plan, driver.as_mut())?;
    for notice in &outcome.notices {
        errln!("moat: {notice}");
    }
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
pub(super) fn detach(ctx: &Context) -> Result<ExitCode> {
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
