//! Stopping a run from another process (`moat stop`, `moat destroy
//! --force`): ask its supervisor, insist, and remove what its runtime
//! still holds.

use std::time::{Duration, Instant};

use moat_storage::{RunMetadata, RunState, RunStore, StorageError};

/// How long the supervisor has to stop on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(10);
/// How long after SIGKILL before giving up.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// Why a run could not be stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The run's metadata names no supervisor to signal.
    #[error("run {run_id} has no supervising process recorded")]
    NoSupervisor {
        /// The run.
        run_id: String,
    },
    /// The recorded pid is not a process id.
    #[error("invalid supervisor pid in run metadata: {pid}")]
    InvalidPid {
        /// As recorded.
        pid: u32,
    },
    /// The supervisor outlived SIGKILL's grace period.
    #[error("run {run_id} did not stop; its supervisor (pid {pid}) ignores signals")]
    Ignored {
        /// The run.
        run_id: String,
        /// The supervisor.
        pid: u32,
    },
    /// Run storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl moat_hint::Hint for StopError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            StopError::NoSupervisor { run_id } => Some(moat_hint::Fix::new(format!(
                "Remove it with: moat destroy {run_id}"
            ))),
            StopError::Storage(e) => e.hint(),
            StopError::InvalidPid { .. } | StopError::Ignored { .. } => None,
        }
    }
}

/// Asks the run's supervisor to stop (SIGTERM), then insists (SIGKILL)
/// after 10 s; the run's metadata ends up `stopped` either way, and what
/// its runtime still holds for it is removed.
pub fn stop_run(store: &RunStore, run: &RunMetadata) -> Result<(), StopError> {
    let result = stop_supervisor(store, run);
    crate::drivers::remove_run_leftovers(store, run);
    result
}

fn stop_supervisor(store: &RunStore, run: &RunMetadata) -> Result<(), StopError> {
    let Some(raw) = run.supervisor_pid else {
        return Err(StopError::NoSupervisor {
            run_id: run.id.to_string(),
        });
    };
    let pid = i32::try_from(raw)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(StopError::InvalidPid { pid: raw })?;
    // Only ever signal the supervisor itself: its pid may belong to an
    // unrelated process by now (the start time tells).
    if moat_storage::supervisor_alive(run) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + GRACE;
    loop {
        let mut meta = store.load(&run.id)?;
        store.reconcile(&mut meta)?;
        if !meta.state.is_active() {
            if meta.state == RunState::Failed && meta.stopped_at.is_some() {
                // The supervisor died before recording the stop: record it.
                meta.state = RunState::Stopped;
                store.save(&meta)?;
            }
            return Ok(());
        }
        if Instant::now() >= deadline && moat_storage::supervisor_alive(&meta) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        if Instant::now() >= deadline + AFTER_KILL {
            return Err(StopError::Ignored {
                run_id: run.id.to_string(),
                pid: raw,
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Removes a run that is not active: what its runtime still holds, its
/// storage, and its snapshots' records (blobs no other run uses with
/// them). Returns what to tell about the snapshots, if any were removed.
pub fn destroy_run(
    home: &moat_home::MoatHome,
    store: &RunStore,
    run: &RunMetadata,
) -> Result<Option<String>, StorageError> {
    crate::drivers::remove_run_leftovers(store, run);
    store.remove(&run.id)?;
    Ok(moat_snapshot::forget_runs(home, [run.id.as_str()]))
}

/// Removes stopped `runs` (`moat clean`): their storage, snapshots'
/// records, worktrees (their branches stay) and every container left
/// for a run that is no longer active. Returns one line per thing done.
pub fn remove_runs(
    home: &moat_home::MoatHome,
    store: &RunStore,
    runs: &[RunMetadata],
) -> Result<Vec<String>, StorageError> {
    for r in runs {
        store.remove(&r.id)?;
    }
    let containers = crate::drivers::remove_leftovers(store);
    let mut done = vec![format!("Removed {} runs.", runs.len())];
    done.extend(moat_snapshot::forget_runs(
        home,
        runs.iter().map(|r| r.id.as_str()),
    ));
    for w in crate::worktree::clean_for_runs(home, runs) {
        done.push(format!(
            "Removed the worktree of {} (the branch stays).",
            w.branch
        ));
    }
    if containers > 0 {
        done.push(format!("Removed {containers} leftover containers."));
    }
    Ok(done)
}
