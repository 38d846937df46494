use std::path::PathBuf;

/// Why a stored credential could not be decrypted: as precisely as the
/// file's format can tell (files written by this version carry a check
/// value of their key, so a wrong key is told apart from damage).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The file is shorter than a header, a nonce and a tag.
    #[error("corrupted file: truncated ({0} bytes)")]
    Truncated(usize),
    /// The file does not start with moat's header.
    #[error("corrupted file: not a moat credential file")]
    Foreign,
    /// The file was written by a newer moat.
    #[error("unsupported credential format version {0} (written by a newer moat)")]
    UnsupportedVersion(u8),
    /// The file was encrypted with another key than the one in use.
    #[error("wrong key: the file was encrypted with a different key than the one in use")]
    WrongKey,
    /// The key is right but the contents fail authentication: the file
    /// was damaged or altered.
    #[error("corrupted file: it was written with this key but its contents were altered")]
    Corrupted,
    /// The file decrypts as another provider's credential: it was copied
    /// or renamed.
    #[error("the file belongs to another provider ({0}): it was copied or renamed")]
    OtherProvider(String),
    /// Authentication failed on a file from an older moat, whose format
    /// cannot tell a wrong key from a corrupted file.
    #[error(
        "wrong key or corrupted file (a file from an older moat, whose format cannot tell which): \
         cipher: message authentication failed"
    )]
    Authentication,
    /// It decrypted, but the content is not a credential.
    #[error("corrupted file: the decrypted content is not a credential: {0}")]
    Malformed(String),
}

impl DecryptError {
    /// What the user can do about it, before the `moat grant` fallback.
    pub fn advice(&self) -> &'static str {
        match self {
            DecryptError::WrongKey => {
                "Restore the key it was written with (MOAT_HOME/key, or the OS keychain entry), \
                 or replace the credential."
            }
            DecryptError::Authentication => {
                "If the key was replaced, restore the original (MOAT_HOME/key, or the OS keychain \
                 entry); otherwise replace the credential."
            }
            DecryptError::OtherProvider(_) => {
                "Move the file back to its provider's name, or replace the credential."
            }
            DecryptError::UnsupportedVersion(_) => "Upgrade moat, or replace the credential.",
            DecryptError::Truncated(_)
            | DecryptError::Foreign
            | DecryptError::Corrupted
            | DecryptError::Malformed(_) => "The file cannot be repaired; replace the credential.",
        }
    }
}

/// Everything that can go wrong in the credential store.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// No credential is stored for the provider.
    #[error("credential not found: {provider}")]
    NotFound {
        /// The provider asked for.
        provider: String,
        /// What to pass to `moat grant` to create it.
        grant_command: String,
        /// The profile looked in; `None` is the default profile.
        profile: Option<String>,
    },

    /// The stored file exists but cannot be decrypted.
    #[error("decrypting credential for {provider}: {error}")]
    Decrypt {
        /// The provider whose file failed.
        provider: String,
        /// What to pass to `moat grant` to replace it.
        grant_command: String,
        /// The reason.
        error: DecryptError,
    },

    /// The key is gone while credentials encrypted with it remain: moat
    /// refuses to create a new one, which could never read them.
    #[error(
        "the encryption key is missing: {path} does not exist{keychain}, but {count} \
         credential file(s) encrypted with it remain under {dir}.\n\
         moat will not create a new key, which could not read them.",
        keychain = if *keychain { " (nor is one in the OS keychain, where reachable)" } else { "" }
    )]
    KeyMissing {
        /// The key file.
        path: PathBuf,
        /// The credentials directory.
        dir: PathBuf,
        /// How many credential files it holds.
        count: usize,
        /// Whether the OS keychain was looked in too.
        keychain: bool,
    },

    /// The key file is readable by others; it is not used.
    #[error(
        "key file has insecure permissions: {path} has permissions {mode:04o} (expected 0600)."
    )]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The key file is not 32 bytes long.
    #[error(
        "key file {path} has the wrong length: {len} bytes (expected 32). It is not a moat key."
    )]
    KeyFileLength {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },

    /// A provider name that moat does not know.
    #[error("unknown provider {name:?}{suggestion}")]
    UnknownProvider {
        /// The name given.
        name: String,
        /// " (did you mean ...?)" or empty.
        suggestion: String,
    },

    /// A grant name that is not a valid provider, `ssh:HOST` or `mcp:NAME`.
    #[error("invalid grant {0:?}: expected a provider name (github), ssh:HOST or mcp:NAME")]
    InvalidGrant(String),

    /// The secret is needed but prompting is not possible or not allowed.
    #[error("{0}")]
    NoSecret(String),

    /// A Claude Code OAuth token is past its expiry.
    #[error("Claude Code token has expired")]
    ClaudeTokenExpired,

    /// Validation at grant time rejected the token.
    #[error("{0}")]
    Rejected(String),

    /// The providers file under `MOAT_HOME` is malformed.
    #[error("{path}: {message}")]
    ProvidersFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The OS keychain failed in a way that is not "unreachable".
    #[error("OS keychain: {0}")]
    Keychain(String),

    /// A file operation under `MOAT_HOME` failed.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),

    /// Encoding a credential failed (should not happen).
    #[error("encoding credential")]
    Encode(#[source] serde_json::Error),

    /// AES-GCM refused the key or the plaintext (should not happen: the
    /// key's length is checked when it is read).
    #[error("encrypting credential: AES-GCM {0} failed")]
    Encrypt(&'static str),
}

impl moat_hint::Hint for CredentialError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            CredentialError::NotFound {
                grant_command,
                profile,
                ..
            } => match profile {
                Some(p) => format!(
                    "Run: moat grant {grant_command}\n(looked in profile {p:?}; credentials \
                     granted without --profile live in the default profile)"
                ),
                None => format!(
                    "Run: moat grant {grant_command}\nIf you granted it under a profile, \
                     select it: export MOAT_PROFILE=<name>"
                ),
            },
            CredentialError::Decrypt {
                grant_command,
                error,
                ..
            } => format!(
                "{}\nTo re-authenticate: moat grant {grant_command}",
                error.advice()
            ),
            CredentialError::KeyMissing { path, dir, .. } => format!(
                "To fix: restore the key from a backup to {} (32 bytes, mode 0600), or, to \
                 start over, delete the credentials (rm -r {}) and grant them again.",
                path.display(),
                dir.display()
            ),
            CredentialError::InsecureKeyFile { path, .. } => {
                format!("Fix: chmod 600 {}", path.display())
            }
            CredentialError::KeyFileLength { path, .. } => format!(
                "Move it aside and grant your credentials again:\n  mv {0} {0}.bad && moat grant <provider>",
                path.display()
            ),
            CredentialError::UnknownProvider { .. } => {
                "List the providers with: moat grant providers".to_owned()
            }
            CredentialError::ClaudeTokenExpired => "Re-authenticate with Claude Code (run \
                 `claude` and log in, or `claude setup-token`), then run:\n  moat grant claude"
                .to_owned(),
            CredentialError::Home(error) => return error.hint(),
            _ => return None,
        };
        Some(fix.into())
    }
}
