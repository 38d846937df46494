//! `moat claude`, `moat codex`, `moat gemini`: a run whose command is the
//! agent, staged by `moat-agents` and run by `moat_run::run_agent`.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use moat_agents::LaunchOptions;

use super::Context;
use crate::cli::AgentArgs;

pub fn agent(ctx: &Context, name: &str, args: AgentArgs) -> Result<ExitCode> {
    let agent = moat_agents::by_name(name).context("unknown agent")?;
    let (workspace, worktree) = moat_run::run_workspace(
        &ctx.home,
        args.path.as_deref(),
        args.run.worktree.as_deref(),
    )?;
    let detached_child = std::env::var_os(moat_run::DETACHED_CHILD).is_some();
    // Read once, used once trusted (see `run`).
    let loaded = super::trust::load_trusted(ctx, &workspace, args.run.no_prompt, !detached_child)?;
    if args.detach && !detached_child {
        return super::run::detach(ctx);
    }
    let detached = args.detach || detached_child;
    let config = loaded.as_ref().map(|l| &l.config);
    // A prompt is answered and printed; otherwise the agent talks with
    // the user, on a terminal when there is one.
    let interactive = !detached && args.prompt.is_none() && std::io::stdin().is_terminal();
    // The command is replaced by the agent's command line below.
    let flags = args.run.flags(
        vec![agent.binary().to_owned()],
        interactive,
        detached,
        ctx.verbose,
    );
    let mut plan = super::plan_run(ctx, workspace, &flags, config)?;
    plan.config_used = loaded.as_ref().map(moat_trust::ConfigUsed::new);
    plan.worktree = worktree;
    let opts = LaunchOptions {
        prompt: args.prompt.clone(),
        continue_last: args.continue_last,
        resume: args.resume.clone(),
        keep_permission_prompts: args.noyolo,
        model: args.model.clone(),
        extra_args: args.args.clone(),
    };
    let selection = moat_run::select_driver(plan.runtime)?;
    if let Some(notice) = &selection.notice {
        errln!("moat: {notice}");
    }
    let mut driver = selection.driver;
    let section = config
        .and_then(|c| c.agents.get(agent.name()).cloned())
        .unwrap_or_default();
    let outcome = moat_run::run_agent(
        &ctx.home,
        driver.as_mut(),
        agent,
        &opts,
        &section,
        &mut plan,
    );
    let outcome = outcome?;
    for notice in &outcome.notices {
        errln!("moat: {notice}");
    }
    Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
}
