//! What `moat grant` does with a secret once it has one: check it with
//! its provider's API, store it with what the source said about it, and
//! describe stored grants for `moat grant list` and `moat grant show`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::source::Obtained;
use crate::{
    validate, Credential, CredentialError, CredentialStore, GrantName, KeyBackend, ProviderKind,
    ProviderSpec, Validation,
};

impl ProviderKind {
    /// The secret's name in messages: "API key", "token".
    pub fn secret_noun(self) -> &'static str {
        match self {
            ProviderKind::ApiKey => "API key",
            ProviderKind::Token => "token",
            ProviderKind::Oauth => "OAuth token",
        }
    }
}

/// What checking a new secret with its provider's API found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The provider has no check.
    NotChecked,
    /// The API accepted it, for this account when it says.
    Accepted {
        /// The account (`login`), when the API names it.
        account: Option<String>,
    },
    /// The API could not be asked; the secret is stored anyway.
    Unreachable(String),
}

/// Checks `obtained` with `spec`'s API (when it has one), keeping the
/// account and scopes the API reports. A secret the API refuses is an
/// error.
pub async fn check_obtained(
    spec: &ProviderSpec,
    obtained: &mut Obtained,
) -> Result<Checked, CredentialError> {
    let Some(check) = validate::by_provider(&spec.name, &obtained.secret) else {
        return Ok(Checked::NotChecked);
    };
    match check.await? {
        Validation::Valid { identity, scopes } => {
            if let Some(login) = &identity {
                obtained.metadata.insert("login".into(), login.clone());
            }
            if !scopes.is_empty() {
                obtained.scopes = scopes;
            }
            Ok(Checked::Accepted { account: identity })
        }
        Validation::Unreachable(why) => Ok(Checked::Unreachable(why)),
    }
}

/// A grant just stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The encrypted file.
    pub path: PathBuf,
    /// Where the key that encrypted it lives.
    pub key_backend: KeyBackend,
    /// When the secret expires, if its source said.
    pub expires_at: Option<DateTime<Utc>>,
}

impl CredentialStore {
    /// Encrypts and stores `obtained` as `grant`'s credential of `kind`,
    /// with where it came from.
    pub fn store_obtained(
        &self,
        grant: &GrantName,
        obtained: Obtained,
        kind: ProviderKind,
    ) -> Result<Stored, CredentialError> {
        let Some(stem) = grant.file_stem() else {
            return Err(CredentialError::InvalidGrant(grant.to_string()));
        };
        crate::HeaderSafe::check_header_safe(&obtained.secret, &grant.grant_command())?;
        let mut credential = Credential::new(&stem, obtained.secret, obtained.source);
        credential.kind = kind;
        credential.expires_at = obtained.expires_at;
        credential.scopes = obtained.scopes;
        credential.metadata = obtained.metadata;
        credential.metadata.insert("origin".into(), obtained.origin);
        let path = self.save(&credential)?;
        Ok(Stored {
            path,
            key_backend: self.key()?.backend(),
            expires_at: credential.expires_at,
        })
    }

    /// One row per stored credential of the profile, readable or not,
    /// for `moat grant list`.
    pub fn grant_rows(
        &self,
        profile: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<GrantRow>, CredentialError> {
        Ok(self
            .list()?
            .into_iter()
            .map(|entry| {
                let provider = grant_display_name(&entry.provider);
                match entry.credential {
                    Ok(c) => GrantRow {
                        provider,
                        profile: profile.to_owned(),
                        kind: Some(c.kind.to_string()),
                        source: Some(c.source.to_string()),
                        granted_at: Some(c.granted_at),
                        expires_at: c.expires_at,
                        status: if c.is_expired(now) { "expired" } else { "ok" }.to_owned(),
                        error: None,
                    },
                    Err(e) => GrantRow {
                        provider,
                        profile: profile.to_owned(),
                        kind: None,
                        source: None,
                        granted_at: None,
                        expires_at: None,
                        status: "unreadable".to_owned(),
                        error: Some(e.to_string()),
                    },
                }
            })
            .collect())
    }
}

impl ProviderSpec {
    /// `builtin` or `custom` (from `providers.yaml`).
    fn origin(&self) -> &'static str {
        if self.builtin {
            "builtin"
        } else {
            "custom"
        }
    }

    /// This provider as `moat grant providers --json` prints it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "description": self.description,
            "kind": self.kind.to_string(),
            "type": self.origin(),
            "hosts": self.host_patterns(),
            "placeholder": self.placeholder.as_ref().map(|ph| &ph.env),
        })
    }

    /// The columns of `moat grant providers`.
    pub const COLUMNS: [&'static str; 4] = ["PROVIDER", "DESCRIPTION", "TYPE", "HOSTS"];

    /// This provider's row under [`ProviderSpec::COLUMNS`].
    pub fn row(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.description.clone(),
            self.origin().to_owned(),
            self.host_patterns().join(", "),
        ]
    }
}

/// A stored grant as `moat grant list` shows it (and `--json` prints it).
#[derive(Debug, Clone, Serialize)]
pub struct GrantRow {
    /// `github`, `mcp:linear`, `ssh:github.com`.
    pub provider: String,
    /// The profile it is stored in.
    pub profile: String,
    /// Token, API key, SSH key...
    pub kind: Option<String>,
    /// Where the secret came from (an SSH grant's key fingerprint).
    pub source: Option<String>,
    /// When it was granted.
    pub granted_at: Option<DateTime<Utc>>,
    /// When it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// `ok`, `expired` or `unreadable`.
    pub status: String,
    /// Why it cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl GrantRow {
    /// The columns of `moat grant list`.
    pub const COLUMNS: [&'static str; 5] = ["PROVIDER", "PROFILE", "GRANTED", "SOURCE", "EXPIRES"];

    /// This grant's cells under [`GrantRow::COLUMNS`].
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.provider.clone(),
            self.profile.clone(),
            self.granted_at
                .map(crate::format_time)
                .unwrap_or_else(|| "-".into()),
            self.source.clone().unwrap_or_else(|| "-".into()),
            match (&self.status[..], self.expires_at) {
                ("unreadable", _) => "unreadable: run moat grant again".to_string(),
                ("expired", Some(t)) => format!("expired {}", crate::format_time(t)),
                (_, Some(t)) => crate::format_time(t),
                _ => "never".to_string(),
            },
        ]
    }
}

/// A credential file's stem as the user names the grant: `mcp-x` is
/// `mcp:x`.
pub fn grant_display_name(stem: &str) -> String {
    match stem.strip_prefix("mcp-") {
        Some(name) => format!("mcp:{name}"),
        None => stem.to_string(),
    }
}

/// The fields `moat grant show` prints, in order: never the secret, only
/// its last characters.
pub fn describe(
    stem: &str,
    profile: &str,
    c: &Credential,
    spec: Option<&ProviderSpec>,
) -> Vec<(&'static str, String)> {
    let mut lines = vec![
        ("Provider", grant_display_name(stem)),
        ("Profile", profile.to_owned()),
        ("Type", c.kind.to_string()),
        (
            "Source",
            match c.metadata.get("origin") {
                Some(o) => format!("{} ({o})", c.source),
                None => c.source.to_string(),
            },
        ),
        ("Granted", format_time(c.granted_at)),
        (
            "Expires",
            c.expires_at
                .map(format_time)
                .unwrap_or_else(|| "never".into()),
        ),
    ];
    if let Some(login) = c.metadata.get("login") {
        lines.push(("Account", login.clone()));
    }
    if !c.scopes.is_empty() {
        lines.push(("Scopes", c.scopes.join(", ")));
    }
    lines.push(("Token", masked(c)));
    if let Some(spec) = spec {
        let hosts: Vec<String> = spec
            .hosts
            .iter()
            .map(|h| {
                let names: Vec<&str> = h.headers.iter().map(|x| x.name.as_str()).collect();
                format!("{} ({})", h.host, names.join(", "))
            })
            .collect();
        lines.push(("Injects", hosts.join("; ")));
    }
    lines
}

/// `****` and the secret's last characters, when it is long enough to
/// show them.
pub fn masked(c: &Credential) -> String {
    let hint = c.secret.hint();
    if hint.is_empty() {
        "****".to_string()
    } else {
        format!("****{hint}")
    }
}

/// `2026-12-07 20:45 UTC`: times in grant listings.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn mcp_files_are_named_as_their_grants() {
        assert_eq!(grant_display_name("mcp-linear"), "mcp:linear");
        assert_eq!(grant_display_name("github"), "github");
    }

    #[test]
    fn a_shown_credential_never_holds_its_secret() {
        let mut c = Credential::new(
            "github",
            crate::Secret::new("ghp_abcdefghijklmnopqrstuvwxyz0123"),
            crate::CredentialSource::Env,
        );
        c.metadata.insert("login".into(), "octocat".into());
        let text = describe("github", "default", &c, None)
            .into_iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!text.contains("ghp_abcdefghijklmnop"), "{text}");
        assert!(text.contains("Account: octocat"), "{text}");
        assert!(text.contains("Token: ****"), "{text}");
    }
}
