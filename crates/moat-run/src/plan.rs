use std::path::PathBuf;

use moat_credentials::GrantName;
use moat_daemon::HostRuleSpec;
use moat_home::Profile;

/// A bind mount requested by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    /// Absolute host path.
    pub source: PathBuf,
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
    /// Read-only.
    pub read_only: bool,
    /// Written relative to the workspace: it must resolve inside it, even
    /// through symlinks (checked when the plan is executed).
    pub relative: bool,
}

/// An MCP server reachable through the proxy's relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpPlan {
    /// Name (relay path `/mcp/<name>`).
    pub name: String,
    /// Upstream URL.
    pub url: String,
    /// The grant holding its token, and the header it goes in.
    pub auth: Option<(GrantName, String)>,
}

/// The run's network policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkPlan {
    /// `strict` (allow list) instead of `permissive`.
    pub strict: bool,
    /// Host entries with their rules.
    pub rules: Vec<HostRuleSpec>,
    /// `--allow-host` entries.
    pub allow_hosts: Vec<String>,
    /// `network.host`: host TCP ports the sandbox may reach.
    pub host_ports: Vec<u16>,
}

/// What the whole sandbox may consume (`container:` in moat.yaml), for
/// every runtime.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LimitsPlan {
    /// `container.memory` (MiB).
    pub memory_mb: Option<u64>,
    /// `container.cpus`.
    pub cpus: Option<f64>,
}

/// Everything `moat run` decided, flags and `moat.yaml` merged.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// Project directory (absolute), mounted at `/workspace`.
    pub workspace: PathBuf,
    /// Requested name, if any.
    pub name: Option<String>,
    /// Command and arguments.
    pub command: Vec<String>,
    /// Grants to inject.
    pub grants: Vec<GrantName>,
    /// Environment set by the user (flags win over moat.yaml).
    pub env: Vec<(String, String)>,
    /// Extra mounts.
    pub mounts: Vec<MountPlan>,
    /// Network policy.
    pub network: NetworkPlan,
    /// MCP servers.
    pub mcp: Vec<McpPlan>,
    /// Attach a terminal (stdin/stdout/stderr inherited, not logged).
    pub interactive: bool,
    /// The runtime asked for (`--runtime`, `MOAT_RUNTIME`, `runtime:`);
    /// `None` picks the first available.
    pub runtime: Option<String>,
    /// The sandbox's image, for runtimes that run one.
    pub image: moat_sandbox::ImageRecipe,
    /// The runtime's extra isolation (gVisor); false with `--no-sandbox`,
    /// `sandbox: none` or `MOAT_NO_SANDBOX=1`.
    pub extra_isolation: bool,
    /// `--keep`: leave the container after it exits.
    pub keep: bool,
    /// Resource limits.
    pub limits: LimitsPlan,
    /// Started with `--detach`: supervised in the background.
    pub detached: bool,
    /// Credential profile.
    pub profile: Option<Profile>,
}
