//! `moat allow`, `moat deny`, `moat policy`: the work is moat-run's.

use std::process::ExitCode;

use anyhow::Result;
use moat_run::{LiveAction, PolicyAction};

use super::Context;
use crate::cli::PolicyArgs;

pub fn change(ctx: &Context, args: PolicyArgs, allow: bool) -> Result<ExitCode> {
    let verb = if allow {
        LiveAction::Allow
    } else {
        LiveAction::Deny
    };
    let action = PolicyAction::Change(verb, args.host, args.rules);
    out!(
        "{}",
        moat_run::live_policy(&ctx.home, &args.run, action, ctx.json)?
    );
    Ok(ExitCode::SUCCESS)
}

pub fn show(ctx: &Context, run: &str) -> Result<ExitCode> {
    out!(
        "{}",
        moat_run::live_policy(&ctx.home, run, PolicyAction::Show, ctx.json)?
    );
    Ok(ExitCode::SUCCESS)
}
