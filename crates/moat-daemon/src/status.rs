//! `moat proxy status`: what the running daemon says about itself.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::client::{ClientError, DaemonClient};
use crate::protocol::{Request, Response, RunSummary};

/// The daemon's answer to a status request.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    /// Always true: a daemon that answers runs (the `--json` form keeps
    /// the field so a reader tells the two cases apart).
    pub running: bool,
    /// Its pid.
    pub pid: u32,
    /// Its proxy port.
    pub port: u16,
    /// Its moat version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// The runs registered with it.
    pub runs: Vec<RunSummary>,
    /// Seconds until it exits, when no run is registered.
    pub idle_exit_in_secs: Option<u64>,
    /// The routing listener's port, when it listens.
    pub routing_port: Option<u16>,
    /// Its resident memory, bytes.
    pub rss_bytes: u64,
    /// Its resident memory with no run registered, bytes.
    pub idle_rss_bytes: u64,
}

impl DaemonClient {
    /// Asks the daemon for its status.
    pub async fn status(&self) -> Result<DaemonStatus, ClientError> {
        match self.request(&Request::Status).await? {
            Response::Status {
                pid,
                port,
                version,
                started_at,
                runs,
                idle_exit_in_secs,
                routing_port,
                rss_bytes,
                idle_rss_bytes,
            } => Ok(DaemonStatus {
                running: true,
                pid,
                port,
                version,
                started_at,
                runs,
                idle_exit_in_secs,
                routing_port,
                rss_bytes,
                idle_rss_bytes,
            }),
            Response::Error { message } => Err(ClientError::Refused(message)),
            other => Err(ClientError::Unexpected(other.kind())),
        }
    }
}

impl DaemonStatus {
    /// What each registered run adds to the daemon's resident memory:
    /// its growth over the figure with no run, shared out.
    pub fn per_run_bytes(&self) -> Option<u64> {
        let runs = u64::try_from(self.runs.len()).ok().filter(|n| *n > 0)?;
        Some(self.rss_bytes.saturating_sub(self.idle_rss_bytes) / runs)
    }

    /// One line on the daemon's memory: resident, and per run when runs
    /// are registered.
    pub fn memory_line(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        match self.per_run_bytes() {
            Some(per_run) => format!(
                "{:.1} MB resident, {:.2} MB per run (over {:.1} MB with no run)",
                mb(self.rss_bytes),
                mb(per_run),
                mb(self.idle_rss_bytes)
            ),
            None => format!("{:.1} MB resident", mb(self.rss_bytes)),
        }
    }

    /// The text of `moat proxy status`, uptime counted to `now`.
    pub fn render(&self, now: DateTime<Utc>) -> String {
        let uptime = (now - self.started_at).num_seconds().max(0);
        let mut out = String::from("Proxy daemon: running\n");
        let _ = writeln!(out, "  PID:     {}", self.pid);
        let _ = writeln!(out, "  Port:    {}", self.port);
        let _ = writeln!(out, "  Version: {}", self.version);
        let _ = writeln!(out, "  Uptime:  {uptime}s");
        let _ = writeln!(out, "  Memory:  {}", self.memory_line());
        if let Some(port) = self.routing_port {
            let _ = writeln!(out, "  Index:   https://localhost:{port}/");
        }
        let _ = writeln!(out, "  Runs:    {}", self.runs.len());
        for r in &self.runs {
            let grants = if r.grants.is_empty() {
                "no grants".to_string()
            } else {
                r.grants.join(", ")
            };
            let _ = writeln!(out, "    {}  {}  {}", r.run_id, r.policy, grants);
        }
        if let Some(secs) = self.idle_exit_in_secs {
            let _ = writeln!(out, "  Idle:    exits in {secs}s unless a run starts");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn status_names_each_run_and_the_idle_exit() {
        let started: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let status = DaemonStatus {
            running: true,
            pid: 42,
            port: 8080,
            version: "0.1.0".into(),
            started_at: started,
            runs: vec![RunSummary {
                run_id: "run_abc".into(),
                policy: moat_policy::Policy::Strict,
                grants: vec![],
                registered_at: started,
            }],
            idle_exit_in_secs: Some(30),
            routing_port: Some(8081),
            rss_bytes: 30_000_000,
            idle_rss_bytes: 26_000_000,
        };
        let text = status.render(started + chrono::Duration::seconds(5));
        assert!(text.contains("  Uptime:  5s\n"), "{text}");
        assert!(
            text.contains(
                "  Memory:  30.0 MB resident, 4.00 MB per run (over 26.0 MB with no run)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  Index:   https://localhost:8081/\n"),
            "{text}"
        );
        assert!(text.contains("    run_abc  strict  no grants\n"), "{text}");
        assert!(
            text.ends_with("  Idle:    exits in 30s unless a run starts\n"),
            "{text}"
        );
    }
}
