//! `moat exec` and `moat join`: more commands in a run's running sandbox,
//! through its runtime's [`SandboxDriver::exec`]. They are inside
//! everything the run's command is inside (namespaces, filter, proxy,
//! policy, its token), end when the run ends, and leave it running when
//! they end.

use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moat_agents::{Agent, LaunchOptions};
use moat_sandbox::{DriverError, ExecRequest, OutputSinks, SandboxDriver, Stdio};
use moat_storage::{LogStream, LogWriter, RunMetadata, RunState, RunStore, StorageError};

/// Why a command could not be run in a run's sandbox.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The run is not running.
    #[error("run {name} ({id}) is {state}: only a running run takes more commands")]
    NotRunning {
        /// The run's name.
        name: String,
        /// Its id.
        id: String,
        /// Its state.
        state: RunState,
    },
    /// The run's runtime cannot be reached.
    #[error("cannot reach the {runtime} runtime of run {id}")]
    Runtime {
        /// The runtime, as recorded.
        runtime: String,
        /// The run.
        id: String,
        /// Why.
        #[source]
        error: DriverError,
    },
    /// `moat join` with another agent than the run's.
    #[error("run {name} ({id}) runs {}, not {asked}", .runs.as_deref().unwrap_or("no agent"))]
    OtherAgent {
        /// The run's name.
        name: String,
        /// Its id.
        id: String,
        /// The run's agent, if it has one.
        runs: Option<String>,
        /// The agent asked for.
        asked: String,
    },
    /// The joined session's log could not be made.
    #[error("cannot create the session log in {}: {error}", dir.display())]
    SessionLog {
        /// The run's directory.
        dir: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The runtime failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// Run storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl moat_hint::Hint for ExecError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            ExecError::NotRunning { name, .. } => Some(moat_hint::Fix::new(format!(
                "Start a new run instead (moat run …), or see its output with: moat logs {name}"
            ))),
            ExecError::OtherAgent { name, runs, .. } => Some(moat_hint::Fix::new(match runs {
                Some(agent) => format!("Join it with: moat join {name} {agent}"),
                None => format!("Run a command in it instead: moat exec {name} -- COMMAND"),
            })),
            ExecError::Runtime { error, .. } | ExecError::Driver(error) => error.hint(),
            ExecError::Storage(e) => e.hint(),
            ExecError::SessionLog { .. } => None,
        }
    }
}

/// `moat exec`: runs `command` in `run`'s sandbox and returns its exit
/// code (127 not found, 137 when the run ends first). `interactive`:
/// a terminal of its own when ours is one. Without it, our stdin is
/// piped in unless it is a terminal.
pub fn exec_in_run(
    store: &RunStore,
    run: &RunMetadata,
    command: Vec<String>,
    interactive: bool,
) -> Result<i32, ExecError> {
    let sinks = OutputSinks {
        stdout: Box::new(std::io::stdout()),
        stderr: Box::new(std::io::stderr()),
    };
    run_in(store, run, command, stdio(interactive), sinks)
}

/// `moat join`: a second session of `agent` in `run`'s sandbox, as
/// `opts` ask (`-p`, `-c`, `-r`). Its output is also recorded in the
/// run's `logs.<n>.jsonl` (the first free n from 1). Returns the agent's
/// exit code.
pub fn join_run(
    store: &RunStore,
    run: &RunMetadata,
    agent: &dyn Agent,
    opts: &LaunchOptions,
) -> Result<i32, ExecError> {
    let program = agent_program(run)
        .filter(|_| run.agent.as_deref() == Some(agent.name()))
        .ok_or_else(|| ExecError::OtherAgent {
            name: run.name.clone(),
            id: run.id.to_string(),
            runs: run.agent.clone(),
            asked: agent.name().to_owned(),
        })?;
    let command = agent.argv(program, opts);
    let dir = store.dir(&run.id);
    let logs = Arc::new(session_log(&dir)?);
    let logged = |inner: Box<dyn Write + Send>, stream| -> Box<dyn Write + Send> {
        Box::new(crate::supervise::LoggedOutput::new(
            inner,
            stream,
            logs.clone(),
            Arc::new(crate::protect::RefusedWriteHint::new(&[])),
        ))
    };
    let sinks = OutputSinks {
        stdout: logged(Box::new(std::io::stdout()), LogStream::Stdout),
        stderr: logged(Box::new(std::io::stderr()), LogStream::Stderr),
    };
    let interactive = opts.prompt.is_none();
    run_in(store, run, command, stdio(interactive), sinks)
}

/// Where a joined session's output goes: `logs.<n>.jsonl`, n the first
/// that does not exist yet (created here, so two joins never share one).
fn session_log(dir: &Path) -> Result<LogWriter, ExecError> {
    let fail = |error| ExecError::SessionLog {
        dir: dir.to_path_buf(),
        error,
    };
    for n in 1..10_000 {
        let path = dir.join(format!("logs.{n}.jsonl"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => return LogWriter::open(&path).map_err(fail),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(fail(e)),
        }
    }
    Err(fail(std::io::Error::other("too many joined sessions")))
}

/// The agent's executable inside, from the run's command (an agent run's
/// command is `/bin/sh -c SETUP moat-<agent> PROGRAM ARGS…`).
fn agent_program(run: &RunMetadata) -> Option<&str> {
    let agent = run.agent.as_deref()?;
    let marker = format!("moat-{agent}");
    let at = run.command.iter().position(|word| *word == marker)?;
    run.command.get(at + 1).map(String::as_str)
}

fn stdio(interactive: bool) -> Stdio {
    if interactive && std::io::stdin().is_terminal() {
        Stdio::Terminal
    } else if std::io::stdin().is_terminal() {
        // Keys typed at a terminal are not meant for a command that was
        // not asked to be interactive.
        Stdio::Detached
    } else {
        Stdio::Logged
    }
}

fn run_in(
    store: &RunStore,
    run: &RunMetadata,
    command: Vec<String>,
    stdio: Stdio,
    sinks: OutputSinks,
) -> Result<i32, ExecError> {
    let mut run = run.clone();
    store.reconcile(&mut run)?;
    if run.state != RunState::Running {
        return Err(ExecError::NotRunning {
            name: run.name.clone(),
            id: run.id.to_string(),
            state: run.state,
        });
    }
    let mut driver = crate::drivers::driver_for_run(&run).map_err(|error| ExecError::Runtime {
        runtime: run.runtime.clone(),
        id: run.id.to_string(),
        error,
    })?;
    let request = ExecRequest {
        run_id: run.id.to_string(),
        runtime_id: run.container_id.clone(),
        exec_socket: store.dir(&run.id).join(moat_storage::EXEC_SOCKET),
        command,
        stdio,
    };
    exec_and_wait(driver.as_mut(), &request, sinks)
}

fn exec_and_wait(
    driver: &mut dyn SandboxDriver,
    request: &ExecRequest,
    sinks: OutputSinks,
) -> Result<i32, ExecError> {
    let running = driver.exec(request, sinks)?;
    let forwarder =
        crate::supervise::forward_signals(running.control(), request.stdio == Stdio::Terminal);
    let code = running.wait()?;
    drop(forwarder);
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(agent: Option<&str>, command: &[&str]) -> RunMetadata {
        let mut run = RunMetadata::new(
            moat_storage::RunId::generate(),
            "r".into(),
            PathBuf::from("/w"),
            command.iter().map(|s| s.to_string()).collect(),
        );
        run.agent = agent.map(str::to_owned);
        run
    }

    #[test]
    fn the_agent_program_follows_its_marker() {
        let run = run_with(
            Some("claude"),
            &[
                "/bin/sh",
                "-c",
                "setup",
                "moat-claude",
                "/opt/claude/cli",
                "-p",
            ],
        );
        assert_eq!(agent_program(&run), Some("/opt/claude/cli"));
        assert_eq!(agent_program(&run_with(None, &["sh"])), None);
        assert_eq!(
            agent_program(&run_with(Some("codex"), &["moat-codex"])),
            None
        );
    }

    #[test]
    fn session_logs_never_share_a_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        session_log(dir.path()).expect("first");
        session_log(dir.path()).expect("second");
        assert!(dir.path().join("logs.1.jsonl").exists());
        assert!(dir.path().join("logs.2.jsonl").exists());
    }
}
