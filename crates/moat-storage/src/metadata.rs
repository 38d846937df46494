use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::RunId;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Being set up (image, sandbox, proxy registration).
    Starting,
    /// The command is running.
    Running,
    /// The command exited, or was stopped.
    Stopped,
    /// Setup failed, or the supervising process vanished.
    Failed,
}

impl RunState {
    /// Whether the run may still have processes.
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Starting | RunState::Running)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Stopped => "stopped",
            RunState::Failed => "failed",
        })
    }
}

/// `metadata.json`: what a run is and how it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMetadata {
    /// Run id.
    pub id: RunId,
    /// Run name (unique among active runs).
    pub name: String,
    /// The project directory mounted at `/workspace`.
    pub workspace: PathBuf,
    /// The command run in the sandbox.
    pub command: Vec<String>,
    /// Grants, as named by the user.
    #[serde(default)]
    pub grants: Vec<String>,
    /// `native`, `docker` or `apple`.
    pub runtime: String,
    /// `permissive` or `strict`.
    pub policy: String,
    /// Current state.
    pub state: RunState,
    /// Whether the run was started detached.
    #[serde(default)]
    pub detached: bool,
    /// Whether the run has a terminal.
    #[serde(default)]
    pub interactive: bool,
    /// The moat process supervising the run (it owns the sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_pid: Option<u32>,
    /// When that process started, in clock ticks since boot
    /// ([`crate::process_start_time`]): with the pid it names one process,
    /// so a pid reused by an unrelated process is never taken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_start: Option<u64>,
    /// The container, for container runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The image, for container runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When the image was ready (built or found), for container runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ready_at: Option<DateTime<Utc>>,
    /// When the command started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<DateTime<Utc>>,
    /// The command's exit code (128+N for signal N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why the run failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Runtime-specific extras.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
    /// The agent the run started (`claude`, `codex`, `gemini`), for
    /// `moat join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `moat wt` / `--worktree`: the branch the run's worktree checks out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_branch: Option<String>,
    /// The worktree's directory (the run's workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_path: Option<PathBuf>,
    /// The id of the repository the worktree belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worktree_repo_id: Option<String>,
    /// `volume` when the run works on a copy-on-write copy of the
    /// workspace (`moat diff`); absent for a bind-mounted workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_mode: Option<String>,
    /// `ports:` / `--port`: endpoint name to the port inside the sandbox.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u16>,
}

impl RunMetadata {
    /// A new run in state `starting`.
    pub fn new(id: RunId, name: String, workspace: PathBuf, command: Vec<String>) -> Self {
        RunMetadata {
            id,
            name,
            workspace,
            command,
            grants: Vec::new(),
            runtime: "native".into(),
            policy: "permissive".into(),
            state: RunState::Starting,
            detached: false,
            interactive: false,
            supervisor_pid: None,
            supervisor_start: None,
            container_id: None,
            image: None,
            created_at: Utc::now(),
            image_ready_at: None,
            started_at: None,
            stopped_at: None,
            exit_code: None,
            error: None,
            extra: BTreeMap::new(),
            agent: None,
            worktree_branch: None,
            worktree_path: None,
            worktree_repo_id: None,
            workspace_mode: None,
            ports: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metadata_from_before_worktrees_still_loads() {
        let mut meta = RunMetadata::new(
            RunId::generate(),
            "a".into(),
            "/w".into(),
            vec!["true".into()],
        );
        let json = serde_json::to_string(&meta).unwrap();
        assert!(!json.contains("worktree"), "{json}");
        let old: RunMetadata = serde_json::from_str(&json).unwrap();
        assert_eq!(old.worktree_branch, None);
        meta.worktree_branch = Some("feature/a".into());
        let json = serde_json::to_string(&meta).unwrap();
        let new: RunMetadata = serde_json::from_str(&json).unwrap();
        assert_eq!(new.worktree_branch.as_deref(), Some("feature/a"));
    }
}
