//! A credential as moat keeps it: the secret, its kind and where it came
//! from.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Secret;

/// Where a stored secret came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialSource {
    /// An environment variable.
    Env,
    /// Another tool's CLI (`gh auth token`).
    Cli,
    /// Typed or pasted at a prompt, or read from stdin.
    Prompt,
    /// Imported from another tool's credentials file.
    Import,
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialSource::Env => "env",
            CredentialSource::Cli => "cli",
            CredentialSource::Prompt => "prompt",
            CredentialSource::Import => "import",
        })
    }
}

/// A stored credential: the secret and what moat knows about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    /// The file stem: provider name, or `mcp-<name>`.
    pub provider: String,
    /// The secret.
    #[serde(with = "moat_secret::exposed")]
    pub secret: Secret,
    /// What the secret is.
    pub kind: ProviderKind,
    /// Where it came from.
    pub source: CredentialSource,
    /// When it was stored.
    pub granted_at: DateTime<Utc>,
    /// When it stops working, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Scopes, if the provider has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Provider extras that are not secret (GitHub login, npm host).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Credential {
    /// A token credential granted now.
    pub fn new(provider: &str, secret: Secret, source: CredentialSource) -> Self {
        Credential {
            provider: provider.to_string(),
            secret,
            kind: ProviderKind::Token,
            source,
            granted_at: Utc::now(),
            expires_at: None,
            scopes: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    /// Whether the credential is past its expiry at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// What kind of secret a provider stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// A personal access token.
    Token,
    /// An API key.
    ApiKey,
    /// An OAuth access token (may expire).
    Oauth,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Token => "token",
            ProviderKind::ApiKey => "api-key",
            ProviderKind::Oauth => "oauth",
        })
    }
}
