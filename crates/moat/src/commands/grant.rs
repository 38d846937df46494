//! `moat grant` and `moat revoke`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use chrono::Utc;
use moat_credentials::source::{self, SourceOptions};
use moat_credentials::HeaderSafe as _;
use moat_credentials::{
    format_time, grant_display_name, Checked, CredentialStore, GrantName, GrantRow,
    ProviderRegistry, ProviderSpec,
};

use super::{block_on, Context};
use crate::cli::{GrantArgs, GrantCommand, RevokeArgs};
use crate::output::table;

pub fn grant(ctx: &Context, args: GrantArgs) -> Result<ExitCode> {
    let registry = ProviderRegistry::load(&ctx.home.providers_file())?;
    let opts = SourceOptions {
        no_prompt: args.source.no_prompt,
        from_stdin: args.source.stdin,
    };
    match args.command {
        Some(GrantCommand::List) => list(ctx),
        Some(GrantCommand::Show { provider }) => show(ctx, &registry, &provider),
        Some(GrantCommand::Providers) => providers(ctx, &registry),
        Some(GrantCommand::Mcp { name }) => {
            let grant = GrantName::Mcp(name.clone());
            let obtained = source::obtain_mcp(&name, &opts)?;
            store_obtained(ctx, &grant, obtained, moat_credentials::ProviderKind::Token)
        }
        None if args.provider.as_deref() == Some("ssh") => super::ssh::grant(ctx, &args),
        None => {
            let Some(provider) = args.provider else {
                bail!(
                    "name a provider to grant, e.g. moat grant github (see moat grant providers)"
                );
            };
            let grant = GrantName::parse(&provider)?;
            let name = match &grant {
                GrantName::Ssh(_) => {
                    bail!("SSH access is granted per host: moat grant ssh --host HOST")
                }
                GrantName::Mcp(name) => {
                    let obtained = source::obtain_mcp(name, &opts)?;
                    return store_obtained(
                        ctx,
                        &grant,
                        obtained,
                        moat_credentials::ProviderKind::Token,
                    );
                }
                GrantName::Provider(name) => name,
            };
            let spec = registry.require(name)?;
            if name != "npm" && args.host.is_some() {
                bail!("--host applies to npm only (and to ssh grants)");
            }
            if args.key.is_some() || args.host_key.is_some() || args.port != 22 {
                bail!("--key, --host-key and --port apply to ssh grants only: moat grant ssh --host HOST");
            }
            if name != "claude" && args.from_file.is_some() {
                bail!("--from-file applies to claude only");
            }
            let mut obtained = source::obtain_for_provider(
                spec,
                args.from_file.as_deref(),
                args.host.as_deref(),
                &opts,
            )?;
            obtained.secret.check_header_safe(&grant.grant_command())?;
            errln!("Using {} from {}", spec.kind.secret_noun(), obtained.origin);
            if !args.no_validate {
                check(spec, &mut obtained)?;
            }
            store_obtained(ctx, &grant, obtained, spec.kind)
        }
    }
}

/// Checks a new secret with its provider's API, saying what was found.
fn check(spec: &ProviderSpec, obtained: &mut source::Obtained) -> Result<()> {
    match block_on(moat_credentials::check_obtained(spec, obtained))?? {
        Checked::NotChecked => {}
        Checked::Accepted {
            account: Some(login),
        } => errln!("Authenticated as: {login}"),
        Checked::Accepted { account: None } => errln!("Validated {} with its API", spec.name),
        Checked::Unreachable(why) => errln!(
            "Warning: could not validate the {} {} ({why}); storing it anyway.",
            spec.name,
            spec.kind.secret_noun()
        ),
    }
    Ok(())
}

fn store_obtained(
    ctx: &Context,
    grant: &GrantName,
    obtained: source::Obtained,
    kind: moat_credentials::ProviderKind,
) -> Result<ExitCode> {
    let store = CredentialStore::new(ctx.home.clone(), ctx.profile.clone());
    let stored = store.store_obtained(grant, obtained, kind)?;
    let profile = match &ctx.profile {
        Some(p) => format!(" in profile {p}"),
        None => String::new(),
    };
    outln!("Granted {grant}{profile}.");
    errln!(
        "Stored encrypted at {} (key: {}).",
        stored.path.display(),
        stored.key_backend
    );
    if let Some(exp) = stored.expires_at {
        errln!("The token expires {}.", format_time(exp));
    }
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Context) -> Result<ExitCode> {
    let store = CredentialStore::new(ctx.home.clone(), ctx.profile.clone());
    let rows: Vec<GrantRow> = store
        .grant_rows(ctx.profile_name(), Utc::now())?
        .into_iter()
        .chain(super::ssh::grants(ctx)?.into_iter().map(|g| GrantRow {
            provider: format!("ssh:{}", g.host),
            profile: ctx.profile_name().to_string(),
            kind: Some("ssh-key".into()),
            source: Some(g.fingerprint),
            granted_at: Some(g.granted_at),
            expires_at: None,
            status: "ok".into(),
            error: None,
        }))
        .collect();
    if ctx.json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        outln!(
            "No credentials in profile {}. Grant one with: moat grant github",
            ctx.profile_name()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let cells: Vec<Vec<String>> = rows.iter().map(GrantRow::cells).collect();
    out!("{}", table(&GrantRow::COLUMNS, &cells));
    Ok(ExitCode::SUCCESS)
}

fn show(ctx: &Context, registry: &ProviderRegistry, provider: &str) -> Result<ExitCode> {
    let grant = GrantName::parse(provider)?;
    let Some(stem) = grant.file_stem() else {
        bail!("{grant} holds no secret to show");
    };
    let store = CredentialStore::new(ctx.home.clone(), ctx.profile.clone());
    let c = store.load(&stem)?;
    let spec = match &grant {
        GrantName::Provider(name) => registry.get(name),
        _ => None,
    };
    if ctx.json {
        let value = serde_json::json!({
            "provider": grant_display_name(&stem),
            "profile": ctx.profile_name(),
            "kind": c.kind.to_string(),
            "source": c.source.to_string(),
            "origin": c.metadata.get("origin"),
            "granted_at": c.granted_at,
            "expires_at": c.expires_at,
            "scopes": c.scopes,
            "account": c.metadata.get("login"),
            "token": moat_credentials::masked(&c),
            "hosts": spec.map(|s| s.host_patterns()).unwrap_or_default(),
        });
        outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (k, v) in moat_credentials::describe(&stem, ctx.profile_name(), &c, spec) {
        outln!("{:<9} {v}", format!("{k}:"));
    }
    if c.is_expired(Utc::now()) {
        if stem == "claude" {
            errln!("Claude Code token has expired\nRe-authenticate, then run: moat grant claude");
        } else {
            errln!(
                "This token has expired. Run: moat grant {}",
                grant.grant_command()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn providers(ctx: &Context, registry: &ProviderRegistry) -> Result<ExitCode> {
    let all = registry.all();
    if ctx.json {
        let rows: Vec<_> = all.iter().map(|p| p.to_json()).collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let rows: Vec<Vec<String>> = all.iter().map(|p| p.row()).collect();
        out!("{}", table(&ProviderSpec::COLUMNS, &rows));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn revoke(ctx: &Context, args: RevokeArgs) -> Result<ExitCode> {
    let grant = GrantName::parse(&args.provider)?;
    let stem = match &grant {
        GrantName::Ssh(host) => return super::ssh::revoke(ctx, host),
        other => other.file_stem().unwrap_or_default(),
    };
    let store = CredentialStore::new(ctx.home.clone(), ctx.profile.clone());
    store.remove(&stem)?;
    let profile = match &ctx.profile {
        Some(p) => format!(" from profile {p}"),
        None => String::new(),
    };
    outln!("Revoked {grant}{profile}.");
    Ok(ExitCode::SUCCESS)
}
