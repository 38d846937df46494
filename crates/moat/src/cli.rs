//! Command-line grammar. Flag names follow the reference moat CLI.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run AI coding agents in a sandbox, with credentials injected at the
/// network layer so the agent never holds a token.
#[derive(Debug, Parser)]
#[command(name = "moat", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print debug logs on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Machine-readable JSON output (list-like commands).
    #[arg(long, global = true)]
    pub json: bool,
    /// Credential profile to use.
    #[arg(long, global = true, env = "MOAT_PROFILE", value_name = "NAME")]
    pub profile: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a sandbox, with granted credentials injected by the proxy.
    Run(RunArgs),
    /// Run Claude Code in a sandbox (a grant of claude or anthropic).
    Claude(AgentArgs),
    /// Run Codex in a sandbox (a grant of openai).
    Codex(AgentArgs),
    /// Run Gemini CLI in a sandbox (a grant of gemini).
    Gemini(AgentArgs),
    /// Run a command in a git worktree of BRANCH; list or remove them.
    Wt(WtArgs),
    /// Manage the proxy daemon shared by all runs.
    Proxy(ProxyArgs),
    /// Dependencies available to `dependencies:` in moat.yaml.
    Deps(DepsArgs),
    /// Store a credential, encrypted, for injection into runs.
    Grant(GrantArgs),
    /// Delete a stored credential.
    Revoke(RevokeArgs),
    /// List runs.
    List,
    /// Runtimes, the proxy daemon, active runs and disk use.
    Status,
    /// Show a run's output.
    Logs(LogsArgs),
    /// Stop a run (the most recent running one when RUN is omitted).
    Stop(RunRef),
    /// Remove a stopped run and its stored artefacts.
    Destroy(DestroyArgs),
    /// Remove every stopped run.
    Clean(CleanArgs),
    /// Check what moat needs here; print the fix for each problem.
    Doctor(DoctorArgs),
    /// A run's timeline, or with --network its proxied requests.
    Trace(TraceArgs),
    /// Print (and open in a browser) a run endpoint's URL; no RUN: the index.
    Open {
        /// Run id, id prefix or name.
        run: Option<String>,
        /// Endpoint (default: the run's only one).
        endpoint: Option<String>,
        /// Only print the URL.
        #[arg(short, long)]
        print: bool,
    },
    /// Verify a run's tamper-evident audit log, or export it.
    Audit(AuditArgs),
    /// Review and accept a workspace's moat.yaml, .moat/ and mount sources
    /// after a run changed them.
    Trust(TrustArgs),
    /// Snapshot a run's workspace; list, restore or prune its snapshots.
    Snapshot(SnapshotArgs),
    /// Run a command in a running run's sandbox; moat exits with its code.
    Exec(ExecArgs),
    /// Start another session of a running run's agent in its sandbox.
    Join(JoinArgs),
    /// List what a volume-mode run changed (A/M/D PATH); --apply writes it into the workspace.
    Diff {
        #[arg(help = "Run id, id prefix or name")]
        run: String,
        #[arg(long, help = "Write them into the workspace (after the run)")]
        apply: bool,
    },
    /// Allow HOST (or only RULEs such as 'GET /v1/**') in a running run, from its next request on.
    Allow(PolicyArgs),
    /// Deny HOST (or only RULEs such as 'DELETE /**') in a running run, from its next request on.
    Deny(PolicyArgs),
    /// Print a running run's network policy and where each entry came from.
    Policy {
        #[arg(help = "Run id, id prefix or name")]
        run: String,
    },
    /// Print the version.
    Version,
    /// The proxy daemon process (started by moat itself).
    #[command(name = "__daemon", hide = true)]
    Daemon,
    /// Inside a sandbox: the `ssh` ProxyCommand that reaches a granted SSH
    /// host through moat's proxy.
    #[command(name = "__ssh-connect", hide = true)]
    SshConnect {
        /// SSH host.
        host: String,
        /// SSH port.
        port: u16,
    },
    /// In a container's workload: waits for the network guard's firewall,
    /// then executes the command.
    #[command(name = "__await-guard", hide = true)]
    AwaitGuard {
        /// The command and its arguments.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<std::ffi::OsString>,
    },
    /// In a container's network guard: the capture relay (credentials in
    /// `MOAT_CAPTURE_AUTHORIZATION`).
    #[command(name = "__capture-relay", hide = true)]
    CaptureRelay {
        /// The proxy, `host:port`.
        proxy: String,
        /// Port of redirected connections.
        relay_port: u16,
        /// Port of redirected DNS.
        dns_port: u16,
        /// The run's endpoint socket (`ports:`), bound in a directory of
        /// the run's storage mounted into the guard.
        #[arg(long)]
        endpoint_socket: Option<PathBuf>,
        /// An endpoint port the socket may reach (repeated).
        #[arg(long = "endpoint-port")]
        endpoint_ports: Vec<u16>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Project directory, mounted at /workspace (default: the current
    /// directory). Its moat.yaml, if any, is loaded.
    pub path: Option<PathBuf>,
    /// Command and arguments (after --); replaces moat.yaml `command`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    #[command(flatten)]
    pub run: RunOptions,
    /// Attach the terminal (stdin, stdout, stderr; not logged).
    #[arg(short, long)]
    pub interactive: bool,
    /// Run in the background; follow with moat logs -f.
    #[arg(short, long)]
    pub detach: bool,
}

/// The flags of a run, shared by `moat run` and the agent commands.
#[derive(Debug, Args)]
pub struct RunOptions {
    /// Inject a stored credential (repeatable): github, claude, ssh:HOST...
    #[arg(short = 'g', long = "grant", value_name = "PROVIDER")]
    pub grants: Vec<String>,
    /// Set an environment variable in the sandbox (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Bind-mount a host path (repeatable): SRC:DST[:ro].
    #[arg(short = 'm', long = "mount", value_name = "SRC:DST[:ro]")]
    pub mounts: Vec<String>,
    /// Run name (default: moat.yaml `name`, else generated).
    #[arg(short = 'n', long)]
    pub name: Option<String>,
    /// Also allow HOST under a strict network policy (repeatable).
    #[arg(long = "allow-host", value_name = "HOST")]
    pub allow_hosts: Vec<String>,
    /// Let the sandbox change a protected workspace path for this run
    /// (repeatable): .git/hooks, .git/config, .vscode, .claude, .envrc...
    #[arg(long = "allow-write", value_name = "PATH")]
    pub allow_write: Vec<String>,
    /// Runtime: native, docker, podman or apple (default: detected).
    #[arg(long, value_name = "RUNTIME")]
    pub runtime: Option<moat_config::RuntimeKind>,
    /// Container runtimes: keep the container after it exits.
    #[arg(long)]
    pub keep: bool,
    /// Never prompt (missing grants are always errors for runs).
    #[arg(long)]
    pub no_prompt: bool,
    /// Container runtimes: run with runc instead of gVisor (also
    /// MOAT_NO_SANDBOX=1 or `sandbox: none`).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Container runtimes: rebuild the image even if one with the same inputs exists.
    #[arg(long)]
    pub rebuild: bool,
    /// Work in a git worktree of BRANCH (created from HEAD when missing).
    #[arg(long, visible_alias = "wt", value_name = "BRANCH")]
    pub worktree: Option<String>,
    /// bind (the workspace itself) or volume (a copy-on-write copy, see moat diff).
    #[arg(long, value_name = "MODE")]
    pub workspace_mode: Option<moat_config::WorkspaceMode>,
    /// Serve the run's PORT as endpoint NAME (repeatable), see moat open.
    #[arg(long = "port", value_name = "NAME=PORT")]
    pub ports: Vec<String>,
}

impl RunOptions {
    /// The run's flags, for `command`.
    pub fn flags(
        &self,
        command: Vec<String>,
        interactive: bool,
        detached: bool,
        verbose: bool,
    ) -> moat_run::RunFlags {
        moat_run::RunFlags {
            command,
            grants: self.grants.clone(),
            env: self.env.clone(),
            mounts: self.mounts.clone(),
            name: self.name.clone(),
            allow_hosts: self.allow_hosts.clone(),
            runtime: self.runtime,
            interactive,
            keep: self.keep,
            no_sandbox: self.no_sandbox,
            rebuild: self.rebuild,
            verbose,
            detached,
            allow_write: self.allow_write.clone(),
            worktree: self.worktree.clone(),
            workspace_mode: self.workspace_mode,
            ports: self.ports.clone(),
        }
    }
}

/// `moat claude`, `moat codex`, `moat gemini`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Project directory, mounted at /workspace (default: the current
    /// directory). Its moat.yaml, if any, is loaded.
    pub path: Option<PathBuf>,
    /// Arguments passed to the agent (after --).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Answer one prompt and exit (non-interactive); the exit code is the agent's.
    #[arg(short = 'p', long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Continue the last session of this workspace.
    #[arg(short = 'c', long = "continue")]
    pub continue_last: bool,
    /// Resume a session by its id.
    #[arg(short = 'r', long, value_name = "ID")]
    pub resume: Option<String>,
    /// Keep the agent's own permission prompts (by default they are off:
    /// moat is the sandbox).
    #[arg(long)]
    pub noyolo: bool,
    /// The model the agent uses.
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Run in the background; follow with moat logs -f.
    #[arg(short, long)]
    pub detach: bool,
    #[command(flatten)]
    pub run: RunOptions,
}

/// `moat wt BRANCH [-- CMD]`, `moat wt list`, `moat wt clean [BRANCH]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct WtArgs {
    #[command(subcommand)]
    pub command: Option<WtCommand>,
    /// The branch (created from HEAD when missing).
    #[arg(required = true)]
    pub branch: Option<String>,
    #[command(flatten)]
    pub args: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum WtCommand {
    /// The worktrees of this repository and their runs.
    List,
    /// Remove the worktrees whose runs stopped (branches stay).
    Clean {
        /// Only this branch's worktree.
        branch: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check one agent's set-up instead: claude, codex or gemini.
    pub agent: Option<String>,
}

#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Project directory (default: the current directory).
    pub path: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DepsArgs {
    #[command(subcommand)]
    pub command: DepsCommand,
}

#[derive(Debug, Subcommand)]
pub enum DepsCommand {
    /// List the dependencies moat knows.
    List {
        /// Only this type: runtime, apt, tool, dynamic.
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
    },
    /// Show one dependency.
    Info {
        /// Dependency name, e.g. node or jq.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    #[command(subcommand)]
    pub command: Option<ProxyCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Start the daemon (in the background unless --foreground).
    Start {
        /// Proxy port (default 8080, or MOAT_PROXY_PORT).
        #[arg(short, long)]
        port: Option<u16>,
        /// Stay in the foreground.
        #[arg(long)]
        foreground: bool,
        /// Serve the runs' endpoints on ADDR (default 127.0.0.1:8081; also MOAT_ROUTING_LISTEN).
        #[arg(long, value_name = "ADDR")]
        routing_listen: Option<std::net::SocketAddr>,
    },
    /// Stop the daemon.
    Stop,
    /// Show the daemon's pid, port, runs and idle countdown.
    Status,
    /// Stop and start the daemon, keeping its port.
    Restart,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run id, id prefix or name.
    pub run: String,
    /// A terminal of its own (when stdin is one).
    #[arg(short, long)]
    pub interactive: bool,
    /// The command (after --).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Run id, id prefix or name.
    pub run: String,
    /// The run's agent.
    #[arg(value_parser = ["claude", "codex", "gemini"])]
    pub agent: String,
    /// Answer one prompt and exit.
    #[arg(short = 'p', long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// Continue the last session.
    #[arg(short = 'c', long = "continue", conflicts_with = "resume")]
    pub continue_last: bool,
    /// Resume a session by its id.
    #[arg(short = 'r', long, value_name = "ID")]
    pub resume: Option<String>,
}

/// A run named by id, id prefix or name.
#[derive(Debug, Args)]
pub struct RunRef {
    /// Run id, id prefix or name.
    pub run: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Run id, id prefix or name (default: the most recent run).
    pub run: Option<String>,
    /// Show the last N lines.
    #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 100)]
    pub lines: usize,
    /// Keep printing new lines until the run ends.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Run id, id prefix or name (default: the most recent stopped run).
    pub run: Option<String>,
    /// Stop the run first if it is still running.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "With --network, -v adds each request's headers and bodies (as recorded: injected credentials are [REDACTED]) and --json prints the records."
)]
pub struct TraceArgs {
    /// Run id, id prefix or name (default: the most recent run).
    pub run: Option<String>,
    /// List the run's requests: [HH:MM:SS.mmm] METHOD URL STATUS (DURATION).
    #[arg(long)]
    pub network: bool,
    /// Write the requests as an HTTP Archive (HAR 1.2) for browser devtools.
    #[arg(long, value_name = "FILE")]
    pub har: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Run id, id prefix or name (default: the most recent run).
    pub run: Option<String>,
    /// Write a self-contained proof bundle (entries and attestations) to
    /// FILE instead of printing the verdict.
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an exported bundle. Without --key or --trusted only its own
    /// public key is used: that proves the log unchanged since that key
    /// signed it, not whose key it is.
    Verify {
        /// The bundle (from moat audit RUN --export FILE).
        file: PathBuf,
        /// Require signatures by this public key: 64 hex digits, or a file
        /// holding them (the installation's MOAT_HOME/audit/signing.pub).
        #[arg(long, value_name = "PUBKEY", conflicts_with = "trusted")]
        key: Option<String>,
        /// Require signatures by this installation's key (MOAT_HOME/audit/signing.pub).
        #[arg(long)]
        trusted: bool,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct GrantArgs {
    #[command(subcommand)]
    pub command: Option<GrantCommand>,
    /// Provider to grant (github, anthropic, claude, openai, gemini, gitlab,
    /// npm, or a custom one). See `moat grant providers`.
    #[arg(required = true)]
    pub provider: Option<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// npm: the registry host the token belongs to. ssh: the host the key
    /// may sign for (`moat grant ssh --host github.com`).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// ssh: the agent key to use, by fingerprint (SHA256:...) or public or
    /// private key file (default: the agent's only key, or a prompt).
    #[arg(long, value_name = "FINGERPRINT|PATH")]
    pub key: Option<String>,
    /// ssh: the server's host key to pin ("ssh-ed25519 AAAA..." or a file
    /// of such lines); default: the host's entries in ~/.ssh/known_hosts.
    #[arg(long, value_name = "KEY|PATH")]
    pub host_key: Option<String>,
    /// ssh: the server's SSH port.
    #[arg(long, value_name = "PORT", default_value_t = 22)]
    pub port: u16,
    /// claude: import this Claude Code credentials file.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Store without checking the token against its API.
    #[arg(long)]
    pub no_validate: bool,
}

/// How the secret may be obtained.
#[derive(Debug, Args, Clone)]
pub struct SourceArgs {
    /// Never prompt; fail if the secret is not found (also MOAT_NO_PROMPT=1).
    #[arg(long, global = true)]
    pub no_prompt: bool,
    /// Read the secret from standard input.
    #[arg(long, global = true)]
    pub stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// List stored credentials (never their values).
    List,
    /// Show one stored credential, redacted.
    Show {
        /// Provider name.
        provider: String,
    },
    /// List the providers moat knows.
    Providers,
    /// Store the token an MCP server needs (`mcp:NAME` in grants).
    Mcp {
        /// The MCP server's name, as in moat.yaml `mcp:`.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Provider to revoke (`mcp:NAME` for an MCP server token).
    pub provider: String,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SnapshotArgs {
    /// Run id, id prefix or name.
    #[arg(required = true)]
    pub run: Option<String>,
    /// A label for the snapshot.
    #[arg(long)]
    pub label: Option<String>,
    #[command(subcommand)]
    pub action: Option<SnapshotAction>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// List a run's snapshots.
    List { run: String },
    /// Restore a snapshot (default: the run's latest) in place, or into --to DIR.
    Restore {
        /// Run id, id prefix or name.
        run: String,
        /// Snapshot id or unique prefix.
        id: Option<String>,
        /// A new or empty directory to restore into.
        #[arg(long, value_name = "DIR")]
        to: Option<std::path::PathBuf>,
    },
    /// Remove all but the newest snapshots (the pre-run one is always kept).
    Prune {
        run: String,
        #[arg(long, default_value_t = 5)]
        keep: usize,
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[arg(help = "Run id, id prefix or name")]
    pub run: String,
    #[arg(help = "Host as in network.rules: api.example.com or *.example.com")]
    pub host: String,
    #[arg(help = "METHOD PATH rules as in network.rules, e.g. 'GET /repos/**'")]
    pub rules: Vec<String>,
}
