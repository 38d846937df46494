//! End-to-end tests of `moat trace` through the real binary: the request
//! list of a strict run (allowed, injected and blocked requests), details,
//! JSON, HAR, damaged trace lines, the timeline, and bad run references.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

const GH_TOKEN: &str = "ghp_traceE2eSecret0123456789abcdefghij";

struct TraceEnv(common::ProxiedEnv);

impl std::ops::Deref for TraceEnv {
    type Target = common::ProxiedEnv;
    fn deref(&self) -> &common::ProxiedEnv {
        &self.0
    }
}

impl TraceEnv {
    fn new() -> Self {
        TraceEnv(common::ProxiedEnv::new(&["api.github.com"]))
    }

    /// A strict run that makes one injected request and one blocked one.
    fn traced_run(&self) -> String {
        self.env.grant_github(GH_TOKEN);
        std::fs::write(
            self.env.dir.path().join("project/moat.yaml"),
            "name: traced\nnetwork:\n  policy: strict\n",
        )
        .unwrap();
        let script = "curl -sS -o /dev/null https://api.github.com/user -H \"Authorization: Bearer $GH_TOKEN\"; \
                      curl -sS -o /dev/null https://blocked.test/ || true";
        let out = self.run(&["run", "--grant", "github", "--", "sh", "-c", script]);
        out.success();
        let list: serde_json::Value =
            serde_json::from_str(&self.run(&["list", "--json"]).stdout).unwrap();
        list[0]["id"].as_str().unwrap().to_owned()
    }

    fn network(&self, id: &str) -> PathBuf {
        self.env
            .moat_home()
            .join("runs")
            .join(id)
            .join("network.jsonl")
    }
}

fn stable(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut l = line.to_owned();
        if l.starts_with('[') && l.get(13..14) == Some("]") {
            l.replace_range(1..13, "HH:MM:SS.mmm");
        }
        if let (Some(open), Some(close)) = (l.find(" ("), l.find(')')) {
            if close > open && l[open + 2..close].ends_with('s') {
                l.replace_range(open + 2..close, "DUR");
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}

#[test]
fn network_lines_details_json_and_har() {
    let t = TraceEnv::new();
    let id = t.traced_run();

    let out = t.run(&["trace", "--network"]);
    out.success();
    insta::assert_snapshot!(stable(&out.stdout), @r#"
    [HH:MM:SS.mmm] GET https://api.github.com/user 200 (DUR)
    [HH:MM:SS.mmm] CONNECT blocked.test:443 407 (DUR) BLOCKED: Host "blocked.test" is not in the allow list. Allow it now: moat allow traced blocked.test
    "#);

    let out = t.run(&["trace", "traced", "--network", "-v"]);
    out.success();
    assert!(
        out.stdout.contains("\n  Request Headers:\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("    authorization: [REDACTED]\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("  Response Headers:\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("  Credential injected: api.github.com\n"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(GH_TOKEN));

    let out = t.run(&["trace", &id, "--network", "--json"]);
    out.success();
    let records: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["policy"], "deny");

    let har_path = t.env.dir.path().join("run.har");
    let out = t.run(&["trace", &id, "--har", har_path.to_str().unwrap()]);
    out.success();
    assert!(out.stderr.contains("Wrote 2 request(s)"), "{}", out.stderr);
    let har: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&har_path).unwrap()).unwrap();
    assert_eq!(har["log"]["version"], "1.2");
    let entries = har["log"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["request"]["method"], "GET");
    assert_eq!(entries[0]["request"]["url"], "https://api.github.com/user");
    assert_eq!(entries[0]["response"]["status"], 200);
    assert!(entries[0]["startedDateTime"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(entries[0]["request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["value"] == "[REDACTED]"));
    assert_eq!(entries[1]["request"]["url"], "https://blocked.test:443/");

    // A garbage line and a torn last line are skipped with a warning.
    let path = t.network(&id);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("garbage\n{\"ts\":\"2025-01-0");
    std::fs::write(&path, text).unwrap();
    let out = t.run(&["trace", &id, "--network"]);
    out.success();
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    let stderr = t.env.redact(&out.stderr).replace(&id, "[RUN]");
    assert!(
        stderr.contains("Warning: skipping line 3 of [TMP]/moat/runs/[RUN]/network.jsonl: not a complete request record"),
        "{stderr}"
    );
    assert!(stderr.contains("Warning: skipping line 4 of"), "{stderr}");

    // The timeline.
    let out = t.run(&["trace"]);
    out.success();
    let text = out.stdout;
    assert!(
        text.starts_with(&format!("Run traced ({id}), stopped\n")),
        "{text}"
    );
    for event in [
        "run created",
        "proxy registered",
        "sandbox ready, command started",
        "command exited with code 0",
        "proxy unregistered",
    ] {
        assert!(
            text.contains(&format!("] {event}")),
            "{event} missing:\n{text}"
        );
    }
    assert!(text.contains("2 request(s), 1 blocked"), "{text}");
}

#[test]
fn bad_references() {
    let t = TraceEnv::new();
    let out = t.run(&["trace", "--network"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r"
    Error: no runs yet

    Start one with: moat run -- <command>
    ");
    let out = t.run(&["run", "--name", "quiet", "--", "true"]);
    out.success();
    let out = t.run(&["trace", "quiet", "--network"]);
    out.success();
    assert!(
        out.stdout
            .starts_with("No network requests recorded for run run_"),
        "{}",
        out.stdout
    );
    let out = t.run(&["trace", "run_ffffffffffff"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r#"
    Error: no run matches "run_ffffffffffff"

    List runs with: moat list
    "#);
}

/// No raw control character in `text` but the newlines of its layout.
fn assert_no_controls(text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters: {text:?}"
    );
}

/// Issue #22 (7b): a URL is the sandbox's text; a C1 CSI (U+009B) in it
/// reaches the terminal escaped, and `--json` stays the same JSON.
#[test]
fn control_characters_from_a_run_are_shown_escaped() {
    let t = TraceEnv::new();
    std::fs::write(
        t.env.dir.path().join("project/moat.yaml"),
        "network:\n  policy: strict\n",
    )
    .unwrap();
    let script =
        "curl -s -o /dev/null \"http://blocked.test/$(printf '\\302\\233')31mred\" || true";
    t.run(&["run", "--", "sh", "-c", script]).success();

    let trace = t.run(&["trace", "--network"]);
    trace.success();
    assert_no_controls(&trace.stdout);
    assert!(
        trace.stdout.contains(r"http://blocked.test/\u009b31mred"),
        "{}",
        trace.stdout
    );
    let json = t.run(&["trace", "--network", "--json"]);
    json.success();
    assert_no_controls(&json.stdout);
    let record: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(record["url"], "http://blocked.test/\u{9b}31mred");
}

/// Issue #22 (8): blocked requests with large headers, as fast as a
/// sandbox can send them, wrote gigabytes of trace. The trace stops at
/// its cap (`MOAT_MAX_TRACE_BYTES`) with one marker line, header values
/// are recorded cut, and the audit log stops growing too.
#[test]
fn the_trace_stops_at_its_cap_with_one_marker_line() {
    const CAP: u64 = 64 * 1024;
    let t = TraceEnv::new();
    std::fs::write(
        t.env.dir.path().join("project/moat.yaml"),
        "network:\n  policy: strict\n",
    )
    .unwrap();
    let script = "big=$(head -c 6000 /dev/zero | tr '\\0' a); i=0; \
                  while [ $i -lt 300 ]; do \
                  curl -s -o /dev/null -H \"X-Big: $big\" http://blocked.test/$i; i=$((i+1)); \
                  done";
    t.run_with(
        &["run", "--", "sh", "-c", script],
        &[("MOAT_MAX_TRACE_BYTES", &CAP.to_string())],
    )
    .success();
    let list: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();

    let text = std::fs::read_to_string(t.network(&id)).unwrap();
    // Near the cap: at most one record over it, never a flood.
    assert!(text.len() as u64 <= CAP + 8 * 1024, "{} bytes", text.len());
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let markers: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "trace_truncated")
        .collect();
    assert_eq!(markers.len(), 1, "{text}");
    assert_eq!(markers[0]["max_bytes"], CAP);
    assert_eq!(lines.last(), Some(markers[0]));
    // Each header value is kept to 4 KiB, with a note of what was cut.
    let big = lines[0]["req_headers"]["x-big"].as_str().unwrap();
    assert!(big.len() < 4200, "{}", big.len());
    assert!(
        big.ends_with("[moat: 1904 more bytes not recorded]"),
        "{big}"
    );

    // The audit log's share is capped alike, with one entry saying so;
    // the run's end is still recorded and the chain still verifies.
    let audit_path = t.env.moat_home().join("runs").join(&id).join("audit.jsonl");
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        audit.len() as u64 <= CAP + 8 * 1024,
        "{} bytes",
        audit.len()
    );
    let entries: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let capped: Vec<_> = entries
        .iter()
        .filter(|e| e["data"]["action"] == "capped")
        .collect();
    assert_eq!(capped.len(), 1, "{audit}");
    assert_eq!(capped[0]["data"]["max_bytes"], CAP);
    assert_eq!(entries.last().unwrap()["data"]["action"], "stopped");
    t.run(&["audit", &id]).success();

    let shown = t.run(&["trace", &id, "--network"]);
    shown.success();
    let all = format!("{}{}", shown.stdout, shown.stderr);
    assert!(
        all.contains(&format!(
            "trace truncated at {CAP} bytes (MOAT_MAX_TRACE_BYTES)"
        )),
        "{all}"
    );
}
