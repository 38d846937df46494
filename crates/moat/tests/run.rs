//! End-to-end tests of `moat run` on the native runtime, through the real
//! binary: output and exit codes, credential injection against a local
//! "api.github.com", strict versus permissive, names, storage, lifecycle
//! commands, and what the sandbox can and cannot see.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

const GH_TOKEN: &str = "ghp_runE2eSecret0123456789abcdefghijkl";

/// A test environment whose daemon picks a free port and exits soon after
/// the test, plus a local HTTPS upstream posing as api.github.com.
struct RunEnv(common::ProxiedEnv);

impl std::ops::Deref for RunEnv {
    type Target = common::ProxiedEnv;
    fn deref(&self) -> &common::ProxiedEnv {
        &self.0
    }
}

impl RunEnv {
    fn new() -> Self {
        RunEnv(common::ProxiedEnv::new(&[
            "api.github.com",
            "api.example.com",
        ]))
    }
}

#[test]
fn echo_hello_and_exit_codes() {
    let t = RunEnv::new();
    let out = t.run(&["run", "--", "echo", "hello"]);
    out.success();
    assert_eq!(out.stdout, "hello\n");

    let out = t.run(&["run", "--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.code, Some(3));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");

    let out = t.run(&["run", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.code, Some(137));

    let out = t.run(&["run", "--", "no-such-program-xyz"]);
    assert_eq!(out.code, Some(127));
}

#[test]
fn grant_is_injected_and_never_visible_inside() {
    let t = RunEnv::new();
    t.grant_github(GH_TOKEN);
    let script = r#"
        set -e
        # The echo upstream reflects the request; keep its body out of the
        # output, which is searched for the secret below.
        curl -sS -o /dev/null -w "status=%{http_code}\n" https://api.github.com/user -H "Authorization: Bearer $GH_TOKEN"
        env
        cat /proc/*/environ 2>/dev/null | tr '\0' '\n'
        grep -rI -l "$MARKER" / --exclude-dir=proc --exclude-dir=sys 2>/dev/null || true
    "#;
    let out = t.run(&[
        "run",
        "--grant",
        "github",
        "-e",
        "MARKER=ghp_runE2eSecret",
        "--",
        "sh",
        "-c",
        script,
    ]);
    out.success();
    assert!(out.stdout.contains("status=200"), "{}", out.stdout);
    let seen = t.upstream.requests();
    assert_eq!(seen.len(), 1, "{}", out.stderr);
    assert_eq!(seen[0].path, "/user");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {GH_TOKEN}").as_str())
    );
    assert!(seen[0].header("proxy-authorization").is_none());
    // The placeholder is what the sandbox holds; the secret is nowhere.
    assert!(out.stdout.contains("GH_TOKEN=ghp_moatPlaceholder"));
    assert!(
        !out.stdout.contains(GH_TOKEN),
        "secret visible inside:\n{}",
        out.stdout
    );
    assert!(!out.stderr.contains(GH_TOKEN));

    // Nor in the run's stored files.
    for path in t.env.files() {
        if path.is_file() && !path.ends_with("key") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(GH_TOKEN.len())
                    .any(|w| w == GH_TOKEN.as_bytes()),
                "secret in {}",
                path.display()
            );
        }
    }
    let runs = t.env.moat_home().join("runs");
    let run_dir = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("run_"))
        .unwrap()
        .path();
    let trace = std::fs::read_to_string(run_dir.join("network.jsonl")).unwrap();
    assert!(trace.contains("https://api.github.com/user"), "{trace}");
    assert!(trace.contains("[REDACTED]"));
}

#[test]
fn host_secrets_are_not_visible() {
    let t = RunEnv::new();
    std::fs::create_dir_all(t.env.home().join(".ssh")).unwrap();
    std::fs::write(t.env.home().join(".ssh/id_ed25519"), "PRIVATE KEY").unwrap();
    t.env
        .run_with(&["grant", "openai"], &[("OPENAI_API_KEY", "sk-proj-x")])
        .success();
    let home = t.env.home().display().to_string();
    let moat_home = t.env.moat_home().display().to_string();
    let script = format!(
        "ls {home}/.ssh 2>&1; ls {moat_home} 2>&1; cat /root/.bashrc 2>&1; echo HOME=$HOME"
    );
    let out = t.run(&["run", "--", "sh", "-c", &script]);
    out.success();
    assert!(!out.stdout.contains("id_ed25519"), "{}", out.stdout);
    assert!(!out.stdout.contains("credentials"), "{}", out.stdout);
    assert!(out.stdout.contains("No such file or directory"));
}

#[test]
fn workspace_is_mounted_read_write() {
    let t = RunEnv::new();
    std::fs::write(t.project().join("input.txt"), "from host").unwrap();
    let out = t.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "pwd; cat input.txt; echo made > out.txt",
    ]);
    out.success();
    assert_eq!(out.stdout, "/workspace\nfrom host");
    assert_eq!(
        std::fs::read_to_string(t.project().join("out.txt")).unwrap(),
        "made\n"
    );
}

#[test]
fn strict_policy_blocks_everything_but_the_proxy() {
    let t = RunEnv::new();
    t.grant_github(GH_TOKEN);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\n  rules:\n    - api.example.com\n",
    )
    .unwrap();
    let script = format!(
        r#"
        curl -sS -o /dev/null -w "github=%{{http_code}}\n" https://api.github.com/user
        curl -sS -o /dev/null -w "example=%{{http_code}}\n" https://api.example.com/
        curl -sS -w "\nblocked=%{{http_code}}\n" https://blocked.test/
        if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo raw=connected; else echo raw=refused; fi
        "#
    );
    let out = t.run(&["run", "--grant", "github", "--", "bash", "-c", &script]);
    out.success();
    assert!(
        out.stdout.contains("github=200"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("example=200"), "{}", out.stdout);
    assert!(out.stdout.contains("raw=refused"), "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "Moat: request blocked by network policy.\nHost \"blocked.test\" is not in the allow list.\nAdd it to network.rules in moat.yaml or use policy: permissive."
        ) || out.stderr.contains("407"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    // Permissive: the sandbox's network is still its own, so the host's
    // loopback stays out of reach (tests/capture.rs covers the rest).
    std::fs::remove_file(t.project().join("moat.yaml")).unwrap();
    let script = format!(
        "if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo raw=connected; else echo raw=refused; fi"
    );
    let out = t.run(&["run", "--", "bash", "-c", &script]);
    out.success();
    assert!(out.stdout.contains("raw=refused"), "{}", out.stdout);
    drop(listener);
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn names_storage_and_lifecycle() {
    let t = RunEnv::new();
    let mut first = t
        .moat()
        .args([
            "run",
            "--name",
            "my-agent",
            "--",
            "sh",
            "-c",
            "echo started; sleep 30",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| {
        let out = t.run(&["list", "--json"]);
        out.stdout.contains("\"running\"")
    });

    let dup = t.run(&["run", "--name", "my-agent", "--", "true"]);
    dup.failure();
    assert_eq!(
        dup.stderr,
        "Error: agent \"my-agent\" is already running.\n\nUse --name to specify a different name, or stop the existing agent first\n"
    );

    let list = t.run(&["list"]);
    assert!(list.stdout.contains("my-agent"));
    assert!(list.stdout.contains("running"));

    wait_for(|| t.run(&["logs", "my-agent"]).stdout.contains("started"));

    let stop = t.run(&["stop", "my-agent"]);
    stop.success();
    let status = first.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let mut out = String::new();
    first
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "started\n");

    let json = t.run(&["list", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let run = &runs[0];
    assert_eq!(run["state"], "stopped");
    assert_eq!(run["exit_code"], 143);
    assert_eq!(run["runtime"], "native");
    let id = run["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("run_") && id.len() == 16);
    let dir = t.env.moat_home().join("runs").join(&id);
    for f in ["metadata.json", "logs.jsonl"] {
        assert!(dir.join(f).exists(), "{f}");
    }

    t.run(&["destroy", &id]).success();
    assert!(!dir.exists());
    let gone = t.run(&["logs", &id]);
    gone.failure();
    assert!(gone.stderr.contains("no run matches"));
}

#[test]
fn missing_grants_are_reported_together_before_anything_starts() {
    let t = RunEnv::new();
    let out = t.run(&[
        "run",
        "--grant",
        "github",
        "--grant",
        "anthropic",
        "--",
        "true",
    ]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r"
    Error: missing grants:
      - github: not configured
        Run: moat grant github
      - anthropic: not configured
        Run: moat grant anthropic

    Configure the grants above, then run again.
    ");
    assert!(
        !t.env.moat_home().join("runs").exists()
            || std::fs::read_dir(t.env.moat_home().join("runs"))
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().starts_with("run_"))
    );
}

#[test]
fn a_runtime_name_no_runtime_has_is_refused_before_anything_starts() {
    let t = RunEnv::new();
    let out = t.run_with(&["run", "--", "true"], &[("MOAT_RUNTIME", "dokcer")]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r#"
    Error: MOAT_RUNTIME: expected "native", "docker", "podman" or "apple", found "dokcer"

    Set MOAT_RUNTIME to native, docker, podman or apple, or unset it.
    "#);
    // A flag's value is clap's to refuse: a usage error, status 2.
    let out = t.run(&["run", "--runtime", "dokcer", "--", "true"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("invalid value 'dokcer' for '--runtime <RUNTIME>'"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_invalid_run_name_is_refused_with_the_names_it_may_take() {
    let t = RunEnv::new();
    let out = t.run(&["run", "--name", "My Agent", "--", "true"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r#"
    Error: invalid run name "My Agent"

    Use lowercase letters, digits and '-' (at most 63, starting and ending with a letter or digit): the name becomes a hostname.
    "#);
}

#[test]
fn mcp_server_without_its_grant() {
    let t = RunEnv::new();
    std::fs::write(
        t.project().join("moat.yaml"),
        "mcp:\n  - name: my-server\n    url: https://mcp.example.com/mcp\n    auth:\n      grant: mcp:my-server\n      header: Authorization\n",
    )
    .unwrap();
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r"
    Error: MCP server 'my-server' requires grant 'mcp-my-server' but it's not configured

    To fix:
      moat grant mcp my-server
    Then run again.
    ");
}

#[test]
fn detached_run_is_stopped_by_moat_stop() {
    let t = RunEnv::new();
    let out = t.run(&[
        "run",
        "-d",
        "--name",
        "bg",
        "--",
        "sh",
        "-c",
        "echo started; sleep 30",
    ]);
    out.success();
    let id = out.stdout.trim().to_string();
    assert!(id.starts_with("run_"), "{}", out.stdout);
    assert!(out.stderr.contains("in the background"), "{}", out.stderr);
    wait_for(|| t.run(&["logs", "bg"]).stdout.contains("started"));
    let json: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["state"], "running");
    assert_eq!(json[0]["detached"], true);
    t.run(&["stop", "bg"]).success();
    let json: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["state"], "stopped");
    assert_eq!(json[0]["exit_code"], 143);
}

#[test]
fn pre_run_hook_runs_first_and_can_stop_the_run() {
    let t = RunEnv::new();
    std::fs::write(
        t.project().join("moat.yaml"),
        "hooks:\n  pre_run: echo prepared > prepared.txt\n",
    )
    .unwrap();
    let out = t.run(&["run", "--", "cat", "prepared.txt"]);
    out.success();
    assert_eq!(out.stdout, "prepared\n");
    std::fs::write(t.project().join("moat.yaml"), "hooks:\n  pre_run: exit 4\n").unwrap();
    let out = t.run(&["run", "--", "echo", "never"]);
    assert_eq!(out.code, Some(4));
    assert!(!out.stdout.contains("never"));
}

#[test]
fn bad_moat_yaml_names_file_line_and_key() {
    let t = RunEnv::new();
    std::fs::write(
        t.project().join("moat.yaml"),
        "name: x\nnetwrok:\n  policy: strict\n",
    )
    .unwrap();
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    assert!(out.stderr.starts_with("Error: "), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "/project/moat.yaml:2: unknown key \"netwrok\" at top level. Did you mean \"network\"?"
        ),
        "{}",
        out.stderr
    );
}

/// `moat run -i` under a real terminal (util-linux `script` provides one):
/// the command gets its own pseudo-terminal with the caller's window size,
/// Ctrl-C typed by the user reaches it as SIGINT (exit 130), and exit codes
/// pass through.
#[test]
fn interactive_runs_get_their_own_terminal() {
    if !moat_testkit::require::script() {
        return;
    }
    let t = RunEnv::new();
    let moat = env!("CARGO_BIN_EXE_moat");
    let script = |inner: &str, keys: Option<&'static [u8]>| {
        common::under_terminal(&t.moat(), &t.project(), inner, keys)
    };

    let out = script(
        &format!(
            "stty rows 40 cols 100; {moat} run -i -- sh -c 'test -t 0 && test -t 1 && echo TERMINAL; stty size; exit 7'"
        ),
        None,
    );
    assert_eq!(out.code, Some(7), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("TERMINAL"), "{}", out.stdout);
    assert!(out.stdout.contains("40 100"), "{}", out.stdout);

    let out = script(&format!("{moat} run -i -- sleep 30"), Some(b"\x03"));
    assert_eq!(out.code, Some(130), "{}\n{}", out.stdout, out.stderr);
}
