//! Why `moat grant` got no secret, or refused the one it got.

use std::path::PathBuf;

/// Why no secret could be obtained.
#[derive(Debug, thiserror::Error)]
pub enum NoSecret {
    /// `--from-file` names a file that does not exist.
    #[error("{} does not exist", path.display())]
    ClaudeFileMissing {
        /// The file.
        path: PathBuf,
    },
    /// Claude Code's credentials file does not parse.
    #[error("{} is not a Claude Code credentials file ({error})", path.display())]
    ClaudeFileMalformed {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        error: serde_json::Error,
    },
    /// Claude Code's credentials file holds no OAuth login.
    #[error("{} holds no Claude Code OAuth login (no claudeAiOauth entry)", path.display())]
    ClaudeFileNoLogin {
        /// The file.
        path: PathBuf,
    },
    /// Reading standard input failed.
    #[error("reading the {what} secret from stdin: {error}")]
    Stdin {
        /// The grant.
        what: String,
        /// Why.
        error: std::io::Error,
    },
    /// `--stdin` read nothing.
    #[error("standard input was empty")]
    StdinEmpty {
        /// The grant.
        what: String,
    },
    /// Nowhere to look, and no prompt allowed.
    #[error("no {what} secret found, and {blocker}.")]
    PromptBlocked {
        /// The grant.
        what: String,
        /// Why prompting is not possible ("prompting is disabled (...)").
        blocker: String,
        /// Where the secret can come from instead.
        sources: String,
    },
    /// Reading the hidden prompt failed.
    #[error("reading the {what} secret: {error}")]
    Prompt {
        /// The grant.
        what: String,
        /// Why.
        error: std::io::Error,
    },
    /// The prompt was answered with nothing.
    #[error("no {what} secret entered; nothing was stored")]
    NothingEntered {
        /// The grant.
        what: String,
    },
}

impl moat_hint::Hint for NoSecret {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            NoSecret::ClaudeFileMissing { .. } => "Log in with Claude Code first (run `claude`), \
                 or paste a token from `claude setup-token`: moat grant claude"
                .to_owned(),
            NoSecret::ClaudeFileMalformed { .. } | NoSecret::ClaudeFileNoLogin { .. } => {
                "Log in again with `claude`, then run: moat grant claude".to_owned()
            }
            NoSecret::StdinEmpty { what } => {
                format!("Pipe the {what} secret into: moat grant {what} --stdin")
            }
            NoSecret::PromptBlocked { what, sources, .. } => {
                format!("Provide it through {sources}, or pipe it in: moat grant {what} --stdin")
            }
            NoSecret::Stdin { .. } | NoSecret::Prompt { .. } | NoSecret::NothingEntered { .. } => {
                return None
            }
        };
        Some(fix.into())
    }
}

/// Why a secret, or the means to check it, was refused.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// An API base URL variable that is no URL.
    #[error("{var}={value:?} is not a valid URL: {error}")]
    BadUrl {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// The parser's message.
        error: url::ParseError,
    },
    /// Tokens would cross the network unencrypted.
    #[error(
        "{var}={value:?} uses plain http:// for a non-loopback host; tokens would travel unencrypted"
    )]
    PlainHttp {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// Neither https nor http.
    #[error("{var}={value:?} has unsupported scheme {scheme:?}")]
    Scheme {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// The scheme.
        scheme: String,
    },
    /// An endpoint beneath the base URL could not be formed.
    #[error("building {path} URL: {error}")]
    Endpoint {
        /// The endpoint's path.
        path: String,
        /// The parser's message.
        error: url::ParseError,
    },
    /// `MOAT_UPSTREAM_CA_FILE` cannot be read.
    #[error("MOAT_UPSTREAM_CA_FILE={}: {error}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// `MOAT_UPSTREAM_CA_FILE` holds no certificates.
    #[error("MOAT_UPSTREAM_CA_FILE={}: not a PEM certificate bundle: {error}", path.display())]
    CaBundle {
        /// The file.
        path: PathBuf,
        /// Why.
        error: reqwest::Error,
    },
    /// The HTTP client could not be built.
    #[error("creating HTTP client: {0}")]
    Client(reqwest::Error),
    /// GitHub said 401.
    #[error(
        "invalid token (401 Unauthorized)\n\
         GitHub rejected the token: it is wrong, expired or revoked."
    )]
    GithubUnauthorized,
    /// GitHub answered something else than success.
    #[error("GitHub answered {status} to GET {url}; the token was not stored.")]
    GithubStatus {
        /// The status.
        status: reqwest::StatusCode,
        /// The URL asked.
        url: url::Url,
    },
    /// Anthropic said 401 or 403.
    #[error("invalid API key (check that the key is correct and not expired)")]
    AnthropicUnauthorized,
    /// Anthropic answered something else than success.
    #[error("Anthropic answered {status} to GET {url}; the key was not stored.")]
    AnthropicStatus {
        /// The status.
        status: reqwest::StatusCode,
        /// The URL asked.
        url: url::Url,
    },
    /// A secret that cannot travel as a header value.
    #[error(
        "the secret for {grant} contains {what} (character {at} of {len}); it was not stored.\n\
         Tokens are printable ASCII without spaces or line breaks, and moat sends them as HTTP \
         header values."
    )]
    NotHeaderSafe {
        /// What to pass to `moat grant`.
        grant: String,
        /// "a control character or whitespace", "a non-ASCII character".
        what: &'static str,
        /// Its position, from 1.
        at: usize,
        /// The secret's length in characters.
        len: usize,
    },
}

impl moat_hint::Hint for Rejection {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            Rejection::PlainHttp { .. } => {
                "Use https://, or http:// only with localhost/127.0.0.1/[::1]".to_owned()
            }
            Rejection::Scheme { .. } => "Use https://".to_owned(),
            Rejection::GithubUnauthorized => {
                "Create a new one (or run `gh auth login`), then run: moat grant github".to_owned()
            }
            Rejection::GithubStatus { .. } => {
                "If this is GitHub Enterprise, set MOAT_GITHUB_API_URL to its API URL.".to_owned()
            }
            Rejection::AnthropicUnauthorized => {
                "Create a key in the Anthropic Console, then run: moat grant anthropic".to_owned()
            }
            Rejection::NotHeaderSafe { grant, .. } => {
                format!("Copy the token again in one piece, then run: moat grant {grant}")
            }
            Rejection::BadUrl { .. }
            | Rejection::Endpoint { .. }
            | Rejection::CaFile { .. }
            | Rejection::CaBundle { .. }
            | Rejection::Client(_)
            | Rejection::AnthropicStatus { .. } => return None,
        };
        Some(fix.into())
    }
}
