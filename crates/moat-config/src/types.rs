use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use moat_policy::{HostRules, NetworkPolicy, Policy};

/// A validated `moat.yaml`. Absent keys take their defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectConfig {
    pub name: Option<String>,
    pub agent: Option<String>,
    /// `github`, `ssh:HOST`, `mcp:NAME`; syntax-checked only.
    pub grants: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    pub network: NetworkConfig,
    pub command: Option<Vec<String>>,
    pub runtime: Option<RuntimeKind>,
    pub sandbox: SandboxMode,
    pub dependencies: Vec<Dependency>,
    pub base_image: Option<String>,
    pub hooks: Hooks,
    pub container: ContainerLimits,
    pub interactive: bool,
    pub mcp: Vec<McpServer>,
    pub services: BTreeMap<String, ServiceConfig>,
    /// `claude:`, `codex:`, `gemini:`: each agent's own settings, checked
    /// by the agent when it starts.
    pub agents: BTreeMap<String, serde_json::Value>,
    /// `allow_write:`: protected workspace paths the sandbox may change
    /// (relative, normalised: `.vscode`, `.git/config`).
    pub allow_write: Vec<PathBuf>,
    /// `snapshots:`.
    pub snapshots: SnapshotConfig,
    /// `workspace.mode`.
    pub workspace_mode: WorkspaceMode,
    /// `ports:`: endpoint name (a DNS label) to the port inside the
    /// sandbox it is served on.
    pub ports: BTreeMap<String, u16>,
}

/// `workspace.mode` / `--workspace-mode`: how the sandbox sees the
/// workspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WorkspaceMode {
    /// The host tree itself, read-write (the default).
    #[default]
    Bind,
    /// A copy-on-write copy: the host tree is not written during the run;
    /// `moat diff` shows the changes, `moat diff --apply` brings them back.
    Volume,
}

/// A workspace mode moat does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected \"bind\" or \"volume\", found {0:?}")]
pub struct UnknownWorkspaceMode(pub String);

impl FromStr for WorkspaceMode {
    type Err = UnknownWorkspaceMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "bind" => Ok(Self::Bind),
            "volume" => Ok(Self::Volume),
            _ => Err(UnknownWorkspaceMode(s.to_owned())),
        }
    }
}

impl fmt::Display for WorkspaceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bind => "bind",
            Self::Volume => "volume",
        })
    }
}

/// `snapshots:` in moat.yaml. The pre-run, git-commit and idle triggers
/// are on unless turned off. There is no build trigger: moat does not see
/// which commands run in the sandbox, so `disable_builds: false` is an
/// error and `disable_builds: true` states what is already so.
/// `exclude.ignore_gitignore` is "not supported yet".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// `disabled: true`: no automatic snapshot at all.
    pub disabled: bool,
    /// `triggers.disable_pre_run: true`.
    pub disable_pre_run: bool,
    /// `triggers.disable_git_commits: true`.
    pub disable_git_commits: bool,
    /// `triggers.disable_idle: true`.
    pub disable_idle: bool,
    /// `triggers.idle_threshold_seconds` (`None`: [`DEFAULT_IDLE_SECONDS`]).
    pub idle_threshold_seconds: Option<u64>,
    /// `retention.max_count` (`None`: [`DEFAULT_MAX_COUNT`]).
    pub max_count: Option<u64>,
    /// `retention.delete_initial: true`: retention may remove the pre-run
    /// snapshot too.
    pub delete_initial: bool,
    /// `exclude.additional`: paths relative to the workspace, normalised
    /// (`./target/` is `target`).
    pub exclude: Vec<String>,
}

/// Seconds without a change in the workspace before an idle snapshot.
pub const DEFAULT_IDLE_SECONDS: u64 = 30;

/// How many snapshots of a run retention keeps by default.
pub const DEFAULT_MAX_COUNT: u64 = 10;

impl SnapshotConfig {
    /// Whether a snapshot is taken before the sandbox starts.
    pub fn pre_run(&self) -> bool {
        !self.disabled && !self.disable_pre_run
    }

    /// Whether a snapshot is taken when a commit lands during the run.
    pub fn git_commits(&self) -> bool {
        !self.disabled && !self.disable_git_commits
    }

    /// The idle threshold when the idle trigger is on.
    pub fn idle(&self) -> Option<std::time::Duration> {
        (!self.disabled && !self.disable_idle).then(|| {
            std::time::Duration::from_secs(
                self.idle_threshold_seconds.unwrap_or(DEFAULT_IDLE_SECONDS),
            )
        })
    }

    /// How many snapshots of a run retention keeps.
    pub fn max_count(&self) -> u64 {
        self.max_count.unwrap_or(DEFAULT_MAX_COUNT)
    }
}

/// `network:` in moat.yaml.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    pub policy: Policy,
    pub rules: Vec<HostRules>,
    /// `network.host`: host TCP ports reachable from the sandbox.
    pub host_ports: Vec<u16>,
}

impl NetworkConfig {
    /// The policy as written; the caller adds granted hosts and
    /// `--allow-host` with [`NetworkPolicy::allow_host`].
    pub fn to_policy(&self) -> NetworkPolicy {
        NetworkPolicy {
            policy: self.policy,
            hosts: self.rules.clone(),
            granted: Vec::new(),
            denied: Vec::new(),
        }
    }
}

/// One bind mount into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute: relative sources are resolved against the workspace.
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
    pub read_only: bool,
    /// Paths relative to `target` hidden behind an empty tmpfs.
    pub exclude: Vec<PathBuf>,
    /// The source was written relative to the workspace. It is already
    /// lexically inside it; whoever mounts it must also keep symlinks from
    /// leading out of it (a run can plant one), see `moat-run`.
    pub relative: bool,
}

/// `runtime:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeKind {
    Native,
    Docker,
    Podman,
    Apple,
}

/// A runtime name moat does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected \"native\", \"docker\", \"podman\" or \"apple\", found {0:?}")]
pub struct UnknownRuntime(pub String);

impl FromStr for RuntimeKind {
    type Err = UnknownRuntime;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "native" => Ok(Self::Native),
            "docker" => Ok(Self::Docker),
            "podman" => Ok(Self::Podman),
            "apple" => Ok(Self::Apple),
            _ => Err(UnknownRuntime(s.to_owned())),
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Apple => "apple",
        })
    }
}

/// `sandbox:` — `""` (the default: the runtime's extra sandbox, e.g.
/// gVisor, is on) or `none`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SandboxMode {
    #[default]
    Sandboxed,
    Disabled,
}

/// The package manager a dependency comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DependencyKind {
    /// Moat's own registry: `node@22`, `postgres`, `go-extras`.
    Registry,
    Npm,
    Pip,
    Uv,
    Go,
    Cargo,
    /// `docker:host` or `docker:dind`.
    Docker,
}

impl DependencyKind {
    pub(crate) const PREFIXES: &'static [(&'static str, DependencyKind)] = &[
        ("npm", DependencyKind::Npm),
        ("pip", DependencyKind::Pip),
        ("uv", DependencyKind::Uv),
        ("go", DependencyKind::Go),
        ("cargo", DependencyKind::Cargo),
        ("docker", DependencyKind::Docker),
    ];

    /// The `prefix:` in a spec, `None` for registry dependencies.
    pub fn prefix(self) -> Option<&'static str> {
        Self::PREFIXES
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(p, _)| *p)
    }
}

/// One entry of `dependencies:`, syntax-checked only: whether the name
/// exists is for the image builder to say.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dependency {
    pub kind: DependencyKind,
    pub name: String,
    pub version: Option<String>,
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(prefix) = self.kind.prefix() {
            write!(f, "{prefix}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(v) = &self.version {
            write!(f, "@{v}")?;
        }
        Ok(())
    }
}

/// `hooks:` shell snippets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub post_build_root: Option<String>,
    pub post_build: Option<String>,
    pub pre_run: Option<String>,
}

/// `container:` resource limits; `None` means the runtime's default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ContainerLimits {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
}

/// One remote MCP server the proxy relays to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    /// Relay path `/mcp/<name>`, grant `mcp:<name>`.
    pub name: moat_policy::McpServerName,
    /// https, or http for a loopback host only.
    pub url: url::Url,
    pub auth: Option<McpAuth>,
}

/// Which grant to inject into which request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpAuth {
    pub grant: String,
    pub header: String,
}

/// `services.<name>`: a sidecar declared in `dependencies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub env: BTreeMap<String, String>,
    pub image: Option<String>,
    pub memory_mb: Option<u64>,
    /// Wait for readiness before starting the agent (default true).
    pub wait: bool,
    /// Shell commands run inside the sidecar once it is ready, in order.
    pub provision: Vec<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            env: BTreeMap::new(),
            image: None,
            memory_mb: None,
            wait: true,
            provision: Vec::new(),
        }
    }
}
