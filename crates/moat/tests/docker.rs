//! `moat run` on the Docker runtime, through the real binary: an image
//! from `dependencies:` built once and reused, gVisor by default, strict
//! versus permissive with real connections, `--no-sandbox`, credential
//! injection, and the seed's runtime errors. Skipped (with the reason)
//! when no Docker daemon is reachable, unless MOAT_REQUIRE_DOCKER=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;

use common::TestEnv;
use moat_testkit::{EchoUpstream, TestCa};

const GH_TOKEN: &str = "ghp_dockerE2eSecret0123456789abcdefghij";

/// The docker0 address, where a host listener is reachable from
/// containers (and nowhere else).
fn bridge_ip() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .unwrap()
        .to_string()
}

struct DockerEnv {
    env: TestEnv,
    ca_file: std::path::PathBuf,
    upstream: EchoUpstream,
}

impl DockerEnv {
    fn new() -> Self {
        let env = TestEnv::new();
        let ca = TestCa::new();
        let ca_file = ca.write_pem(env.dir.path());
        let upstream = EchoUpstream::start(&ca, &["api.github.com"]);
        std::fs::create_dir_all(env.dir.path().join("project")).unwrap();
        DockerEnv {
            env,
            ca_file,
            upstream,
        }
    }

    fn project(&self) -> std::path::PathBuf {
        self.env.dir.path().join("project")
    }

    fn moat(&self) -> std::process::Command {
        let mut cmd = self.env.moat();
        cmd.env("MOAT_RUNTIME", "docker")
            .env("MOAT_PROXY_PORT", "0")
            .env("MOAT_DAEMON_IDLE_TIMEOUT", "5")
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

    fn run(&self, args: &[&str], envs: &[(&str, &str)]) -> common::Result {
        let mut cmd = self.moat();
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        common::Result::from(cmd.output().unwrap())
    }
}

impl Drop for DockerEnv {
    fn drop(&mut self) {
        let _ = self.env.run(&["proxy", "stop"]);
    }
}

const PROBE: &str = r#"
  jq --version >/dev/null && echo jq=ok
  git --version >/dev/null && echo git=ok
  curl -sS -o /dev/null -w "github=%{http_code}\n" https://api.github.com/user
  curl -sS -o /dev/null -w "blocked=%{http_code}\n" https://blocked.example.test/ 2>/dev/null || echo blocked=refused
  if timeout 5 bash -c "exec 3<>/dev/tcp/$RAW_HOST/$RAW_PORT && echo hi >&3 && head -c1 <&3 | grep -q ." 2>/dev/null; then echo raw=connected; else echo raw=refused; fi
  dmesg 2>/dev/null | head -1
"#;

#[test]
fn strict_image_from_dependencies_cached_and_injected() {
    if !common::docker_available() {
        return;
    }
    let t = DockerEnv::new();
    t.env.grant_github(GH_TOKEN);
    std::fs::write(
        t.project().join("moat.yaml"),
        "dependencies: [git, jq]\nnetwork:\n  policy: strict\ngrants: [github]\n",
    )
    .unwrap();
    let ip = bridge_ip();
    let listener = TcpListener::bind((ip.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let envs = [("RAW_HOST", ip.as_str()), ("RAW_PORT", port.as_str())];

    let first = t.run(
        &[
            "run",
            "-e",
            &format!("RAW_HOST={ip}"),
            "-e",
            &format!("RAW_PORT={port}"),
            "--",
            "bash",
            "-c",
            PROBE,
        ],
        &envs,
    );
    first.success();
    for expected in ["jq=ok", "git=ok", "github=200", "raw=refused"] {
        assert!(
            first.stdout.contains(expected),
            "{expected}\n{}\n{}",
            first.stdout,
            first.stderr
        );
    }
    assert!(
        first.stdout.contains("blocked=407")
            || first.stdout.contains("blocked=000")
            || first.stdout.contains("blocked=refused"),
        "{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("gVisor"),
        "gVisor is the default runtime: {}",
        first.stdout
    );
    let seen = t.upstream.requests();
    assert_eq!(
        seen.last().unwrap().header("authorization"),
        Some(format!("Bearer {GH_TOKEN}").as_str())
    );

    // Second run: same inputs, no build.
    let second = t.run(
        &[
            "run",
            "-e",
            &format!("RAW_HOST={ip}"),
            "-e",
            &format!("RAW_PORT={port}"),
            "--",
            "bash",
            "-c",
            "echo again",
        ],
        &envs,
    );
    second.success();
    assert_eq!(second.stdout, "again\n");
    assert!(
        !second.stderr.contains("Step "),
        "rebuilt: {}",
        second.stderr
    );

    // Permissive: the proxy allows every host, but the container's only
    // way out is still the proxy, so the raw connection is refused.
    std::fs::write(t.project().join("moat.yaml"), "dependencies: [git, jq]\n").unwrap();
    let permissive = t.run(
        &[
            "run",
            "-e",
            &format!("RAW_HOST={ip}"),
            "-e",
            &format!("RAW_PORT={port}"),
            "--",
            "bash",
            "-c",
            PROBE,
        ],
        &envs,
    );
    permissive.success();
    assert!(
        permissive.stdout.contains("raw=refused") && permissive.stdout.contains("github=200"),
        "{}\n{}",
        permissive.stdout,
        permissive.stderr
    );

    // Nothing left running.
    let ps = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            "label=moat.managed=true",
            "--filter",
            "status=running",
        ])
        .output()
        .unwrap();
    let list: serde_json::Value =
        serde_json::from_str(&t.env.run(&["list", "--json"]).stdout).unwrap();
    for run in list.as_array().unwrap() {
        assert_eq!(run["runtime"], "docker");
        let id = run["container_id"].as_str().unwrap();
        assert!(!String::from_utf8_lossy(&ps.stdout).contains(&id[..12]));
    }
    drop(listener);
}

/// A base image whose firewall takes two seconds to apply: the guard's
/// `iptables-restore` waits first.
const SLOW_GUARD_STANDIN: &str = r#"# moat test: a network guard slow to apply its firewall.
FROM local/debian:bookworm
RUN printf '%s\n' '#!/bin/sh' 'sleep 2' 'exec /usr/sbin/iptables-restore "$@"' \
      > /usr/local/sbin/iptables-restore \
 && chmod 755 /usr/local/sbin/iptables-restore
"#;

/// The workload starts while its guard applies the firewall (moat does not
/// wait for the guard before starting it); its first instruction must
/// still find the firewall in place, under gVisor and runc.
#[test]
fn the_command_runs_only_once_a_slow_guards_firewall_holds() {
    if !common::docker_available() {
        return;
    }
    let slow_base = common::service_standin("slow-guard", SLOW_GUARD_STANDIN);
    let t = DockerEnv::new();
    let ip = bridge_ip();
    let listener = TcpListener::bind((ip.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = reached.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = std::io::Write::write_all(&mut &stream, b"hi\n");
        }
    });
    let first_instruction = format!(
        "if timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/{port} && head -c1 <&3 | grep -q .' 2>/dev/null; \
         then echo raw=connected; else echo raw=refused; fi"
    );
    let image_map = format!("debian:bookworm-slim={slow_base}");
    for sandbox in [&[][..], &["--no-sandbox"][..]] {
        let mut args = vec!["run"];
        args.extend_from_slice(sandbox);
        args.extend(["--", "bash", "-c", &first_instruction]);
        let out = t.run(&args, &[("MOAT_IMAGE_MAP", image_map.as_str())]);
        out.success();
        assert_eq!(out.stdout, "raw=refused\n", "{sandbox:?}: {}", out.stderr);
    }
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a connection got past the guard before its firewall held"
    );
}

#[test]
fn no_sandbox_warns_and_exit_codes_pass_through() {
    if !common::docker_available() {
        return;
    }
    let t = DockerEnv::new();
    let out = t.run(
        &[
            "run",
            "--no-sandbox",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
        &[],
    );
    assert_eq!(out.code, Some(7), "{}", out.stderr);
    assert_eq!(out.stdout, "out\n");
    assert!(
        out.stderr
            .contains("Warning: Running without gVisor reduces container isolation."),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("err\n"));
    let env_flag = t.run(&["run", "--", "true"], &[("MOAT_NO_SANDBOX", "1")]);
    env_flag.success();
    assert!(env_flag
        .stderr
        .contains("Warning: Running without gVisor reduces container isolation."));
}

#[test]
fn gvisor_missing_is_explained() {
    if !common::docker_available() {
        return;
    }
    let t = DockerEnv::new();
    let out = t.run(
        &["run", "--", "true"],
        &[("MOAT_GVISOR_RUNTIME", "runsc-not-registered")],
    );
    out.failure();
    assert!(
        out.stderr
            .contains("gVisor (runsc) is required but not available"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--no-sandbox"), "{}", out.stderr);
}

#[test]
fn docker_requested_but_unreachable() {
    let t = DockerEnv::new();
    let out = t.run(
        &["run", "--", "true"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    out.failure();
    assert!(
        out.stderr.starts_with(
            "Error: Docker runtime requested (via MOAT_RUNTIME or moat.yaml) but not available: "
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("unset MOAT_RUNTIME"), "{}", out.stderr);
}

#[test]
fn auto_selection_falls_back_to_native_with_a_notice() {
    let t = DockerEnv::new();
    let mut cmd = t.env.moat();
    cmd.env_remove("MOAT_RUNTIME")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("MOAT_PROXY_PORT", "0")
        .env("MOAT_DAEMON_IDLE_TIMEOUT", "5")
        .current_dir(t.project())
        .args(["run", "--", "echo", "native"]);
    let out = common::Result::from(cmd.output().unwrap());
    out.success();
    assert_eq!(out.stdout, "native\n");
    assert!(
        out.stderr.starts_with("moat: Docker is not available ("),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.ends_with("using the native Linux sandbox.\n"),
        "{}",
        out.stderr
    );
}

/// As on the native runtime, a container's processes are the OOM
/// killer's first choice (under runc the command sees it; gVisor's own
/// processes on the host get it from the same setting).
#[test]
fn a_containers_processes_are_the_oom_killers_first_choice() {
    if !common::docker_available() {
        return;
    }
    let t = DockerEnv::new();
    let out = t.run(
        &[
            "run",
            "--no-sandbox",
            "--",
            "cat",
            "/proc/self/oom_score_adj",
        ],
        &[],
    );
    out.success();
    assert!(out.stdout.ends_with("500\n"), "{}", out.stdout);
}

#[test]
fn containers_of_a_crashed_cli_are_removed_by_stop() {
    if !common::docker_available() {
        return;
    }
    let t = DockerEnv::new();
    let mut cmd = t.env.moat();
    cmd.env("MOAT_RUNTIME", "docker")
        .env("MOAT_PROXY_PORT", "0")
        .env("MOAT_DAEMON_IDLE_TIMEOUT", "5")
        .env(
            "MOAT_IMAGE_MAP",
            "debian:bookworm-slim=local/debian:bookworm",
        )
        .current_dir(t.project())
        .args([
            "run",
            "--no-sandbox",
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
            let up = std::process::Command::new("docker")
                .args(["ps", "-q", "--no-trunc", "--filter", &format!("id={id}")])
                .output()
                .unwrap();
            if !String::from_utf8_lossy(&up.stdout).trim().is_empty() {
                break id.to_string();
            }
        }
        assert!(std::time::Instant::now() < deadline, "run never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // The CLI dies without cleaning up; its container keeps running.
    child.kill().unwrap();
    child.wait().unwrap();
    let running = |id: &str| {
        let out = std::process::Command::new("docker")
            .args(["ps", "-q", "--no-trunc", "--filter", &format!("id={id}")])
            .output()
            .unwrap();
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    assert!(running(&container));
    let stop = t.env.run(&["stop", "crashy"]);
    assert!(
        stop.code == Some(0) || stop.code == Some(1),
        "{}",
        stop.stderr
    );
    assert!(!running(&container), "container left behind");
}

/// SSH grants in containers: the agent socket and the `ProxyCommand`
/// tunnel work under gVisor (runsc with `--host-uds=open`) and runc, with
/// real OpenSSH on both ends.
#[test]
fn ssh_grant_clones_in_containers_under_gvisor_and_runc() {
    use moat_testkit::ssh::{current_user, git_repo, keygen, public_key};
    use moat_testkit::ssh::{SshAgent, Sshd};
    if !common::docker_available() {
        return;
    }
    if !moat_testkit::require::openssh() {
        return;
    }
    let t = DockerEnv::new();
    let dir = t.env.dir.path();
    let key = keygen(dir, "granted");
    let agent = SshAgent::start(dir);
    agent.add(&key);
    let sshd = Sshd::start(&dir.join("sshd"), &[public_key(&key)]);
    let repo = git_repo(&dir.join("git"), "repo.git");
    let connect_to = format!(
        "{},git.test:22:127.0.0.1:{}",
        t.upstream.connect_to(&["api.github.com"]),
        sshd.port()
    );
    let sock = agent.socket().to_str().unwrap().to_string();
    let envs = [
        ("SSH_AUTH_SOCK", sock.as_str()),
        ("MOAT_CONNECT_TO", connect_to.as_str()),
    ];
    t.run(
        &[
            "grant",
            "ssh",
            "--host",
            "git.test",
            "--host-key",
            sshd.host_key(),
        ],
        &envs,
    )
    .success();
    std::fs::write(
        t.project().join("moat.yaml"),
        "dependencies: [git, openssh-client]\n",
    )
    .unwrap();
    let script = format!(
        "git clone -q ssh://{}@git.test{} /tmp/clone && cat /tmp/clone/README; ssh-add -L | wc -l",
        current_user(),
        repo.display()
    );
    for extra in [&[][..], &["--no-sandbox"][..]] {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--grant", "ssh:git.test", "--", "sh", "-c", &script]);
        let out = t.run(&args, &envs);
        out.success();
        assert!(
            out.stdout.contains("hello from the test repository"),
            "{extra:?}: {}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stdout.trim_end().ends_with('1'), "{}", out.stdout);
    }
}

/// `moat run -i` on Docker: stdin attached and, under a terminal, a TTY of
/// the container's own with our window size; Ctrl-C reaches the command.
#[test]
fn interactive_runs_attach_a_terminal() {
    if !common::docker_available() {
        return;
    }
    let t = DockerEnv::new();
    let moat = env!("CARGO_BIN_EXE_moat");
    let out = common::under_terminal(
        &t.moat(),
        &t.project(),
        &format!("stty rows 30 cols 90; {moat} run -i -- sh -c 'test -t 0 && echo TERMINAL; stty size; exit 5'"),
        None,
    );
    assert_eq!(out.code, Some(5), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("TERMINAL"), "{}", out.stdout);
    assert!(out.stdout.contains("30 90"), "{}", out.stdout);

    let out = common::under_terminal(
        &t.moat(),
        &t.project(),
        &format!("{moat} run -i -- sleep 30"),
        Some(b"\x03"),
    );
    assert_eq!(out.code, Some(130), "{}\n{}", out.stdout, out.stderr);

    // Without a terminal, stdin still reaches the command.
    let mut cmd = t.moat();
    cmd.args(["run", "-i", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"piped in\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped in\n");
}

/// Clients that ignore the proxy variables are captured by the network
/// guard, under gVisor and runc: injected, traced, and refused under
/// strict for hosts not allowed.
#[test]
fn clients_ignoring_the_proxy_are_captured_in_containers() {
    if !common::docker_available() {
        return;
    }
    let t = DockerEnv::new();
    t.env.grant_github(GH_TOKEN);
    let script = r#"
      unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy
      curl -sS -o /dev/null -w "captured=%{http_code}\n" https://api.github.com/captured -H "Authorization: Bearer $GH_TOKEN"
      curl -sS -o /dev/null --max-time 5 https://not-allowed.test/ 2>/dev/null && echo other=REACHED || echo other=refused
      getent hosts api.github.com | cut -d' ' -f1
      node -e 'fetch("https://api.github.com/from-node", {headers: {authorization: "Bearer " + process.env.GH_TOKEN}}).then(r => console.log("node=" + r.status), e => console.log("node-error=" + e.cause))'
      python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("\0moat-docker-abstract-test"); print("ABSTRACT-REACHED")' 2>/dev/null || echo abstract=refused
      exec 3<>/dev/tcp/db.test/5432; echo hi >&3; echo "db=$(head -n1 <&3)"
    "#;
    // Any TCP port is captured, not only 80 and 443.
    let db_port = common::line_server();
    let connect_to = format!(
        "{},db.test:5432:127.0.0.1:{db_port}",
        t.upstream.connect_to(&["api.github.com"])
    );
    // A host abstract socket: containers have network namespaces of their
    // own, so it must stay out of reach.
    let abstract_addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            b"moat-docker-abstract-test",
        )
        .unwrap();
    let _abstract_listener = std::os::unix::net::UnixListener::bind_addr(&abstract_addr).unwrap();
    for sandbox in [&[][..], &["--no-sandbox"][..]] {
        std::fs::write(
            t.project().join("moat.yaml"),
            "dependencies: [node]\nnetwork:\n  policy: strict\n  rules:\n    - db.test\ngrants: [github]\n",
        )
        .unwrap();
        let mut args = vec!["run"];
        args.extend_from_slice(sandbox);
        args.extend_from_slice(&["--", "bash", "-c", script]);
        let out = t.run(&args, &[("MOAT_CONNECT_TO", &connect_to)]);
        out.success();
        assert!(
            out.stdout.contains("captured=200"),
            "{sandbox:?}\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stdout.contains("other=refused"), "{}", out.stdout);
        assert!(out.stdout.contains("198.18."), "{}", out.stdout);
        assert!(
            out.stdout.contains("node=200"),
            "{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stdout.contains("abstract=refused"), "{}", out.stdout);
        assert!(
            out.stdout.contains("db=model says hi"),
            "{}\n{}\n{}",
            out.stdout,
            out.stderr,
            t.run(&["trace", "--network"], &[]).stdout
        );
    }
    let seen = t.upstream.requests();
    let captured: Vec<_> = seen
        .iter()
        .filter(|r| r.path == "/captured" || r.path == "/from-node")
        .collect();
    assert_eq!(captured.len(), 4, "{seen:?}");
    for r in captured {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {GH_TOKEN}").as_str())
        );
    }
}

/// `network.host: [PORT]` reaches exactly that host port (listening on
/// the host's loopback) at `$MOAT_HOST_GATEWAY`, through the proxy.
#[test]
fn network_host_ports_reach_the_host_loopback_from_containers() {
    if !common::docker_available() {
        return;
    }
    let t = DockerEnv::new();
    let given_port = common::line_server();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    std::fs::write(
        t.project().join("moat.yaml"),
        format!("network:\n  host: [{given_port}]\n"),
    )
    .unwrap();
    let script = format!(
        r#"
        echo "gateway=$MOAT_HOST_GATEWAY"
        exec 3<>/dev/tcp/$MOAT_HOST_GATEWAY/{given_port}; echo hi >&3; timeout 5 head -n1 <&3
        if timeout 5 bash -c "exec 4<>/dev/tcp/$MOAT_HOST_GATEWAY/{other_port} && echo x >&4 && head -n1 <&4" 2>/dev/null | grep -q .; then echo OTHER-REACHED; else echo other-refused; fi
        "#
    );
    for sandbox in [&[][..], &["--no-sandbox"][..]] {
        let mut args = vec!["run"];
        args.extend_from_slice(sandbox);
        args.extend_from_slice(&["--", "bash", "-c", &script]);
        let out = t.run(&args, &[]);
        out.success();
        assert_eq!(
            out.stdout.trim(),
            "gateway=moat-host\nmodel says hi\nother-refused",
            "{sandbox:?}: {}",
            out.stderr
        );
    }
    drop(other);
}

/// `node@20` is Node.js 20.x and `node@22` Node.js 22.x, not the
/// distribution's version: the release binary from the npm registry,
/// checked against its published digest.
#[test]
fn node_at_a_version_is_that_version() {
    if !common::docker_available() {
        return;
    }
    let t = DockerEnv::new();
    for major in ["20", "22"] {
        std::fs::write(
            t.project().join("moat.yaml"),
            format!("dependencies: [node@{major}]\n"),
        )
        .unwrap();
        let out = t.run(
            &[
                "run",
                "--no-sandbox",
                "--",
                "sh",
                "-c",
                "node --version; npm --version; cat /etc/moat/versions",
            ],
            &[],
        );
        out.success();
        let mut lines = out.stdout.lines();
        let node = lines.next().unwrap_or("");
        assert!(
            node.starts_with(&format!("v{major}.")),
            "{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr
                .contains(&format!("Node.js {} with npm", &node[1..])),
            "{}",
            out.stderr
        );
    }
}

/// A root caller's workload runs as uid 1000 with the workspace
/// bind-mounted: in a project of that user's, a setuid or setgid file it
/// made would run as that user (or group) for anyone on the host. Every
/// way of making one is refused, under gVisor and runc.
#[test]
fn no_setuid_or_setgid_file_leaves_a_container_under_gvisor_and_runc() {
    if !common::docker_available() {
        return;
    }
    for extra in [&[][..], &["--no-sandbox"][..]] {
        let t = DockerEnv::new();
        common::give_to_sandbox_user(&t.project());
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", common::SETID_ATTACKS]);
        let out = t.run(&args, &[]);
        out.success();
        common::assert_no_setid_left(&out, &t.project(), &[t.env.dir.path()], 65534);
    }
}

/// Two installations (two MOAT_HOMEs) on one engine: `moat clean` in one
/// removes nothing of the other's running run (it used to take every
/// container whose run it did not know for an orphan).
#[test]
fn clean_leaves_another_installations_containers_alone() {
    if !common::docker_available() {
        return;
    }
    let mine = DockerEnv::new();
    let other = DockerEnv::new();
    let started = mine.run(&["run", "-d", "--name", "keep", "--", "sleep", "300"], &[]);
    started.success();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while mine.run(&["exec", "keep", "--", "true"], &[]).code != Some(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    other.run(&["clean", "--force"], &[]).success();
    let out = mine.run(&["exec", "keep", "--", "echo", "still here"], &[]);
    assert_eq!(out.stdout, "still here\n", "{}", out.stderr);
    mine.run(&["stop", "keep"], &[]).success();
}
