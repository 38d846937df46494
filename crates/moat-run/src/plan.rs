#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

use moat_config::RuntimeKind;
use moat_credentials::GrantName;
use moat_home::Profile;
use moat_sandbox::services::{ServiceOptions, ServiceRequest};

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
    /// Paths relative to `target` hidden behind an empty, writable tmpfs
    /// (moat.yaml `exclude:`).
    pub exclude: Vec<PathBuf>,
}

/// An MCP server reachable through the proxy's relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpPlan {
    /// Name (relay path `/mcp/<name>`).
    pub name: moat_policy::McpServerName,
    /// Upstream URL.
    pub url: url::Url,
    /// The grant holding its token, and the header it goes in.
    pub auth: Option<(GrantName, String)>,
}

/// The run's network policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkPlan {
    /// `permissive`, or `strict` (allow list).
    pub policy: moat_policy::Policy,
    /// Host entries with their rules.
    pub rules: Vec<moat_policy::HostRules>,
    /// `--allow-host` entries.
    pub allow_hosts: Vec<moat_policy::HostPattern>,
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
    pub runtime: Option<RuntimeKind>,
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
    /// Files written into the sandbox before the command starts (owned by
    /// root, readable as their mode says), e.g. an agent's staged
    /// configuration.
    pub files: Vec<moat_sandbox::InjectedFile>,
    /// Service dependencies (`postgres@17`...), started beside the sandbox.
    pub services: Vec<ServiceRequest>,
    /// Protected workspace paths the sandbox may change anyway
    /// (`--allow-write`, moat.yaml `allow_write:`), relative.
    pub allow_write: Vec<PathBuf>,
    /// The workspace paths the sandbox sees read-only, found when the run
    /// starts (see `protect`).
    pub protected: Vec<moat_sandbox::ProtectedPath>,
    /// The config file the plan was made from (its fingerprint): the run
    /// opens only if the workspace still holds that file.
    pub config_used: Option<moat_trust::ConfigUsed>,
    /// The git worktree the run works in (`moat wt`, `--worktree`); its
    /// directory is the workspace.
    pub worktree: Option<crate::worktree::Worktree>,
    /// moat.yaml `snapshots:` (the pre-run snapshot is on by default).
    pub snapshots: moat_config::SnapshotConfig,
    /// The agent the run starts (`moat claude`…), for `moat join`.
    pub agent: Option<String>,
    /// `--workspace-mode`, else moat.yaml `workspace.mode`.
    pub workspace_mode: moat_config::WorkspaceMode,
    /// Endpoints (`ports:`, `--port`): name (a DNS label) to the port
    /// inside the sandbox.
    pub ports: std::collections::BTreeMap<String, u16>,
}

/// What the command line says about a run; [`RunPlan::from_flags`] merges
/// it with moat.yaml, the flags winning.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    /// Command and arguments (after `--`); replaces moat.yaml `command`.
    pub command: Vec<String>,
    /// `--grant`: added to moat.yaml's `grants`.
    pub grants: Vec<String>,
    /// `--env KEY=VALUE`: override moat.yaml's `env` by name.
    pub env: Vec<String>,
    /// `--mount SRC:DST[:ro]`: override moat.yaml's `mounts` by target.
    pub mounts: Vec<String>,
    /// `--name`: replaces moat.yaml `name`.
    pub name: Option<String>,
    /// `--allow-host`.
    pub allow_hosts: Vec<String>,
    /// `--runtime`: before `MOAT_RUNTIME` and moat.yaml `runtime`.
    pub runtime: Option<RuntimeKind>,
    /// `-i`.
    pub interactive: bool,
    /// `--keep`.
    pub keep: bool,
    /// `--no-sandbox`.
    pub no_sandbox: bool,
    /// `--rebuild`.
    pub rebuild: bool,
    /// `--verbose`: stream the image build.
    pub verbose: bool,
    /// The run is supervised in the background (`-d`).
    pub detached: bool,
    /// `--allow-write PATH`: added to moat.yaml's `allow_write`.
    pub allow_write: Vec<String>,
    /// `--worktree BRANCH` / `moat wt`: the run is named after the branch.
    pub worktree: Option<String>,
    /// `--workspace-mode`: replaces moat.yaml `workspace.mode`.
    pub workspace_mode: Option<moat_config::WorkspaceMode>,
    /// `--port NAME=PORT`: added to moat.yaml's `ports:` (a flag wins).
    pub ports: Vec<String>,
}

/// Why flags and moat.yaml do not make a run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `MOAT_RUNTIME` names no runtime.
    #[error("MOAT_RUNTIME: {0}")]
    RuntimeEnv(moat_config::UnknownRuntime),
    /// `services.<name>` for a dependency that is not a service.
    #[error(
        "moat.yaml services.{name}: {name} is not a service, so it has no sidecar to configure \
         (services are {known})"
    )]
    NotAService {
        /// The key.
        name: String,
        /// The services there are.
        known: String,
    },
    /// `workspace.mode: volume` in a git worktree.
    #[error(
        "workspace.mode: volume cannot work on a git worktree ({}: .git is a file): its commits \
         would be written to the repository's .git on the host, outside the run's copy",
        workspace.display()
    )]
    VolumeWorktree {
        /// The workspace.
        workspace: PathBuf,
    },
    /// Neither `--` nor moat.yaml gives a command.
    #[error("no command to run")]
    NoCommand,
    /// A malformed `--env`.
    #[error("invalid --env {pair:?}: {problem}")]
    Env {
        /// As given.
        pair: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A grant name that is not one.
    #[error(transparent)]
    Grant(#[from] moat_credentials::CredentialError),
    /// A malformed `--mount`.
    #[error(transparent)]
    Mount(#[from] moat_config::ConfigError),
    /// A run name that cannot be used.
    #[error(transparent)]
    Name(#[from] moat_storage::InvalidName),
    /// A malformed `--port`.
    #[error(transparent)]
    Port(moat_config::SpecError),
    /// An `--allow-host` that is not a host pattern.
    #[error("invalid --allow-host {host:?}: {error}")]
    AllowHost {
        /// As given.
        host: String,
        /// Why.
        error: moat_policy::PolicyError,
    },
}

impl moat_hint::Hint for PlanError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            PlanError::NotAService { name, .. } => {
                Some(format!("Remove services.{name} from moat.yaml.").into())
            }
            PlanError::VolumeWorktree { .. } => Some(
                "To fix: use --workspace-mode bind for a worktree run, or run volume mode from \
                 the repository's main checkout."
                    .into(),
            ),
            PlanError::NoCommand => Some(
                "Give one after --, e.g. moat run -- echo hello, or set `command:` in moat.yaml."
                    .into(),
            ),
            PlanError::RuntimeEnv(_) => {
                Some("Set MOAT_RUNTIME to native, docker, podman or apple, or unset it.".into())
            }
            // Transparent: the inner error's fix, which the chain of
            // sources would not show.
            PlanError::Grant(e) => e.hint(),
            PlanError::Mount(e) => e.hint(),
            PlanError::Name(e) => e.hint(),
            PlanError::Port(e) => e.hint(),
            PlanError::Env { .. } | PlanError::AllowHost { .. } => None,
        }
    }
}

impl RunPlan {
    /// The plan for `flags` in `workspace` with its moat.yaml (`config`):
    /// flags win, grants add up, mounts override by target, `env` by name;
    /// the runtime is `--runtime`, else `runtime_env` (`MOAT_RUNTIME`),
    /// else moat.yaml's; `no_sandbox_env` is `MOAT_NO_SANDBOX`.
    pub fn from_flags(
        workspace: PathBuf,
        flags: &RunFlags,
        config: Option<&moat_config::ProjectConfig>,
        runtime_env: Option<String>,
        no_sandbox_env: bool,
        profile: Option<Profile>,
    ) -> Result<RunPlan, PlanError> {
        let runtime_env = match runtime_env.filter(|v| !v.trim().is_empty()) {
            Some(value) => Some(
                value
                    .parse::<RuntimeKind>()
                    .map_err(PlanError::RuntimeEnv)?,
            ),
            None => None,
        };
        let runtime = flags
            .runtime
            .or(runtime_env)
            .or_else(|| config.and_then(|c| c.runtime));
        let workspace_mode = flags
            .workspace_mode
            .or(config.map(|c| c.workspace_mode))
            .unwrap_or_default();
        check_volume_mode(workspace_mode, &workspace, flags.worktree.is_some())?;
        // In this order, so the first mistake of several is the one told.
        let command = command(flags, config)?;
        let grants = grants(flags, config)?;
        let env = env(flags, config)?;
        let mounts = mounts(flags, config, &workspace)?;
        let network = network(flags, config)?;
        let mcp = mcp(config)?;
        let mut ports = config.map(|c| c.ports.clone()).unwrap_or_default();
        for spec in &flags.ports {
            let (name, port) = moat_config::parse_port_flag(spec).map_err(PlanError::Port)?;
            ports.insert(name, port);
        }
        let name = flags
            .name
            .clone()
            .or_else(|| config.and_then(|c| c.name.clone()));
        let name = match &flags.worktree {
            Some(branch) => Some(crate::worktree::run_name(name.as_deref(), branch)),
            None => name,
        };
        if let Some(n) = &name {
            moat_storage::validate_name(n).map_err(PlanError::Name)?;
        }
        let services = config
            .map(service_requests)
            .transpose()?
            .unwrap_or_default();
        let mut allow_write = config.map(|c| c.allow_write.clone()).unwrap_or_default();
        for spec in &flags.allow_write {
            allow_write.push(moat_config::parse_allow_write(spec)?);
        }
        let no_sandbox = flags.no_sandbox
            || no_sandbox_env
            || config.is_some_and(|c| c.sandbox == moat_config::SandboxMode::Disabled);
        Ok(RunPlan {
            workspace,
            command,
            grants,
            env,
            mounts,
            network,
            mcp,
            name,
            interactive: !flags.detached
                && (flags.interactive || config.is_some_and(|c| c.interactive)),
            runtime,
            image: image_recipe(flags, config),
            extra_isolation: !no_sandbox,
            keep: flags.keep,
            limits: LimitsPlan {
                memory_mb: config.and_then(|c| c.container.memory_mb),
                cpus: config.and_then(|c| c.container.cpus),
            },
            detached: flags.detached,
            profile,
            files: Vec::new(),
            services,
            allow_write,
            protected: Vec::new(),
            config_used: None,
            worktree: None,
            snapshots: config.map(|c| c.snapshots.clone()).unwrap_or_default(),
            agent: None,
            workspace_mode,
            ports,
        })
    }
}

/// Volume mode refuses a git worktree (`.git` is a file): its commits go
/// to the repository's common `.git`, outside the copy, on the host.
fn check_volume_mode(
    mode: moat_config::WorkspaceMode,
    workspace: &std::path::Path,
    worktree: bool,
) -> Result<(), PlanError> {
    let git_file = std::fs::symlink_metadata(workspace.join(".git")).is_ok_and(|m| m.is_file());
    if mode == moat_config::WorkspaceMode::Volume && (worktree || git_file) {
        return Err(PlanError::VolumeWorktree {
            workspace: workspace.to_path_buf(),
        });
    }
    Ok(())
}

/// The command after `--`, else moat.yaml's, wrapped in `hooks.pre_run`.
fn command(
    flags: &RunFlags,
    config: Option<&moat_config::ProjectConfig>,
) -> Result<Vec<String>, PlanError> {
    let command = if !flags.command.is_empty() {
        flags.command.clone()
    } else if let Some(cmd) = config.and_then(|c| c.command.clone()) {
        cmd
    } else {
        return Err(PlanError::NoCommand);
    };
    // hooks.pre_run runs in /workspace before the command, every
    // start; a failing hook stops the run with its exit code.
    Ok(match config.and_then(|c| c.hooks.pre_run.clone()) {
        Some(hook) => {
            let mut wrapped = vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                format!("set -e\n{hook}\nexec \"$@\""),
                "moat-pre-run".to_string(),
            ];
            wrapped.extend(command);
            wrapped
        }
        None => command,
    })
}

/// moat.yaml's grants, then `--grant`'s, each once.
fn grants(
    flags: &RunFlags,
    config: Option<&moat_config::ProjectConfig>,
) -> Result<Vec<GrantName>, PlanError> {
    let mut grants: Vec<GrantName> = Vec::new();
    let config_grants = config.map(|c| c.grants.as_slice()).unwrap_or_default();
    for g in config_grants.iter().chain(flags.grants.iter()) {
        let grant = GrantName::parse(g)?;
        if !grants.contains(&grant) {
            grants.push(grant);
        }
    }
    Ok(grants)
}

/// moat.yaml's `env`, each `--env KEY=VALUE` replacing its name.
fn env(
    flags: &RunFlags,
    config: Option<&moat_config::ProjectConfig>,
) -> Result<Vec<(String, String)>, PlanError> {
    let mut env: Vec<(String, String)> = config
        .map(|c| c.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    for pair in &flags.env {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(PlanError::Env {
                pair: pair.clone(),
                problem: "expected KEY=VALUE",
            });
        };
        if k.is_empty() {
            return Err(PlanError::Env {
                pair: pair.clone(),
                problem: "the variable name is empty",
            });
        }
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    Ok(env)
}

/// moat.yaml's mounts, each `--mount` replacing the one at its target.
fn mounts(
    flags: &RunFlags,
    config: Option<&moat_config::ProjectConfig>,
    workspace: &std::path::Path,
) -> Result<Vec<MountPlan>, PlanError> {
    let planned = |m: &moat_config::Mount| MountPlan {
        source: m.source.clone(),
        target: m.target.clone(),
        read_only: m.read_only,
        relative: m.relative,
        exclude: m.exclude.clone(),
    };
    let mut mounts: Vec<MountPlan> = config
        .map(|c| c.mounts.iter().map(planned).collect())
        .unwrap_or_default();
    for spec in &flags.mounts {
        let m = moat_config::Mount::parse_cli(spec, workspace)?;
        mounts.retain(|x| x.target != m.target);
        mounts.push(planned(&m));
    }
    Ok(mounts)
}

/// moat.yaml's `network:` with the `--allow-host` patterns.
fn network(
    flags: &RunFlags,
    config: Option<&moat_config::ProjectConfig>,
) -> Result<NetworkPlan, PlanError> {
    Ok(NetworkPlan {
        policy: config.map(|c| c.network.policy).unwrap_or_default(),
        rules: config.map(|c| c.network.rules.clone()).unwrap_or_default(),
        allow_hosts: flags
            .allow_hosts
            .iter()
            .map(|h| {
                moat_policy::HostPattern::parse(h).map_err(|source| PlanError::AllowHost {
                    host: h.clone(),
                    error: source,
                })
            })
            .collect::<Result<_, _>>()?,
        host_ports: config
            .map(|c| c.network.host_ports.clone())
            .unwrap_or_default(),
    })
}

/// moat.yaml's MCP servers, their grants parsed.
fn mcp(config: Option<&moat_config::ProjectConfig>) -> Result<Vec<McpPlan>, PlanError> {
    let mut mcp = Vec::new();
    for server in config.map(|c| c.mcp.as_slice()).unwrap_or_default() {
        let auth = match &server.auth {
            Some(a) => Some((GrantName::parse(&a.grant)?, a.header.clone())),
            None => None,
        };
        mcp.push(McpPlan {
            name: server.name.clone(),
            url: server.url.clone(),
            auth,
        });
    }
    Ok(mcp)
}

/// What an image-based runtime builds from: moat.yaml's dependencies, as
/// it parsed them, its base image and build hooks.
fn image_recipe(
    flags: &RunFlags,
    config: Option<&moat_config::ProjectConfig>,
) -> moat_sandbox::ImageRecipe {
    moat_sandbox::ImageRecipe {
        dependencies: config.map(|c| c.dependencies.clone()).unwrap_or_default(),
        base_image: config.and_then(|c| c.base_image.clone()),
        post_build_root: config.and_then(|c| c.hooks.post_build_root.clone()),
        post_build: config.and_then(|c| c.hooks.post_build.clone()),
        rebuild: flags.rebuild,
        verbose: flags.verbose,
    }
}

/// The services among moat.yaml's dependencies with their `services:`
/// options. A `services:` entry must name a service.
fn service_requests(config: &moat_config::ProjectConfig) -> Result<Vec<ServiceRequest>, PlanError> {
    let requests: Vec<ServiceRequest> = config
        .dependencies
        .iter()
        .filter(|dep| dep.kind == moat_config::DependencyKind::Registry)
        .filter_map(|dep| {
            let service = moat_sandbox::services::service_def(&dep.name)?;
            Some(ServiceRequest {
                service,
                version: dep.version.clone(),
                options: config
                    .services
                    .get(&dep.name)
                    .map(service_options)
                    .unwrap_or_default(),
            })
        })
        .collect();
    if let Some(name) = config
        .services
        .keys()
        .find(|name| !requests.iter().any(|r| r.service.name == name.as_str()))
    {
        let known: Vec<&str> = moat_sandbox::services::SERVICES
            .iter()
            .map(|s| s.name)
            .collect();
        return Err(PlanError::NotAService {
            name: name.clone(),
            known: known.join(", "),
        });
    }
    Ok(requests)
}

/// moat.yaml's `services.<name>`.
fn service_options(config: &moat_config::ServiceConfig) -> ServiceOptions {
    ServiceOptions {
        env: config.env.clone(),
        image: config.image.clone(),
        memory_mb: config.memory_mb,
        wait: config.wait,
        provision: config.provision.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(yaml: &str) -> (tempfile::TempDir, moat_config::ProjectConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("moat.yaml"), yaml).unwrap();
        let config = moat_config::load(dir.path()).unwrap().unwrap();
        (dir, config)
    }

    fn plan(dir: &tempfile::TempDir, flags: &RunFlags, c: &moat_config::ProjectConfig) -> RunPlan {
        RunPlan::from_flags(dir.path().to_owned(), flags, Some(c), None, false, None).unwrap()
    }

    #[test]
    fn flags_win_grants_add_up_and_mounts_override_by_target() {
        let (dir, c) = config(
            "name: from-yaml\ngrants: [github]\nenv:\n  A: yaml\n  B: yaml\nmounts:\n  - /tmp:/data:ro\n  - /tmp:/other\ncommand: [echo, yaml]\nruntime: docker\n",
        );
        let flags = RunFlags {
            grants: vec!["anthropic".into(), "github".into()],
            env: vec!["A=flag".into()],
            mounts: vec!["/var:/data".into()],
            name: Some("from-flag".into()),
            ..Default::default()
        };
        let p = plan(&dir, &flags, &c);
        assert_eq!(p.name.as_deref(), Some("from-flag"));
        let grants: Vec<String> = p.grants.iter().map(|g| g.to_string()).collect();
        assert_eq!(grants, ["github", "anthropic"]);
        assert_eq!(
            p.env,
            [
                ("B".to_owned(), "yaml".to_owned()),
                ("A".to_owned(), "flag".to_owned())
            ]
        );
        let data: Vec<_> = p
            .mounts
            .iter()
            .filter(|m| m.target == Path::new("/data"))
            .collect();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].source, Path::new("/var"));
        assert!(!data[0].read_only);
        assert_eq!(p.mounts.len(), 2);
        assert_eq!(p.command, ["echo", "yaml"]);
        assert_eq!(p.runtime, Some(RuntimeKind::Docker));
    }

    #[test]
    fn runtime_flag_then_environment_then_yaml() {
        let (dir, c) = config("runtime: docker\ncommand: [\"true\"]\n");
        let from = |flag: Option<RuntimeKind>, env: Option<&str>| {
            let flags = RunFlags {
                runtime: flag,
                ..Default::default()
            };
            RunPlan::from_flags(
                dir.path().to_owned(),
                &flags,
                Some(&c),
                env.map(str::to_owned),
                false,
                None,
            )
            .map(|plan| plan.runtime)
        };
        use RuntimeKind::{Docker, Native, Podman};
        assert_eq!(from(Some(Native), Some("podman")).unwrap(), Some(Native));
        assert_eq!(from(None, Some("podman")).unwrap(), Some(Podman));
        assert_eq!(from(None, Some(" ")).unwrap(), Some(Docker));
        assert_eq!(from(None, None).unwrap(), Some(Docker));
        // A MOAT_RUNTIME no runtime has is refused when the run is
        // planned, with the values it may take.
        let err = from(None, Some("dokcer")).unwrap_err();
        assert!(matches!(err, PlanError::RuntimeEnv(_)), "{err}");
        assert!(err.to_string().contains("found \"dokcer\""), "{err}");
        assert!(moat_hint::Hint::hint(&err).is_some());
    }

    #[test]
    fn pre_run_hooks_wrap_the_command_and_a_missing_command_is_an_error() {
        let (dir, c) = config("hooks:\n  pre_run: make deps\n");
        let flags = RunFlags {
            command: vec!["cargo".into(), "test".into()],
            ..Default::default()
        };
        let p = plan(&dir, &flags, &c);
        assert_eq!(p.command[0], "/bin/sh");
        assert!(p.command[2].contains("make deps"));
        assert_eq!(&p.command[4..], ["cargo", "test"]);
        let err = RunPlan::from_flags(
            dir.path().to_owned(),
            &RunFlags::default(),
            Some(&c),
            None,
            false,
            None,
        );
        assert!(matches!(err, Err(PlanError::NoCommand)));
        let bad_env = RunFlags {
            command: vec!["true".into()],
            env: vec!["NOEQUALS".into()],
            ..Default::default()
        };
        assert!(
            RunPlan::from_flags(dir.path().to_owned(), &bad_env, Some(&c), None, false, None)
                .unwrap_err()
                .to_string()
                .contains("expected KEY=VALUE")
        );
    }

    #[test]
    fn port_flags_add_to_and_override_yaml_ports() {
        let (dir, c) = config("command: [\"true\"]\nports:\n  web: 3000\n  api: 4000\n");
        let flags = RunFlags {
            ports: vec!["web=8080".into(), "docs=9000".into()],
            ..Default::default()
        };
        let p = plan(&dir, &flags, &c);
        let got: Vec<(&str, u16)> = p.ports.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(got, [("api", 4000), ("docs", 9000), ("web", 8080)]);
        let bad = RunFlags {
            ports: vec!["web:3000".into()],
            ..Default::default()
        };
        let err = RunPlan::from_flags(dir.path().to_owned(), &bad, Some(&c), None, false, None);
        assert!(matches!(err, Err(PlanError::Port(_))));
    }

    #[test]
    fn no_sandbox_from_flag_environment_or_yaml() {
        let (dir, c) = config("command: [\"true\"]\n");
        let p = plan(&dir, &RunFlags::default(), &c);
        assert!(p.extra_isolation);
        let flags = RunFlags {
            no_sandbox: true,
            ..Default::default()
        };
        assert!(!plan(&dir, &flags, &c).extra_isolation);
        let p = RunPlan::from_flags(
            dir.path().to_owned(),
            &RunFlags::default(),
            Some(&c),
            None,
            true,
            None,
        )
        .unwrap();
        assert!(!p.extra_isolation);
    }

    #[test]
    fn services_are_typed_from_dependencies_and_services_must_name_one() {
        use moat_hint::Hint as _;
        let (dir, c) = config(
            "command: [\"true\"]\ndependencies: [postgres@16, git, redis]\nservices:\n  postgres:\n    wait: false\n",
        );
        let p = plan(&dir, &RunFlags::default(), &c);
        let services: Vec<(&str, Option<&str>, bool)> = p
            .services
            .iter()
            .map(|s| (s.service.name, s.version.as_deref(), s.options.wait))
            .collect();
        assert_eq!(
            services,
            [("postgres", Some("16"), false), ("redis", None, true)]
        );
        assert_eq!(p.image.dependencies, c.dependencies);

        let (dir, c) = config("command: [\"true\"]\ndependencies: [git]\nservices:\n  git: {}\n");
        let err = RunPlan::from_flags(
            dir.path().to_owned(),
            &RunFlags::default(),
            Some(&c),
            None,
            false,
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "moat.yaml services.git: git is not a service, so it has no sidecar to configure \
             (services are postgres, mysql, redis)"
        );
        assert_eq!(
            err.hint().map(|f| f.to_string()).as_deref(),
            Some("Remove services.git from moat.yaml.")
        );
    }

    #[test]
    fn a_missing_command_says_where_to_give_one() {
        use moat_hint::Hint as _;
        let (dir, c) = config("name: x\n");
        let err = RunPlan::from_flags(
            dir.path().to_owned(),
            &RunFlags::default(),
            Some(&c),
            None,
            false,
            None,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no command to run");
        assert_eq!(
            err.hint().map(|f| f.to_string()).as_deref(),
            Some("Give one after --, e.g. moat run -- echo hello, or set `command:` in moat.yaml.")
        );
    }
}
