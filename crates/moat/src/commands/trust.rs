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
    let workspace = super::resolve_workspace(args.path.as_deref())?;
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
    print_protected(&workspace);
    Ok(ExitCode::SUCCESS)
}

/// What runs of `workspace` see read-only, and how to let one write.
fn print_protected(workspace: &Path) {
    // A moat.yaml that does not load was reported by the trust check.
    let allowed = moat_config::load(workspace)
        .ok()
        .flatten()
        .map(|c| c.allow_write)
        .unwrap_or_default();
    let existing = match moat_run::protected_now(workspace, &allowed) {
        Ok(paths) => paths,
        Err(e) => {
            outln!("Protected paths: {e}");
            return;
        }
    };
    let shown: Vec<String> = existing
        .iter()
        .map(|p| {
            if p.file_name().is_some_and(|n| n == "config")
                && p.parent()
                    .is_some_and(|d| d.ends_with(".git") || d.starts_with(".git"))
            {
                format!("{} (git inside changes a private copy)", p.display())
            } else {
                p.display().to_string()
            }
        })
        .collect();
    let existing = if shown.is_empty() {
        String::new()
    } else {
        format!("{}; and ", shown.join(", "))
    };
    outln!(
        "Runs see read-only what the host acts on: {existing}wherever missing, {}.\n\
         To let a run write one: moat run --allow-write PATH, or allow_write: [PATH] in moat.yaml.",
        moat_run::REPOSITORY_ENTRIES.join(" ")
    );
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
