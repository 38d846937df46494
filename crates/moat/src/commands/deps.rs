//! `moat deps list` and `moat deps info`.

use std::process::ExitCode;

use anyhow::{bail, Result};
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
                        bail!("unknown dependency type {k:?}: use runtime, apt, tool or dynamic")
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
            let d = deps_info(&name)?;
            outln!("Name:        {}", d.name);
            outln!("Type:        {}", d.kind.as_str());
            outln!("Default:     {}", d.default_version.unwrap_or("-"));
            outln!("Description: {}", d.description);
            outln!("Provides:    {}", d.provides);
            if !d.apt_packages.is_empty() {
                outln!("Packages:    {}", d.apt_packages.join(", "));
            }
            if let Some(r) = d.requires {
                outln!("Requires:    {r}");
            }
            if let Some(def) = moat_runtime_docker::services::service_def(d.name) {
                outln!("Image:       {}:<version>", def.image);
                outln!("Readiness:   {}", def.ready.join(" "));
                outln!("In the sandbox (<password>: 32 random characters, fresh for each run):");
                let example = moat_runtime_docker::Dependency {
                    spec: d.name.to_owned(),
                    info: d,
                    version: d.default_version.map(str::to_owned),
                    package: None,
                };
                let (_, vars) = moat_runtime_docker::services::plan_sidecar(
                    &example,
                    &moat_runtime_docker::services::ServiceOptions::default(),
                    "<password>",
                )?;
                for (name, value) in vars {
                    outln!("  {name}={value}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
