//! End-to-end tests of the routing (`ports:`) as a reverse proxy, through
//! the real binary on the native runtime, Docker (gVisor) and Podman:
//! HTTP/2 over https to a Python server in the run, a Node server's page
//! and a WebSocket echo through
//! `wss://`, and `moat trace --network` showing one inbound line per
//! request with its status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

fn routing_port(env: &common::ProxiedEnv) -> u16 {
    env.routing_port()
}

fn ca(env: &common::ProxiedEnv) -> PathBuf {
    env.env.moat_home().join("proxy/ca/ca.crt")
}

/// `curl ARGS` trusting moat's CA: its standard output.
fn curl(env: &common::ProxiedEnv, args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(ca(env))
        .args(args)
        .output()
        .expect("curl (Debian package curl)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl` of `url` until the answer is not a 502 (the server is not
/// listening yet); gives up after 30 s. The status.
fn wait_ready(env: &common::ProxiedEnv, url: &str) -> String {
    let mut status = String::new();
    for _ in 0..300 {
        status = curl(env, &["-o", "/dev/null", "-w", "%{http_code}", url]);
        if status != "502" && status != "000" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    status
}

/// Whether `program` runs; when it does not and `require` is set, the
/// test fails instead of passing silently.
fn have(program: &str, require: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os(require).is_some() {
        panic!("{program} is missing and {require} is set");
    }
    if !found {
        eprintln!("skipped: {program} is missing (set {require} to require it)");
    }
    found
}

/// The inbound lines `moat trace --network RUN` prints.
fn inbound_lines(env: &common::ProxiedEnv, run: &str) -> Vec<String> {
    let shown = env.run(&["trace", "--network", run]);
    shown.success();
    shown
        .stdout
        .lines()
        .filter(|l| l.contains("] <- "))
        .map(str::to_owned)
        .collect()
}

/// `moat ARGS` with the runtime `runtime` (native, docker, podman); for
/// a container, the local Debian image and a project its user can read.
fn run_on(env: &common::ProxiedEnv, runtime: &str, args: &[&str]) -> common::Result {
    if runtime != "native" {
        common::give_to_sandbox_user(&env.project());
    }
    env.run_with(
        args,
        &[
            ("MOAT_RUNTIME", runtime),
            (
                "MOAT_IMAGE_MAP",
                "debian:bookworm-slim=local/debian:bookworm",
            ),
        ],
    )
}

/// Whether the tests on `runtime` can run here (failing when required).
fn runtime_available(runtime: &str) -> bool {
    match runtime {
        "docker" => common::docker_available(),
        "podman" => moat_testkit::require::podman(),
        _ => true,
    }
}

#[test]
fn http2_over_https_reaches_a_python_server_and_each_request_is_traced_with_its_status() {
    http2_to_a_python_server("native");
}

#[test]
fn http2_reaches_a_python_server_in_a_docker_run() {
    if runtime_available("docker") {
        http2_to_a_python_server("docker");
    }
}

#[test]
fn http2_reaches_a_python_server_in_a_podman_run() {
    if runtime_available("podman") {
        http2_to_a_python_server("podman");
    }
}

fn http2_to_a_python_server(runtime: &str) {
    let env = common::ProxiedEnv::new(&[]);
    let script = "mkdir -p /tmp/s && echo page > /tmp/s/who && cd /tmp/s && \
                  exec python3 -m http.server 18450 --bind 127.0.0.1";
    run_on(
        &env,
        runtime,
        &[
            "run",
            "-d",
            "--name",
            "two",
            "--port",
            "web=18450",
            "--",
            "sh",
            "-c",
            script,
        ],
    )
    .success();
    let port = routing_port(&env);
    let base = format!("https://web.two.localhost:{port}");
    assert_eq!(wait_ready(&env, &format!("{base}/who")), "200");
    let before = inbound_lines(&env, "two").len();
    // Three requests on one HTTP/2 connection.
    let out = curl(
        &env,
        &[
            "--http2",
            "-w",
            "[%{http_version} %{http_code}]\n",
            &format!("{base}/who?n=1"),
            &format!("{base}/who?n=2"),
            &format!("{base}/nothing-here"),
        ],
    );
    assert!(out.starts_with("page\n[2 200]\npage\n[2 200]\n"), "{out}");
    assert!(out.ends_with("[2 404]\n"), "{out}");
    let lines = inbound_lines(&env, "two");
    assert_eq!(lines.len(), before + 3, "{lines:#?}");
    let new = &lines[before..];
    for (line, want) in new.iter().zip([
        "<- GET https://web.two.localhost/who?n=1 200 (",
        "<- GET https://web.two.localhost/who?n=2 200 (",
        "<- GET https://web.two.localhost/nothing-here 404 (",
    ]) {
        assert!(line.contains(want), "{line} should contain {want}");
    }
    run_on(&env, runtime, &["stop", "two"]).success();
}

/// A page at `/`, and a WebSocket echo of one text frame (RFC 6455: the
/// accept key is base64(sha1(key + GUID)); client frames are masked).
const NODE_SERVER: &str = r#"
const http = require('http');
const crypto = require('crypto');
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  res.end('node page for ' + req.headers.host + '\n');
});
server.on('upgrade', (req, socket) => {
  const accept = crypto.createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n' +
    'Connection: Upgrade\r\nSec-WebSocket-Accept: ' + accept + '\r\n\r\n');
  let buf = Buffer.alloc(0);
  socket.on('data', (chunk) => {
    buf = Buffer.concat([buf, chunk]);
    if (buf.length < 2) return;
    const len = buf[1] & 0x7f;
    if (len > 125 || buf.length < 6 + len) return;
    const mask = buf.subarray(2, 6);
    const payload = Buffer.from(buf.subarray(6, 6 + len).map((b, i) => b ^ mask[i % 4]));
    buf = buf.subarray(6 + len);
    socket.write(Buffer.concat([Buffer.from([0x81, payload.length]), payload]));
  });
});
server.listen(18451, '127.0.0.1');
"#;

/// Sends "hello" on a WebSocket to the URL in argv and prints what comes
/// back. `*.localhost` resolves to loopback as browsers do.
const NODE_CLIENT: &str = r#"
const dns = require('dns');
const lookup = dns.lookup;
dns.lookup = (host, opts, cb) =>
  lookup(host.endsWith('.localhost') ? '127.0.0.1' : host, opts, cb);
setTimeout(() => { console.log('no echo'); process.exit(1); }, 20000);
const ws = new WebSocket(process.argv[2]);
ws.onopen = () => ws.send('hello');
ws.onmessage = (e) => { console.log('got ' + e.data); process.exit(0); };
ws.onerror = (e) => { console.log('error ' + (e.message || e.type)); process.exit(1); };
"#;

#[test]
fn a_node_server_in_the_run_serves_a_page_and_echoes_a_websocket_message() {
    node_server_and_websocket("native");
}

#[test]
fn a_node_server_in_a_docker_run_echoes_a_websocket_message() {
    if runtime_available("docker") {
        node_server_and_websocket("docker");
    }
}

#[test]
fn a_node_server_in_a_podman_run_echoes_a_websocket_message() {
    if runtime_available("podman") {
        node_server_and_websocket("podman");
    }
}

fn node_server_and_websocket(runtime: &str) {
    if !have("node", "MOAT_REQUIRE_NODE") {
        return;
    }
    let env = common::ProxiedEnv::new(&[]);
    std::fs::write(env.project().join("server.js"), NODE_SERVER).unwrap();
    if runtime != "native" {
        // Node comes from the image built from `dependencies:`.
        std::fs::write(env.project().join("moat.yaml"), "dependencies: [node]\n").unwrap();
    }
    // The client is the host's, outside the project.
    let client = env.env.dir.path().join("client.js");
    std::fs::write(&client, NODE_CLIENT).unwrap();
    run_on(
        &env,
        runtime,
        &[
            "run",
            "-d",
            "--name",
            "nodeweb",
            "--port",
            "web=18451",
            "--",
            "node",
            "server.js",
        ],
    )
    .success();
    let port = routing_port(&env);
    let page = format!("https://web.nodeweb.localhost:{port}/");
    assert_eq!(wait_ready(&env, &page), "200");
    assert_eq!(
        curl(&env, &[&page]),
        format!("node page for web.nodeweb.localhost:{port}\n")
    );
    let out = std::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg(&client)
        .arg(format!("wss://web.nodeweb.localhost:{port}/"))
        .env("NODE_EXTRA_CA_CERTS", ca(&env))
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output()
        .expect("node");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got hello\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = inbound_lines(&env, "nodeweb");
    let last = lines.last().expect("an inbound line");
    assert!(
        last.contains("<- GET https://web.nodeweb.localhost/ 101 ("),
        "{lines:#?}"
    );
    run_on(&env, runtime, &["stop", "nodeweb"]).success();
}
