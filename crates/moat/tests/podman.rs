//! `moat run` on the Podman runtime, through the real binary: exit codes
//! and output, credential injection with placeholders only inside, strict
//! egress blocked, permissive through the proxy, the image reused, and
//! `moat stop` removing the containers of a CLI that died. Skipped (with
//! the reason) when Podman or its copy of the local base image is
//! missing, unless MOAT_REQUIRE_PODMAN=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestEnv;
use moat_testkit::{EchoUpstream, TestCa};

const GH_TOKEN: &str = "ghp_podmanE2eSecret0123456789abcdefghij";

fn podman_available() -> bool {
    moat_testkit::require::podman()
}

struct PodmanEnv {
    env: TestEnv,
    /// A host loopback port that greets whoever connects.
    raw_port: Option<String>,
    ca_file: std::path::PathBuf,
    upstream: EchoUpstream,
}

impl PodmanEnv {
    fn new() -> Self {
        let env = TestEnv::new();
        let ca = TestCa::new();
        let ca_file = ca.write_pem(env.dir.path());
        let upstream = EchoUpstream::start(&ca, &["api.github.com"]);
        std::fs::create_dir_all(env.dir.path().join("project")).unwrap();
        PodmanEnv {
            env,
            raw_port: None,
            ca_file,
            upstream,
        }
    }

    fn project(&self) -> std::path::PathBuf {
        self.env.dir.path().join("project")
    }

    fn moat(&self) -> std::process::Command {
        let mut cmd = self.env.moat();
        cmd.env("MOAT_RUNTIME", "podman")
            .env("MOAT_PROXY_PORT", "0")
            .env("MOAT_DAEMON_IDLE_TIMEOUT", "5")
            // Podman finds `local/debian` as `localhost/local/debian`.
            .env(
                "MOAT_IMAGE_MAP",
                "debian:bookworm-slim=local/debian:bookworm",
            )
            .env("MOAT_UPSTREAM_CA_FILE", &self.ca_file)
            .env(
                "MOAT_CONNECT_TO",
                self.upstream.connect_to(&["api.github.com"]),
            )
            .current_dir(self.project());
        cmd
    }

    fn run(&self, args: &[&str]) -> common::Result {
        let mut cmd = self.moat();
        match (&self.raw_port, args.split_first()) {
            (Some(port), Some((&"run", rest))) => cmd
                .args(["run", "-e", &format!("RAW_PORT={port}")])
                .args(rest),
            _ => cmd.args(args),
        };
        common::Result::from(cmd.output().unwrap())
    }
}

impl Drop for PodmanEnv {
    fn drop(&mut self) {
        let _ = self.env.run(&["proxy", "stop"]);
    }
}

fn podman_ps(filter: &str) -> String {
    let out = std::process::Command::new("podman")
        .args(["ps", "-aq", "--no-trunc", "--filter", filter])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const PROBE: &str = r#"
  echo "token=$GH_TOKEN"
  curl -sS -o /dev/null -w "github=%{http_code}\n" https://api.github.com/user
  curl -sS -o /dev/null -w "blocked=%{http_code}\n" https://blocked.example.test/ 2>/dev/null || echo blocked=refused
  if timeout 5 bash -c "exec 3<>/dev/tcp/$RAW_HOST/$RAW_PORT && head -c1 <&3 | grep -q ." 2>/dev/null; then echo raw=connected; else echo raw=refused; fi
"#;

#[test]
fn podman_runs_inject_police_and_reuse_the_image() {
    if !podman_available() {
        return;
    }
    let mut t = PodmanEnv::new();
    t.env.grant_github(GH_TOKEN);
    // On the host's loopback, which Podman's slirp4netns network makes
    // reachable at 10.0.2.2: only the proxy's port may be.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    t.raw_port = Some(listener.local_addr().unwrap().port().to_string());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            use std::io::Write;
            let _ = (&stream).write_all(b"x");
        }
    });

    // Exit codes and both streams pass through.
    let out = t.run(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.code, Some(7), "{}", out.stderr);
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("err\n"), "{}", out.stderr);
    // No gVisor registered with Podman here: runc, and the user is told.
    assert!(
        out.stderr
            .contains("Warning: Running without gVisor reduces container isolation."),
        "{}",
        out.stderr
    );

    // Strict: the credential is injected by the proxy, the command sees a
    // placeholder only, and nothing but the proxy is reachable.
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\ngrants: [github]\n",
    )
    .unwrap();
    let strict = t.run(&["run", "-e", "RAW_HOST=10.0.2.2", "--", "bash", "-c", PROBE]);
    strict.success();
    assert!(
        strict.stdout.contains("github=200") && strict.stdout.contains("raw=refused"),
        "{}\n{}",
        strict.stdout,
        strict.stderr
    );
    assert!(
        strict.stdout.contains("blocked=407")
            || strict.stdout.contains("blocked=000")
            || strict.stdout.contains("blocked=refused"),
        "{}",
        strict.stdout
    );
    // The placeholder is what the sandbox holds; the secret is nowhere.
    assert!(
        strict.stdout.contains("token=ghp_moatPlaceholder"),
        "{}",
        strict.stdout
    );
    assert!(!strict.stdout.contains(GH_TOKEN), "{}", strict.stdout);
    assert!(!strict.stderr.contains(GH_TOKEN), "{}", strict.stderr);
    let seen = t.upstream.requests();
    assert_eq!(
        seen.last().unwrap().header("authorization"),
        Some(format!("Bearer {GH_TOKEN}").as_str())
    );

    // Permissive: every host through the proxy, still no other way out.
    std::fs::write(t.project().join("moat.yaml"), "grants: [github]\n").unwrap();
    let permissive = t.run(&["run", "-e", "RAW_HOST=10.0.2.2", "--", "bash", "-c", PROBE]);
    permissive.success();
    assert!(
        permissive.stdout.contains("github=200") && permissive.stdout.contains("raw=refused"),
        "{}\n{}",
        permissive.stdout,
        permissive.stderr
    );

    // Same inputs, same image: no build, and nothing left behind.
    let again = t.run(&["run", "--", "echo", "again"]);
    again.success();
    assert_eq!(again.stdout, "again\n");
    assert!(!again.stderr.contains("Step "), "rebuilt: {}", again.stderr);
    let list: serde_json::Value =
        serde_json::from_str(&t.env.run(&["list", "--json"]).stdout).unwrap();
    let images: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["runtime"], "podman");
            r["image"].as_str().unwrap()
        })
        .collect();
    assert!(images.windows(2).all(|w| w[0] == w[1]), "{images:?}");
    for run in list.as_array().unwrap() {
        let id = run["container_id"].as_str().unwrap();
        assert!(
            podman_ps(&format!("id={id}")).is_empty(),
            "{id} left behind"
        );
    }
}

#[test]
fn podman_containers_of_a_crashed_cli_are_removed_by_stop() {
    if !podman_available() {
        return;
    }
    let t = PodmanEnv::new();
    let mut cmd = t.moat();
    cmd.args([
        "run",
        "--name",
        "crashy",
        "--",
        "sh",
        "-c",
        "echo up; sleep 60",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let container = loop {
        let list: serde_json::Value =
            serde_json::from_str(&t.env.run(&["list", "--json"]).stdout).unwrap_or_default();
        if let Some(id) = list[0]["container_id"]
            .as_str()
            .filter(|_| list[0]["state"] == "running")
        {
            break id.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "run never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!podman_ps(&format!("id={container}")).is_empty());
    let stop = t.env.run(&["stop", "crashy"]);
    assert!(
        stop.code == Some(0) || stop.code == Some(1),
        "{}",
        stop.stderr
    );
    assert!(
        podman_ps(&format!("id={container}")).is_empty(),
        "container left behind"
    );
    // Its network guard too.
    assert!(
        podman_ps("label=moat.managed=true").is_empty(),
        "guard left behind"
    );
}

/// As on Docker: the workload's setuid and setgid files in the
/// bind-mounted workspace would run as their owner on the host; every way
/// of making one is refused.
#[test]
fn no_setuid_or_setgid_file_leaves_a_podman_container() {
    if !podman_available() {
        return;
    }
    let t = PodmanEnv::new();
    common::give_to_sandbox_user(&t.project());
    let out = t.run(&["run", "--", "sh", "-c", common::SETID_ATTACKS]);
    out.success();
    common::assert_no_setid_left(&out, &t.project(), &[t.env.dir.path()], 65534);
}
