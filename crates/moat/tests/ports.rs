//! End-to-end tests of `ports:` / `--port` through the real binary: what
//! is refused before anything starts, and what a run records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

/// A project directory with `moat.yaml` holding `yaml`.
fn project(env: &common::TestEnv, yaml: &str) -> std::path::PathBuf {
    let dir = env.dir.path().join("project");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("moat.yaml"), yaml).unwrap();
    dir
}

#[test]
fn a_bad_ports_entry_is_a_moat_yaml_error_with_its_line() {
    let env = common::TestEnv::new();
    let dir = project(&env, "name: demo\nports:\n  web: 3000\n  my_api: 70000\n");
    let out = env.run(&["run", dir.to_str().unwrap(), "--", "true"]);
    out.failure();
    insta::assert_snapshot!(env.redact(&out.stderr), @r#"
    Error: [TMP]/project/moat.yaml:4: ports.my_api: "my_api" is not a valid endpoint name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit (it becomes a hostname)

    To fix: rename it, e.g. web, api or api-2 (it is served at https://<name>.<run>.localhost).
    "#);
}

#[test]
fn a_bad_port_flag_is_refused_with_the_form_it_takes() {
    let env = common::TestEnv::new();
    let dir = project(&env, "name: demo\n");
    let out = env.run(&[
        "run",
        dir.to_str().unwrap(),
        "--port",
        "web:3000",
        "--",
        "true",
    ]);
    out.failure();
    insta::assert_snapshot!(env.redact(&out.stderr), @r#"Error: invalid --port "web:3000": expected NAME=PORT with a port from 1 to 65535, e.g. web=3000"#);
}

#[test]
fn a_runs_endpoints_from_moat_yaml_and_flags_are_recorded() {
    let env = common::ProxiedEnv::new(&[]);
    std::fs::write(env.project().join("moat.yaml"), "ports:\n  web: 3000\n").unwrap();
    let out = env.run(&[
        "run",
        "--name",
        "two-ports",
        "--port",
        "api=8080",
        "--",
        "true",
    ]);
    out.success();
    let runs = env.env.moat_home().join("runs");
    let meta = std::fs::read_dir(&runs)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("metadata.json"))
        .find(|p| p.is_file())
        .expect("a run");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(meta).unwrap()).unwrap();
    assert_eq!(meta["ports"], serde_json::json!({"api": 8080, "web": 3000}));
}

/// `PORT\n` through the run's port socket, then `request`; the answer
/// byte and what came back.
fn through_port_socket(socket: &std::path::Path, port: u16, request: &[u8]) -> (u8, String) {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
    conn.write_all(format!("{port}\n").as_bytes()).unwrap();
    let mut answer = [0u8; 1];
    conn.read_exact(&mut answer).unwrap();
    let mut body = String::new();
    if answer[0] == b'+' {
        conn.write_all(request).unwrap();
        conn.read_to_string(&mut body).unwrap();
    }
    (answer[0], body)
}

/// The directory of the only run in `env`.
fn run_dir(env: &common::ProxiedEnv) -> std::path::PathBuf {
    std::fs::read_dir(env.env.moat_home().join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("metadata.json").is_file())
        .expect("a run")
}

#[test]
fn the_port_socket_reaches_only_the_runs_endpoints_inside_its_network() {
    let env = common::ProxiedEnv::new(&[]);
    std::fs::write(env.project().join("index.html"), "served-inside\n").unwrap();
    let out = env.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "--port",
        "web=18431",
        "--",
        "python3",
        "-m",
        "http.server",
        "18431",
        "--bind",
        "127.0.0.1",
    ]);
    out.success();
    let socket = run_dir(&env).join("ports.sock");
    let request = b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n";
    // Until the server listens, the helper answers '-'.
    let mut got = (b'-', String::new());
    for _ in 0..300 {
        got = through_port_socket(&socket, 18431, request);
        if got.0 == b'+' {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(got.0, b'+', "the server never answered through the socket");
    assert!(got.1.ends_with("served-inside\n"), "{}", got.1);
    // A port that is not an endpoint is refused, even with a server.
    assert_eq!(through_port_socket(&socket, 22, request).0, b'-');
    // Not reachable on the host's own loopback: the run has its own.
    assert!(std::net::TcpStream::connect(("127.0.0.1", 18431)).is_err());
    env.run(&["stop", "web"]).success();
    assert!(std::os::unix::net::UnixStream::connect(&socket).is_err());
}
