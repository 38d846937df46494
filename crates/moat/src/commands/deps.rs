//! `moat deps list` and `moat deps info`.

use std::process::ExitCode;

use anyhow::Result;
use moat_runtime_docker::{deps_info, deps_list, DepType};

use super::Context;
use crate::cli::{DepsArgs, DepsCommand};
use crate::output::table;

pub fn deps(ctx: &Context, args: DepsArgs) -> Result<ExitCode> {
    match args.command {
        DepsCommand::List { kind } => {
            let kind = match kind.as_deref() {
                None => None,
                Some(k) => match DepType::parse(k) {
                    Some(t) => Some(t),
                    None => {
                        return Err(crate::hints::failure(
                            format!("unknown dependency type {k:?}"),
                            "Use runtime, apt, tool or dynamic.",
                        ))
                    }
                },
            };
            let deps = deps_list(kind);
            if ctx.json {
                let rows: Vec<_> = deps
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "name": d.name,
                            "type": d.kind.as_str(),
                            "default_version": d.default_version,
                            "description": d.description,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = deps
                .iter()
                .map(|d| {
                    vec![
                        d.name.to_string(),
                        d.kind.as_str().to_string(),
                        d.default_version.unwrap_or("-").to_string(),
                        d.description.to_string(),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(&["NAME", "TYPE", "DEFAULT", "DESCRIPTION"], &rows)
            );
            Ok(ExitCode::SUCCESS)
        }
        DepsCommand::Info { name } => {
            out!("{}", deps_info(&name)?.describe());
            Ok(ExitCode::SUCCESS)
        }
    }
}
