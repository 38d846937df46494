//! `moat grant ssh --host`, `moat revoke ssh:HOST`, and the `ssh`
//! ProxyCommand that runs inside sandboxes.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use chrono::Utc;
use moat_ssh::{Identity, SshError, SshGrant, SshGrantStore};

use super::Context;
use crate::cli::GrantArgs;

fn store(ctx: &Context) -> SshGrantStore {
    SshGrantStore::in_dir(&ctx.home.credentials_dir(ctx.profile.as_ref()))
}

/// The SSH grants of the active profile, for `moat grant list`.
pub fn grants(ctx: &Context) -> Result<Vec<SshGrant>> {
    Ok(store(ctx).list()?)
}

/// `moat grant ssh --host HOST [--key K] [--host-key K] [--port P]`.
pub fn grant(ctx: &Context, args: &GrantArgs) -> Result<ExitCode> {
    let Some(host) = args.host.as_deref() else {
        bail!("SSH access is granted per host: moat grant ssh --host HOST");
    };
    let host = host.trim().to_ascii_lowercase();
    if moat_credentials::GrantName::parse(&format!("ssh:{host}")).is_err() {
        bail!("invalid host name {host:?}: use a host name such as github.com");
    }
    let socket = moat_ssh::agent_socket_from_env()?;
    let ids = moat_ssh::list_identities(&socket)?;
    if ids.is_empty() {
        return Err(SshError::AgentEmpty.into());
    }
    let no_prompt = args.source.no_prompt || std::env::var_os("MOAT_NO_PROMPT").is_some();
    let key = choose_key(&ids, args.key.as_deref(), no_prompt)?;
    let fingerprint = moat_ssh::fingerprint(&key.key)?;
    let host_keys = match &args.host_key {
        Some(given) => moat_ssh::parse_host_keys(given)?,
        None => moat_ssh::known_host_keys(&host, args.port, &moat_ssh::known_hosts_files()),
    };
    if host_keys.is_empty() {
        return Err(SshError::NoHostKey {
            host,
            port: args.port,
        }
        .into());
    }
    let grant = SshGrant {
        host: host.clone(),
        port: args.port,
        public_key: moat_ssh::openssh_line(&key.key, &key.comment)?,
        fingerprint: fingerprint.clone(),
        host_keys: host_keys.clone(),
        granted_at: Utc::now(),
    };
    store(ctx).insert(grant)?;
    let comment = if key.comment.is_empty() {
        String::new()
    } else {
        format!(" ({})", key.comment)
    };
    outln!("Granted SSH access to {host} with key {fingerprint}{comment}.");
    for k in &host_keys {
        let fp = moat_ssh::key_blob(k)
            .and_then(|b| moat_ssh::fingerprint(&b))
            .unwrap_or_else(|_| k.clone());
        outln!("Pinned host key: {fp}");
    }
    outln!("Use it with: moat run --grant ssh:{host}");
    Ok(ExitCode::SUCCESS)
}

/// The agent key that signs for the host: the one `--key` names, the
/// only one, or the one the user picks when a terminal can ask.
fn choose_key<'a>(
    ids: &'a [Identity],
    wanted: Option<&str>,
    no_prompt: bool,
) -> Result<&'a Identity> {
    if let Some(wanted) = wanted {
        return Ok(moat_ssh::find_key(ids, wanted)?);
    }
    if let [only] = ids {
        return Ok(only);
    }
    let listing = moat_ssh::identity_listing(ids);
    if no_prompt || !std::io::stdin().is_terminal() {
        return Err(SshError::SeveralKeys(listing).into());
    }
    errln!("The SSH agent holds several keys:");
    for (i, line) in listing.lines().enumerate() {
        errln!("  {}) {}", i + 1, line.trim_start());
    }
    err!("Which one may sign for this host? [1-{}] ", ids.len());
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    match answer.trim().parse::<usize>() {
        Ok(n) if (1..=ids.len()).contains(&n) => Ok(&ids[n - 1]),
        _ => Err(crate::hints::failure(
            format!("no key chosen:\n{listing}"),
            "Pass --key FINGERPRINT to choose without a prompt.",
        )),
    }
}

/// `moat revoke ssh:HOST`.
pub fn revoke(ctx: &Context, host: &str) -> Result<ExitCode> {
    if !store(ctx).remove(host)? {
        return Err(crate::hints::failure(
            format!("no SSH grant for {host}"),
            "See the SSH grants with: moat grant list",
        ));
    }
    let profile = match &ctx.profile {
        Some(p) => format!(" from profile {p}"),
        None => String::new(),
    };
    outln!("Revoked ssh:{host}{profile}.");
    Ok(ExitCode::SUCCESS)
}

/// `moat __ssh-connect HOST PORT`: the ssh ProxyCommand inside a sandbox
/// (see [`moat_ssh::tunnel`]).
pub fn connect(host: &str, port: u16) -> Result<ExitCode> {
    moat_ssh::tunnel::proxy_command(host, port)?;
    Ok(ExitCode::SUCCESS)
}
