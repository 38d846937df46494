//! Keeps `docs/troubleshooting.md` honest: each test provokes an error
//! through the real binary and checks that the page shows exactly what the
//! binary printed (home directories, run ids and ports normalised as the
//! page explains), under the heading it belongs to. Every heading of the
//! page must be either provoked here or listed in `NOT_PROVOKED` with the
//! reason, so a new entry cannot slip in unchecked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Headings checked by the tests below.
const PROVOKED: &[&str] = &[
    "Proxy authentication required (407)",
    "Invalid proxy token (407)",
    "request blocked by network policy (407)",
    "only a running run's policy can change",
    "refused to send the credential over plain HTTP (403)",
    "upstream sent no response (504)",
    "is an address of the host machine (403)",
    "building image with dependencies",
    "MCP server may not use grant",
    "the secret contains a control character or whitespace",
    "proxy port mismatch",
    "credential not found: <provider>",
    "missing grants",
    "decrypting credential for <provider>",
    "no secret found, and prompting is disabled",
    "invalid token (401 Unauthorized) (GitHub)",
    "MCP server requires grant but it's not configured",
    "key file has insecure permissions",
    "Docker runtime requested but not available",
    "Podman runtime requested but not available",
    "Apple containers are only available on macOS",
    "agent is already running",
    "run is already active in the worktree",
    "daemon did not start within 5 seconds",
    "moat.yaml: unknown key",
    "moat has no build trigger",
    "no run matches",
    "damaged network trace lines",
    "has no audit log",
    "VERDICT: [FAIL] TAMPERED",
    "SSH grants require SSH_AUTH_SOCK to be set",
    "no SSH keys configured for hosts",
    "Claude Code token has expired",
    "invalid API key (Anthropic)",
    "registering run with proxy daemon",
    "connecting to daemon",
    "gVisor (runsc) is required but not available",
    "no host key known for <host>",
    "the SSH agent holds several keys",
    "moat.yaml changed while a run had the workspace mounted",
    "moat never mounts it into a sandbox",
    "exclude … is, or passes through, a symbolic link",
    "cannot map the ownership of the workspace for the sandbox",
    "service failed to become ready",
    "service provisioning failed",
    "services need a container runtime",
    "Read-only file system (or Is a directory) on .git/hooks, .vscode, .claude, .envrc…",
    "the run created the git repository … what in it would run programs on the host was disabled",
    "is mounted by active run: restoring in place would change files under it",
];

/// Headings not provoked here, and why.
const NOT_PROVOKED: &[(&str, &str)] = &[
    (
        "a remote added inside the sandbox is gone afterwards",
        "no message: the remote is absent on the host (tests/workspace_floors.rs checks it)",
    ),
    (
        "SSH grants under gVisor need runsc to open host Unix sockets",
        "needs a runsc registered without --host-uds=open; .ci/run registers it with",
    ),
    (
        "certificate verify failed / x509: certificate signed by unknown authority",
        "printed by the tool inside the sandbox, not by moat",
    ),
    (
        "HTTP client ignoring proxy",
        "a client's behaviour, no moat message",
    ),
    (
        "native sandbox not available",
        "needs user namespaces disabled",
    ),
];

fn page() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/troubleshooting.md"
    ))
    .unwrap()
}

/// The page's text under `### heading`, up to the next heading.
fn section(heading: &str) -> String {
    let page = page();
    let start = page
        .find(&format!("\n### {heading}\n"))
        .unwrap_or_else(|| panic!("docs/troubleshooting.md has no heading {heading:?}"));
    let rest = &page[start + 1..];
    let end = rest[4..]
        .find("\n## ")
        .into_iter()
        .chain(rest[4..].find("\n### "))
        .min()
        .map_or(rest.len(), |e| e + 4);
    rest[..end].to_owned()
}

/// Asserts the section shows `message` as a whole code block.
fn documented(heading: &str, message: &str) {
    assert!(PROVOKED.contains(&heading), "add {heading:?} to PROVOKED");
    let block = format!("```\n{}\n```", message.trim_end_matches('\n'));
    let section = section(heading);
    assert!(
        section.contains(&block),
        "docs/troubleshooting.md, section {heading:?}, must show exactly:\n{block}\n\nIt has:\n{section}"
    );
}

struct Env(common::ProxiedEnv);

impl std::ops::Deref for Env {
    type Target = common::ProxiedEnv;
    fn deref(&self) -> &common::ProxiedEnv {
        &self.0
    }
}

impl Env {
    fn new() -> Self {
        Env(common::ProxiedEnv::new(&["api.github.com"]))
    }

    /// As the page writes it: `~/.moat`, `~`, `/path/to/project`,
    /// `<run-id>`.
    fn normalize(&self, text: &str) -> String {
        let text = text
            .replace(&self.env.moat_home().display().to_string(), "~/.moat")
            .replace(&self.env.home().display().to_string(), "~")
            .replace(&self.project().display().to_string(), "/path/to/project");
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("run_") {
            let id = rest.get(i + 4..i + 16).unwrap_or_default();
            out.push_str(&rest[..i]);
            if id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push_str("<run-id>");
                rest = &rest[i + 16..];
            } else {
                out.push_str("run_");
                rest = &rest[i + 4..];
            }
        }
        out.push_str(rest);
        out
    }

    fn grant_github(&self, status: u16) -> common::Result {
        let api = common::FakeApi::start(move |_| (status, r#"{"login":"octocat"}"#.into()));
        self.env.run_with(
            &["grant", "github"],
            &[
                ("GITHUB_TOKEN", "ghp_docsE2eSecret0123456789abcdefghijkl"),
                ("MOAT_GITHUB_API_URL", &api.url),
            ],
        )
    }

    fn daemon_port(&self) -> u16 {
        self.run(&["proxy", "start"]).success();
        let lock = std::fs::read_to_string(self.env.moat_home().join("proxy/daemon.lock")).unwrap();
        let lock: serde_json::Value = serde_json::from_str(&lock).unwrap();
        u16::try_from(lock["port"].as_u64().unwrap()).unwrap()
    }
}

fn raw_body(port: u16, extra_header: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "GET http://example.test/ HTTP/1.1\r\nHost: example.test\r\n{extra_header}Connection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn every_heading_is_provoked_or_explained() {
    let page = page();
    for line in page.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            assert!(
                PROVOKED.contains(&heading) || NOT_PROVOKED.iter().any(|(h, _)| *h == heading),
                "heading {heading:?} is neither provoked nor in NOT_PROVOKED"
            );
        }
    }
    for heading in PROVOKED.iter().chain(NOT_PROVOKED.iter().map(|(h, _)| h)) {
        section(heading);
    }
}

#[test]
fn proxy_errors() {
    let t = Env::new();
    let port = t.daemon_port();
    documented("Proxy authentication required (407)", &raw_body(port, ""));
    documented(
        "Invalid proxy token (407)",
        &raw_body(port, "Proxy-Authorization: Bearer not-a-run-token\r\n"),
    );

    let other = if port == 9 { 10 } else { 9 };
    let out = t.run_with(
        &["run", "--", "true"],
        &[("MOAT_PROXY_PORT", &other.to_string())],
    );
    out.failure();
    let text = out
        .stderr
        .replace(&format!("running on {port}"), "running on 8080")
        .replace(&format!("requested {other}"), "requested 9000");
    documented("proxy port mismatch", &text);

    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\n",
    )
    .unwrap();
    let out = t.run(&[
        "run",
        "--name",
        "my-agent",
        "--",
        "curl",
        "-sS",
        "http://blocked.test/",
    ]);
    out.success();
    documented("request blocked by network policy (407)", &out.stdout);
    let out = t.run(&["allow", "my-agent", "blocked.test"]);
    out.failure();
    let list: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap();
    documented(
        "only a running run's policy can change",
        &out.stderr.replace(id, "run_0123456789ab"),
    );
}

#[test]
fn ssh_errors() {
    let t = Env::new();
    let out = t.run(&["run", "--grant", "ssh:github.com", "--", "true"]);
    out.failure();
    documented("no SSH keys configured for hosts", &out.stderr);
    let out = t.run(&["grant", "ssh", "--host", "github.com"]);
    out.failure();
    documented("SSH grants require SSH_AUTH_SOCK to be set", &out.stderr);

    // With a real agent holding two keys.
    use moat_testkit::ssh::{keygen, SshAgent};
    if !moat_testkit::require::openssh() {
        return;
    }
    let dir = t.env.dir.path();
    let one = keygen(dir, "one");
    let two = keygen(dir, "two");
    let agent = SshAgent::start(dir);
    agent.add(&one);
    agent.add(&two);
    let sock = agent.socket().to_str().unwrap().to_string();
    let with_agent = [("SSH_AUTH_SOCK", sock.as_str())];
    let out = t.run_with(&["grant", "ssh", "--host", "git.example"], &with_agent);
    out.failure();
    documented(
        "the SSH agent holds several keys",
        &fingerprints_redacted(&t.normalize(&out.stderr)),
    );
    let out = t.run_with(
        &[
            "grant",
            "ssh",
            "--host",
            "git.example",
            "--key",
            one.to_str().unwrap(),
        ],
        &with_agent,
    );
    out.failure();
    documented("no host key known for <host>", &t.normalize(&out.stderr));
}

/// Key fingerprints and comments differ per run: `SHA256:<fp>  <comment>`.
fn fingerprints_redacted(text: &str) -> String {
    text.lines()
        .map(|l| match l.trim_start().strip_prefix("SHA256:") {
            Some(_) => "  SHA256:<fingerprint>  <comment>".to_string(),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn credential_errors() {
    let t = Env::new();
    let out = t.run(&["grant", "show", "github"]);
    out.failure();
    documented("credential not found: <provider>", &out.stderr);
    let out = t.run(&["run", "--grant", "github", "--", "true"]);
    out.failure();
    documented("missing grants", &out.stderr);
    let out = t.run(&["run", "--grant", "nosuch", "--", "true"]);
    out.failure();
    documented("missing grants", &out.stderr);
    let out = t.run(&["grant", "github", "--no-prompt"]);
    out.failure();
    documented("no secret found, and prompting is disabled", &out.stderr);

    let out = t.grant_github(401);
    out.failure();
    // Progress lines come before the error.
    let error = &out.stderr[out.stderr.find("Error: ").unwrap()..];
    documented("invalid token (401 Unauthorized) (GitHub)", error);

    t.grant_github(200).success();
    std::fs::write(t.env.moat_home().join("key"), [3u8; 32]).unwrap();
    let out = t.run(&["grant", "show", "github"]);
    out.failure();
    documented("decrypting credential for <provider>", &out.stderr);
    let out = t.run(&["run", "--grant", "github", "--", "true"]);
    out.failure();
    documented("missing grants", &out.stderr);

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        t.env.moat_home().join("key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = t.run(&["grant", "list"]);
    out.failure();
    documented(
        "key file has insecure permissions",
        &t.normalize(&out.stderr),
    );

    std::fs::write(
        t.project().join("moat.yaml"),
        "mcp:\n  - name: my-server\n    url: https://mcp.example.com/mcp\n    auth: { grant: mcp:my-server, header: Authorization }\n",
    )
    .unwrap();
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    documented(
        "MCP server requires grant but it's not configured",
        &out.stderr,
    );
}

#[test]
fn runtime_configuration_and_run_errors() {
    let t = Env::new();
    let out = t.run_with(
        &["run", "--runtime", "docker", "--", "true"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    out.failure();
    documented("Docker runtime requested but not available", &out.stderr);
    let out = t.run_with(
        &["run", "--runtime", "podman", "--", "true"],
        &[("CONTAINER_HOST", "unix:///nonexistent/podman.sock")],
    );
    out.failure();
    documented("Podman runtime requested but not available", &out.stderr);
    let out = t.run(&["run", "--runtime", "apple", "--", "true"]);
    out.failure();
    documented("Apple containers are only available on macOS", &out.stderr);

    let out = t.run(&["trace"]);
    out.failure();
    documented("no run matches", &out.stderr);
    let out = t.run(&["audit", "nope"]);
    out.failure();
    documented("no run matches", &out.stderr);

    std::fs::write(
        t.project().join("moat.yaml"),
        "netwrok:\n  policy: strict\n",
    )
    .unwrap();
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    documented("moat.yaml: unknown key", &t.normalize(&out.stderr));
    std::fs::write(
        t.project().join("moat.yaml"),
        "snapshots:\n  triggers:\n    disable_builds: false\n",
    )
    .unwrap();
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    documented("moat has no build trigger", &t.normalize(&out.stderr));
    std::fs::remove_file(t.project().join("moat.yaml")).unwrap();

    let out = t.run(&["run", "-d", "--name", "my-agent", "--", "sleep", "30"]);
    out.success();
    let out = t.run(&["run", "--name", "my-agent", "--", "true"]);
    out.failure();
    documented("agent is already running", &out.stderr);
    t.run(&["stop", "my-agent"]).success();

    // Trace and audit of a finished run.
    t.run(&["run", "--name", "done", "--", "true"]).success();
    let list: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let run_dir = t.env.moat_home().join("runs").join(&id);
    std::fs::write(
        run_dir.join("network.jsonl"),
        "{\"ts\":\"2025-01-02T03:04:05Z\",\"method\":\"GET\",\"url\":\"http://a/\"}\n\
         {\"ts\":\"2025-01-02T03:04:06Z\",\"method\":\"GET\",\"url\":\"http://b/\"}\ngarbage\n",
    )
    .unwrap();
    let out = t.run(&["trace", &id, "--network"]);
    out.success();
    documented("damaged network trace lines", &t.normalize(&out.stderr));

    let log = run_dir.join("audit.jsonl");
    let original = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replacen("\"stopped\"", "\"stoppe_\"", 1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = t.run(&["audit", &id]);
    assert_eq!(out.code, Some(1));
    let verdict = out.stdout.lines().last().unwrap();
    documented("VERDICT: [FAIL] TAMPERED", verdict);

    std::fs::remove_file(&log).unwrap();
    let out = t.run(&["audit", &id]);
    out.failure();
    documented("has no audit log", &t.normalize(&out.stderr));
}

#[test]
fn daemon_that_never_starts() {
    let t = Env::new();
    let fake = t.env.dir.path().join("fake-moat");
    std::fs::write(&fake, "#!/bin/sh\nsleep 10\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = t.run_with(
        &["run", "--", "true"],
        &[("MOAT_EXECUTABLE", fake.to_str().unwrap())],
    );
    out.failure();
    // The fake's pid, as the docs write it.
    let stderr = t.normalize(&out.stderr);
    let pid = stderr
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_default()
        .to_owned();
    documented(
        "daemon did not start within 5 seconds",
        &stderr.replace(&pid, "<pid>"),
    );
}

#[test]
fn provider_validation_errors() {
    let t = Env::new();
    // An expired Claude Code login.
    let claude = t.env.home().join(".claude");
    std::fs::create_dir_all(&claude).unwrap();
    std::fs::write(
        claude.join(".credentials.json"),
        r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-old","refreshToken":"r","expiresAt":1700000000000,"scopes":["user:inference"]}}"#,
    )
    .unwrap();
    let out = t.run(&["grant", "claude"]);
    out.failure();
    let error = &out.stderr[out.stderr.find("Error: ").unwrap()..];
    documented("Claude Code token has expired", error);

    // An Anthropic key the API refuses.
    let api = common::FakeApi::start(|_| (401, r#"{"type":"error"}"#.into()));
    let out = t.env.run_with(
        &["grant", "anthropic"],
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-api03-docsE2eSecret0123456789"),
            ("MOAT_ANTHROPIC_API_URL", &api.url),
        ],
    );
    out.failure();
    let error = &out.stderr[out.stderr.find("Error: ").unwrap()..];
    documented("invalid API key (Anthropic)", error);
}

/// A stand-in daemon on the control socket: it answers the handshake as a
/// daemon of another API version would, or not at all.
/// A fake daemon: holds the daemon's instance lock (what makes a daemon
/// count as running) until dropped, and answers `answer` on the control
/// socket (or does not answer at all).
struct FakeDaemon {
    _instance: moat_home::FileLock,
    _thread: std::thread::JoinHandle<()>,
}

fn fake_daemon(t: &Env, answer: Option<&'static str>) -> FakeDaemon {
    let dir = t.env.moat_home().join("proxy");
    std::fs::create_dir_all(&dir).unwrap();
    let instance = moat_home::FileLock::try_acquire(&dir.join("daemon.instance.lock"))
        .unwrap()
        .unwrap();
    let sock = dir.join("daemon.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::write(
        dir.join("daemon.lock"),
        format!(
            r#"{{"pid":{},"port":18999,"version":"0.0.1","api":999,"started_at":"2026-01-01T00:00:00Z"}}"#,
            std::process::id()
        ),
    )
    .unwrap();
    if answer.is_none() {
        drop(listener);
        return FakeDaemon {
            _instance: instance,
            _thread: std::thread::spawn(|| {}),
        };
    }
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let Ok(mut conn) = conn else { return };
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut line);
            let _ = conn.write_all(answer.unwrap_or_default().as_bytes());
        }
    });
    FakeDaemon {
        _instance: instance,
        _thread: thread,
    }
}

#[test]
fn daemon_version_and_socket_errors() {
    let t = Env::new();
    let _daemon = fake_daemon(
        &t,
        Some("{\"result\":\"hello\",\"api\":999,\"version\":\"9.9.9\",\"pid\":1,\"port\":18999}\n"),
    );
    let out = t.run_with(&["run", "--", "true"], &[("MOAT_PROXY_PORT", "18999")]);
    out.failure();
    documented(
        "registering run with proxy daemon",
        &t.normalize(&out.stderr),
    );
    remove_fake_daemon(&t);

    let t = Env::new();
    let daemon = fake_daemon(&t, None);
    let out = t.run_with(&["run", "--", "true"], &[("MOAT_PROXY_PORT", "18999")]);
    out.failure();
    let pid = std::process::id().to_string();
    documented(
        "connecting to daemon",
        &t.normalize(&out.stderr).replace(&pid, "<pid>"),
    );
    // The fix the message names works: once the hung daemon is gone, a
    // new one starts (its leftovers are cleaned up).
    drop(daemon);
    t.run(&["run", "--", "true"]).success();
}

fn remove_fake_daemon(t: &Env) {
    let dir = t.env.moat_home().join("proxy");
    let _ = std::fs::remove_file(dir.join("daemon.lock"));
    let _ = std::fs::remove_file(dir.join("daemon.sock"));
}

#[test]
fn gvisor_unavailable() {
    let docker = std::process::Command::new("docker")
        .args(["info"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !docker {
        assert_ne!(
            std::env::var("MOAT_REQUIRE_DOCKER").as_deref(),
            Ok("1"),
            "MOAT_REQUIRE_DOCKER=1 but no Docker daemon answers"
        );
        eprintln!("skipping: no Docker daemon answers");
        return;
    }
    let t = Env::new();
    // The engine here has runsc: ask for a runtime name it does not have.
    let out = t.run_with(
        &["run", "--", "true"],
        &[
            ("MOAT_RUNTIME", "docker"),
            ("MOAT_GVISOR_RUNTIME", "runsc-not-registered"),
        ],
    );
    out.failure();
    // Which runtimes an engine has differs between machines.
    let text = t
        .normalize(&out.stderr)
        .replace("\"runsc-not-registered\"", "\"runsc\"");
    let text = match (text.find("(registered: "), text.find(")\n")) {
        (Some(a), Some(b)) if a < b => {
            format!("{}(registered: runc, ...){}", &text[..a], &text[b + 1..])
        }
        _ => text,
    };
    documented("gVisor (runsc) is required but not available", &text);
}

#[test]
fn sandbox_boundary_errors_are_documented() {
    let t = Env::new();
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\n",
    )
    .unwrap();
    t.run(&["run", "--", "true"]).success();
    t.run(&[
        "run",
        "--name",
        "my-agent",
        "--",
        "sh",
        "-c",
        "printf 'network:\\n  policy: permissive\\n' > /workspace/moat.yaml",
    ])
    .success();
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    documented(
        "moat.yaml changed while a run had the workspace mounted",
        &t.normalize(&out.stderr),
    );
    t.run(&["trust"]).success();

    let stolen = format!("{}:/stolen", t.env.moat_home().display());
    let out = t.run(&["run", "-m", &stolen, "--", "true"]);
    out.failure();
    documented(
        "moat never mounts it into a sandbox",
        &t.normalize(&out.stderr),
    );

    // ID-mapped mounts are needed for root callers only.
    if !moat_testkit::require::root() {
        return;
    }
    std::fs::remove_file(t.project().join("moat.yaml")).unwrap();
    let project = t.project();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "ramfs", "none"])
        .arg(&project)
        .status()
        .unwrap();
    assert!(mounted.success());
    let out = t.run(&["run", "--", "true"]);
    let _ = std::process::Command::new("umount").arg(&project).status();
    out.failure();
    documented(
        "cannot map the ownership of the workspace for the sandbox",
        &t.normalize(&out.stderr),
    );
}

#[test]
fn a_symlinked_mount_exclude_is_documented() {
    let t = Env::new();
    std::fs::write(
        t.project().join("moat.yaml"),
        "mounts:\n  - {source: ., target: /workspace, exclude: [node_modules]}\n",
    )
    .unwrap();
    std::fs::create_dir(t.project().join("vendor")).unwrap();
    std::os::unix::fs::symlink("vendor", t.project().join("node_modules")).unwrap();
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    documented(
        "exclude … is, or passes through, a symbolic link",
        &t.normalize(&out.stderr),
    );
}

#[test]
fn workspace_floor_messages() {
    let t = Env::new();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(t.project())
            .status()
            .unwrap();
        assert!(ok.success());
    };
    git(&["init", "-q"]);
    let out = t.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo x > .git/hooks/pre-commit; touch .envrc; echo x > .mcp.json",
    ]);
    assert_ne!(out.code, Some(0));
    // moat's explanation follows each tool's line once that line is
    // complete: the order of the two depends on how the output arrives,
    // so each line is looked for on its own.
    let heading =
        "Read-only file system (or Is a directory) on .git/hooks, .vscode, .claude, .envrc…";
    let section = section(heading);
    assert_eq!(out.stderr.lines().count(), 6, "{}", out.stderr);
    for line in out.stderr.lines() {
        assert!(
            section.contains(&format!("\n{line}\n")),
            "docs/troubleshooting.md, section {heading:?}, must show the line:\n{line}\n\nIt has:\n{section}"
        );
    }
    assert!(PROVOKED.contains(&heading));

    let out = t.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "mkdir vendored && cd vendored && git init -q && echo x > .git/hooks/post-commit \
         && git config core.fsmonitor evil",
    ]);
    out.success();
    documented(
        "the run created the git repository … what in it would run programs on the host was disabled",
        &out.stderr,
    );
}

#[test]
fn credential_safety_errors() {
    let t = Env::new();
    t.grant_github(200).success();
    let out = t.run(&[
        "run",
        "--grant",
        "github",
        "--",
        "curl",
        "-sS",
        "http://api.github.com/user",
    ]);
    out.success();
    documented(
        "refused to send the credential over plain HTTP (403)",
        &out.stdout,
    );

    let out = t.run(&[
        "run",
        "--",
        "curl",
        "-sS",
        "--noproxy",
        "",
        "http://127.0.0.1:11434/api/tags",
    ]);
    out.success();
    documented("is an address of the host machine (403)", &out.stdout);

    std::fs::write(
        t.project().join("moat.yaml"),
        "grants: [github]\nmcp:\n  - name: collect\n    url: https://collect.example/mcp\n    auth: {grant: github, header: X-Token}\n",
    )
    .unwrap();
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    documented("MCP server may not use grant", &out.stderr);
    std::fs::remove_file(t.project().join("moat.yaml")).unwrap();

    let api = common::FakeApi::start(|_| (200, r#"{"login":"octocat"}"#.into()));
    let out = t.env.run_with(
        &["grant", "github"],
        &[
            ("GITHUB_TOKEN", "ghp_pasted\nghp_twice"),
            ("MOAT_GITHUB_API_URL", &api.url),
        ],
    );
    out.failure();
    documented(
        "the secret contains a control character or whitespace",
        &out.stderr,
    );
}

#[test]
fn silent_upstream_error() {
    let t = Env::new();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let routes = format!(
        "{},slow.example:80:127.0.0.1:{port}",
        t.upstream.connect_to(&["api.github.com"])
    );
    let out = t.run_with(
        &["run", "--", "curl", "-sS", "http://slow.example/"],
        &[("MOAT_CONNECT_TO", &routes), ("MOAT_UPSTREAM_TIMEOUT", "1")],
    );
    out.success();
    documented(
        "upstream sent no response (504)",
        &out.stdout.replace("within 1 s", "within 600 s"),
    );
}

#[test]
fn a_runtime_version_that_cannot_be_provided() {
    if !common::docker_available() {
        return;
    }
    let t = Env::new();
    std::fs::write(
        t.project().join("moat.yaml"),
        "dependencies: [node@20, python@3.12]\n",
    )
    .unwrap();
    let out = t.run_with(
        &["run", "--runtime", "docker", "--", "true"],
        &[(
            "MOAT_IMAGE_MAP",
            "debian:bookworm-slim=local/debian:bookworm",
        )],
    );
    out.failure();
    documented("building image with dependencies", &out.stderr);
}

#[test]
fn a_service_that_stops_before_it_is_ready() {
    if !common::docker_available() {
        return;
    }
    let (postgres, _) = common::service_images();
    let t = Env::new();
    // Like the official image, the stand-in refuses an empty password.
    std::fs::write(
        t.project().join("moat.yaml"),
        "dependencies: [postgres]\nservices:\n  postgres:\n    env:\n      POSTGRES_PASSWORD: \"\"\n",
    )
    .unwrap();
    let out = t.run_with(
        &["run", "--runtime", "docker", "--no-sandbox", "--", "true"],
        &[(
            "MOAT_IMAGE_MAP",
            &format!("debian:bookworm-slim=local/debian:bookworm,postgres:17={postgres}"),
        )],
    );
    out.failure();
    let stderr = t.normalize(&out.stderr);
    let message = stderr
        .lines()
        .filter(|l| !l.contains("Warning: Running without gVisor"))
        .collect::<Vec<_>>()
        .join("\n");
    documented("service failed to become ready", &message);
}

#[test]
fn a_provisioning_command_that_fails() {
    if !common::docker_available() {
        return;
    }
    let (_, redis) = common::service_images();
    let t = Env::new();
    std::fs::write(
        t.project().join("moat.yaml"),
        "dependencies: [redis]\nservices:\n  redis:\n    provision: [\"exit 3\"]\n",
    )
    .unwrap();
    let out = t.run_with(
        &["run", "--runtime", "docker", "--no-sandbox", "--", "true"],
        &[(
            "MOAT_IMAGE_MAP",
            &format!("debian:bookworm-slim=local/debian:bookworm,redis:7={redis}"),
        )],
    );
    out.failure();
    let message = out
        .stderr
        .lines()
        .filter(|l| !l.contains("Warning: Running without gVisor"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(redis.as_str(), "redis:7");
    documented("service provisioning failed", &message);
}

#[test]
fn services_on_the_native_runtime() {
    let t = Env::new();
    std::fs::write(t.project().join("moat.yaml"), "dependencies: [postgres]\n").unwrap();
    let out = t.run_with(&["run", "--runtime", "native", "--", "true"], &[]);
    out.failure();
    documented("services need a container runtime", &out.stderr);
}

#[test]
fn worktree_errors() {
    let t = Env::new();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(t.project())
            .args(["-c", "user.email=t@t", "-c", "user.name=t"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["commit", "-q", "--allow-empty", "-m", "first"]);
    t.run(&["wt", "fix-tests", "-d", "--", "sleep", "30"])
        .success();
    let out = t.run(&["wt", "fix-tests", "--", "true"]);
    out.failure();
    documented("run is already active in the worktree", &out.stderr);
    t.run(&["stop", "fix-tests"]).success();
}

#[test]
fn an_in_place_restore_under_an_active_run() {
    let t = Env::new();
    let out = t.run(&["run", "-d", "--name", "bg", "--", "sleep", "30"]);
    out.success();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !t
        .run(&["snapshot", "list", "bg"])
        .stdout
        .contains("pre-run")
    {
        assert!(std::time::Instant::now() < deadline, "no pre-run snapshot");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = t.run(&["snapshot", "restore", "bg"]);
    t.run(&["stop", "bg"]).success();
    out.failure();
    documented(
        "is mounted by active run: restoring in place would change files under it",
        &t.normalize(&out.stderr),
    );
}
