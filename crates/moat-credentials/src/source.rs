//! Where a new secret comes from when the user runs `moat grant`.
//!
//! Each provider lists environment variables and optionally a command; the
//! first that yields a value wins, then a hidden prompt — but only when
//! prompting is allowed and stdin is a terminal, so a script never hangs.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use crate::{CredentialError, CredentialSource, NoSecret, ProviderSpec, Secret};

/// How `moat grant` may obtain a secret.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// `--no-prompt` or `MOAT_NO_PROMPT=1`.
    pub no_prompt: bool,
    /// `--stdin`: read the secret from standard input instead.
    pub from_stdin: bool,
}

impl SourceOptions {
    /// Why prompting is impossible, or `None` when a prompt may be shown.
    pub fn prompt_blocker(&self) -> Option<&'static str> {
        if self.no_prompt {
            Some("prompting is disabled (--no-prompt or MOAT_NO_PROMPT=1)")
        } else if env_flag("MOAT_NO_PROMPT") {
            Some("prompting is disabled (MOAT_NO_PROMPT=1)")
        } else if !std::io::stdin().is_terminal() {
            Some("standard input is not a terminal")
        } else {
            None
        }
    }
}

/// Whether an environment variable is set to a true-ish value.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "on"))
        .unwrap_or(false)
}

/// A secret and what is known about it.
#[derive(Debug)]
pub struct Obtained {
    /// The secret.
    pub secret: Secret,
    /// Its kind of origin.
    pub source: CredentialSource,
    /// The exact origin, for the user: `GITHUB_TOKEN`, `gh auth token`, a
    /// file path.
    pub origin: String,
    /// Expiry, when the source says.
    pub expires_at: Option<DateTime<Utc>>,
    /// Scopes, when the source says.
    pub scopes: Vec<String>,
    /// Non-secret extras to store.
    pub metadata: BTreeMap<String, String>,
}

impl Obtained {
    fn new(secret: Secret, source: CredentialSource, origin: impl Into<String>) -> Self {
        Obtained {
            secret,
            source,
            origin: origin.into(),
            expires_at: None,
            scopes: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }
}

/// npm's public registry: an npm grant for it records no host.
pub const NPM_DEFAULT_REGISTRY: &str = "registry.npmjs.org";

/// Obtains the secret for `moat grant PROVIDER`: the providers with a
/// source of their own (Claude Code's login, `~/.npmrc`) and [`obtain`]
/// for every other one. `from_file` is read for claude only and `npm_host`
/// for npm only; refusing them for other providers is the caller's job.
pub fn obtain_for_provider(
    spec: &ProviderSpec,
    from_file: Option<&Path>,
    npm_host: Option<&str>,
    opts: &SourceOptions,
) -> Result<Obtained, CredentialError> {
    match spec.name.as_str() {
        "claude" => obtain_claude(from_file, opts),
        "npm" => {
            let host = npm_host.unwrap_or(NPM_DEFAULT_REGISTRY);
            let mut found = obtain_npm(spec, host, opts)?;
            // The proxy injects the token for this host only.
            if host != NPM_DEFAULT_REGISTRY {
                found.metadata.insert("host".into(), host.to_string());
            }
            Ok(found)
        }
        _ => obtain(spec, opts),
    }
}

/// Obtains the secret for `spec`: stdin if asked, then its environment
/// variables, then its command, then a prompt.
pub fn obtain(spec: &ProviderSpec, opts: &SourceOptions) -> Result<Obtained, CredentialError> {
    if opts.from_stdin {
        return read_stdin(&spec.name);
    }
    if let Some(found) = from_env(&spec.env) {
        return Ok(found);
    }
    if !spec.command.is_empty() {
        if let Some(secret) = run_command(&spec.command) {
            return Ok(Obtained::new(
                secret,
                CredentialSource::Cli,
                spec.command.join(" "),
            ));
        }
    }
    prompt(&spec.name, &describe_sources(spec), opts)
}

/// Obtains an npm token: `NPM_TOKEN`, then the `_authToken` for `host` in
/// `~/.npmrc`, then a prompt.
pub fn obtain_npm(
    spec: &ProviderSpec,
    host: &str,
    opts: &SourceOptions,
) -> Result<Obtained, CredentialError> {
    if opts.from_stdin {
        return read_stdin("npm");
    }
    if let Some(found) = from_env(&spec.env) {
        return Ok(found);
    }
    if let Some(path) = home_dir().map(|h| h.join(".npmrc")) {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some(token) = npmrc_token(&text, host) {
                return Ok(Obtained::new(
                    token,
                    CredentialSource::Import,
                    path.display().to_string(),
                ));
            }
        }
    }
    prompt("npm", "NPM_TOKEN or ~/.npmrc", opts)
}

/// Obtains the token for the MCP server `name`: stdin if asked, else a
/// hidden prompt.
pub fn obtain_mcp(name: &str, opts: &SourceOptions) -> Result<Obtained, CredentialError> {
    if opts.from_stdin {
        return read_stdin(&format!("mcp {name}"));
    }
    prompt(&format!("mcp {name}"), "--stdin", opts)
}

/// Obtains a Claude Code OAuth token: from `file` when given, else
/// `CLAUDE_CODE_OAUTH_TOKEN`, else Claude Code's own credentials file, else
/// a pasted token. An expired token is refused here, at grant time.
pub fn obtain_claude(
    file: Option<&Path>,
    opts: &SourceOptions,
) -> Result<Obtained, CredentialError> {
    let found = if let Some(file) = file {
        import_claude_file(file)?.ok_or_else(|| NoSecret::ClaudeFileMissing {
            path: file.to_path_buf(),
        })?
    } else if opts.from_stdin {
        read_stdin("claude")?
    } else if let Some(found) = from_env(&["CLAUDE_CODE_OAUTH_TOKEN".to_string()]) {
        found
    } else if let Some(found) = claude_credentials_path()
        .map(|p| import_claude_file(&p))
        .transpose()?
        .flatten()
    {
        found
    } else {
        prompt(
            "claude",
            "CLAUDE_CODE_OAUTH_TOKEN (from `claude setup-token`) or a Claude Code login (~/.claude/.credentials.json)",
            opts,
        )?
    };
    if found.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(CredentialError::ClaudeTokenExpired);
    }
    Ok(found)
}

/// Claude Code's credentials file: `$CLAUDE_CONFIG_DIR/.credentials.json`
/// or `~/.claude/.credentials.json`.
pub fn claude_credentials_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir).join(".credentials.json"));
    }
    home_dir().map(|h| h.join(".claude").join(".credentials.json"))
}

#[derive(Deserialize)]
struct ClaudeFile {
    #[serde(rename = "claudeAiOauth")]
    oauth: Option<ClaudeOauth>,
}

#[derive(Deserialize)]
struct ClaudeOauth {
    #[serde(rename = "accessToken", with = "moat_secret::exposed")]
    access_token: Secret,
    #[serde(rename = "expiresAt")]
    expires_at: Option<i64>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(rename = "subscriptionType")]
    subscription_type: Option<String>,
}

fn import_claude_file(path: &Path) -> Result<Option<Obtained>, CredentialError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => zeroize::Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CredentialError::Home(moat_home::HomeError::Io {
                action: "reading",
                path: path.to_path_buf(),
                error: e,
            }))
        }
    };
    let parsed: ClaudeFile =
        serde_json::from_slice(&bytes).map_err(|error| NoSecret::ClaudeFileMalformed {
            path: path.to_path_buf(),
            error,
        })?;
    let Some(oauth) = parsed.oauth else {
        return Err(NoSecret::ClaudeFileNoLogin {
            path: path.to_path_buf(),
        }
        .into());
    };
    let mut found = Obtained::new(
        oauth.access_token,
        CredentialSource::Import,
        path.display().to_string(),
    );
    found.expires_at = oauth
        .expires_at
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    found.scopes = oauth.scopes;
    if let Some(sub) = oauth.subscription_type {
        found.metadata.insert("subscription_type".into(), sub);
    }
    Ok(Some(found))
}

fn from_env(vars: &[String]) -> Option<Obtained> {
    vars.iter().find_map(|var| {
        let value = std::env::var(var).ok()?;
        let secret = Secret::new(value);
        (!secret.is_empty()).then(|| Obtained::new(secret, CredentialSource::Env, var.clone()))
    })
}

/// Runs `argv` with no stdin and a deadline; its trimmed stdout is the
/// secret. Any failure (missing tool, not logged in, timeout) means "no
/// secret from here" — the next source is tried.
fn run_command(argv: &[String]) -> Option<Secret> {
    let (program, args) = argv.split_first()?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) => return None,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = zeroize::Zeroizing::new(String::new());
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    let secret = Secret::new(out.as_str());
    (!secret.is_empty()).then_some(secret)
}

fn read_stdin(what: &str) -> Result<Obtained, CredentialError> {
    let mut text = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|error| NoSecret::Stdin {
            what: what.to_owned(),
            error,
        })?;
    let secret = Secret::new(text.as_str());
    if secret.is_empty() {
        return Err(NoSecret::StdinEmpty {
            what: what.to_owned(),
        }
        .into());
    }
    Ok(Obtained::new(secret, CredentialSource::Prompt, "stdin"))
}

fn prompt(what: &str, sources: &str, opts: &SourceOptions) -> Result<Obtained, CredentialError> {
    if let Some(blocker) = opts.prompt_blocker() {
        return Err(NoSecret::PromptBlocked {
            what: what.to_owned(),
            blocker: blocker.to_string(),
            sources: sources.to_owned(),
        }
        .into());
    }
    let value = rpassword::prompt_password(format!("Paste the {what} token (input hidden): "))
        .map_err(|error| NoSecret::Prompt {
            what: what.to_owned(),
            error,
        })?;
    let secret = Secret::new(value);
    if secret.is_empty() {
        return Err(NoSecret::NothingEntered {
            what: what.to_owned(),
        }
        .into());
    }
    Ok(Obtained::new(secret, CredentialSource::Prompt, "prompt"))
}

fn describe_sources(spec: &ProviderSpec) -> String {
    let mut parts: Vec<String> = spec.env.clone();
    if !spec.command.is_empty() {
        parts.push(format!("`{}`", spec.command.join(" ")));
    }
    if parts.is_empty() {
        "a prompt".to_string()
    } else {
        parts.join(", ")
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Finds `//<host>/:_authToken=<token>` in an `.npmrc`.
fn npmrc_token(text: &str, host: &str) -> Option<Secret> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let rest = line.strip_prefix("//")?;
        let (registry, value) = rest.split_once(":_authToken=")?;
        let registry_host = registry.split('/').next()?;
        (registry_host.eq_ignore_ascii_case(host) && !value.trim().is_empty())
            .then(|| Secret::new(value.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npmrc_tokens_by_host() {
        let text = "registry=https://registry.npmjs.org/\n\
                    //registry.npmjs.org/:_authToken=npm_abc\n\
                    //npm.corp.test/repo/:_authToken=corp\n";
        assert_eq!(
            npmrc_token(text, "registry.npmjs.org").unwrap().expose(),
            "npm_abc"
        );
        assert_eq!(npmrc_token(text, "npm.corp.test").unwrap().expose(), "corp");
        assert!(npmrc_token(text, "other").is_none());
    }

    #[test]
    fn claude_file_import_reads_expiry() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(".credentials.json");
        std::fs::write(
            &path,
            r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-x","refreshToken":"r","expiresAt":1000,"scopes":["user:inference"],"subscriptionType":"max"}}"#,
        )
        .unwrap();
        let found = import_claude_file(&path).unwrap().unwrap();
        assert_eq!(found.secret.expose(), "sk-ant-oat01-x");
        assert_eq!(found.expires_at.unwrap().timestamp_millis(), 1000);
        let err = obtain_claude(Some(&path), &SourceOptions::default()).unwrap_err();
        assert!(err.to_string().starts_with("Claude Code token has expired"));
        std::fs::write(&path, "garbage").unwrap();
        assert!(import_claude_file(&path).is_err());
    }

    /// The built-in spec of `name`, with its secret read from `var` only.
    fn spec(name: &str, var: &str) -> ProviderSpec {
        let registry = crate::ProviderRegistry::load(Path::new("/nonexistent/providers.yaml"))
            .expect("built-in providers");
        let mut spec = registry.require(name).expect("built in").clone();
        spec.env = vec![var.to_string()];
        spec.command = Vec::new();
        spec
    }

    #[test]
    fn provider_dispatch_reads_each_providers_own_source() {
        // A name no other test sets: tests share the environment.
        let var = "MOAT_TEST_OBTAIN_FOR_PROVIDER_TOKEN";
        std::env::set_var(var, "tok");
        let opts = SourceOptions::default();

        let npm = spec("npm", var);
        let found = obtain_for_provider(&npm, None, None, &opts).unwrap();
        assert_eq!(found.secret.expose(), "tok");
        assert!(!found.metadata.contains_key("host"));
        let found = obtain_for_provider(&npm, None, Some("npm.corp.test"), &opts).unwrap();
        assert_eq!(found.metadata["host"], "npm.corp.test");

        let github = spec("github", var);
        let found = obtain_for_provider(&github, None, None, &opts).unwrap();
        assert_eq!(found.origin, var);

        // claude reads --from-file, not the provider's variables.
        let claude = spec("claude", var);
        let err = obtain_for_provider(&claude, Some(Path::new("/nonexistent/c.json")), None, &opts)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent/c.json does not exist"),
            "{err}"
        );
    }

    #[test]
    fn command_source_handles_missing_tools() {
        assert!(run_command(&["/nonexistent/tool".to_string()]).is_none());
        assert!(run_command(&["false".to_string()]).is_none());
        assert_eq!(
            run_command(&["echo".to_string(), "tok".to_string()])
                .unwrap()
                .expose(),
            "tok"
        );
    }
}
