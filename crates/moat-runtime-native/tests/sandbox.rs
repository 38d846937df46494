//! End-to-end tests with real processes, through the `moat-native-harness`
//! binary (the re-exec needs a `main` that calls `maybe_run_init`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use moat_runtime_native::{BindMount, InjectedFile, NetworkMode, SandboxSpec, DEFAULT_PATH};

const HARNESS: &str = env!("CARGO_BIN_EXE_moat-native-harness");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn spec(ws: &Path, command: Vec<String>) -> SandboxSpec {
    let mut s = SandboxSpec::new(ws, command);
    s.user = "dev".into();
    s.hostname = "sbx".into();
    s
}

fn run_with(harness: &Path, spec: &SandboxSpec, envs: &[(&str, &str)], prefix: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(spec).unwrap()).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&spec_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = if prefix.is_empty() {
        Command::new(harness)
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(harness);
        c
    };
    cmd.arg(&spec_path).env("MOAT_HARNESS_REPORT", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(spec: &SandboxSpec) -> Run {
    run_with(Path::new(HARNESS), spec, &[], &[])
}

#[test]
fn echo_output_and_exit_codes() {
    let ws = tempfile::tempdir().unwrap();
    let r = run(&spec(ws.path(), vec!["echo".into(), "hello".into()]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "hello\n");

    let r = run(&spec(ws.path(), sh("exit 3")));
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("code=3 signal=none"), "{}", r.stderr);

    let r = run(&spec(ws.path(), sh("kill -9 $$")));
    assert_eq!(r.code, 128 + 9);
    assert!(r.stderr.contains("code=137 signal=9"), "{}", r.stderr);
}

#[test]
fn workspace_is_the_writable_cwd() {
    let ws = tempfile::tempdir().unwrap();
    let r = run(&spec(
        ws.path(),
        sh("pwd; echo from-sandbox > created.txt; id -un; hostname"),
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "/workspace\ndev\nsbx\n");
    let created = std::fs::read_to_string(ws.path().join("created.txt")).unwrap();
    assert_eq!(created, "from-sandbox\n");
}

#[test]
fn host_files_are_not_visible() {
    let ws = tempfile::tempdir().unwrap();
    let secret_dir = tempfile::tempdir().unwrap();
    let marker = secret_dir.path().join("marker-secret");
    std::fs::write(&marker, "secret").unwrap();
    let host_home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let script = format!(
        "for p in /root '{host_home}' '{}' '{}' /oldroot /etc/shadow; do \
           if [ -e \"$p\" ]; then echo \"VISIBLE $p\"; fi; done; \
         ls -A /etc/ssl/private 2>/dev/null; ls -A /tmp; ls -A /home; ls -A /run",
        marker.display(),
        secret_dir.path().display()
    );
    let r = run(&spec(ws.path(), sh(&script)));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("VISIBLE"), "{}", r.stdout);
    // TLS private keys hidden, /tmp empty, /home only the sandbox user, /run empty.
    assert_eq!(r.stdout, "dev\n");
}

#[test]
fn injected_files_and_usr_are_read_only() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(
        ws.path(),
        sh("cat /etc/ssl/certs/moat-ca/ca.crt; cat $HOME/.gitconfig; \
            echo x > /etc/ssl/certs/moat-ca/ca.crt && echo WROTE-CA; \
            echo x > $HOME/.gitconfig && echo WROTE-GITCONFIG; \
            touch /usr/moat-test && echo WROTE-USR; \
            touch /etc/moat-test && echo WROTE-ETC; \
            touch $HOME/ok /tmp/ok && echo home-and-tmp-writable"),
    );
    s.workload.files = vec![
        InjectedFile {
            path_in_sandbox: "/etc/ssl/certs/moat-ca/ca.crt".into(),
            contents: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
            mode: 0o644,
        },
        InjectedFile {
            path_in_sandbox: "/home/dev/.gitconfig".into(),
            contents: b"[user]\n".to_vec(),
            mode: 0o644,
        },
    ];
    let r = run(&s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "-----BEGIN CERTIFICATE-----\n[user]\nhome-and-tmp-writable\n"
    );
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
}

#[test]
fn environment_is_exactly_the_spec() {
    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(ws.path(), vec!["/usr/bin/env".into()]);
    s.workload.env = vec![
        ("FOO".into(), "bar".into()),
        ("HTTPS_PROXY".into(), "x".into()),
    ];
    let r = run_with(Path::new(HARNESS), &s, &[("LEAKED_VAR", "1")], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: BTreeSet<&str> = r.stdout.lines().collect();
    let path = format!("PATH={DEFAULT_PATH}");
    let want: BTreeSet<&str> = [
        "FOO=bar",
        "HTTPS_PROXY=x",
        "HOME=/home/dev",
        "USER=dev",
        path.as_str(),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
}

#[test]
fn extra_mounts_read_only_and_read_write() {
    let ws = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    let rw = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("data"), "ro-data").unwrap();
    let mut s = spec(
        ws.path(),
        sh("cat /data/ro/data; echo; touch /data/ro/x && echo WROTE-RO; echo hi > /data/rw/y"),
    );
    s.workload.mounts = vec![
        BindMount {
            source: ro.path().into(),
            target: "/data/ro".into(),
            read_only: true,
            exclude: Vec::new(),
        },
        BindMount {
            source: rw.path().into(),
            target: "/data/rw".into(),
            read_only: false,
            exclude: Vec::new(),
        },
    ];
    let r = run(&s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "ro-data\n");
    assert!(!ro.path().join("x").exists());
    assert_eq!(
        std::fs::read_to_string(rw.path().join("y")).unwrap(),
        "hi\n"
    );
}

#[test]
fn isolated_network_reaches_only_the_proxy() {
    let ws = tempfile::tempdir().unwrap();
    // A host service that must NOT be reachable.
    let host_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    // The "proxy": a Unix-socket echo server.
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("proxy.sock");
    let unix = UnixListener::bind(&sock).unwrap();
    thread::spawn(move || {
        for conn in unix.incoming() {
            let Ok(conn) = conn else { continue };
            thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut writer = conn;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    if line == "drop\n" {
                        // Abort this connection: the relay must survive it.
                        let _ = writer.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    let _ = writer.write_all(format!("echo:{line}").as_bytes());
                    line.clear();
                }
            });
        }
    });
    let relay_port = 18080;
    let script = format!(
        "if (exec 3<>/dev/tcp/127.0.0.1/{host_port}) 2>/dev/null; then echo HOST-REACHED; else echo host-blocked; fi; \
         if (exec 3<>/dev/tcp/1.1.1.1/443) 2>/dev/null; then echo NET-REACHED; else echo net-blocked; fi; \
         exec 5<>/dev/tcp/127.0.0.1/{relay_port}; echo drop >&5; cat <&5; exec 5>&-; \
         exec 3<>/dev/tcp/127.0.0.1/{relay_port}; echo ping >&3; head -n1 <&3; \
         exec 4<>/dev/tcp/127.0.0.1/{relay_port}; echo pong >&4; head -n1 <&4; \
         test -S /run/moat/proxy.sock && echo socket-mounted"
    );
    let mut s = spec(ws.path(), vec!["bash".into(), "-c".into(), script]);
    s.network = NetworkMode::Isolated {
        relay_port,
        proxy_socket: sock.clone(),
        capture: None,
    };
    let r = run(&s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "host-blocked\nnet-blocked\necho:ping\necho:pong\nsocket-mounted\n"
    );
    drop(host_listener);
}

/// A client that ignores proxy settings still ends up at the proxy: the
/// name resolves inside, the connection is captured and arrives as a
/// `CONNECT` with the run's credentials; other ports, UDP and the host's
/// loopback stay out of reach.
#[test]
fn captured_connections_arrive_at_the_proxy_as_connect() {
    let ws = tempfile::tempdir().unwrap();
    let host_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("proxy.sock");
    let unix = UnixListener::bind(&sock).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen_by_proxy = seen.clone();
    thread::spawn(move || {
        for conn in unix.incoming() {
            let Ok(conn) = conn else { continue };
            let seen = seen_by_proxy.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut writer = conn;
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                seen.lock().unwrap().push(head.clone());
                if head.contains("blocked.test") {
                    let _ =
                        writer.write_all(b"HTTP/1.1 407 Blocked by moat network policy\r\n\r\n");
                    return;
                }
                let _ = writer.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
                // The tunnel: answer one plain HTTP request.
                let mut request = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    request.push_str(&line);
                }
                let body = format!("tunnelled {}", request.lines().next().unwrap_or(""));
                let _ = writer.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    let script = format!(
        "env | grep -i proxy; \
         curl -sS --max-time 5 http://api.example.test/hello; echo; \
         curl -sS --max-time 5 http://blocked.test/ >/dev/null 2>&1 && echo BLOCKED-REACHED || echo blocked-refused; \
         getent hosts api.example.test | cut -d' ' -f1; \
         if (exec 3<>/dev/tcp/127.0.0.1/{host_port}) 2>/dev/null; then echo HOST-REACHED; else echo host-blocked; fi; \
         if (exec 3<>/dev/tcp/203.0.113.9/5432) 2>/dev/null; then echo port-captured; else echo PORT-MISSED; fi; \
         sleep 0.3"
    );
    // (The pause: the relay, inside the sandbox, sends the last CONNECT
    // after the client has already closed; the sandbox ending at once
    // could cut it off before the fake proxy reads it, on a loaded machine.)
    let mut s = spec(ws.path(), vec!["bash".into(), "-c".into(), script]);
    s.network = NetworkMode::Isolated {
        relay_port: 18080,
        proxy_socket: sock.clone(),
        capture: Some(moat_runtime_native::CaptureSpec {
            proxy_authorization: moat_runtime_native::ProxyAuthorization::new(
                "Basic bW9hdDp0b2tlbg==",
            ),
            ports: vec![80, 443],
            host_ports: vec![],
        }),
    };
    let r = run(&s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "tunnelled GET /hello HTTP/1.1\nblocked-refused\n198.18.0.1\nhost-blocked\nport-captured\n",
        "{}",
        r.stderr
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen[0].starts_with("CONNECT api.example.test:80 HTTP/1.1\r\n"),
        "{seen:?}"
    );
    assert!(
        seen[0].contains("Proxy-Authorization: Basic bW9hdDp0b2tlbg==\r\n"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|h| h.starts_with("CONNECT blocked.test:80 ")),
        "{seen:?}"
    );
    // Every TCP port is captured, not only 80 and 443; the relay does not
    // wait for the client's first bytes there (the server may speak first).
    assert!(
        seen.iter()
            .any(|h| h.starts_with("CONNECT 203.0.113.9:5432 ")),
        "{seen:?}"
    );
    drop(host_listener);
}

fn processes_with_arg(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) && !cmdline.contains("sh -c") {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

#[test]
fn process_tree_dies_with_the_command() {
    let ws = tempfile::tempdir().unwrap();
    let needle = format!("1000.{}", std::process::id());
    let r = run(&spec(
        ws.path(),
        sh(&format!("sleep {needle} & sleep {needle} & echo started")),
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "started\n");
    let left = processes_with_arg(&format!("sleep {needle}"));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn signals_are_forwarded_and_kill_works() {
    let ws = tempfile::tempdir().unwrap();
    let s = spec(ws.path(), vec!["sleep".into(), "30".into()]);
    let started = std::time::Instant::now();
    let r = run_with(
        Path::new(HARNESS),
        &s,
        &[
            ("MOAT_HARNESS_SIGNAL", "15"),
            ("MOAT_HARNESS_SIGNAL_AFTER_MS", "300"),
        ],
        &[],
    );
    assert_eq!(r.code, 128 + 15, "{}", r.stderr);
    assert!(r.stderr.contains("signal=15"), "{}", r.stderr);

    let r = run_with(
        Path::new(HARNESS),
        &s,
        &[
            ("MOAT_HARNESS_SIGNAL", "9"),
            ("MOAT_HARNESS_SIGNAL_AFTER_MS", "300"),
        ],
        &[],
    );
    assert_eq!(r.code, 128 + 9, "{}", r.stderr);
    assert!(r.stderr.contains("signal=9"), "{}", r.stderr);
    assert!(started.elapsed().as_secs() < 20);
}

#[test]
fn command_not_found_exits_127() {
    let ws = tempfile::tempdir().unwrap();
    let r = run(&spec(ws.path(), vec!["no-such-tool-xyz".into()]));
    assert_eq!(r.code, 127);
    assert!(
        r.stderr
            .contains("moat: command not found in sandbox: no-such-tool-xyz"),
        "{}",
        r.stderr
    );
}

#[test]
fn excluded_paths_are_tmpfs_and_links_are_refused_inside() {
    let ws = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("node_modules")).unwrap();
    std::fs::write(src.path().join("node_modules/f"), "host").unwrap();
    let mut s = spec(
        ws.path(),
        sh("cd /data/node_modules && ls -A && echo in > f && cat f; if test -d /data/new; then echo new; fi"),
    );
    let mount = BindMount {
        source: src.path().into(),
        target: "/data".into(),
        read_only: true,
        exclude: vec!["node_modules".into(), "new".into()],
    };
    s.workload.mounts = vec![mount.clone()];
    let r = run(&s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Missing under a read-only mount: left alone, the host unwritten.
    assert_eq!(r.stdout, "in\n");
    assert!(!src.path().join("new").exists());
    assert_eq!(
        std::fs::read_to_string(src.path().join("node_modules/f")).unwrap(),
        "host"
    );

    // A link swapped in after moat-run's check: refused by the init.
    std::fs::remove_dir_all(src.path().join("node_modules")).unwrap();
    std::os::unix::fs::symlink("/etc", src.path().join("node_modules")).unwrap();
    s.workload.command = vec!["true".into()];
    let r = run(&s);
    assert_eq!(r.code, 120);
    assert!(
        r.stderr.contains(
            "cannot exclude node_modules from the mount at /data (it is, or passes through, a \
             symbolic link"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn setup_errors_name_the_path() {
    let r = run(&spec(
        Path::new("/nonexistent/moat-project"),
        vec!["true".into()],
    ));
    assert_eq!(r.code, 120);
    assert!(
        r.stderr.contains("/nonexistent/moat-project"),
        "{}",
        r.stderr
    );

    let ws = tempfile::tempdir().unwrap();
    let mut s = spec(ws.path(), vec!["true".into()]);
    s.workload.mounts.push(BindMount {
        source: "/nonexistent/source-dir".into(),
        target: "/data".into(),
        read_only: true,
        exclude: Vec::new(),
    });
    let r = run(&s);
    assert_eq!(r.code, 120);
    assert!(r.stderr.contains("/nonexistent/source-dir"), "{}", r.stderr);
}

#[test]
fn piped_stdio_is_line_readable() {
    let ws = tempfile::tempdir().unwrap();
    let r = run_with(
        Path::new(HARNESS),
        &spec(ws.path(), sh("echo one; echo two >&2; echo three")),
        &[("MOAT_HARNESS_PIPED", "1")],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "out: one\nout: three\n");
    assert!(r.stderr.contains("err: two\n"), "{}", r.stderr);
}

#[test]
fn check_support_passes() {
    let out = Command::new(HARNESS).arg("--check").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `setpriv` arguments that run a command as uid and gid 65534.
const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// A copy of the harness that uid 65534 can execute (in a directory that
/// must live as long as it is used), when this test runs as root and uid
/// 65534 may create user namespaces here; `None` says why not.
fn harness_for_nobody() -> Option<(tempfile::TempDir, PathBuf)> {
    // Not root: the other tests already run unprivileged.
    if !moat_testkit::require::root() {
        return None;
    }
    let probe = Command::new(AS_NOBODY[0])
        .args(&AS_NOBODY[1..])
        .args(["unshare", "-U", "-r", "true"])
        .status();
    if !moat_testkit::require::available(
        "ROOT",
        (!matches!(probe, Ok(s) if s.success()))
            .then(|| format!("uid 65534 may not create user namespaces here ({probe:?})")),
    ) {
        return None;
    }
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let harness: PathBuf = bin_dir.path().join("moat-native-harness");
    std::fs::copy(HARNESS, &harness).unwrap();
    std::fs::set_permissions(&harness, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some((bin_dir, harness))
}

#[test]
fn works_as_an_unprivileged_user() {
    let Some((_bin_dir, harness)) = harness_for_nobody() else {
        return;
    };
    let setpriv = AS_NOBODY;
    let ws = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(ws.path(), Some(65534), Some(65534)).unwrap();

    let r = run_with(
        &harness,
        &spec(
            ws.path(),
            sh("id -u; id -un; echo ok > file; ls -A /root 2>&1 | head -c0; test -e /root || echo no-root"),
        ),
        &[],
        &setpriv,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "65534\ndev\nno-root\n");
    let meta = std::fs::metadata(ws.path().join("file")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
}

#[test]
fn sandbox_dies_when_the_caller_is_killed() {
    let ws = tempfile::tempdir().unwrap();
    let needle = format!("777.{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.json");
    let s = spec(ws.path(), sh(&format!("sleep {needle} & sleep {needle}")));
    std::fs::write(&spec_path, serde_json::to_vec(&s).unwrap()).unwrap();
    let mut caller = Command::new(HARNESS).arg(&spec_path).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while processes_with_arg(&format!("sleep {needle}")).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox did not start"
        );
        thread::sleep(std::time::Duration::from_millis(20));
    }
    caller.kill().unwrap(); // SIGKILL: no cleanup code runs in the caller.
    caller.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = processes_with_arg(&format!("sleep {needle}"));
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {left:?}"
        );
        thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Forks until the kernel refuses, then prints how many children it got.
const FORK_UNTIL_REFUSED: &str = "import os, signal\nn = 0\ntry:\n    while n < 2000:\n        if os.fork() == 0:\n            signal.pause()\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)\n";

#[test]
fn process_limit_holds_for_every_caller() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("forks.py"), FORK_UNTIL_REFUSED).unwrap();
    let mut s = spec(ws.path(), vec!["python3".into(), "forks.py".into()]);
    s.limits.pids = 64;
    let r = run(&s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let forked: u32 = r.stdout.trim().parse().unwrap();
    assert!(forked < 64, "forked {forked} processes under a limit of 64");
}

/// The same as a user without cgroups: rlimits hold the process count,
/// and a memory limit that cannot be enforced is refused, not ignored.
#[test]
fn without_cgroups_limits_fall_back_to_rlimits_or_are_refused() {
    let Some((_bin_dir, harness)) = harness_for_nobody() else {
        return;
    };
    let setpriv = AS_NOBODY;
    let ws = tempfile::tempdir().unwrap();
    std::fs::set_permissions(ws.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(ws.path().join("forks.py"), FORK_UNTIL_REFUSED).unwrap();
    std::os::unix::fs::chown(ws.path(), Some(65534), Some(65534)).unwrap();

    let mut s = spec(ws.path(), vec!["python3".into(), "forks.py".into()]);
    s.limits.pids = 64;
    let r = run_with(&harness, &s, &[], &setpriv);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let forked: u32 = r.stdout.trim().parse().unwrap();
    assert!(forked < 64, "forked {forked} processes under a limit of 64");

    s.limits.memory_bytes = Some(256 << 20);
    let r = run_with(&harness, &s, &[], &setpriv);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("a memory limit (container.memory) needs a cgroup"),
        "{}",
        r.stderr
    );
}
