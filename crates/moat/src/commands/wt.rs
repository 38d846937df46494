//! `moat wt`: a run in a git worktree (see `moat_run::worktree`).

use std::process::ExitCode;

use anyhow::Result;
use moat_run::worktree::{self, Repository};

use super::Context;
use crate::cli::{WtArgs, WtCommand};
use crate::output::table;

pub fn wt(ctx: &Context, mut args: WtArgs) -> Result<ExitCode> {
    let dir = moat_run::resolve_workspace(args.args.path.as_deref())?;
    let listed = match args.command {
        None => {
            args.args.run.worktree = args.branch;
            return super::run::run(ctx, args.args);
        }
        Some(WtCommand::List) => worktree::list(&ctx.home, &Repository::discover(&dir)?)?,
        Some(WtCommand::Clean { branch }) => {
            let cleaned =
                worktree::clean(&ctx.home, &Repository::discover(&dir)?, branch.as_deref())?;
            for w in &cleaned.kept {
                errln!(
                    "Kept {} (run {} is active).",
                    w.branch,
                    w.run.as_deref().unwrap_or("-")
                );
            }
            cleaned.removed
        }
    };
    let rows: Vec<Vec<String>> = listed.iter().map(worktree::Listed::row).collect();
    out!("{}", table(&worktree::Listed::COLUMNS, &rows));
    Ok(ExitCode::SUCCESS)
}
