use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::{Credential, CredentialError, ProviderKind, Secret};

/// How the secret becomes a header value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "scheme")]
pub enum HeaderValue {
    /// The secret as is.
    Raw,
    /// `Bearer <secret>`.
    Bearer,
    /// `Basic base64("<username>:<secret>")`, as git smart-HTTP expects.
    Basic {
        /// The user name paired with the secret.
        username: String,
    },
    /// A constant value (a protocol flag the API needs with this secret).
    Fixed {
        /// The value.
        value: String,
    },
}

/// One header a provider sets on requests to a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderSpec {
    /// Header name, e.g. `Authorization`.
    pub name: String,
    /// How its value is built.
    #[serde(flatten)]
    pub value: HeaderValue,
}

/// The headers a provider injects on requests to hosts matching `host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInjection {
    /// An exact host or a `*.` wildcard.
    pub host: String,
    /// Headers set (replacing whatever the client sent).
    pub headers: Vec<HeaderSpec>,
}

/// The environment variable a sandbox receives instead of the secret: a
/// well-formed fake, so tools that check for the variable (or its format)
/// proceed, while the real value is added by the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placeholder {
    /// Variable name.
    pub env: String,
    /// The fake value.
    pub value: String,
}

/// A credential provider, described as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderSpec {
    /// Name used on the command line and in `grants:`.
    pub name: String,
    /// One line for `moat grant providers`.
    pub description: String,
    /// What the secret is.
    pub kind: ProviderKind,
    /// Where and how the secret is injected.
    pub hosts: Vec<HostInjection>,
    /// Environment variables `moat grant` reads the secret from, in order.
    #[serde(default)]
    pub env: Vec<String>,
    /// A command whose stdout is the secret (e.g. `gh auth token`).
    #[serde(default)]
    pub command: Vec<String>,
    /// The variable the sandbox sees.
    #[serde(default)]
    pub placeholder: Option<Placeholder>,
    /// Built in, or declared by the user.
    #[serde(skip)]
    pub builtin: bool,
}

/// A header to inject, resolved: the host pattern and the final value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInjection {
    /// An exact host or a `*.` wildcard.
    pub host: String,
    /// Header name.
    pub name: String,
    /// Header value (contains the secret, except for fixed values).
    pub value: Secret,
}

impl ProviderSpec {
    /// The headers to inject for `credential`. A credential that carries a
    /// `host` in its metadata (npm with a private registry) applies to that
    /// host instead of the defaults.
    pub fn injections(&self, credential: &Credential) -> Vec<HeaderInjection> {
        let host_override = credential.metadata.get("host");
        let mut out = Vec::new();
        for hi in &self.hosts {
            let host = host_override.cloned().unwrap_or_else(|| hi.host.clone());
            for h in &hi.headers {
                let secret = credential.secret.expose();
                let value = match &h.value {
                    HeaderValue::Raw => Secret::new(secret),
                    HeaderValue::Bearer => Secret::new(format!("Bearer {secret}")),
                    HeaderValue::Basic { username } => Secret::new(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{username}:{secret}"))
                    )),
                    HeaderValue::Fixed { value } => Secret::new(value.clone()),
                };
                out.push(HeaderInjection {
                    host: host.clone(),
                    name: h.name.clone(),
                    value,
                });
            }
            if host_override.is_some() {
                break;
            }
        }
        out
    }

    /// The hosts this provider applies to, for `moat grant providers` and
    /// for allowing them under a strict policy.
    pub fn host_patterns(&self) -> Vec<&str> {
        self.hosts.iter().map(|h| h.host.as_str()).collect()
    }
}

fn header(name: &str, value: HeaderValue) -> HeaderSpec {
    HeaderSpec {
        name: name.to_string(),
        value,
    }
}

fn host(host: &str, headers: Vec<HeaderSpec>) -> HostInjection {
    HostInjection {
        host: host.to_string(),
        headers,
    }
}

fn placeholder(env: &str, value: &str) -> Option<Placeholder> {
    Some(Placeholder {
        env: env.to_string(),
        value: value.to_string(),
    })
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The beta flag Anthropic's API requires with OAuth tokens, as Claude Code
/// sends it.
pub const ANTHROPIC_OAUTH_BETA: &str = "oauth-2025-04-20";

/// The providers moat knows without `providers.yaml`.
///
/// One piece on purpose: it is a table, one `ProviderSpec` literal per
/// provider, read top to bottom like the providers file it mirrors;
/// splitting it would scatter the table, not shorten any idea.
fn builtin_providers() -> Vec<ProviderSpec> {
    let bearer = || vec![header("Authorization", HeaderValue::Bearer)];
    vec![
        ProviderSpec {
            name: "github".into(),
            description: "GitHub API and git over HTTPS".into(),
            kind: ProviderKind::Token,
            hosts: vec![
                host("api.github.com", bearer()),
                host(
                    "github.com",
                    vec![header(
                        "Authorization",
                        HeaderValue::Basic {
                            username: "x-access-token".into(),
                        },
                    )],
                ),
            ],
            env: strings(&["GITHUB_TOKEN", "GH_TOKEN"]),
            command: strings(&["gh", "auth", "token"]),
            placeholder: placeholder("GH_TOKEN", "ghp_moatPlaceholder000000000000000000000"),
            builtin: true,
        },
        ProviderSpec {
            name: "anthropic".into(),
            description: "Anthropic API key".into(),
            kind: ProviderKind::ApiKey,
            hosts: vec![host(
                "api.anthropic.com",
                vec![header("x-api-key", HeaderValue::Raw)],
            )],
            env: strings(&["ANTHROPIC_API_KEY"]),
            command: vec![],
            placeholder: placeholder(
                "ANTHROPIC_API_KEY",
                "sk-ant-api03-moatPlaceholder00000000000000000000000000000000000000000000000000000000000000000000000000-AAAAAAAA",
            ),
            builtin: true,
        },
        ProviderSpec {
            name: "claude".into(),
            description: "Claude Code OAuth token (Pro/Max subscription)".into(),
            kind: ProviderKind::Oauth,
            hosts: vec![host(
                "api.anthropic.com",
                vec![
                    header("Authorization", HeaderValue::Bearer),
                    header(
                        "anthropic-beta",
                        HeaderValue::Fixed {
                            value: ANTHROPIC_OAUTH_BETA.into(),
                        },
                    ),
                ],
            )],
            env: strings(&["CLAUDE_CODE_OAUTH_TOKEN"]),
            command: vec![],
            placeholder: placeholder(
                "CLAUDE_CODE_OAUTH_TOKEN",
                "sk-ant-oat01-moatPlaceholder0000000000000000000000000000000000000000000000000000000000000000000000-AAAAAAAA",
            ),
            builtin: true,
        },
        ProviderSpec {
            name: "openai".into(),
            description: "OpenAI API key (Codex)".into(),
            kind: ProviderKind::ApiKey,
            hosts: vec![
                host("api.openai.com", bearer()),
                host("chatgpt.com", bearer()),
                host("*.openai.com", bearer()),
            ],
            env: strings(&["OPENAI_API_KEY"]),
            command: vec![],
            placeholder: placeholder(
                "OPENAI_API_KEY",
                "sk-proj-moatPlaceholder000000000000000000000000000000000000000000000000000000000000",
            ),
            builtin: true,
        },
        ProviderSpec {
            name: "gemini".into(),
            description: "Google Gemini API key".into(),
            kind: ProviderKind::ApiKey,
            hosts: vec![host(
                "generativelanguage.googleapis.com",
                vec![header("x-goog-api-key", HeaderValue::Raw)],
            )],
            env: strings(&["GEMINI_API_KEY", "GOOGLE_API_KEY"]),
            command: vec![],
            placeholder: placeholder("GEMINI_API_KEY", "AIzaSyMoatPlaceholder000000000000000000"),
            builtin: true,
        },
        ProviderSpec {
            name: "gitlab".into(),
            description: "GitLab personal access token".into(),
            kind: ProviderKind::Token,
            hosts: vec![
                host(
                    "gitlab.com",
                    vec![header("PRIVATE-TOKEN", HeaderValue::Raw)],
                ),
                host(
                    "*.gitlab.com",
                    vec![header("PRIVATE-TOKEN", HeaderValue::Raw)],
                ),
            ],
            env: strings(&["GITLAB_TOKEN", "GL_TOKEN"]),
            command: vec![],
            placeholder: placeholder("GITLAB_TOKEN", "glpat-moatPlaceholder0000"),
            builtin: true,
        },
        ProviderSpec {
            name: "npm".into(),
            description: "npm registry token (registry.npmjs.org, or --host)".into(),
            kind: ProviderKind::Token,
            hosts: vec![host("registry.npmjs.org", bearer())],
            env: strings(&["NPM_TOKEN"]),
            command: vec![],
            placeholder: placeholder("NPM_TOKEN", "npm_moatPlaceholder00000000000000000000"),
            builtin: true,
        },
    ]
}

/// A grant as written on the command line or in `moat.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantName {
    /// A provider: `github`, `claude`, a custom one.
    Provider(String),
    /// An MCP server's credential: `mcp:NAME` (or the older `mcp-NAME`).
    Mcp(String),
    /// SSH signing for a host: `ssh:HOST`.
    Ssh(String),
}

impl GrantName {
    /// Parses `github`, `mcp:name`, `mcp-name`, `ssh:host`. Aliases
    /// (`codex` → `openai`, `google` → `gemini`) are applied here.
    pub fn parse(text: &str) -> Result<Self, CredentialError> {
        let text = text.trim();
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !s.starts_with('.')
        };
        if let Some(host) = text.strip_prefix("ssh:") {
            return if valid_name(host) {
                Ok(GrantName::Ssh(host.to_ascii_lowercase()))
            } else {
                Err(CredentialError::InvalidGrant(text.to_string()))
            };
        }
        if let Some(name) = text
            .strip_prefix("mcp:")
            .or_else(|| text.strip_prefix("mcp-"))
        {
            return if valid_name(name) {
                Ok(GrantName::Mcp(name.to_string()))
            } else {
                Err(CredentialError::InvalidGrant(text.to_string()))
            };
        }
        if !valid_name(text) {
            return Err(CredentialError::InvalidGrant(text.to_string()));
        }
        let name = text.to_ascii_lowercase();
        let name = match name.as_str() {
            "codex" => "openai".to_string(),
            "google" => "gemini".to_string(),
            _ => name,
        };
        Ok(GrantName::Provider(name))
    }

    /// The stem of the credential file (`github` → `github.enc`,
    /// `mcp:x` → `mcp-x.enc`). `None` for SSH, which stores no secret.
    pub fn file_stem(&self) -> Option<String> {
        match self {
            GrantName::Provider(p) => Some(p.clone()),
            GrantName::Mcp(name) => Some(format!("mcp-{name}")),
            GrantName::Ssh(_) => None,
        }
    }

    /// The arguments to `moat grant` that create this credential.
    pub fn grant_command(&self) -> String {
        match self {
            GrantName::Provider(p) => p.clone(),
            GrantName::Mcp(name) => format!("mcp {name}"),
            GrantName::Ssh(host) => format!("ssh --host {host}"),
        }
    }
}

impl fmt::Display for GrantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantName::Provider(p) => f.write_str(p),
            GrantName::Mcp(name) => write!(f, "mcp-{name}"),
            GrantName::Ssh(host) => write!(f, "ssh:{host}"),
        }
    }
}

/// Every provider moat knows: the built-in ones plus those declared in
/// `MOAT_HOME/providers.json`.
#[derive(Debug, Clone)]
pub struct ProviderRegistry {
    providers: Vec<ProviderSpec>,
}

impl Default for ProviderRegistry {
    fn default() -> Self {
        ProviderRegistry {
            providers: builtin_providers(),
        }
    }
}

impl ProviderRegistry {
    /// The built-in providers plus those in `path` (a JSON list of provider
    /// specs), if it exists. A custom provider may not reuse a built-in
    /// name.
    pub fn load(path: &std::path::Path) -> Result<Self, CredentialError> {
        let mut registry = ProviderRegistry::default();
        let Some(bytes) = moat_home::read_if_exists(path)? else {
            return Ok(registry);
        };
        let custom: Vec<ProviderSpec> =
            serde_json::from_slice(&bytes).map_err(|e| CredentialError::ProvidersFile {
                path: path.to_path_buf(),
                message: format!(
                    "line {}, column {}: {e}. Expected a JSON list of providers, each with \
                     name, description, kind (token|api-key|oauth) and hosts",
                    e.line(),
                    e.column()
                ),
            })?;
        for spec in custom {
            if GrantName::parse(&spec.name).is_err() || spec.name.starts_with("mcp") {
                return Err(CredentialError::ProvidersFile {
                    path: path.to_path_buf(),
                    message: format!("invalid provider name {:?}", spec.name),
                });
            }
            if registry.get(&spec.name).is_some() {
                return Err(CredentialError::ProvidersFile {
                    path: path.to_path_buf(),
                    message: format!(
                        "provider {:?} is already defined; choose another name",
                        spec.name
                    ),
                });
            }
            registry.providers.push(spec);
        }
        Ok(registry)
    }

    /// All providers, built-in first.
    pub fn all(&self) -> &[ProviderSpec] {
        &self.providers
    }

    /// The provider named `name`.
    pub fn get(&self, name: &str) -> Option<&ProviderSpec> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The provider named `name`, or an error suggesting the nearest name.
    pub fn require(&self, name: &str) -> Result<&ProviderSpec, CredentialError> {
        self.get(name).ok_or_else(|| {
            let nearest = self
                .providers
                .iter()
                .map(|p| (edit_distance(name, &p.name), &p.name))
                .filter(|(d, _)| *d <= 2)
                .min();
            CredentialError::UnknownProvider {
                name: name.to_string(),
                suggestion: nearest
                    .map(|(_, n)| format!(" (did you mean {n:?}?)"))
                    .unwrap_or_default(),
            }
        })
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CredentialSource;

    fn cred(provider: &str, secret: &str) -> Credential {
        Credential::new(provider, Secret::new(secret), CredentialSource::Env)
    }

    #[test]
    fn github_injects_bearer_for_api_and_basic_for_git() {
        let reg = ProviderRegistry::default();
        let gh = reg.get("github").unwrap();
        let inj = gh.injections(&cred("github", "tok"));
        assert_eq!(inj.len(), 2);
        assert_eq!(inj[0].host, "api.github.com");
        assert_eq!(inj[0].value.expose(), "Bearer tok");
        assert_eq!(inj[1].host, "github.com");
        // base64("x-access-token:tok")
        assert_eq!(inj[1].value.expose(), "Basic eC1hY2Nlc3MtdG9rZW46dG9r");
    }

    #[test]
    fn claude_adds_the_oauth_beta_flag() {
        let reg = ProviderRegistry::default();
        let inj = reg
            .get("claude")
            .unwrap()
            .injections(&cred("claude", "oat"));
        let names: Vec<_> = inj.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["Authorization", "anthropic-beta"]);
        assert_eq!(inj[1].value.expose(), ANTHROPIC_OAUTH_BETA);
    }

    #[test]
    fn npm_host_override() {
        let reg = ProviderRegistry::default();
        let mut c = cred("npm", "t");
        c.metadata
            .insert("host".into(), "npm.example.internal".into());
        let inj = reg.get("npm").unwrap().injections(&c);
        assert_eq!(inj.len(), 1);
        assert_eq!(inj[0].host, "npm.example.internal");
    }

    #[test]
    fn grant_names() {
        assert_eq!(
            GrantName::parse("github").unwrap(),
            GrantName::Provider("github".into())
        );
        assert_eq!(
            GrantName::parse("codex").unwrap(),
            GrantName::Provider("openai".into())
        );
        assert_eq!(
            GrantName::parse("mcp:my-server").unwrap(),
            GrantName::parse("mcp-my-server").unwrap()
        );
        assert_eq!(
            GrantName::parse("mcp:my-server")
                .unwrap()
                .file_stem()
                .unwrap(),
            "mcp-my-server"
        );
        assert_eq!(
            GrantName::parse("ssh:GitHub.com").unwrap(),
            GrantName::Ssh("github.com".into())
        );
        for bad in ["", "../x", "a/b", "ssh:", "mcp:", ".hidden", "a b"] {
            assert!(GrantName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_provider_suggests_nearest() {
        let reg = ProviderRegistry::default();
        let err = reg.require("githb").unwrap_err().to_string();
        assert!(err.contains("did you mean \"github\"?"), "{err}");
    }

    #[test]
    fn every_builtin_has_hosts_and_a_placeholder_that_is_not_a_secret_source() {
        for p in ProviderRegistry::default().all() {
            assert!(!p.hosts.is_empty(), "{}", p.name);
            let ph = p.placeholder.as_ref().unwrap();
            assert!(ph.value.contains("moatPlaceholder") || ph.value.contains("Moat"));
        }
    }

    #[test]
    fn custom_providers_load_from_json() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("providers.json");
        std::fs::write(
            &path,
            r#"[{"name":"acme","description":"Acme API","kind":"api-key",
                "hosts":[{"host":"api.acme.test","headers":[{"name":"X-Acme-Key","scheme":"raw"}]}],
                "env":["ACME_KEY"]}]"#,
        )
        .unwrap();
        let reg = ProviderRegistry::load(&path).unwrap();
        let acme = reg.get("acme").unwrap();
        assert!(!acme.builtin);
        let inj = acme.injections(&cred("acme", "k"));
        assert_eq!(inj[0].name, "X-Acme-Key");

        std::fs::write(&path, r#"[{"name":"github"}]"#).unwrap();
        assert!(ProviderRegistry::load(&path).is_err());
        std::fs::write(&path, "{not json").unwrap();
        let err = ProviderRegistry::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
