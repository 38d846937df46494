//! Run orchestration: what happens between `moat run` and the command's
//! exit code.
//!
//! In order: resolve the user's mounts and the workspace to real paths and
//! refuse any that reach moat's or the user's secrets (`mounts.rs`: floors
//! no configuration can lower), check MCP grants, resolve the run's grants
//! (every missing one reported at once), claim the run name and record the
//! run, record it as open on its workspace (`moat-trust`: what it changes
//! there is reviewed before the next run applies it), find the workspace's
//! protected paths and create their placeholders (`protect.rs`: what the
//! host acts on later is read-only inside), register the run with the proxy
//! daemon (starting the daemon if needed), build the sandbox's environment
//! and files (proxy variables with the run token, the CA and a trust
//! bundle, placeholders), the sandbox's private network with transparent
//! capture (`moat-capture`), start the SSH agent proxy for SSH grants,
//! start the sandbox, stream its output to the terminal and to
//! `logs.jsonl` (explaining a write refused on a protected path), forward
//! signals, and on exit unregister the run, disarm the git repositories it
//! created (`gitsweep.rs`), close it on its workspace, release the
//! placeholders and record how it ended. `moat run -d` first starts that
//! same command in the background and waits for its run to be recorded
//! (`detach.rs`).
//!
//! It does not parse `moat.yaml` or flags (the binary merges them into a
//! [`RunPlan`]) and does not implement sandboxes or the proxy: it picks a
//! runtime from its table of drivers (`drivers.rs`: Docker, Podman, then
//! the native sandbox) and drives it through the `moat-sandbox` traits.
//! Services (`dependencies: [postgres]`) are `moat-sandbox` requests too:
//! the plan carries each as a [`moat_sandbox::services::ServiceRequest`],
//! turned into a sidecar with its fresh password when the run starts; a
//! driver runs it or refuses it. It talks to `moat-daemon` for the proxy.

mod agent;
mod apply;
mod detach;
mod drivers;
mod environment;
mod error;
mod exec;
mod gitsweep;
mod lifecycle;
mod mounts;
mod open;
mod overhead;
mod plan;
mod policy_live;
mod protect;
mod snapshot_triggers;
mod ssh;
mod supervise;
mod watchdog;
mod workspace;
pub mod worktree;

pub use crate::agent::{
    agent_cache_dir, keep_agent_state, keep_run_transcripts, plan_agent, run_agent, AgentRunError,
    STAGING_IN_SANDBOX,
};
pub use crate::apply::{diff_run, DiffOutcome};
pub use crate::detach::{detach, without_detach_flag, DetachError, Detached, DETACHED_CHILD};
pub use crate::drivers::{
    doctor_checks, reachable_drivers, remove_leftovers, remove_run_leftovers, runtime_statuses,
    select_driver, RuntimeStatus, Selection, SelectionError, Unavailable,
};
pub use crate::error::RunError;
pub use crate::exec::{exec_in_run, join_run, ExecError};
pub use crate::lifecycle::{destroy_run, remove_runs, stop_run, StopError};
pub use crate::open::{endpoint_url, open_in_browser, open_url, OpenError};
pub use crate::overhead::host_overhead;
pub use crate::plan::{LimitsPlan, McpPlan, MountPlan, NetworkPlan, PlanError, RunFlags, RunPlan};
pub use crate::policy_live::{live_policy, LivePolicyError, PolicyAction};
pub use crate::protect::{protected_now, protected_summary, REPOSITORY_ENTRIES};
pub use crate::ssh::{AGENT_SOCKET_IN_SANDBOX, MOAT_IN_SANDBOX};
pub use crate::supervise::{execute, RunOutcome};
pub use crate::workspace::{resolve_workspace, run_workspace, WorkspaceError};
pub use moat_policy::LiveAction;
pub use moat_sandbox::ImageRecipe;
