use std::path::PathBuf;

/// Why a stored credential could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The file is shorter than a header, a nonce and a tag.
    #[error("file is truncated ({0} bytes)")]
    Truncated(usize),
    /// The file does not start with moat's header.
    #[error("not a moat credential file")]
    Foreign,
    /// The file was written by a newer moat.
    #[error("unsupported credential format version {0}")]
    UnsupportedVersion(u8),
    /// Authentication failed: wrong key, tampered bytes, or a file that
    /// belongs to another provider.
    #[error("cipher: message authentication failed")]
    Authentication,
    /// It decrypted, but the content is not a credential.
    #[error("decrypted content is not a credential: {0}")]
    Malformed(String),
}

/// Everything that can go wrong in the credential store.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// No credential is stored for the provider.
    #[error("credential not found: {provider}\n\nRun: moat grant {grant_command}{profile_hint}")]
    NotFound {
        /// The provider asked for.
        provider: String,
        /// What to pass to `moat grant` to create it.
        grant_command: String,
        /// A hint about profiles, or empty.
        profile_hint: String,
    },

    /// The stored file exists but cannot be decrypted.
    #[error(
        "decrypting credential for {provider}: {source}\n\
         This may indicate the encryption key has changed.\n\
         If you recently upgraded moat, your credentials may have been encrypted with the old key.\n\
         To re-authenticate: moat grant {grant_command}"
    )]
    Decrypt {
        /// The provider whose file failed.
        provider: String,
        /// What to pass to `moat grant` to replace it.
        grant_command: String,
        /// The reason.
        #[source]
        source: DecryptError,
    },

    /// The key file is readable by others; it is not used.
    #[error(
        "key file has insecure permissions: {path} has permissions {mode:04o} (expected 0600).\n\
         Fix: chmod 600 {path}"
    )]
    InsecureKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The key file is not 32 bytes long.
    #[error(
        "key file {path} has the wrong length: {len} bytes (expected 32).\n\
         It is not a moat key. Move it aside and grant your credentials again:\n  \
         mv {path} {path}.bad && moat grant <provider>"
    )]
    KeyFileLength {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },

    /// A provider name that moat does not know.
    #[error(
        "unknown provider {name:?}{suggestion}\nList the providers with: moat grant providers"
    )]
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
    #[error(
        "Claude Code token has expired\n\
         Re-authenticate with Claude Code (run `claude` and log in, or `claude setup-token`), then run:\n  \
         moat grant claude"
    )]
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
    #[error("encoding credential: {0}")]
    Encode(String),
}
