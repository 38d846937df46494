//! End-to-end tests of a running run's live policy through the real
//! binary (native runtime): `moat allow` lets the same sandboxed process's
//! next request through without a restart, on a connection it already
//! holds too; `moat deny` blocks it again; both changes are in the audit
//! log; `moat policy` prints the policy in force and where each entry came
//! from; a blocked request's message names the `moat allow` command.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Polls `done` every 50 ms; fails after a generous bound (a hang, not a
/// timing assertion).
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sandboxed command: one bash process that curls, signals, waits for
/// the test's go-ahead, and curls again; then a Python process holding one
/// TLS connection (one CONNECT) across a `moat deny`.
const SCRIPT: &str = r#"
step() { echo "$1" > "mark-$1"; while [ ! -e "go-$1" ]; do sleep 0.05; done; }
try() { curl -sS -o /dev/null -w "$1=%{http_code}/%{http_connect}\n" https://api.example.com/ 2>/dev/null; true; }
try blocked
curl -sS http://api.example.com/ > body.txt 2>&1
if [ -e "$CONTROL" ]; then echo control=visible; else echo control=absent; fi
step 1
try allowed
step 2
try denied
step 3
"#;

/// The rest of the native test's command: one TLS connection held across
/// a `moat deny`.
const KEPT_CONNECTION: &str = r#"
python3 - <<'PY'
import base64, http.client, os, ssl, urllib.parse
proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
auth = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
conn = http.client.HTTPSConnection(proxy.hostname, proxy.port, context=ctx)
conn.set_tunnel("api.example.com", 443, headers={"Proxy-Authorization": "Basic " + auth})
def get(label):
    conn.request("GET", "/")
    r = conn.getresponse()
    r.read()
    print(f"{label}={r.status}", flush=True)
get("kept1")
open("mark-4", "w").write("4")
import time
while not os.path.exists("go-4"):
    time.sleep(0.05)
get("kept2")
PY
"#;

struct Live {
    t: common::ProxiedEnv,
    child: Option<Child>,
}

impl Live {
    fn start(yaml: &str) -> Live {
        Live::start_on(yaml, "native", &format!("{SCRIPT}{KEPT_CONNECTION}"))
    }

    fn start_on(yaml: &str, runtime: &str, script: &str) -> Live {
        let t = common::ProxiedEnv::new(&["api.example.com"]);
        std::fs::write(t.project().join("moat.yaml"), yaml).unwrap();
        if runtime != "native" {
            // The container's user writes the markers.
            common::give_to_sandbox_user(&t.project());
        }
        let control = t.env.moat_home().join("proxy").join("daemon.sock");
        let script = script.replace("$CONTROL", &control.display().to_string());
        let child = t
            .moat()
            .env("MOAT_RUNTIME", runtime)
            .env(
                "MOAT_IMAGE_MAP",
                "debian:bookworm-slim=local/debian:bookworm",
            )
            .args(["run", "--name", "web-1", "--", "bash", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Live {
            t,
            child: Some(child),
        }
    }

    fn at_mark(&mut self, n: u32) {
        let mark = self.t.project().join(format!("mark-{n}"));
        let mut exited = false;
        wait_for(&format!("mark {n}"), || {
            exited = matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))));
            mark.exists() || exited
        });
        if exited && !mark.exists() {
            let out = self.finish();
            panic!(
                "the run ended before mark {n}:\n{}\n{}",
                out.stdout, out.stderr
            );
        }
    }

    fn go(&self, n: u32) {
        std::fs::write(self.t.project().join(format!("go-{n}")), "").unwrap();
    }

    fn finish(&mut self) -> common::Result {
        let child = self.child.take().unwrap();
        common::Result::from(child.wait_with_output().unwrap())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn audit_entries(t: &common::ProxiedEnv) -> Vec<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap();
    let log = t.env.moat_home().join("runs").join(id).join("audit.jsonl");
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn allow_and_deny_change_a_running_process_s_policy_and_are_audited() {
    let mut live = Live::start("network:\n  policy: strict\n");
    live.at_mark(1);
    let body = std::fs::read_to_string(live.t.project().join("body.txt")).unwrap();
    assert_eq!(
        body,
        "Moat: request blocked by network policy.\n\
         Host \"api.example.com\" is not in the allow list.\n\
         Add it to network.rules in moat.yaml or use policy: permissive.\n\
         Or allow it for this run now: moat allow web-1 api.example.com"
    );

    let allow = live.t.run(&["allow", "web-1", "api.example.com"]);
    allow.success();
    assert!(
        allow
            .stdout
            .contains("Allowed api.example.com for run web-1"),
        "{}",
        allow.stdout
    );
    live.go(1);
    live.at_mark(2);

    let deny = live.t.run(&["deny", "web-1", "api.example.com"]);
    deny.success();
    live.go(2);
    live.at_mark(3);

    // A connection opened under the allow, kept across a deny.
    live.t.run(&["allow", "web-1", "api.example.com"]).success();
    live.go(3);
    live.at_mark(4);
    live.t.run(&["deny", "web-1", "api.example.com"]).success();
    live.go(4);

    let out = live.finish();
    out.success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "blocked=000/407",
            "control=absent",
            "allowed=200/200",
            "denied=000/407",
            "kept1=200",
            "kept2=407",
        ],
        "{}",
        out.stderr
    );

    let policy: Vec<serde_json::Value> = audit_entries(&live.t)
        .into_iter()
        .filter(|e| e["type"] == "policy" || e["kind"] == "policy")
        .collect();
    let summary: Vec<(String, String)> = policy
        .iter()
        .map(|e| {
            let d = &e["data"];
            (
                d["action"].as_str().unwrap_or_default().to_owned(),
                d["host"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let pair = |a: &str| (a.to_owned(), "api.example.com".to_owned());
    assert_eq!(
        summary,
        [pair("allow"), pair("deny"), pair("allow"), pair("deny")],
        "{policy:?}"
    );
    assert!(policy[0]["data"]["by"]
        .as_str()
        .unwrap_or_default()
        .starts_with("uid "));
    let verified = live.t.run(&["audit", "web-1"]);
    verified.success();
}

#[test]
fn policy_prints_what_is_in_force_and_where_it_came_from() {
    let mut live = Live::start(
        "network:\n  policy: strict\n  rules:\n    - api.github.com:\n        - allow GET /repos/**\n",
    );
    live.at_mark(1);
    live.t
        .run(&["allow", "web-1", "api.example.com", "GET /v1/**"])
        .success();
    live.t.run(&["deny", "web-1", "*.internal.test"]).success();
    let out = live.t.run(&["policy", "web-1"]);
    out.success();
    let id = out
        .stdout
        .split(['(', ')'])
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let redacted = regex_lite_times(&out.stdout.replace(&id, "[RUN_ID]"));
    insta::assert_snapshot!(redacted);

    let json = live.t.run(&["policy", "web-1", "--json"]);
    json.success();
    let view: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(view["policy"], "strict");
    assert_eq!(view["entries"][1]["rules"][0], "allow GET /v1/**");

    let bad = live.t.run(&["allow", "web-1", "api.example.com:8443"]);
    bad.failure();
    assert!(
        bad.stderr.contains("ports are not supported"),
        "{}",
        bad.stderr
    );
    let bad = live
        .t
        .run(&["allow", "web-1", "api.example.com", "deny GET /"]);
    bad.failure();
    assert!(
        bad.stderr.contains("says deny, but this is moat allow"),
        "{}",
        bad.stderr
    );

    for n in 1..=4 {
        live.go(n);
    }
    let _ = live.finish();
    let stopped = live.t.run(&["allow", "web-1", "api.example.com"]);
    stopped.failure();
    assert!(
        stopped.stderr.contains("is not running") && stopped.stderr.contains("network.rules"),
        "{}",
        stopped.stderr
    );
}

#[test]
fn allow_and_deny_change_a_running_docker_run_s_policy() {
    if !common::docker_available() {
        return;
    }
    allow_and_deny_in_a_container("docker");
}

#[test]
fn allow_and_deny_change_a_running_podman_run_s_policy() {
    if !moat_testkit::require::podman() {
        return;
    }
    allow_and_deny_in_a_container("podman");
}

fn allow_and_deny_in_a_container(runtime: &str) {
    let mut live = Live::start_on("network:\n  policy: strict\n", runtime, SCRIPT);
    live.at_mark(1);
    live.t.run(&["allow", "web-1", "api.example.com"]).success();
    live.go(1);
    live.at_mark(2);
    live.t.run(&["deny", "web-1", "api.example.com"]).success();
    live.go(2);
    live.at_mark(3);
    live.go(3);
    let out = live.finish();
    out.success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "blocked=000/407",
            "control=absent",
            "allowed=200/200",
            "denied=000/407"
        ],
        "{}",
        out.stderr
    );
    let body = std::fs::read_to_string(live.t.project().join("body.txt")).unwrap();
    assert!(
        body.ends_with("Or allow it for this run now: moat allow web-1 api.example.com"),
        "{body}"
    );
}

#[test]
fn changes_outlive_a_daemon_killed_under_the_run() {
    let mut live = Live::start("network:\n  policy: strict\n");
    live.at_mark(1);
    live.t.run(&["deny", "web-1", "elsewhere.test"]).success();
    live.t.run(&["allow", "web-1", "api.example.com"]).success();
    let status: serde_json::Value =
        serde_json::from_str(&live.t.run(&["proxy", "status", "--json"]).stdout).unwrap();
    let pid = status["pid"].as_u64().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    // The run's watchdog starts a new daemon and registers the run again.
    wait_for("the run served by a new daemon", || {
        let out = live.t.run(&["proxy", "status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        v["pid"].as_u64().is_some_and(|p| p != pid)
            && v["runs"].as_array().is_some_and(|r| r.len() == 1)
    });
    let policy = live.t.run(&["policy", "web-1"]);
    policy.success();
    assert!(policy.stdout.contains("2 change(s)"), "{}", policy.stdout);
    live.go(1);
    live.at_mark(2);
    live.t.run(&["deny", "web-1", "api.example.com"]).success();
    for n in 2..=4 {
        live.go(n);
    }
    let out = live.finish();
    let lines: Vec<&str> = out.stdout.lines().take(4).collect();
    assert_eq!(
        lines,
        [
            "blocked=000/407",
            "control=absent",
            "allowed=200/200",
            "denied=000/407"
        ],
        "{}",
        out.stderr
    );
}

/// `2026-12-07T23:40:00Z` becomes `[TIME]`.
fn regex_lite_times(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(" at 20") {
        out.push_str(&rest[..i + 4]);
        let after = &rest[i + 4..];
        let end = after.find('Z').map(|z| z + 1).unwrap_or(0);
        out.push_str("[TIME]");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}
