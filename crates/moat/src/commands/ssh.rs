//! `moat grant ssh --host`, `moat revoke ssh:HOST`, and the `ssh`
//! ProxyCommand that runs inside sandboxes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
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
        Some(given) => parse_host_keys(given)?,
        None => {
            let mut files = Vec::new();
            if let Some(home) = std::env::var_os("HOME") {
                files.push(PathBuf::from(home).join(".ssh/known_hosts"));
            }
            files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
            moat_ssh::known_host_keys(&host, args.port, &files)
        }
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

fn choose_key<'a>(
    ids: &'a [Identity],
    wanted: Option<&str>,
    no_prompt: bool,
) -> Result<&'a Identity> {
    let listing = || {
        ids.iter()
            .map(|id| {
                let fp = moat_ssh::fingerprint(&id.key).unwrap_or_else(|_| "(unparsable)".into());
                format!("  {fp}  {}", id.comment)
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Some(wanted) = wanted {
        let path = Path::new(wanted);
        let blob = if path.exists() {
            Some(read_key_file(path)?)
        } else {
            None
        };
        let wanted_fp = if wanted.starts_with("SHA256:") {
            wanted.to_string()
        } else {
            format!("SHA256:{wanted}")
        };
        return ids
            .iter()
            .find(|id| match &blob {
                Some(b) => &id.key == b,
                None => moat_ssh::fingerprint(&id.key).is_ok_and(|fp| fp == wanted_fp),
            })
            .ok_or_else(|| SshError::KeyNotInAgent(wanted.to_string(), listing()).into());
    }
    if let [only] = ids {
        return Ok(only);
    }
    if no_prompt || !std::io::stdin().is_terminal() {
        return Err(SshError::SeveralKeys(listing()).into());
    }
    errln!("The SSH agent holds several keys:");
    for (i, id) in ids.iter().enumerate() {
        let fp = moat_ssh::fingerprint(&id.key).unwrap_or_else(|_| "(unparsable)".into());
        errln!("  {}) {fp}  {}", i + 1, id.comment);
    }
    err!("Which one may sign for this host? [1-{}] ", ids.len());
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    match answer.trim().parse::<usize>() {
        Ok(n) if (1..=ids.len()).contains(&n) => Ok(&ids[n - 1]),
        _ => bail!(
            "no key chosen; pass --key FINGERPRINT to choose without a prompt:\n{}",
            listing()
        ),
    }
}

/// A key file given to `--key`: a `.pub`, or a private key whose `.pub`
/// sits beside it (the private key itself is never read).
fn read_key_file(path: &Path) -> Result<Vec<u8>> {
    let pub_path = if path.extension().is_some_and(|e| e == "pub") {
        path.to_path_buf()
    } else {
        let mut p = path.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    };
    let text = std::fs::read_to_string(&pub_path).with_context(|| {
        format!(
            "reading the public key {} (moat never reads private keys; pass the .pub file or a fingerprint)",
            pub_path.display()
        )
    })?;
    Ok(moat_ssh::key_blob(&text)?)
}

/// `--host-key`: a key line, or a file of key lines (`.pub` or
/// `known_hosts` format).
fn parse_host_keys(given: &str) -> Result<Vec<String>> {
    let path = Path::new(given);
    let text = if path.is_file() {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading host keys from {}", path.display()))?
    } else {
        given.to_string()
    };
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        // `type base64 [comment]`, or `hosts type base64 [comment]`.
        let candidates = [fields.get(..2), fields.get(1..3)];
        let key = candidates
            .into_iter()
            .flatten()
            .map(|f| f.join(" "))
            .find(|k| moat_ssh::key_blob(k).is_ok());
        match key {
            Some(k) if !keys.contains(&k) => keys.push(k),
            Some(_) => {}
            None => bail!(
                "not a host key: {line:?}\nPass a line such as \"ssh-ed25519 AAAA...\" or a file of them \
                 (for example the server's /etc/ssh/ssh_host_ed25519_key.pub)"
            ),
        }
    }
    if keys.is_empty() {
        bail!("no host key in {given:?}");
    }
    Ok(keys)
}

/// `moat revoke ssh:HOST`.
pub fn revoke(ctx: &Context, host: &str) -> Result<ExitCode> {
    if !store(ctx).remove(host)? {
        bail!("no SSH grant for {host}\nSee the SSH grants with: moat grant list");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_parse_from_lines_and_known_hosts_format() {
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILnuRaNbMTatW5PUvmarNfnIFYEP2MKgTwRVdxtXCEWY";
        assert_eq!(parse_host_keys(key).unwrap(), vec![key.to_string()]);
        assert_eq!(
            parse_host_keys(&format!("github.com {key} comment")).unwrap(),
            vec![key.to_string()]
        );
        assert!(parse_host_keys("ssh-ed25519 garbage").is_err());
    }
}
