//! `moat trace RUN`: when the run was created, registered, ready, and how
//! it ended, from its metadata and its audit log.

use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use moat_storage::RunMetadata;
use serde_json::json;

use crate::{clock, duration};

/// One moment of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When.
    pub at: DateTime<Utc>,
    /// What happened, as the report words it.
    pub what: String,
}

/// A run's events in time order, and how many requests it made.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// The events, earliest first.
    pub events: Vec<Event>,
    /// Requests the proxy decided on.
    pub requests: usize,
    /// Of those, refused by policy.
    pub blocked: usize,
}

impl Timeline {
    /// The timeline of `run`, whose directory is `dir`. An audit log that
    /// is missing gives no proxy events; its unreadable lines are skipped
    /// (`moat audit` is where they are reported).
    pub fn of(run: &RunMetadata, dir: &Path) -> Result<Self, moat_audit::AuditError> {
        let mut timeline = Timeline {
            events: vec![Event {
                at: run.created_at,
                what: "run created".into(),
            }],
            requests: 0,
            blocked: 0,
        };
        let audit = dir.join(moat_audit::LOG_FILE);
        if audit.exists() {
            timeline.add_audit(&audit)?;
        }
        timeline.add_lifecycle(run);
        timeline.events.sort_by_key(|e| e.at);
        Ok(timeline)
    }

    fn push(&mut self, at: DateTime<Utc>, what: impl Into<String>) {
        self.events.push(Event {
            at,
            what: what.into(),
        });
    }

    /// The proxy's registration and every decision it logged.
    fn add_audit(&mut self, log: &Path) -> Result<(), moat_audit::AuditError> {
        for (_, entry) in moat_audit::read_log(log)? {
            let Ok(e) = entry else { continue };
            let Ok(ts) = DateTime::parse_from_rfc3339(&e.ts) else {
                continue;
            };
            let ts = ts.with_timezone(&Utc);
            match (e.kind.as_str(), e.data["action"].as_str()) {
                ("run", Some("started")) => self.push(ts, "proxy registered"),
                ("run", Some("stopped")) => self.push(ts, "proxy unregistered"),
                ("network", _) => {
                    self.requests += 1;
                    if e.data["decision"] == "deny" {
                        self.blocked += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The image, the command's start and the run's end, from metadata.
    fn add_lifecycle(&mut self, run: &RunMetadata) {
        if let Some(t) = run.image_ready_at {
            let image = run.image.as_deref().unwrap_or("image");
            self.push(t, format!("image ready ({image})"));
        }
        if let Some(t) = run.started_at {
            self.push(t, "sandbox ready, command started");
        }
        if let Some(t) = run.stopped_at {
            let what = match (run.exit_code, &run.error) {
                (_, Some(err)) => format!("run failed: {err}"),
                (Some(code), None) => format!("command exited with code {code}"),
                (None, None) => "run stopped".into(),
            };
            self.push(t, what);
        }
    }

    /// The `--json` form: each event with the milliseconds since the one
    /// before.
    pub fn to_json(&self, run: &RunMetadata) -> serde_json::Value {
        let mut prev: Option<DateTime<Utc>> = None;
        let mut items = Vec::new();
        for e in &self.events {
            items.push(json!({
                "ts": e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "event": e.what,
                "since_previous_ms": prev.map(|p| (e.at - p).num_milliseconds()),
            }));
            prev = Some(e.at);
        }
        json!({"run_id": run.id.as_str(), "name": run.name, "state": run.state.to_string(),
               "events": items, "requests": self.requests, "blocked": self.blocked})
    }

    /// The text form: a heading, one line per event with the time since
    /// the one before, and the totals.
    pub fn render(&self, run: &RunMetadata) -> String {
        let mut out = format!("Run {} ({}), {}\n", run.name, run.id, run.state);
        let mut prev: Option<DateTime<Utc>> = None;
        for e in &self.events {
            let since = prev
                .map(|p| format!(" (+{})", since(p, e.at)))
                .unwrap_or_default();
            let _ = writeln!(out, "[{}] {}{since}", clock(&e.at), e.what);
            prev = Some(e.at);
        }
        if let (Some(first), Some(last)) = (self.events.first(), self.events.last()) {
            let _ = writeln!(
                out,
                "Total {}; {} request(s), {} blocked. Requests: moat trace {} --network",
                since(first.at, last.at),
                self.requests,
                self.blocked,
                run.id
            );
        }
        out
    }
}

fn since(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    duration((to - from).num_milliseconds().max(0) as f64)
}
