use std::fmt;

use chrono::{DateTime, Utc};

use crate::provider::Placeholder;
use crate::{
    Credential, CredentialError, CredentialStore, DecryptError, GrantName, HeaderInjection,
    ProviderRegistry,
};

/// Why a grant a run asked for cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingReason {
    /// Nothing is stored for it.
    NotConfigured,
    /// The file exists but the current key cannot open it.
    KeyChanged,
    /// The file exists but is damaged.
    Unreadable(DecryptError),
    /// A Claude Code OAuth token past its expiry.
    ClaudeExpired,
    /// Another token past its expiry.
    Expired,
    /// No provider of that name exists.
    UnknownProvider,
}

impl fmt::Display for MissingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MissingReason::NotConfigured => f.write_str("not configured"),
            MissingReason::KeyChanged => f.write_str("encryption key changed"),
            MissingReason::Unreadable(e) => write!(f, "unreadable ({e})"),
            MissingReason::ClaudeExpired => f.write_str("Claude Code token has expired"),
            MissingReason::Expired => f.write_str("token has expired"),
            MissingReason::UnknownProvider => f.write_str("unknown provider"),
        }
    }
}

/// One grant that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingGrant {
    /// The grant as the run named it.
    pub grant: GrantName,
    /// Why.
    pub reason: MissingReason,
}

/// Every grant of a run that cannot be used, reported together so the user
/// fixes them all in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MissingGrants(pub Vec<MissingGrant>);

impl fmt::Display for MissingGrants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each grant's own fix stays beside it: the list is the message.
        write!(f, "missing grants:")?;
        for m in &self.0 {
            write!(f, "\n  - {}: {}", m.grant, m.reason)?;
            if m.reason == MissingReason::UnknownProvider {
                write!(f, "\n    List the providers with: moat grant providers")?;
            } else {
                write!(f, "\n    Run: moat grant {}", m.grant.grant_command())?;
            }
        }
        Ok(())
    }
}

impl moat_hint::Hint for MissingGrants {
    fn hint(&self) -> Option<moat_hint::Fix> {
        Some("Configure the grants above, then run again.".into())
    }
}

/// A grant ready for a run: what to inject where, and what the sandbox sees.
#[derive(Debug, Clone)]
pub struct ResolvedGrant {
    /// The grant.
    pub grant: GrantName,
    /// The decrypted credential.
    pub credential: Credential,
    /// Headers for the proxy to inject (empty for MCP credentials, which
    /// the MCP relay injects per its server's configuration).
    pub injections: Vec<HeaderInjection>,
    /// The variable the sandbox receives instead of the secret.
    pub placeholder: Option<Placeholder>,
}

/// Why a run's grants could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Some grants are missing, expired or unreadable (all listed).
    #[error(transparent)]
    Missing(#[from] MissingGrants),
    /// The store itself is unusable (for example an insecure key file).
    #[error(transparent)]
    Store(#[from] CredentialError),
}

impl moat_hint::Hint for ResolveError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            ResolveError::Missing(missing) => missing.hint(),
            ResolveError::Store(error) => error.hint(),
        }
    }
}

/// Resolves `grants` into credentials, or into one error listing every
/// grant that cannot be used. SSH grants are skipped: they hold no secret
/// here and are resolved by the SSH agent proxy.
pub fn resolve_grants(
    store: &CredentialStore,
    registry: &ProviderRegistry,
    grants: &[GrantName],
    now: DateTime<Utc>,
) -> Result<Vec<ResolvedGrant>, ResolveError> {
    let mut resolved = Vec::new();
    let mut missing = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for grant in grants {
        if !seen.insert(grant.clone()) {
            continue;
        }
        let Some(stem) = grant.file_stem() else {
            continue;
        };
        let spec = match grant {
            GrantName::Provider(name) => match registry.get(name) {
                Some(spec) => Some(spec),
                None => {
                    missing.push(MissingGrant {
                        grant: grant.clone(),
                        reason: MissingReason::UnknownProvider,
                    });
                    continue;
                }
            },
            _ => None,
        };
        let credential = match store.load(&stem) {
            Ok(c) => c,
            Err(CredentialError::NotFound { .. }) => {
                missing.push(MissingGrant {
                    grant: grant.clone(),
                    reason: MissingReason::NotConfigured,
                });
                continue;
            }
            Err(CredentialError::Decrypt { error: source, .. }) => {
                let reason = match source {
                    DecryptError::Authentication | DecryptError::WrongKey => {
                        MissingReason::KeyChanged
                    }
                    other => MissingReason::Unreadable(other),
                };
                missing.push(MissingGrant {
                    grant: grant.clone(),
                    reason,
                });
                continue;
            }
            Err(other) => return Err(ResolveError::Store(other)),
        };
        if credential.is_expired(now) {
            missing.push(MissingGrant {
                grant: grant.clone(),
                reason: if stem == "claude" {
                    MissingReason::ClaudeExpired
                } else {
                    MissingReason::Expired
                },
            });
            continue;
        }
        resolved.push(ResolvedGrant {
            grant: grant.clone(),
            injections: spec.map(|s| s.injections(&credential)).unwrap_or_default(),
            placeholder: spec.and_then(|s| s.placeholder.clone()),
            credential,
        });
    }
    if missing.is_empty() {
        Ok(resolved)
    } else {
        Err(ResolveError::Missing(MissingGrants(missing)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CredentialSource, EncryptionKey, KeyBackend, Secret};
    use moat_home::MoatHome;

    #[test]
    fn reports_every_missing_grant_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MoatHome::at(tmp.path());
        let old = CredentialStore::with_key(
            home.clone(),
            None,
            EncryptionKey::from_bytes([9; 32], KeyBackend::File),
        );
        old.save(&Credential::new(
            "claude",
            Secret::new("oat"),
            CredentialSource::Import,
        ))
        .unwrap();
        let store = CredentialStore::with_key(
            home,
            None,
            EncryptionKey::from_bytes([1; 32], KeyBackend::File),
        );
        store
            .save(&Credential::new(
                "openai",
                Secret::new("sk"),
                CredentialSource::Env,
            ))
            .unwrap();
        let grants: Vec<GrantName> = ["github", "claude", "openai", "ssh:github.com"]
            .iter()
            .map(|g| GrantName::parse(g).unwrap())
            .collect();
        let err =
            resolve_grants(&store, &ProviderRegistry::default(), &grants, Utc::now()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing grants:\n  - github: not configured\n    Run: moat grant github\n  \
             - claude: encryption key changed\n    Run: moat grant claude"
        );
        assert_eq!(
            moat_hint::Hint::hint(&err).unwrap().as_str(),
            "Configure the grants above, then run again."
        );
    }

    #[test]
    fn resolves_injections_and_placeholders() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CredentialStore::with_key(
            MoatHome::at(tmp.path()),
            None,
            EncryptionKey::from_bytes([1; 32], KeyBackend::File),
        );
        store
            .save(&Credential::new(
                "github",
                Secret::new("ghp_x"),
                CredentialSource::Env,
            ))
            .unwrap();
        let grants = vec![GrantName::parse("github").unwrap()];
        let r = resolve_grants(&store, &ProviderRegistry::default(), &grants, Utc::now()).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].injections[0].value.expose(), "Bearer ghp_x");
        assert_eq!(r[0].placeholder.as_ref().unwrap().env, "GH_TOKEN");
    }

    #[test]
    fn expired_claude_token_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CredentialStore::with_key(
            MoatHome::at(tmp.path()),
            None,
            EncryptionKey::from_bytes([1; 32], KeyBackend::File),
        );
        let mut c = Credential::new("claude", Secret::new("oat"), CredentialSource::Import);
        c.expires_at = Some(Utc::now() - chrono::Duration::hours(1));
        store.save(&c).unwrap();
        let grants = vec![GrantName::parse("claude").unwrap()];
        let err = resolve_grants(&store, &ProviderRegistry::default(), &grants, Utc::now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("- claude: Claude Code token has expired"),
            "{err}"
        );
    }
}
