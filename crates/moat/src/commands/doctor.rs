//! `moat doctor`: one line per check of what moat needs here, and for each
//! problem the command that fixes it (the checks are `moat-doctor`'s).
//! Exits non-zero when something must be fixed; warnings (an optional
//! piece missing) do not.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use super::Context;

pub fn doctor(ctx: &Context, args: crate::cli::DoctorArgs) -> Result<ExitCode> {
    let profile = ctx.profile.as_ref();
    let checks = match &args.agent {
        Some(name) => {
            let agent = moat_agents::by_name(name).ok_or_else(|| {
                crate::hints::failure(
                    format!("unknown agent {name:?}"),
                    "Name one of: claude, codex, gemini",
                )
            })?;
            let moat = std::env::current_exe().context("locating the moat binary")?;
            moat_doctor::agent_checks(&ctx.home, profile, agent, &moat)
        }
        None => moat_doctor::host_checks(&ctx.home, profile),
    };
    if ctx.json {
        outln!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        out!("{}", moat_doctor::render(&checks));
    }
    Ok(if moat_doctor::failures(&checks) == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
