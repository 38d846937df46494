//! `moat run`: merge flags with `moat.yaml` into a plan and execute it.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use moat_run::RunPlan;

use super::Context;
use crate::cli::RunArgs;

use moat_run::DETACHED_CHILD;

pub fn run(ctx: &Context, args: RunArgs) -> Result<ExitCode> {
    let detached_child = std::env::var_os(DETACHED_CHILD).is_some();
    let (workspace, worktree) = moat_run::run_workspace(
        &ctx.home,
        args.path.as_deref(),
        args.run.worktree.as_deref(),
    )?;
    // moat.yaml is read once, and used only once it is trusted. The
    // background supervisor of `run -d` was checked by its parent, which
    // can still ask the user; `moat_run::execute` re-checks under the
    // trust lock as it opens the run. The plan is made from these bytes,
    // and the run opens only if the workspace still holds them.
    let loaded = super::trust::load_trusted(ctx, &workspace, args.run.no_prompt, !detached_child)?;
    if args.detach && !detached_child {
        return detach(ctx);
    }
    // The background supervisor of `run -d` is this same command without
    // `-d`, marked by the environment.
    let detached = args.detach || detached_child;
    let config = loaded.as_ref().map(|l| &l.config);
    let flags = args.run.flags(
        args.command.clone(),
        args.interactive,
        detached,
        ctx.verbose,
    );
    let mut plan = super::plan_run(ctx, workspace, &flags, config)?;
    plan.config_used = loaded.as_ref().map(moat_trust::ConfigUsed::new);
    plan.worktree = worktree;
    execute(ctx, &plan)
}

/// Picks the plan's runtime and runs it; the exit code is the command's.
pub(super) fn execute(ctx: &Context, plan: &RunPlan) -> Result<ExitCode> {
    let selection = moat_run::select_driver(plan.runtime)?;
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

/// `moat run -d`: starts this same command without `-d` in the background
/// (see [`moat_run::detach`]) and shows its run, or its early error with
/// its exit code.
pub(super) fn detach(ctx: &Context) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the moat executable")?;
    let args = moat_run::without_detach_flag(std::env::args_os().skip(1));
    match moat_run::detach(&ctx.home, &exe, &args)? {
        moat_run::Detached::Started { id, name } => {
            outln!("{id}");
            errln!(
                "Started {name} ({id}) in the background.\nFollow its output: moat logs -f {name}\nStop it: moat stop {name}"
            );
            Ok(ExitCode::SUCCESS)
        }
        moat_run::Detached::Exited { output, code } => {
            err!("{output}");
            Ok(ExitCode::from(code))
        }
    }
}
