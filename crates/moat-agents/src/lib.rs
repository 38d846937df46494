//! The AI coding agents moat runs: Claude Code, Codex and Gemini CLI.
//!
//! This crate owns what is particular to each agent:
//! - its command line for a launch ([`LaunchOptions`]: a prompt, continuing
//!   or resuming a session, the model, and whether the agent's own
//!   permission prompts stay on — moat is the sandbox, so by default they
//!   are off);
//! - the configuration staged in the sandbox's home for one run
//!   ([`Agent::stage`]): onboarding and workspace-trust prompts answered,
//!   the user's own settings imported from the host minus anything that
//!   points outside the sandbox or runs host commands, MCP servers wired to
//!   moat's relay, and credential *placeholders* in the files the agent
//!   reads, so that it starts without asking for a login while the real
//!   secret stays with the proxy;
//! - which grants serve it and which npm package provides it
//!   ([`install`] finds or installs the binary for the native runtime).
//!
//! It does not run anything, hold secrets or know about runtimes: the
//! caller turns an [`AgentLaunch`] into a run.

mod claude;
mod codex;
mod gemini;
pub mod install;
mod json;
mod kept;

use std::path::{Path, PathBuf};

pub use crate::claude::Claude;
pub use crate::codex::Codex;
pub use crate::gemini::Gemini;
pub use crate::kept::{KeptState, KEPT_STATE_LIMIT};

/// One of the agents moat knows.
pub trait Agent: Sync {
    /// The command users type: `claude`, `codex`, `gemini`.
    fn name(&self) -> &'static str;
    /// The npm package that provides it.
    fn npm_package(&self) -> &'static str;
    /// The executable the package installs.
    fn binary(&self) -> &'static str;
    /// Grants that serve the agent, preferred first (a run uses the first
    /// one the user has granted).
    fn grants(&self) -> &'static [&'static str];
    /// Where the agent keeps its sessions, relative to its home (kept per
    /// workspace between runs, for `--continue` and `--resume`).
    fn sessions_dir(&self) -> &'static str;
    /// A cheap authenticated request to the agent's API for `grant`
    /// (`moat doctor`): its URL; `200` means the credential works.
    fn probe_url(&self, grant: &str) -> &'static str;
    /// The agent's own state file, kept per workspace between runs.
    fn kept_state(&self) -> Option<KeptState> {
        None
    }
    /// The command line of one session: `program` (the agent's
    /// executable inside) with the flags `opts` ask for. A second session
    /// in a running sandbox (`moat join`) uses it as is.
    fn argv(&self, program: &str, opts: &LaunchOptions) -> Vec<String>;
    /// The command line and the files of one launch.
    fn stage(
        &self,
        ctx: &StageContext<'_>,
        opts: &LaunchOptions,
    ) -> Result<AgentLaunch, AgentError>;
}

/// The launch `opts` asks of `agent`, once the options are checked
/// (`-c` and `-r` exclude each other).
pub fn launch(
    agent: &dyn Agent,
    ctx: &StageContext<'_>,
    opts: &LaunchOptions,
) -> Result<AgentLaunch, AgentError> {
    if opts.continue_last && opts.resume.is_some() {
        return Err(AgentError::ContinueAndResume);
    }
    agent.stage(ctx, opts)
}

/// Every agent, in the order `moat doctor` lists them.
pub fn all() -> [&'static dyn Agent; 3] {
    [&Claude, &Codex, &Gemini]
}

/// The agent called `name`.
pub fn by_name(name: &str) -> Option<&'static dyn Agent> {
    all().into_iter().find(|a| a.name() == name)
}

/// How the user asked the agent to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    /// `-p TEXT`: answer one prompt without a conversation, print the
    /// answer, exit with the agent's code.
    pub prompt: Option<String>,
    /// `-c`: continue the last session of this workspace.
    pub continue_last: bool,
    /// `-r ID`: resume that session.
    pub resume: Option<String>,
    /// `--noyolo`: keep the agent's own permission prompts.
    pub keep_permission_prompts: bool,
    /// `--model`.
    pub model: Option<String>,
    /// Arguments after `--`, passed through.
    pub extra_args: Vec<String>,
}

/// Where the agent runs, as seen from inside the sandbox, and what the
/// host offers it.
#[derive(Debug, Clone)]
pub struct StageContext<'a> {
    /// The agent's executable inside the sandbox (a path, or a bare name
    /// found on `PATH`).
    pub program: String,
    /// The workspace inside the sandbox (`/workspace`).
    pub workspace: &'a Path,
    /// The sandbox user's home inside the sandbox.
    pub home: &'a Path,
    /// The host user's home, to import the agent's settings from; `None`
    /// to import nothing.
    pub host_home: Option<&'a Path>,
    /// The grant the run uses for the agent (one of [`Agent::grants`]).
    pub grant: &'a str,
    /// The placeholder the sandbox holds for that grant's secret.
    pub placeholder: &'a str,
    /// Every grant of the run with its placeholder, for MCP servers that
    /// name a grant (`codex.mcp.<n>.grant`).
    pub placeholders: &'a [(String, String)],
    /// Top-level `mcp:` servers, reached through moat's relay.
    pub mcp_relays: &'a [McpRelay],
    /// The agent's own section of moat.yaml (`claude:`, `codex:`,
    /// `gemini:`), as JSON; `Null` when absent.
    pub section: &'a serde_json::Value,
}

/// An MCP server moat relays: the agent talks to `url` (moat's relay, no
/// credential), the proxy adds the credential on the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpRelay {
    /// Name in moat.yaml.
    pub name: String,
    /// The relay URL as seen from inside the sandbox.
    pub url: String,
    /// Headers the relay needs (the run's proxy authorization), not a
    /// credential of the server's.
    pub headers: Vec<(String, String)>,
}

impl McpRelay {
    fn headers_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect()
    }
}

/// What a launch needs from the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLaunch {
    /// The command line.
    pub argv: Vec<String>,
    /// Environment variables on top of the run's.
    pub env: Vec<(String, String)>,
    /// Files written into the sandbox before the agent starts.
    pub files: Vec<StagedFile>,
}

/// A file staged in the sandbox.
#[derive(Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// Absolute path inside the sandbox.
    pub path: PathBuf,
    /// Contents.
    pub contents: Vec<u8>,
    /// Permission bits (`0o600` for anything holding a placeholder).
    pub mode: u32,
}

impl std::fmt::Debug for StagedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedFile")
            .field("path", &self.path)
            .field("bytes", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// Why a launch could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's section of moat.yaml has a value of the wrong shape.
    #[error("moat.yaml: {section}.{key}: {problem}")]
    Section {
        /// `claude`, `codex`, `gemini`.
        section: &'static str,
        /// The key path within it.
        key: String,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// The user's own settings file on the host could not be used.
    #[error("{}: {problem}", path.display())]
    HostSettings {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// `-c` and `-r` together.
    #[error("--continue and --resume cannot be used together")]
    ContinueAndResume,
}

impl moat_hint::Hint for AgentError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            AgentError::HostSettings { .. } => {
                "To fix: fix or move the file, or set MOAT_SKIP_HOST_AGENT_SETTINGS=1 to start \
                 from moat's defaults."
            }
            AgentError::ContinueAndResume => "To fix: pick one.",
            AgentError::Section { .. } => return None,
        };
        Some(moat_hint::Fix::new(fix))
    }
}

fn staged(path: PathBuf, contents: impl Into<Vec<u8>>, mode: u32) -> StagedFile {
    StagedFile {
        path,
        contents: contents.into(),
        mode,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_are_found_by_name() {
        assert_eq!(by_name("codex").map(|a| a.binary()), Some("codex"));
        assert!(by_name("copilot").is_none());
        for agent in all() {
            assert!(agent.npm_package().starts_with('@'));
            assert!(!agent.grants().is_empty());
        }
    }
}
