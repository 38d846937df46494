//! `moat exec` (and the errors of `moat join`) through the real binary,
//! on the native runtime and on Docker (gVisor): a command in a running
//! run's sandbox sees what the run's command sees, gets the proxy's
//! injection, passes its exit code and stdin through, and ends when the
//! run is stopped. `moat join` with a real agent is in `agents.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::ProxiedEnv;

const GH_TOKEN: &str = "ghp_execE2eSecret0123456789abcdefghijkl";

const DOCKER: &[(&str, &str)] = &[
    ("MOAT_RUNTIME", "docker"),
    (
        "MOAT_IMAGE_MAP",
        "debian:bookworm-slim=local/debian:bookworm",
    ),
];

/// Starts `moat run -d --name NAME -- sh -c '… ; sleep 120'` and waits
/// until a command exec'd into it sees the marker the run's command left
/// in its private /tmp: proof that both share one sandbox.
fn start_background(t: &ProxiedEnv, name: &str, envs: &[(&str, &str)], extra: &[&str]) -> String {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend(["--", "sh", "-c", "echo here > /tmp/marker; sleep 120"]);
    let started = t.run_with(&args, envs);
    started.success();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = t.run_with(&["exec", name, "--", "cat", "/tmp/marker"], envs);
        if out.code == Some(0) && out.stdout == "here\n" {
            return started.stdout.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the run never took a command: {}{}",
            out.stdout,
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Exit codes, stdin, not-found, the working directory and user, and the
/// confinement of the exec'd command.
fn exec_passes_codes_and_stdin(envs: &[(&str, &str)]) {
    let t = ProxiedEnv::new(&[]);
    start_background(&t, "bg", envs, &[]);

    let out = t.run_with(&["exec", "bg", "--", "sh", "-c", "exit 7"], envs);
    assert_eq!(out.code, Some(7), "{}", out.stderr);

    let mut cmd = t.moat();
    cmd.args(["exec", "bg", "--", "sh", "-c", "tr a-z A-Z; echo err >&2"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped in\n").unwrap();
    let out = common::Result::from(child.wait_with_output().unwrap());
    out.success();
    assert_eq!(out.stdout, "PIPED IN\n");
    assert_eq!(out.stderr, "err\n");

    let out = t.run_with(&["exec", "bg", "--", "no-such-command"], envs);
    assert_eq!(out.code, Some(127));
    assert!(
        out.stderr
            .contains("command not found in sandbox: no-such-command"),
        "{}",
        out.stderr
    );

    let script = "pwd; id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status";
    let out = t.run_with(&["exec", "bg", "--", "sh", "-c", script], envs);
    out.success();
    assert!(out.stdout.starts_with("/workspace\n"), "{}", out.stdout);
    assert!(!out.stdout.contains("\n0\n"), "ran as root: {}", out.stdout);
    assert!(
        out.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        out.stdout
    );
    // gVisor's /proc does not show the line; the kernel's does.
    if out.stdout.contains("NoNewPrivs") {
        assert!(out.stdout.contains("NoNewPrivs:\t1"), "{}", out.stdout);
    }

    t.run_with(&["stop", "bg"], envs).success();
}

#[test]
fn exec_runs_in_the_sandbox_with_codes_and_stdin_native() {
    exec_passes_codes_and_stdin(&[]);
}

#[test]
fn exec_runs_in_the_sandbox_with_codes_and_stdin_docker() {
    if !common::docker_available() {
        return;
    }
    exec_passes_codes_and_stdin(DOCKER);
}

#[test]
fn an_execd_command_gets_the_proxys_injection() {
    let t = ProxiedEnv::new(&["api.github.com"]);
    t.grant_github(GH_TOKEN);
    start_background(&t, "inj", &[], &["--grant", "github"]);
    let out = t.run(&[
        "exec",
        "inj",
        "--",
        "sh",
        "-c",
        "curl -sS -o /dev/null -w 'status=%{http_code}\\n' https://api.github.com/user; env",
    ]);
    out.success();
    assert!(
        out.stdout.contains("status=200"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        !out.stdout.contains(GH_TOKEN),
        "the token reached the sandbox"
    );
    let seen = t.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {GH_TOKEN}").as_str())
    );
    t.run(&["stop", "inj"]).success();
}

/// `moat stop` ends what runs in the sandbox through `moat exec`: its
/// `moat exec` returns 137 with the reason.
fn stop_ends_an_exec(envs: &[(&str, &str)]) {
    let t = ProxiedEnv::new(&[]);
    start_background(&t, "st", envs, &[]);
    let mut cmd = t.moat();
    cmd.args(["exec", "st", "--", "sleep", "300"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = r#"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f"; echo; done"#;
        let out = t.run_with(&["exec", "st", "--", "sh", "-c", list], envs);
        if out.stdout.lines().any(|l| l.trim() == "sleep 300") {
            break;
        }
        assert!(Instant::now() < deadline, "no sleep: {}", out.stdout);
        std::thread::sleep(Duration::from_millis(200));
    }
    t.run_with(&["stop", "st"], envs).success();
    let out = common::Result::from(child.wait_with_output().unwrap());
    assert_eq!(out.code, Some(137), "{}", out.stderr);
    assert!(
        out.stderr.contains("the run ended while this command ran"),
        "{}",
        out.stderr
    );
    let out = t.run_with(&["exec", "st", "--", "true"], envs);
    out.failure();
    assert!(
        out.stderr
            .contains("only a running run takes more commands"),
        "{}",
        out.stderr
    );
}

#[test]
fn stopping_the_run_ends_an_exec_native() {
    stop_ends_an_exec(&[]);
}

#[test]
fn stopping_the_run_ends_an_exec_docker() {
    if !common::docker_available() {
        return;
    }
    stop_ends_an_exec(DOCKER);
}

#[test]
fn exec_and_join_errors_say_what_to_do() {
    let t = ProxiedEnv::new(&[]);
    let out = t.run(&["exec", "nothing", "--", "true"]);
    out.failure();
    assert!(out.stderr.contains("nothing"), "{}", out.stderr);

    let id = start_background(&t, "plain", &[], &[]);
    let out = t.run(&["join", "plain", "claude", "-p", "hi"]);
    out.failure();
    insta::assert_snapshot!(out.stderr.replace(&id, "RUN_ID"), @r"
    Error: run plain (RUN_ID) runs no agent, not claude

    Run a command in it instead: moat exec plain -- COMMAND
    ");
    t.run(&["stop", "plain"]).success();
    let out = t.run(&["exec", "plain", "--", "true"]);
    out.failure();
    insta::assert_snapshot!(out.stderr.replace(&id, "RUN_ID"), @r"
    Error: run plain (RUN_ID) is stopped: only a running run takes more commands

    Start a new run instead (moat run …), or see its output with: moat logs plain
    ");
}
