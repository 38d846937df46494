//! `moat trace [RUN]`: a run's timeline; with `--network`, its requests
//! from `network.jsonl` (one line each, `-v` for headers and bodies,
//! `--json` for the records, `--har FILE` for browser devtools).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use moat_storage::{read_trace, Har, RunMetadata, RunStore, TraceRecord};
use serde_json::json;

use super::Context;
use crate::cli::TraceArgs;

pub fn trace(ctx: &Context, args: TraceArgs) -> Result<ExitCode> {
    let store = RunStore::new(ctx.home.clone());
    let run = store.find(args.run.as_deref(), |_| true)?;
    let dir = store.dir(&run.id);
    if !dir.is_dir() {
        return Err(crate::hints::failure(
            format!(
                "the directory of run {} is missing ({})",
                run.id,
                dir.display()
            ),
            format!("Remove the run with: moat destroy {}", run.id),
        ));
    }
    if !args.network && args.har.is_none() {
        return timeline(ctx, &run, &dir);
    }
    let path = dir.join("network.jsonl");
    let records = read_records(&path)?;
    if let Some(file) = &args.har {
        let har = Har::from_records(records.iter().map(|(_, r)| r));
        write_user_file(file, &serde_json::to_vec_pretty(&har)?)
            .with_context(|| format!("writing {}", file.display()))?;
        errln!(
            "Wrote {} request(s) of run {} to {} (HTTP Archive 1.2)",
            records.len(),
            run.id,
            file.display()
        );
        if !args.network {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if ctx.json {
        for (raw, _) in &records {
            outln!("{raw}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        outln!("No network requests recorded for run {}.", run.id);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for (_, r) in &records {
        out.push_str(&line(r));
        if ctx.verbose {
            out.push_str(&details(r));
        }
    }
    out!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The valid records (with their original text), warning about each line
/// that is not one. A missing file is no requests.
fn read_records(path: &Path) -> Result<Vec<(String, TraceRecord)>> {
    let trace = read_trace(path)?;
    for (line, note) in &trace.notes {
        errln!("Note: line {line} of {}: {note}", path.display());
    }
    for (line, why) in &trace.damaged {
        errln!(
            "Warning: skipping line {line} of {}: not a complete request record ({why})",
            path.display()
        );
    }
    Ok(trace.records)
}

fn clock(ts: &DateTime<Utc>) -> String {
    ts.format("%H:%M:%S%.3f").to_string()
}

/// `89ms`, `1.2s`.
fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{}ms", ms.round() as u64)
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// `[HH:MM:SS.mmm] METHOD URL STATUS (DUR)`, then `BLOCKED: reason` or
/// `error: ...` when it applies.
fn line(r: &TraceRecord) -> String {
    let status = r
        .status_code
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-".into());
    let mut out = format!(
        "[{}] {} {} {status} ({})",
        clock(&r.ts),
        r.method,
        r.url,
        duration(r.duration_ms)
    );
    if r.blocked() {
        let _ = write!(out, " BLOCKED: {}", r.block_reason());
    } else if let Some(e) = &r.error {
        let _ = write!(out, " error: {e}");
    }
    out.push('\n');
    out
}

fn details(r: &TraceRecord) -> String {
    let mut out = String::new();
    let headers = |out: &mut String, title: &str, h: &BTreeMap<String, String>| {
        if !h.is_empty() {
            let _ = writeln!(out, "  {title}:");
            for (k, v) in h {
                let _ = writeln!(out, "    {k}: {v}");
            }
        }
    };
    let body = |out: &mut String, title: &str, b: &Option<String>| {
        if let Some(b) = b.as_deref().filter(|b| !b.is_empty()) {
            let suffix = if r.truncated { " (truncated)" } else { "" };
            let _ = writeln!(out, "  {title}{suffix}:");
            for l in b.lines() {
                let _ = writeln!(out, "    {l}");
            }
        }
    };
    if let Some(c) = &r.credential_used {
        let _ = writeln!(out, "  Credential injected: {c}");
    }
    headers(&mut out, "Request Headers", &r.req_headers);
    body(&mut out, "Request Body", &r.req_body);
    headers(&mut out, "Response Headers", &r.resp_headers);
    body(&mut out, "Response Body", &r.resp_body);
    out
}

/// Writes a file the user named: `0600` when new, directory untouched.
fn write_user_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// The run's timeline from its metadata and audit log.
fn timeline(ctx: &Context, run: &RunMetadata, dir: &Path) -> Result<ExitCode> {
    let mut events: Vec<(DateTime<Utc>, String)> = vec![(run.created_at, "run created".into())];
    let mut requests = 0usize;
    let mut blocked = 0usize;
    let audit = dir.join(moat_audit::LOG_FILE);
    if audit.exists() {
        for (_, entry) in moat_audit::read_log(&audit)? {
            let Ok(e) = entry else { continue };
            let Ok(ts) = DateTime::parse_from_rfc3339(&e.ts) else {
                continue;
            };
            let ts = ts.with_timezone(&Utc);
            match (e.kind.as_str(), e.data["action"].as_str()) {
                ("run", Some("started")) => events.push((ts, "proxy registered".into())),
                ("run", Some("stopped")) => events.push((ts, "proxy unregistered".into())),
                ("network", _) => {
                    requests += 1;
                    if e.data["decision"] == "deny" {
                        blocked += 1;
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(t) = run.image_ready_at {
        let image = run.image.as_deref().unwrap_or("image");
        events.push((t, format!("image ready ({image})")));
    }
    if let Some(t) = run.started_at {
        events.push((t, "sandbox ready, command started".into()));
    }
    if let Some(t) = run.stopped_at {
        let what = match (run.exit_code, &run.error) {
            (_, Some(err)) => format!("run failed: {err}"),
            (Some(code), None) => format!("command exited with code {code}"),
            (None, None) => "run stopped".into(),
        };
        events.push((t, what));
    }
    events.sort_by_key(|(t, _)| *t);
    if ctx.json {
        let mut prev: Option<DateTime<Utc>> = None;
        let mut items = Vec::new();
        for (t, what) in &events {
            items.push(json!({
                "ts": t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "event": what,
                "since_previous_ms": prev.map(|p| (*t - p).num_milliseconds()),
            }));
            prev = Some(*t);
        }
        outln!(
            "{}",
            json!({"run_id": run.id.as_str(), "name": run.name, "state": run.state.to_string(),
                   "events": items, "requests": requests, "blocked": blocked})
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!("Run {} ({}), {}\n", run.name, run.id, run.state);
    let mut prev: Option<DateTime<Utc>> = None;
    for (t, what) in &events {
        let since = prev
            .map(|p| {
                format!(
                    " (+{})",
                    duration((*t - p).num_milliseconds().max(0) as f64)
                )
            })
            .unwrap_or_default();
        let _ = writeln!(out, "[{}] {what}{since}", clock(t));
        prev = Some(*t);
    }
    if let (Some(first), Some(last)) = (events.first(), events.last()) {
        let total = (last.0 - first.0).num_milliseconds().max(0) as f64;
        let _ = writeln!(
            out,
            "Total {}; {requests} request(s), {blocked} blocked. Requests: moat trace {} --network",
            duration(total),
            run.id
        );
    }
    out!("{out}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(json: &str) -> TraceRecord {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn lines_and_durations() {
        assert_eq!(duration(89.4), "89ms");
        assert_eq!(duration(1234.0), "1.2s");
        let r = record(
            r#"{"ts":"2025-01-02T03:04:05.678Z","method":"GET","url":"https://api.github.com/user","status_code":200,"duration_ms":89.2,"policy":"allow"}"#,
        );
        assert_eq!(
            line(&r),
            "[03:04:05.678] GET https://api.github.com/user 200 (89ms)\n"
        );
        let r = record(
            r#"{"ts":"2025-01-02T03:04:05.678Z","method":"CONNECT","url":"blocked.test:443","status_code":407,"duration_ms":0.1,"policy":"deny","error":"blocked by network policy","resp_body":"Moat: request blocked by network policy.\nHost \"blocked.test\" is not in the allow list.\nAdd it."}"#,
        );
        assert_eq!(
            line(&r),
            "[03:04:05.678] CONNECT blocked.test:443 407 (0ms) BLOCKED: Host \"blocked.test\" is not in the allow list.\n"
        );
    }

    #[test]
    fn damaged_lines_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("network.jsonl");
        std::fs::write(
            &path,
            "{\"ts\":\"2025-01-02T03:04:05Z\",\"method\":\"GET\",\"url\":\"u\"}\ngarbage\n{\"ts\":\"2025-01-02",
        )
        .unwrap();
        assert_eq!(read_records(&path).unwrap().len(), 1);
        assert!(read_records(&tmp.path().join("none")).unwrap().is_empty());
    }
}
