//! The proxy daemon through the real binary: two runs with different
//! grants and policies at once, the trace, a daemon killed and restarted
//! under a run, the idle exit, and the seed's daemon errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::TestEnv;
use moat_testkit::{EchoUpstream, TestCa};

const GH_TOKEN: &str = "ghp_daemonTestSecret0123456789abcdefgh";

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Env {
    env: TestEnv,
    ca_file: std::path::PathBuf,
    upstream: EchoUpstream,
    idle: String,
}

impl Env {
    fn new(idle: &str) -> Self {
        let env = TestEnv::new();
        let ca = TestCa::new();
        let ca_file = ca.write_pem(env.dir.path());
        let upstream = EchoUpstream::start(&ca, &["api.github.com"]);
        std::fs::create_dir_all(env.dir.path().join("a")).unwrap();
        std::fs::create_dir_all(env.dir.path().join("b")).unwrap();
        Env {
            env,
            ca_file,
            upstream,
            idle: idle.to_string(),
        }
    }

    fn moat(&self, dir: &str) -> std::process::Command {
        let mut cmd = self.env.moat();
        cmd.env("MOAT_PROXY_PORT", "0")
            .env("MOAT_DAEMON_IDLE_TIMEOUT", &self.idle)
            .env("MOAT_UPSTREAM_CA_FILE", &self.ca_file)
            .env(
                "MOAT_CONNECT_TO",
                self.upstream.connect_to(&["api.github.com"]),
            )
            .current_dir(self.env.dir.path().join(dir));
        cmd
    }

    fn lock(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.env.moat_home().join("proxy/daemon.lock")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.moat("a").args(["proxy", "stop"]).output();
    }
}

/// Sends one raw HTTP request through the proxy on `port`.
fn raw_proxy_request(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn two_runs_different_grants_strict_trace_and_restart() {
    let t = Env::new("300");
    t.env.grant_github(GH_TOKEN);
    std::fs::write(
        t.env.dir.path().join("b/moat.yaml"),
        "network:\n  policy: strict\n",
    )
    .unwrap();

    // Run A (github granted) and run B (nothing granted, strict) at once;
    // each waits for a file before calling the API, so both are registered.
    let script = "while [ ! -e go ]; do sleep 0.05; done; \
        curl -sS -o /dev/null -w 'github=%{http_code}\\n' https://api.github.com/user -H 'Authorization: Bearer placeholder'; \
        curl -sS -w '\\nother=%{http_code}\\n' http://other.example.test/; \
        echo proxy=$HTTPS_PROXY";
    let a = t
        .moat("a")
        .args([
            "run", "--name", "run-a", "--grant", "github", "--", "sh", "-c", script,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = t
        .moat("b")
        .args(["run", "--name", "run-b", "--", "sh", "-c", script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("two registered runs", || {
        let out = t
            .moat("a")
            .args(["proxy", "status", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["runs"].as_array().is_some_and(|r| r.len() == 2)
    });
    std::fs::write(t.env.dir.path().join("a/go"), "").unwrap();
    std::fs::write(t.env.dir.path().join("b/go"), "").unwrap();
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    let a_out = String::from_utf8_lossy(&a.stdout);
    let b_out = String::from_utf8_lossy(&b.stdout);
    assert!(a_out.contains("github=200"), "{a_out}");
    // B is strict with no grant: api.github.com is not in its allow list.
    assert!(
        b_out.contains("github=000") || b_out.contains("github=407"),
        "{b_out}"
    );
    assert!(
        b_out.contains("Host \"other.example.test\" is not in the allow list."),
        "{b_out}"
    );

    let seen = t.upstream.requests();
    assert_eq!(seen.len(), 1, "only run A reached the upstream");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {GH_TOKEN}").as_str()),
        "run A's placeholder was replaced by the real token"
    );

    // Traces: A's shows the request with the credential redacted.
    let runs: serde_json::Value = serde_json::from_slice(
        &t.moat("a")
            .args(["list", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let id_of = |name: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let trace_a = std::fs::read_to_string(
        t.env
            .moat_home()
            .join("runs")
            .join(id_of("run-a"))
            .join("network.jsonl"),
    )
    .unwrap();
    assert!(trace_a.contains("https://api.github.com/user"));
    assert!(trace_a.contains("[REDACTED]"));
    assert!(!trace_a.contains(GH_TOKEN));
    let trace_b = std::fs::read_to_string(
        t.env
            .moat_home()
            .join("runs")
            .join(id_of("run-b"))
            .join("network.jsonl"),
    )
    .unwrap();
    assert!(trace_b.contains("\"policy\":\"deny\""), "{trace_b}");

    // Authentication: no header, and an unknown token.
    let port = t.lock()["port"].as_u64().unwrap() as u16;
    let resp = raw_proxy_request(
        port,
        "GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 407"), "{resp}");
    assert!(resp.ends_with("Proxy authentication required"), "{resp}");
    let resp = raw_proxy_request(
        port,
        "CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\nProxy-Authorization: Basic bW9hdDpub3BlCg==\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 407"), "{resp}");
    assert!(resp.ends_with("Invalid proxy token"), "{resp}");

    // A long-running run; kill the daemon under it, restart it: the run's
    // old token is refused.
    let mut c = t
        .moat("a")
        .args([
            "run", "--name", "run-c", "--", "sh", "-c",
            "while [ ! -e go2 ]; do sleep 0.05; done; curl -sS -w '\\ncode=%{http_code}\\n' http://example.test/",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("run-c registered", || {
        let out = t
            .moat("a")
            .args(["proxy", "status", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["runs"].as_array().is_some_and(|r| r.len() == 1)
    });
    let old_pid = t.lock()["pid"].as_i64().unwrap();
    std::process::Command::new("kill")
        .args(["-9", &old_pid.to_string()])
        .status()
        .unwrap();
    // Start a new daemon on the same port, as a restart would.
    let restarted = t
        .moat("a")
        .env("MOAT_PROXY_PORT", port.to_string())
        .args(["proxy", "start"])
        .output()
        .unwrap();
    assert!(
        restarted.status.success(),
        "{}",
        String::from_utf8_lossy(&restarted.stderr)
    );
    assert_ne!(t.lock()["pid"].as_i64().unwrap(), old_pid);
    std::fs::write(t.env.dir.path().join("a/go2"), "").unwrap();
    let status = c.wait().unwrap();
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success());
    assert!(out.contains("Invalid proxy token"), "{out}");
    assert!(out.contains("code=407"), "{out}");
}

#[test]
fn idle_exit_and_port_mismatch() {
    let t = Env::new("1");
    let started = t.moat("a").args(["proxy", "start"]).output().unwrap();
    assert!(started.status.success());
    let port = t.lock()["port"].as_u64().unwrap();
    let other = if port == 9 { 10 } else { 9 };
    let mismatch = t
        .moat("a")
        .env("MOAT_PROXY_PORT", other.to_string())
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(mismatch.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&mismatch.stderr),
        format!(
            "Error: proxy port mismatch: running on {port}, requested {other}\n\n\
             Either unset MOAT_PROXY_PORT, or stop all agents to restart the proxy\n"
        )
    );
    let pid = t.lock()["pid"].as_i64().unwrap();
    wait_for("idle exit", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(!t.env.moat_home().join("proxy/daemon.lock").exists());
    let status = t.moat("a").args(["proxy", "status"]).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("not running"));
}

#[test]
fn daemon_that_cannot_start_times_out_with_its_log() {
    let t = Env::new("300");
    // A "daemon" that never becomes healthy.
    let fake = t.env.dir.path().join("fake-moat");
    std::fs::write(&fake, "#!/bin/sh\nsleep 30\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = t
        .moat("a")
        .env("MOAT_EXECUTABLE", &fake)
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = t.env.redact(&String::from_utf8_lossy(&out.stderr));
    // The pid is the fake's; a live daemon's lock is never to be removed.
    let pid = stderr
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_default()
        .to_owned();
    let stderr = stderr.replace(&pid, "<pid>");
    insta::assert_snapshot!(stderr, @r"
    Error: daemon did not start within 5 seconds
    The proxy daemon (pid <pid>) is alive but has used no CPU in the last 5 s: it is stuck, not slow.

    Check its log: [TMP]/moat/proxy/daemon.log
    Stop it and retry: kill <pid>
    ");
    let _ = std::process::Command::new("pkill")
        .args(["-f", &fake.display().to_string()])
        .status();
}

/// A daemon that takes longer than any fixed deadline to start, but is
/// working all along (here: seven seconds of CPU before the real daemon,
/// as on a machine whose cores are saturated), is waited for.
#[test]
fn a_daemon_start_that_makes_progress_is_waited_for() {
    let t = Env::new("2");
    let slow = t.env.dir.path().join("slow-moat");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nend=$(( $(date +%s) + 7 ))\n\
             while [ \"$(date +%s)\" -lt \"$end\" ]; do :; done\n\
             exec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_moat")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = t
        .moat("a")
        .env("MOAT_EXECUTABLE", &slow)
        .args(["run", "--", "echo", "ran"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
}

/// Busy loops on every core, killed on drop.
struct CpuHog(Vec<std::process::Child>);

impl CpuHog {
    fn saturate() -> CpuHog {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        CpuHog(
            (0..cores * 4)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

/// The real daemon started while every core is busy with four times as
/// many busy loops: the run waits for it and succeeds.
#[test]
fn a_run_starts_its_daemon_on_a_saturated_machine() {
    let t = Env::new("2");
    let hog = CpuHog::saturate();
    let out = t
        .moat("a")
        .args(["run", "--", "echo", "ran"])
        .output()
        .unwrap();
    drop(hog);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
}

#[test]
fn stale_lock_and_socket_are_cleaned_up() {
    let t = Env::new("300");
    let dir = t.env.moat_home().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("daemon.lock"),
        r#"{"pid":999999,"port":1,"version":"0.0.0","api":1,"started_at":"2026-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("daemon.sock"), "").unwrap();
    let out = t
        .moat("a")
        .args(["run", "--", "echo", "ok"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    assert_ne!(t.lock()["pid"].as_i64().unwrap(), 999999);
}

#[test]
fn garbage_on_the_control_socket_is_refused() {
    let t = Env::new("300");
    assert!(t
        .moat("a")
        .args(["proxy", "start"])
        .output()
        .unwrap()
        .status
        .success());
    let sock = t.env.moat_home().join("proxy/daemon.sock");
    assert_eq!(
        std::fs::metadata(&sock)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );
    for garbage in [
        &b"not json\n"[..],
        b"{\"op\":\"register\",\"run\":{}}\n",
        &[0xff; 64],
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(garbage).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.is_empty() || answer.contains("\"result\":\"error\""),
            "{answer}"
        );
    }
    // Still healthy.
    let status = t.moat("a").args(["proxy", "status"]).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("running"));
}

/// `moat status` shows what each running run costs the host (moat's own
/// processes: the supervisor, the sandbox's init and helper) and what the
/// daemon holds per run; the daemon a run started is not counted in it.
#[test]
fn status_shows_each_runs_host_memory_and_the_daemons_per_run_cost() {
    let t = Env::new("300");
    for name in ["cost-1", "cost-2"] {
        let out = t
            .moat("a")
            .args(["run", "-d", "--name", name, "--", "sleep", "60"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = t.moat("a").args(["--json", "status"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = status["active_runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{status}");
    let daemon_rss = status["daemon"]["rss_bytes"].as_u64().unwrap();
    for run in runs {
        let host = run["host_overhead_bytes"].as_u64().unwrap();
        // At least the supervisor and the init, and not the daemon too.
        assert!(host > 2_000_000, "{run}");
        let difference = host.abs_diff(runs[0]["host_overhead_bytes"].as_u64().unwrap());
        assert!(
            difference < daemon_rss / 2,
            "one run counts the daemon: {status}"
        );
    }
    assert!(status["daemon"]["per_run_bytes"].is_u64(), "{status}");
    let text = t.moat("a").arg("status").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("  memory: "), "{text}");
    assert!(text.contains("MB per run (over "), "{text}");
    for name in ["cost-1", "cost-2"] {
        let _ = t.moat("a").args(["stop", name]).output();
    }
}
