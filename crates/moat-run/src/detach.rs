//! `moat run -d`: the same command, started again without `-d` as a
//! background supervisor in its own process group, and waited for until
//! its run is recorded.
//!
//! This module owns starting that process and deciding whether it started.
//! It does not print: the caller shows the run or the child's output.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moat_home::{HomeError, MoatHome};
use moat_storage::{RunState, RunStore};

/// Set in the background process that supervises a detached run.
pub const DETACHED_CHILD: &str = "MOAT_RUN_DETACHED_CHILD";

/// How long the background supervisor may take to record its run.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How a detached start ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detached {
    /// The background run is recorded as running (or already stopped).
    Started {
        /// The run's id.
        id: String,
        /// The run's name.
        name: String,
    },
    /// The background supervisor exited before recording its run: what it
    /// wrote (its error) and its exit code, for the caller to pass on.
    Exited {
        /// Its standard output and error.
        output: String,
        /// Its exit code, 1 when killed by a signal.
        code: u8,
    },
}

/// Why the background run could not be started or waited for.
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    /// Creating the runs directory.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// Creating the file that catches the child's early output.
    #[error("creating {}", path.display())]
    Log {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// Spawning the child.
    #[error("starting the background run")]
    Spawn(#[source] std::io::Error),
    /// Sharing the log file with the child or polling the child.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The child neither recorded its run nor exited in time.
    #[error("the background run did not start within 30 seconds; see {}", log.display())]
    Timeout {
        /// The file holding what the child wrote so far.
        log: PathBuf,
    },
}

/// The arguments of the background supervisor: `args` (the command line
/// after the program name) without `-d`/`--detach`, except after `--`,
/// where they belong to the sandboxed command.
pub fn without_detach_flag(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut kept = Vec::new();
    let mut after_dashes = false;
    for arg in args {
        if !after_dashes && (arg == "-d" || arg == "--detach") {
            continue;
        }
        if arg == "--" {
            after_dashes = true;
        }
        kept.push(arg);
    }
    kept
}

/// Starts `exe args` (already without `-d`) with [`DETACHED_CHILD`] set,
/// in its own process group so the terminal's signals do not reach it,
/// and returns once a run whose supervisor is that process is recorded in
/// `home`, or once the process has exited.
pub fn detach(home: &MoatHome, exe: &Path, args: &[OsString]) -> Result<Detached, DetachError> {
    use std::os::unix::process::CommandExt as _;

    moat_home::ensure_private_dir(&home.runs_dir())?;
    // Until the run is recorded, the child's output (an early error) has
    // nowhere else to go; the file is removed once it is no longer needed.
    let log_path = home
        .runs_dir()
        .join(format!(".detach-{}.log", std::process::id()));
    let log = std::fs::File::create(&log_path).map_err(|error| DetachError::Log {
        path: log_path.clone(),
        error,
    })?;
    let mut child = Command::new(exe)
        .args(args)
        .env(DETACHED_CHILD, "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(DetachError::Spawn)?;
    let store = RunStore::new(home.clone());
    let child_pid = child.id();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // A run being written may not parse yet: try again next round.
        if let Ok((runs, _)) = store.list() {
            if let Some(run) = runs.iter().find(|r| {
                r.supervisor_pid == Some(child_pid)
                    && matches!(r.state, RunState::Running | RunState::Stopped)
            }) {
                let _ = std::fs::remove_file(&log_path);
                return Ok(Detached::Started {
                    id: run.id.to_string(),
                    name: run.name.clone(),
                });
            }
        }
        if let Some(status) = child.try_wait()? {
            let output = std::fs::read_to_string(&log_path).unwrap_or_default();
            let _ = std::fs::remove_file(&log_path);
            return Ok(Detached::Exited {
                output,
                code: status.code().unwrap_or(1).clamp(0, 255) as u8,
            });
        }
        if Instant::now() >= deadline {
            return Err(DetachError::Timeout { log: log_path });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn detach_flag_is_dropped_only_before_dashes() {
        assert_eq!(
            without_detach_flag(os(&["run", "-d", "--grant", "github", "--", "sh", "-d"])),
            os(&["run", "--grant", "github", "--", "sh", "-d"])
        );
        assert_eq!(
            without_detach_flag(os(&["run", "--detach", "--", "--detach"])),
            os(&["run", "--", "--detach"])
        );
    }

    #[test]
    fn a_child_that_exits_early_hands_back_its_output_and_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = MoatHome::at(dir.path());
        let outcome = detach(
            &home,
            Path::new("/bin/sh"),
            &os(&["-c", "echo \"marked=$MOAT_RUN_DETACHED_CHILD\" >&2; exit 3"]),
        )
        .expect("detach");
        assert_eq!(
            outcome,
            Detached::Exited {
                output: "marked=1\n".into(),
                code: 3
            }
        );
        // The log file is gone.
        let left: Vec<_> = std::fs::read_dir(home.runs_dir())
            .expect("runs dir")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
