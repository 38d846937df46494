//! Run orchestration: what happens between `moat run` and the command's
//! exit code.
//!
//! In order: resolve the user's mounts and the workspace to real paths and
//! refuse any that reach moat's or the user's secrets (`mounts.rs`: floors
//! no configuration can lower), resolve the run's grants (every missing one reported at
//! once), check MCP grants, claim the run name, record the run, register
//! it with the proxy daemon (starting the daemon if needed), build the
//! sandbox's environment and files (proxy variables with the run token,
//! the CA and a trust bundle, placeholders), the sandbox's private network
//! with transparent capture (`moat-capture`), start the SSH agent proxy for
//! SSH grants, record the run as open on its workspace (`moat-trust`:
//! what it changes there is reviewed before the next run applies it),
//! start the sandbox, stream its
//! output to the terminal and to `logs.jsonl`, forward signals, and on exit
//! unregister the run and record how it ended.
//!
//! It does not parse `moat.yaml` or flags (the binary merges them into a
//! [`RunPlan`]) and does not implement sandboxes or the proxy: it picks a
//! runtime from its table of drivers (`drivers.rs`: Docker, Podman, then
//! the native sandbox) and drives it through the `moat-sandbox` traits,
//! never asking which runtime it is; it talks to `moat-daemon` for the
//! proxy.

mod agent;
mod drivers;
mod environment;
mod gitsweep;
mod lifecycle;
mod mounts;
mod plan;
mod protect;
mod ssh;
mod supervise;
mod watchdog;

pub use crate::agent::{
    agent_cache_dir, keep_agent_state, keep_run_transcripts, plan_agent, AgentRunError,
    STAGING_IN_SANDBOX,
};
pub use crate::drivers::{
    doctor_checks, reachable_drivers, remove_leftovers, remove_run_leftovers, runtime_statuses,
    select_driver, RuntimeStatus, Selection, SelectionError,
};
pub use crate::lifecycle::{stop_run, StopError};
pub use crate::plan::{LimitsPlan, McpPlan, MountPlan, NetworkPlan, PlanError, RunFlags, RunPlan};
pub use crate::protect::{protected_now, REPOSITORY_ENTRIES};
pub use crate::ssh::{AGENT_SOCKET_IN_SANDBOX, MOAT_IN_SANDBOX};
pub use crate::supervise::{execute, RunError, RunOutcome};
pub use moat_sandbox::ImageRecipe;
