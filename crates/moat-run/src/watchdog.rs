//! Keeps a run's proxy daemon alive: the run supervisor checks every half
//! second that the daemon it registered with still runs. When it has died
//! (killed, crashed), a new one is started on the same port and the run
//! registered again with the same token and policy, so the sandbox's later
//! requests succeed; the gap is written to the run's trace and audit log.
//! When no daemon can be brought back within [`RESTORE_TIMEOUT`], the run
//! is stopped (SIGTERM to this process, which the supervisor forwards to
//! the sandbox) and [`Watchdog::failure`] names the cause.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use moat_daemon::lockfile::{daemon_running, read_info};
use moat_daemon::{DaemonClient, DaemonInfo, DaemonPaths, Registration, RunSpec, Secret};
use moat_home::MoatHome;

/// How often the daemon is checked.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a new daemon may take to serve the run again.
pub(crate) const RESTORE_TIMEOUT: Duration = Duration::from_secs(10);

/// The run's proxy daemon went away and no new one could serve the run.
#[derive(Debug, thiserror::Error)]
#[error(
    "the proxy daemon of run {run_id} stopped and no new one could serve it within {seconds} s \
     ({}); the run is stopped. See {}",
    last_error.as_ref().map(ToString::to_string).unwrap_or_default(),
    log.display()
)]
pub struct DaemonLost {
    /// The run.
    pub run_id: String,
    /// How long a new daemon was waited for.
    pub seconds: u64,
    /// The last attempt's error.
    pub last_error: Option<Box<moat_daemon::ClientError>>,
    /// The daemon's log.
    pub log: PathBuf,
}

/// The running check; stopped on drop.
pub(crate) struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    failure: Arc<Mutex<Option<DaemonLost>>>,
}

impl Watchdog {
    /// Watches the daemon `client` is connected to, for the run `spec`
    /// registered as `registration`; its trace is `trace`.
    pub(crate) fn start(
        home: MoatHome,
        client: &DaemonClient,
        mut spec: RunSpec,
        registration: &Registration,
        trace: Option<PathBuf>,
    ) -> Watchdog {
        spec.token = Some(Secret::new(registration.token.expose()));
        let (stop, stopped) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let state = Watch {
            paths: DaemonPaths::new(&home),
            home,
            daemon: client.info.clone(),
            port: registration.port,
            spec,
            trace,
            failure: failure.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("moat-daemon-watch".into())
            .spawn(move || state.run(&stopped))
            .map_err(|e| tracing::warn!(error = %e, "the proxy daemon will not be watched"))
            .ok();
        Watchdog {
            stop: Some(stop),
            thread,
            failure,
        }
    }

    /// Why the run had to stop, when its daemon could not be brought back
    /// (told once).
    pub(crate) fn failure(&self) -> Option<DaemonLost> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Watch {
    home: MoatHome,
    paths: DaemonPaths,
    /// The daemon the run is registered with.
    daemon: DaemonInfo,
    port: u16,
    spec: RunSpec,
    trace: Option<PathBuf>,
    failure: Arc<Mutex<Option<DaemonLost>>>,
}

impl Watch {
    fn run(mut self, stopped: &mpsc::Receiver<()>) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        loop {
            match stopped.recv_timeout(CHECK_EVERY) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.serving() {
                continue;
            }
            if let Err(cause) = self.restore(&rt, stopped) {
                tracing::error!("{cause}");
                if let Ok(mut f) = self.failure.lock() {
                    *f = Some(cause);
                }
                // The supervisor forwards it to the sandbox, then reports
                // the failure recorded above.
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::TERM,
                );
                return;
            }
        }
    }

    /// Whether the daemon the run is registered with still runs.
    fn serving(&self) -> bool {
        daemon_running(&self.paths)
            && matches!(read_info(&self.paths.lock), Ok(Some(info))
                if info.pid == self.daemon.pid && info.started_at == self.daemon.started_at)
    }

    /// Starts (or finds) a new daemon on the same port and registers the
    /// run with it again, retrying until [`RESTORE_TIMEOUT`].
    fn restore(
        &mut self,
        rt: &tokio::runtime::Runtime,
        stopped: &mpsc::Receiver<()>,
    ) -> Result<(), DaemonLost> {
        let lost_at = Utc::now();
        let start = Instant::now();
        let run_id = self.spec.run_id.clone();
        tracing::warn!(
            "the proxy daemon (pid {}) of run {run_id} stopped; starting a new one on port {}",
            self.daemon.pid,
            self.port
        );
        let mut opts = moat_daemon::StartOptions::from_env().unwrap_or_default();
        opts.port = Some(self.port);
        let mut noted = false;
        let mut last_error = None;
        // `moat allow` / `moat deny` changes outlive the daemon: the new one
        // gets them back from the run's audit log.
        let mut spec = self.spec.clone();
        if let Some(log) = &spec.audit_path {
            spec.changes = crate::policy_live::changes_in_audit_log(log);
        }
        while start.elapsed() < RESTORE_TIMEOUT {
            let attempt = rt.block_on(async {
                let client = DaemonClient::connect_or_start(&self.home, &opts).await?;
                if !noted {
                    // Before the new daemon holds the trace: nobody else
                    // writes it now.
                    self.note_in_trace(lost_at, start.elapsed());
                    noted = true;
                }
                client.register(spec.clone()).await?;
                Ok::<_, moat_daemon::ClientError>(client)
            });
            match attempt {
                Ok(client) => {
                    let gap_ms = start.elapsed().as_millis() as u64;
                    let data = serde_json::json!({
                        "action": "restarted",
                        "lost_at": lost_at.to_rfc3339_opts(SecondsFormat::Millis, true),
                        "gap_ms": gap_ms,
                        "previous_pid": self.daemon.pid,
                        "pid": client.info.pid,
                        "port": client.info.port,
                    });
                    if let Err(e) = rt.block_on(client.audit(&run_id, "daemon", data)) {
                        tracing::warn!(error = %e, "recording the daemon's restart in the audit log");
                    }
                    tracing::warn!(
                        "a new proxy daemon (pid {}) serves run {run_id} again after {gap_ms} ms; \
                         requests made meanwhile were refused",
                        client.info.pid
                    );
                    self.daemon = client.info;
                    return Ok(());
                }
                Err(e) => last_error = Some(Box::new(e)),
            }
            match stopped.recv_timeout(Duration::from_millis(300)) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
        Err(DaemonLost {
            run_id,
            seconds: RESTORE_TIMEOUT.as_secs(),
            last_error,
            log: self.paths.log.clone(),
        })
    }

    /// A line in the run's trace marking the gap.
    fn note_in_trace(&self, lost_at: chrono::DateTime<Utc>, after: Duration) {
        let Some(path) = &self.trace else {
            return;
        };
        let line = serde_json::json!({
            "ts": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            "event": "daemon_restarted",
            "lost_at": lost_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "detected_after_ms": after.as_millis() as u64,
            "previous_pid": self.daemon.pid,
            "note": "requests made while no daemon served the run were refused, not recorded",
        });
        let written = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %path.display(), "noting the daemon's restart in the trace");
        }
    }
}
