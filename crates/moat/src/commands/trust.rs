//! `moat trust` and the trust check before `moat run` reads moat.yaml:
//! the rule lives in `moat-trust`; here are the prompt and the printing.

use std::io::IsTerminal as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::Context;
use crate::cli::TrustArgs;

/// `moat trust [PATH]`: shows what changed since the accepted state and
/// accepts the workspace as it is now.
pub fn trust(ctx: &Context, args: TrustArgs) -> Result<ExitCode> {
    let workspace = moat_run::resolve_workspace(args.path.as_deref())?;
    // Read once: fingerprinted with what it mounts, then shown below. One
    // that does not load has no mount sources (the trust check reported
    // it).
    let loaded = moat_config::load_with_source(&workspace).ok().flatten();
    let used = loaded.as_ref().map(moat_trust::ConfigUsed::new);
    let accepted = moat_trust::accept(&ctx.home, &workspace, used.as_ref(), None)?;
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
    let allowed = loaded.map(|l| l.config.allow_write).unwrap_or_default();
    match moat_run::protected_summary(&workspace, &allowed) {
        Ok(text) => outln!("{text}"),
        Err(e) => outln!("Protected paths: {e}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the workspace's config file once for a run and, when `check`,
/// refuses it if it changed during a run, unless the user, asked at a
/// terminal, accepts the changes. The config is returned only once
/// trusted: one that does not load is reported after the check, so a
/// change made during a run shows as that, whatever it broke.
pub(super) fn load_trusted(
    ctx: &Context,
    workspace: &Path,
    no_prompt: bool,
    check: bool,
) -> Result<Option<moat_config::LoadedConfig>> {
    let loaded = moat_config::load_with_source(workspace);
    if check {
        let used = match &loaded {
            Ok(Some(loaded)) => Some(moat_trust::ConfigUsed::new(loaded)),
            Ok(None) | Err(_) => None,
        };
        ensure_trusted(ctx, workspace, used.as_ref(), no_prompt)?;
    }
    Ok(loaded?)
}

/// Refuses a workspace whose configuration changed during a run, unless
/// the user, asked at a terminal, accepts the changes.
fn ensure_trusted(
    ctx: &Context,
    workspace: &Path,
    used: Option<&moat_trust::ConfigUsed>,
    no_prompt: bool,
) -> Result<()> {
    let review = match moat_trust::check(&ctx.home, workspace, used) {
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
        return Err(crate::hints::failure(
            "not trusted, so nothing was run.",
            format!(
                "Review the changes, then run\n  moat trust {}\nor restore the version you \
                 accepted.",
                workspace.display()
            ),
        ));
    }
    moat_trust::accept(&ctx.home, workspace, used, Some(&review.digest))?;
    Ok(())
}
