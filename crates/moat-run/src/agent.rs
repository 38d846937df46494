//! Turning a run plan into an agent's run (`moat claude`, `moat codex`,
//! `moat gemini`): the grant that serves the agent, its executable, its
//! staged home and its kept sessions. What is particular to each agent is
//! in `moat-agents`; this module knows runs.
//!
//! The staged files are written, root-owned and readable, under
//! [`STAGING_IN_SANDBOX`]; the command starts by copying them into the
//! sandbox user's home (mode 0600), where the agent may rewrite them as it
//! does, and by linking the agent's session directory to the directory kept
//! for the workspace on the host (`$XDG_STATE_HOME/moat/sessions`, outside
//! `MOAT_HOME`, which is never mounted).

use std::path::{Path, PathBuf};

use moat_agents::install::{self, AgentSource, InstallError, AGENT_DIR_IN_SANDBOX};
use moat_agents::{Agent, AgentError, LaunchOptions, McpRelay, StageContext};
use moat_credentials::{CredentialStore, GrantName, ProviderRegistry};
use moat_home::MoatHome;
use moat_sandbox::{InjectedFile, SandboxDriver};
use sha2::{Digest, Sha256};

use crate::plan::{MountPlan, RunPlan};

/// Where staged files wait inside the sandbox until the command copies
/// them into the home.
pub const STAGING_IN_SANDBOX: &str = "/etc/moat/agent-home";

/// Replaced at start by `$MOAT_PROXY` and `$MOAT_PROXY_AUTHORIZATION` in
/// the staged files (neither is known before the run is registered).
const PROXY_MARKER: &str = "__MOAT_PROXY__";
const AUTHORIZATION_MARKER: &str = "__MOAT_PROXY_AUTHORIZATION__";

/// Where the workspace's kept sessions are mounted inside.
const SESSIONS_IN_SANDBOX: &str = "/var/lib/moat/agent-sessions";

/// Where the workspace's kept agent state is mounted inside.
const STATE_IN_SANDBOX: &str = "/var/lib/moat/agent-state";

/// Why an agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentRunError {
    /// No grant serves the agent.
    #[error("{agent} needs a credential, and none is granted.")]
    NoGrant {
        /// The agent's command.
        agent: &'static str,
        /// The grants that would serve it.
        fixes: Vec<&'static str>,
    },
    /// The agent's configuration could not be staged.
    #[error(transparent)]
    Stage(#[from] AgentError),
    /// The agent's executable could not be found or installed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The providers file could not be read.
    #[error(transparent)]
    Credentials(#[from] moat_credentials::CredentialError),
    /// The run itself failed.
    #[error(transparent)]
    Run(#[from] crate::RunError),
    /// A host directory for the agent could not be made.
    #[error("cannot create {}: {error}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
}

/// Adds the agent's npm package, and Node.js to run it, to the image's
/// dependencies unless moat.yaml has them (at whatever version it asks).
fn install_in_image(image: &mut moat_sandbox::ImageRecipe, agent: &dyn Agent) {
    use moat_config::{Dependency, DependencyKind};
    let deps = &mut image.dependencies;
    let wanted = [
        (DependencyKind::Registry, "node"),
        (DependencyKind::Npm, agent.npm_package()),
    ];
    for (kind, name) in wanted {
        if !deps.iter().any(|d| d.kind == kind && d.name == name) {
            deps.push(Dependency {
                kind,
                name: name.to_owned(),
                version: None,
            });
        }
    }
}

impl moat_hint::Hint for AgentRunError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            AgentRunError::NoGrant { fixes, .. } => {
                let grants: Vec<String> =
                    fixes.iter().map(|f| format!("  moat grant {f}")).collect();
                Some(moat_hint::Fix::new(format!(
                    "To fix:\n{}\nThen run again.",
                    grants.join("\n")
                )))
            }
            // Transparent variants hide the inner error from the chain
            // of sources: they hand on its fix.
            AgentRunError::Stage(e) => e.hint(),
            AgentRunError::Install(e) => e.hint(),
            AgentRunError::Credentials(e) => e.hint(),
            AgentRunError::Run(e) => e.hint(),
            AgentRunError::Dir { .. } => None,
        }
    }
}

/// Runs `agent` with `plan` on `driver`: stages it as `opts` and its
/// moat.yaml section ask, runs it, and, for a runtime using the host's
/// programs, keeps its state and the run's transcripts for the next run.
pub fn run_agent(
    home: &MoatHome,
    driver: &mut dyn SandboxDriver,
    agent: &dyn Agent,
    opts: &LaunchOptions,
    section: &serde_json::Value,
    plan: &mut RunPlan,
) -> Result<crate::RunOutcome, AgentRunError> {
    plan_agent(home, driver, agent, opts, section, plan)?;
    let started = std::time::SystemTime::now();
    let outcome = crate::execute(home, plan, driver);
    if driver.uses_host_programs() {
        // Also after a failed run: the kept state must not keep the run's
        // token in its MCP headers.
        keep_agent_state(agent, &plan.workspace)?;
        if let Ok(done) = &outcome {
            let run_dir = home.runs_dir().join(&done.id);
            keep_run_transcripts(agent, &plan.workspace, &run_dir, started)?;
        }
    }
    Ok(outcome?)
}

/// Makes `plan` run `agent` as `opts` asks, on `driver`'s runtime, with
/// the agent's section of moat.yaml (`Null` when there is none).
pub fn plan_agent(
    home: &MoatHome,
    driver: &dyn SandboxDriver,
    agent: &dyn Agent,
    opts: &LaunchOptions,
    section: &serde_json::Value,
    plan: &mut RunPlan,
) -> Result<(), AgentRunError> {
    let grant = choose_grant(home, plan, agent)?;
    let registry = ProviderRegistry::load(&home.providers_file())?;
    let (placeholder, placeholders) = placeholders(&registry, plan, grant);
    let program = program(driver, agent, plan)?;

    // The relay's address and the run's token exist only once the run is
    // registered: the files carry markers the command replaces at start.
    let relays: Vec<McpRelay> = plan
        .mcp
        .iter()
        .map(|m| McpRelay {
            name: m.name.to_string(),
            url: format!("http://{PROXY_MARKER}/mcp/{}", m.name),
            headers: vec![("Proxy-Authorization".into(), AUTHORIZATION_MARKER.into())],
        })
        .collect();
    let sandbox_home = driver.home_in_sandbox();
    let host_home = std::env::var_os("MOAT_SKIP_HOST_AGENT_SETTINGS")
        .is_none()
        .then(user_home)
        .flatten();
    let ctx = StageContext {
        program,
        workspace: Path::new(moat_sandbox::WORKSPACE_IN_SANDBOX),
        home: &sandbox_home,
        host_home: host_home.as_deref(),
        grant,
        placeholder: &placeholder,
        placeholders: &placeholders,
        mcp_relays: &relays,
        section,
    };
    let mut launch = moat_agents::launch(agent, &ctx, opts)?;
    let kept = keep_state(driver, agent, plan, &sandbox_home, &mut launch.files)?;
    let copies = stage_files(plan, launch.files, &sandbox_home);
    let setup = setup_script(driver, agent, plan, &copies, !relays.is_empty(), kept)?;
    let mut command = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        setup,
        format!("moat-{}", agent.name()),
    ];
    command.extend(launch.argv);
    plan.command = command;
    plan.agent = Some(agent.name().to_owned());
    for (k, v) in launch.env {
        plan.env.retain(|(name, _)| name != &k);
        plan.env.push((k, v));
    }
    if !plan.grants.iter().any(|g| g.to_string() == grant) {
        plan.grants.push(GrantName::Provider(grant.to_owned()));
    }
    Ok(())
}

/// The placeholder of the agent's grant, and those of the run's provider
/// grants, by provider.
fn placeholders(
    registry: &ProviderRegistry,
    plan: &RunPlan,
    grant: &str,
) -> (String, Vec<(String, String)>) {
    let placeholder = registry
        .get(grant)
        .and_then(|p| p.placeholder.as_ref())
        .map(|p| p.value.clone())
        .unwrap_or_default();
    let placeholders: Vec<(String, String)> = plan
        .grants
        .iter()
        .filter_map(|g| match g {
            GrantName::Provider(name) => registry
                .get(name)
                .and_then(|p| p.placeholder.as_ref())
                .map(|p| (name.clone(), p.value.clone())),
            _ => None,
        })
        .collect();
    (placeholder, placeholders)
}

/// The agent's executable inside: the host's install, mounted, when the
/// runtime uses the host's programs; else installed in the image.
fn program(
    driver: &dyn SandboxDriver,
    agent: &dyn Agent,
    plan: &mut RunPlan,
) -> Result<String, AgentRunError> {
    if driver.uses_host_programs() {
        let source = locate(agent)?;
        if let AgentSource::Package { dir, .. } = &source {
            mount_over(plan, dir.clone(), AGENT_DIR_IN_SANDBOX, true);
        }
        Ok(source.program_in_sandbox().to_string_lossy().into_owned())
    } else {
        install_in_image(&mut plan.image, agent);
        Ok(agent.binary().to_owned())
    }
}

/// The agent's own state, kept per workspace where the home's files can
/// be kept (the caller's uid writes them): last run's merged under the
/// staged file, and its directory mounted.
fn keep_state(
    driver: &dyn SandboxDriver,
    agent: &dyn Agent,
    plan: &mut RunPlan,
    sandbox_home: &Path,
    files: &mut [moat_agents::StagedFile],
) -> Result<Option<moat_agents::KeptState>, AgentRunError> {
    let Some(kept) = agent.kept_state().filter(|_| driver.uses_host_programs()) else {
        return Ok(None);
    };
    let dir = workspace_dir("agent-state", agent, &plan.workspace)?;
    let staged_path = sandbox_home.join(kept.file);
    if let Some(file) = files.iter_mut().find(|f| f.path == staged_path) {
        if let (Ok(staged), Some(previous)) = (
            serde_json::from_slice::<serde_json::Value>(&file.contents),
            read_kept(&dir.join(kept_name(&kept))),
        ) {
            let merged = kept.merge(&previous, &staged);
            file.contents = serde_json::to_vec_pretty(&merged).unwrap_or(file.contents.clone());
        }
    }
    mount_over(plan, dir, STATE_IN_SANDBOX, false);
    Ok(Some(kept))
}

/// Staged files wait, readable, outside the home; the wrapper copies them
/// in as the sandbox user. Returns their paths relative to the home.
fn stage_files(
    plan: &mut RunPlan,
    files: Vec<moat_agents::StagedFile>,
    sandbox_home: &Path,
) -> Vec<PathBuf> {
    let mut copies = Vec::new();
    for file in files {
        let Ok(relative) = file.path.strip_prefix(sandbox_home) else {
            continue;
        };
        copies.push(relative.to_owned());
        plan.files.push(InjectedFile {
            path_in_sandbox: Path::new(STAGING_IN_SANDBOX).join(relative),
            contents: file.contents,
            mode: 0o644,
        });
    }
    copies
}

/// The shell the agent starts in: copy the staged home, fill in the proxy
/// markers, link the kept sessions, then run the agent (and keep its state
/// once it exits).
fn setup_script(
    driver: &dyn SandboxDriver,
    agent: &dyn Agent,
    plan: &mut RunPlan,
    copies: &[PathBuf],
    has_relays: bool,
    kept: Option<moat_agents::KeptState>,
) -> Result<String, AgentRunError> {
    let mut setup = String::from("umask 077\nmkdir -p \"$HOME\"\n");
    setup.push_str(&format!("cp -R {STAGING_IN_SANDBOX}/. \"$HOME\"/\n"));
    if has_relays {
        let files: Vec<String> = copies
            .iter()
            .map(|c| format!("\"$HOME/{}\"", c.display()))
            .collect();
        setup.push_str(&format!(
            "sed -i \"s|{PROXY_MARKER}|$MOAT_PROXY|g; s|{AUTHORIZATION_MARKER}|$MOAT_PROXY_AUTHORIZATION|g\" {}\n",
            files.join(" ")
        ));
    }
    if driver.uses_host_programs() {
        let kept = sessions_dir(agent, &plan.workspace)?;
        mount_over(plan, kept, SESSIONS_IN_SANDBOX, false);
        let link = agent.sessions_dir();
        setup.push_str(&format!(
            "mkdir -p \"$HOME/{parent}\"\nrm -rf \"$HOME/{link}\"\nln -s {SESSIONS_IN_SANDBOX} \"$HOME/{link}\"\n",
            parent = Path::new(link)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
    }
    match kept {
        // Not exec: the agent's file is kept once it exits (moat takes out
        // what it owns afterwards, see `keep_agent_state`).
        Some(kept) => {
            let name = kept_name(&kept);
            setup.push_str(&format!(
                "\"$@\"\nstatus=$?\ncp \"$HOME/{file}\" {STATE_IN_SANDBOX}/.{name}.new 2>/dev/null \\\n  && mv -f {STATE_IN_SANDBOX}/.{name}.new {STATE_IN_SANDBOX}/{name}\nexit $status",
                file = kept.file,
            ));
        }
        None => setup.push_str("exec \"$@\""),
    }
    Ok(setup)
}

/// The first of the agent's grants the run names, else the first one the
/// user has stored.
fn choose_grant(
    home: &MoatHome,
    plan: &RunPlan,
    agent: &dyn Agent,
) -> Result<&'static str, AgentRunError> {
    let named = agent
        .grants()
        .iter()
        .find(|g| plan.grants.iter().any(|p| p.to_string() == **g));
    if let Some(grant) = named {
        return Ok(grant);
    }
    let store = CredentialStore::new(home.clone(), plan.profile.clone());
    agent
        .grants()
        .iter()
        .find(|g| store.contains(g))
        .copied()
        .ok_or_else(|| AgentRunError::NoGrant {
            agent: agent.name(),
            fixes: agent.grants().to_vec(),
        })
}

/// The agent on the host's `PATH`, else in moat's cache, else installed
/// into it with npm.
fn locate(agent: &dyn Agent) -> Result<AgentSource, AgentRunError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(found) = install::find_on_path(agent, &path) {
        return Ok(found);
    }
    let cache = agent_cache_dir();
    if let Some(found) = install::find_in_cache(agent, &cache) {
        return Ok(found);
    }
    let npm = std::env::split_paths(&path)
        .map(|d| d.join("npm"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("npm"));
    Ok(install::install(agent, &cache, &npm)?)
}

/// Where moat installs agents for the native runtime.
pub fn agent_cache_dir() -> PathBuf {
    state_dir("XDG_CACHE_HOME", ".cache").join("agents")
}

/// The host directory keeping `agent`'s sessions for `workspace`.
fn sessions_dir(agent: &dyn Agent, workspace: &Path) -> Result<PathBuf, AgentRunError> {
    workspace_dir("sessions", agent, workspace)
}

/// `$XDG_STATE_HOME/moat/<kind>/<agent>/<workspace name>-<hash>`, made
/// private (0700) if missing.
fn workspace_dir(
    kind: &str,
    agent: &dyn Agent,
    workspace: &Path,
) -> Result<PathBuf, AgentRunError> {
    let digest = hex::encode(Sha256::digest(workspace.as_os_str().as_encoded_bytes()));
    let name = workspace
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = state_dir("XDG_STATE_HOME", ".local/state")
        .join(kind)
        .join(agent.name())
        .join(format!("{name}-{}", &digest[..12]));
    moat_home::ensure_private_dir(&dir).map_err(|e| AgentRunError::Dir {
        path: dir.clone(),
        error: std::io::Error::other(e.to_string()),
    })?;
    Ok(dir)
}

/// The kept file's name in the state directory.
fn kept_name(kept: &moat_agents::KeptState) -> String {
    Path::new(kept.file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state.json".to_owned())
}

/// Reads a file the sandbox wrote into the state directory: never through
/// a symbolic link (it could name any file of the caller's, e.g. a
/// registry's credentials, to be merged into the agent's view), only a
/// regular file, at most [`moat_agents::KEPT_STATE_LIMIT`] bytes.
fn read_kept(path: &Path) -> Option<Vec<u8>> {
    let (dir, name) = (path.parent()?, path.file_name()?);
    read_regular(dir, Path::new(name), moat_agents::KEPT_STATE_LIMIT as u64)
}

/// A regular file the sandbox wrote under `dir` (moat's own), at most
/// `limit` bytes, opened without following a link (nor blocking on a
/// FIFO); anything else is skipped.
fn read_regular(dir: &Path, relative: &Path, limit: u64) -> Option<Vec<u8>> {
    moat_home::read_bounded(dir, relative, limit).ok().flatten()
}

/// The most of one transcript copied into a run's directory.
const TRANSCRIPT_LIMIT: u64 = 64 << 20;

/// After an agent's run on a runtime that keeps sessions: copies the
/// session transcripts the run wrote (modified since `started`) from the
/// workspace's kept sessions into `run_dir/agent-sessions/`, so each run
/// keeps its own record. The sandbox wrote them: links and anything but
/// regular files are skipped, never followed. Returns how many were
/// copied.
pub fn keep_run_transcripts(
    agent: &dyn Agent,
    workspace: &Path,
    run_dir: &Path,
    started: std::time::SystemTime,
) -> Result<usize, AgentRunError> {
    let kept = sessions_dir(agent, workspace)?;
    let target = run_dir.join("agent-sessions");
    let since = started;
    let mut copied = 0;
    let mut pending = vec![(kept.clone(), 0usize)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() && depth < 4 {
                pending.push((path, depth + 1));
                continue;
            }
            let fresh = meta.modified().is_ok_and(|m| m >= since);
            if !meta.is_file() || !fresh || meta.len() > TRANSCRIPT_LIMIT {
                continue;
            }
            let Ok(relative) = path.strip_prefix(&kept) else {
                continue;
            };
            let Some(bytes) = read_regular(&kept, relative, TRANSCRIPT_LIMIT) else {
                continue;
            };
            let dest = target.join(relative);
            moat_home::write_private_atomic_unsynced(&dest, &bytes).map_err(|e| {
                AgentRunError::Dir {
                    path: dest.clone(),
                    error: std::io::Error::other(e.to_string()),
                }
            })?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// After an agent's run: keeps what the agent left of its own state for
/// the workspace's next run, without what moat owns (the MCP servers and
/// the run's proxy token in their headers); removes it when it is not a
/// JSON object. Nothing to do for agents that keep no state.
pub fn keep_agent_state(agent: &dyn Agent, workspace: &Path) -> Result<(), AgentRunError> {
    let Some(kept) = agent.kept_state() else {
        return Ok(());
    };
    let dir = workspace_dir("agent-state", agent, workspace)?;
    let path = dir.join(kept_name(&kept));
    let Some(written) = read_kept(&path) else {
        // Not there, or not a regular file: nothing is kept.
        let _ = std::fs::remove_file(&path);
        return Ok(());
    };
    let write = |bytes: &[u8]| {
        moat_home::write_private_atomic_unsynced(&path, bytes).map_err(|e| AgentRunError::Dir {
            path: path.clone(),
            error: std::io::Error::other(e.to_string()),
        })
    };
    match kept.scrub(&written) {
        Some(state) => write(&serde_json::to_vec_pretty(&state).unwrap_or_default()),
        None => {
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
    }
}

/// `$VAR/moat`, or `~/<fallback>/moat`.
fn state_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("moat"),
        None => user_home()
            .unwrap_or_else(std::env::temp_dir)
            .join(fallback)
            .join("moat"),
    }
}

fn user_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Mounts `source` at `target` in place of whatever the plan mounted
/// there (moat.yaml may name the same target).
fn mount_over(plan: &mut RunPlan, source: PathBuf, target: &str, read_only: bool) {
    plan.mounts.retain(|m| m.target != Path::new(target));
    plan.mounts.push(MountPlan {
        source,
        target: PathBuf::from(target),
        read_only,
        relative: false,
        exclude: Vec::new(),
    });
}
