//! `moat trust` and the trust check before `moat run` reads moat.yaml:
//! the rule lives in `moat-trust`; here are the prompt and the printing.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Result};

use super::Context;
use crate::cli::TrustArgs;

/// `moat trust [PATH]`: shows what changed since the accepted state and
/// accepts the workspace as it is now.
pub fn trust(ctx: &Context, args: TrustArgs) -> Result<ExitCode> {
    let workspace = super::run::resolve_workspace(args.path.as_deref())?;
    let accepted = moat_trust::accept(&ctx.home, &workspace, None)?;
    let ws = workspace.display();
    if accepted.first_use {
        outln!("Trusted {ws} as it is now: its moat.yaml, .moat/ and mount sources (first use).");
    } else if accepted.changes.is_empty() {
        outln!("Nothing changed in {ws} since you accepted it; nothing to trust.");
    } else {
        out!(
            "Changes in {ws} since you last accepted it:\n{}Trusted: the next run applies them.\n",
            moat_trust::changes_text(&accepted.changes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses a workspace whose configuration changed during a run, unless
/// the user, asked at a terminal, accepts the changes.
pub(super) fn ensure_trusted(ctx: &Context, workspace: &Path, no_prompt: bool) -> Result<()> {
    let review = match moat_trust::check(&ctx.home, workspace) {
        Ok(why) => {
            tracing::debug!(?why, workspace = %workspace.display(), "configuration trusted");
            return Ok(());
        }
        Err(moat_trust::TrustError::Untrusted(review)) => review,
        Err(e) => return Err(e.into()),
    };
    let can_ask = !no_prompt
        && std::env::var_os("MOAT_NO_PROMPT").is_none()
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal();
    if !can_ask {
        return Err(moat_trust::TrustError::Untrusted(review).into());
    }
    err!(
        "{}.\n{}Trust these changes? [y/N] ",
        review.summary(),
        review.change_lines()
    );
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!(
            "not trusted, so nothing was run. Review the changes, then run\n  moat trust {}\nor \
             restore the version you accepted.",
            workspace.display()
        );
    }
    moat_trust::accept(&ctx.home, workspace, Some(&review.digest))?;
    Ok(())
}
