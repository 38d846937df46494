use std::path::PathBuf;

use moat_policy::PolicyError;

/// Why `moat.yaml` (or a `--mount` flag) was refused.
///
/// Every variant tied to a file renders as `FILE:LINE: ...` (plus the
/// column for YAML syntax errors), names the key path (`network.policy`,
/// `mounts[1].target`), says what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {error}", .file.display())]
    Read {
        file: PathBuf,
        error: std::io::Error,
    },

    /// A link, a FIFO, a device or a file over the size limit.
    #[error(transparent)]
    File(#[from] moat_home::BoundedReadError),

    #[error("{}:{line}:{column}: invalid YAML: {message}", .file.display())]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{}:{line}: unknown key {key:?} {}{help}", .file.display(), where_(.parent))]
    UnknownKey {
        file: PathBuf,
        line: usize,
        key: String,
        /// Key path of the enclosing mapping; empty at top level.
        parent: String,
        /// `. Did you mean "x"? (known keys: ...)` or ` (known keys: ...)`.
        help: String,
    },

    #[error(
        "{}:{line}: {path}: this setting is not supported by this version of moat yet",
        .file.display()
    )]
    Unsupported {
        file: PathBuf,
        line: usize,
        path: String,
    },

    #[error("{}:{line}: {path}: expected {expected}, found {found}", .file.display())]
    WrongType {
        file: PathBuf,
        line: usize,
        path: String,
        expected: &'static str,
        /// "a number", or `the string "..."` for strings.
        found: String,
        /// How to write it instead ("Quote it: name: \"1\""), when moat
        /// can tell.
        fix: Option<String>,
    },

    /// A value a rule of its own refuses (a duplicate, an empty command).
    #[error("{}:{line}: {path}: {message}", .file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        path: String,
        message: String,
        /// What to change, when there is one thing to do.
        fix: Option<String>,
    },

    /// A value of one of moat.yaml's small languages (a mount, a
    /// dependency, a grant, a name) that does not parse.
    #[error("{}:{line}: {path}: {}{error}", .file.display(), quoted(.spec))]
    BadValue {
        file: PathBuf,
        line: usize,
        path: String,
        /// The value, when the message does not name it itself.
        spec: Option<String>,
        error: Box<SpecError>,
    },

    #[error("{}:{line}: {path}: {error}", .file.display())]
    Policy {
        file: PathBuf,
        line: usize,
        path: String,
        error: PolicyError,
    },

    /// A command-line value (`--mount`, a dependency spec) with no file
    /// behind it.
    #[error("invalid {what} {spec:?}: {error}")]
    InvalidSpec {
        what: &'static str,
        spec: String,
        error: Box<SpecError>,
    },
}

impl moat_hint::Hint for ConfigError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            Self::Unsupported { .. } => Some(moat_hint::Fix::new("To fix: remove it.")),
            Self::WrongType { fix, .. } | Self::Invalid { fix, .. } => {
                fix.clone().map(moat_hint::Fix::new)
            }
            Self::BadValue { error, .. } | Self::InvalidSpec { error, .. } => error.hint(),
            // Transparent: the inner error is hidden from the chain.
            Self::File(inner) => inner.hint(),
            Self::Read { .. }
            | Self::Syntax { .. }
            | Self::UnknownKey { .. }
            | Self::Policy { .. } => None,
        }
    }
}

const DEP_SYNTAX: &str = "expected NAME, NAME@VERSION or PREFIX:PACKAGE[@VERSION] with PREFIX \
                          one of npm, pip, uv, go, cargo, docker";

const MOUNT_SYNTAX: &str = "expected SRC:DST[:ro|rw]";

/// What is wrong with a value written in one of moat.yaml's small
/// languages: a mount (`SRC:DST[:ro|rw]`), a dependency, a grant, a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("the dependency is empty; {DEP_SYNTAX}")]
    EmptyDependency,
    #[error("{0:?} is not allowed")]
    Whitespace(char),
    #[error("docker needs a mode")]
    DockerWithoutMode,
    #[error(
        "{name:?} is not a dependency name (lowercase letters, digits, '.', '-', '_'); {DEP_SYNTAX}"
    )]
    DependencyName { name: String },
    #[error("unknown prefix {prefix:?}; {DEP_SYNTAX}")]
    UnknownPrefix { prefix: String },
    #[error("expected docker:host or docker:dind, found docker:{found}")]
    DockerMode { found: String },
    #[error("{name:?} is not a valid {prefix} package name; {DEP_SYNTAX}")]
    PackageName { name: String, prefix: String },
    #[error("version {version:?} after '@' is not valid (e.g. node@22, npm:typescript@5.4.2)")]
    Version { version: String },
    #[error(
        "{name:?} is not a valid run name: use at most 63 lowercase letters, digits and '-', \
         starting and ending with a letter or digit (it becomes a hostname)"
    )]
    RunName { name: String },
    #[error(
        "{name:?} is not a valid endpoint name: use at most 63 lowercase letters, digits and \
         '-', starting and ending with a letter or digit (it becomes a hostname)"
    )]
    EndpointName { name: String },
    #[error(
        "invalid --port {spec:?}: expected NAME=PORT with a port from 1 to 65535, e.g. web=3000"
    )]
    PortFlag { spec: String },
    #[error("grant {grant:?}: oauth grants are not supported by this version of moat yet")]
    OauthGrant { grant: String },
    #[error("invalid grant {grant:?}: expected a provider name (github), ssh:HOST or mcp:NAME")]
    Grant { grant: String },
    #[error(
        "{name:?} is not a valid environment variable name (letters, digits and '_', not \
         starting with a digit)"
    )]
    EnvName { name: String },
    #[error("{name:?} is not a valid HTTP header name (e.g. Authorization)")]
    HeaderName { name: String },
    #[error("{name:?} cannot carry an MCP server's credential: it {why}.")]
    CredentialHeader { name: String, why: &'static str },
    #[error("{url:?} is not a valid URL ({error}); expected e.g. https://mcp.example.com/mcp")]
    Url { url: String, error: url::ParseError },
    #[error("{url:?} uses http (plain http is only allowed for localhost, 127.0.0.1 and [::1])")]
    PlainHttp { url: String },
    #[error("{url:?} must be an https:// URL (or http:// to localhost)")]
    NotHttps { url: String },
    #[error("the path is absolute")]
    AllowWriteAbsolute,
    #[error("'..' is not allowed: the path must stay inside the workspace")]
    AllowWriteParent,
    #[error("the path is empty")]
    AllowWriteEmpty,
    #[error("missing :DST; {MOUNT_SYNTAX}")]
    MissingTarget,
    #[error("too many ':'; {MOUNT_SYNTAX}")]
    TooManyColons,
    #[error("mode must be \"ro\" or \"rw\", found {mode:?}")]
    Mode { mode: String },
    #[error("the source is empty; {MOUNT_SYNTAX}")]
    EmptySource,
    #[error("source {given:?}: ~ is not expanded")]
    Tilde { given: String },
    #[error(
        "source {given:?} leaves the workspace (it is {}); a relative source must stay inside \
         the project.",
        resolved.display()
    )]
    LeavesWorkspace { given: String, resolved: PathBuf },
    #[error("the target is empty; {MOUNT_SYNTAX}")]
    EmptyTarget,
    #[error("target {target:?} must be an absolute path inside the sandbox, like /data")]
    TargetRelative { target: String },
    #[error("target {target:?} must not contain ..")]
    TargetParent { target: String },
    #[error("the target cannot be / itself")]
    TargetRoot,
    #[error(
        "target {target:?} is under {}, where moat puts its own files (the proxy socket, the \
         SSH agent, the moat binary the sandbox starts with)",
        crate::reserved::MOAT_OWN_DIR
    )]
    TargetMoatOwn { target: String },
    #[error("an exclude path is empty")]
    EmptyExclude,
    #[error("exclude {exclude:?} must be relative to the mount target, like node_modules")]
    ExcludeAbsolute { exclude: String },
    #[error("exclude {exclude:?} must stay inside the mount (no ..)")]
    ExcludeParent { exclude: String },
    #[error("exclude {exclude:?} names the whole mount")]
    ExcludeWholeMount { exclude: String },
    #[error("exclude {exclude:?} is listed twice")]
    ExcludeRepeated { exclude: String },
    #[error("exclude {exclude:?} lies inside exclude {other:?}, which hides it already")]
    ExcludeInside { exclude: String, other: String },
    #[error("exclude {exclude:?} contains exclude {other:?}, listed before it")]
    ExcludeContains { exclude: String, other: String },
}

impl moat_hint::Hint for SpecError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            Self::Whitespace(_) => "To fix: write one dependency per list item.",
            Self::DockerWithoutMode => {
                "To fix: use docker:host (the host's Docker socket) or docker:dind (Docker in \
                 Docker)."
            }
            Self::OauthGrant { .. } => "To fix: remove it.",
            Self::CredentialHeader { .. } => {
                "To fix: use the header the server reads its token from, such as Authorization \
                 or X-Api-Key (header: Authorization)."
            }
            Self::PlainHttp { .. } => "To fix: use https.",
            Self::AllowWriteAbsolute => {
                "To fix: write it relative to the workspace (e.g. .vscode or .git/config)."
            }
            Self::AllowWriteEmpty => {
                "To fix: name a path inside the workspace (e.g. .vscode or .git/config)."
            }
            Self::TooManyColons => "To fix: use the object form for paths containing ':'.",
            Self::Tilde { .. } => "To fix: write the absolute path.",
            Self::LeavesWorkspace { .. } => {
                "To fix: write the absolute path to mount something outside it."
            }
            Self::TargetMoatOwn { .. } => "To fix: choose another target.",
            Self::ExcludeWholeMount { .. } => "To fix: remove the mount instead.",
            Self::ExcludeAbsolute { .. } => {
                "To fix: write it relative to the mount's target (node_modules hides \
                 <target>/node_modules)."
            }
            Self::ExcludeParent { .. } => {
                "To fix: name a path inside the mount, or exclude it from the mount that holds it."
            }
            Self::ExcludeRepeated { .. } | Self::ExcludeInside { .. } => {
                "To fix: remove this entry."
            }
            Self::ExcludeContains { .. } => {
                "To fix: keep only the outer directory; it hides everything beneath it."
            }
            Self::EndpointName { .. } => {
                "To fix: rename it, e.g. web, api or api-2 (it is served at \
                 https://<name>.<run>.localhost)."
            }
            _ => return None,
        };
        Some(moat_hint::Fix::new(fix))
    }
}

impl ConfigError {
    /// The 1-based line the error points at, when it comes from a file.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Read { .. } | Self::File(_) | Self::InvalidSpec { .. } => None,
            Self::BadValue { line, .. } => Some(*line),
            Self::Syntax { line, .. }
            | Self::UnknownKey { line, .. }
            | Self::Unsupported { line, .. }
            | Self::WrongType { line, .. }
            | Self::Invalid { line, .. }
            | Self::Policy { line, .. } => Some(*line),
        }
    }
}

/// `"VALUE": ` before an error that does not name its value itself.
fn quoted(spec: &Option<String>) -> String {
    spec.as_ref()
        .map(|s| format!("{s:?}: "))
        .unwrap_or_default()
}

fn where_(parent: &str) -> String {
    if parent.is_empty() {
        "at top level".to_owned()
    } else {
        format!("in {parent}")
    }
}
