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
    // `+` comes with a socket connected to the server inside the run's
    // own network: its peer is that network's loopback.
    let Ok(mut tcp) = moat_capture::connect_port(socket, port) else {
        return (b'-', String::new());
    };
    assert_eq!(
        tcp.peer_addr().unwrap(),
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    );
    let mut body = String::new();
    tcp.write_all(request).unwrap();
    tcp.read_to_string(&mut body).unwrap();
    (b'+', body)
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
    let socket = run_dir(&env).join("endpoints/ports.sock");
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

fn routing_port(env: &common::ProxiedEnv) -> u16 {
    env.routing_port()
}

/// `curl` of `url` (trusting moat's CA): the status and the body.
fn curl(env: &common::ProxiedEnv, url: &str) -> (String, String) {
    let ca = env.env.moat_home().join("proxy/ca/ca.crt");
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

/// `curl` until the answer is not a 502 (the server is not listening
/// yet); gives up after 30 s.
fn curl_ready(env: &common::ProxiedEnv, url: &str) -> (String, String) {
    let mut got = curl(env, url);
    for _ in 0..300 {
        if got.0 != "502" && got.0 != "000" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        got = curl(env, url);
    }
    got
}

/// `moat run -d --name NAME --port web=PORT`: a Python server answering
/// `/who` with `NAME`.
fn start_server(env: &common::ProxiedEnv, name: &str, port: u16) {
    let script = format!(
        "mkdir -p /tmp/s && echo {name} > /tmp/s/who && cd /tmp/s && \
         exec python3 -m http.server {port} --bind 127.0.0.1"
    );
    let web = format!("web={port}");
    env.run(&[
        "run", "-d", "--name", name, "--port", &web, "--", "sh", "-c", &script,
    ])
    .success();
}

#[test]
fn a_server_in_the_run_is_reached_at_its_routed_urls_until_the_run_stops() {
    let env = common::ProxiedEnv::new(&[]);
    start_server(&env, "site", 18432);
    let port = routing_port(&env);
    let https = format!("https://web.site.localhost:{port}/who");
    assert_eq!(curl_ready(&env, &https), ("200".into(), "site\n".into()));
    let http = format!("http://web.site.localhost:{port}/who");
    assert_eq!(curl(&env, &http), ("200".into(), "site\n".into()));
    // One endpoint: the run's own name answers too.
    let short = format!("https://site.localhost:{port}/who");
    assert_eq!(curl(&env, &short), ("200".into(), "site\n".into()));
    // The index lists it.
    let index = std::process::Command::new("curl")
        .args(["-s", "-H", "Accept: application/json"])
        .arg(format!("http://localhost:{port}/"))
        .output()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index.stdout).unwrap();
    assert_eq!(
        index["runs"][0]["endpoints"]["web"],
        format!("https://web.site.localhost:{port}")
    );
    // The request is in the run's trace, marked inbound.
    let trace = std::fs::read_to_string(run_dir(&env).join("network.jsonl")).unwrap();
    assert!(
        trace.contains("\"url\":\"https://web.site.localhost/who\""),
        "{trace}"
    );
    assert!(trace.contains("\"direction\":\"inbound\""), "{trace}");
    let shown = env.run(&["trace", "--network", "site"]);
    assert!(
        shown
            .stdout
            .contains("<- GET https://web.site.localhost/who"),
        "{}",
        shown.stdout
    );
    env.run(&["stop", "site"]).success();
    assert_eq!(curl(&env, &https).0, "404");
}

#[test]
fn two_runs_serving_the_same_port_are_each_reached_at_their_own_url() {
    let env = common::ProxiedEnv::new(&[]);
    start_server(&env, "alpha", 18433);
    start_server(&env, "beta", 18433);
    let port = routing_port(&env);
    for name in ["alpha", "beta"] {
        let url = format!("https://web.{name}.localhost:{port}/who");
        assert_eq!(curl_ready(&env, &url), ("200".into(), format!("{name}\n")));
    }
    env.run(&["stop", "alpha"]).success();
    env.run(&["stop", "beta"]).success();
}

#[test]
fn each_endpoint_knows_its_own_url_inside() {
    let env = common::ProxiedEnv::new(&[]);
    let out = env.run(&[
        "run",
        "--name",
        "urls",
        "--port",
        "web=3000",
        "--port",
        "my-api=4000",
        "--",
        "sh",
        "-c",
        "echo $MOAT_URL_WEB $MOAT_URL_MY_API",
    ]);
    out.success();
    // The daemon outlives the run by a moment (MOAT_DAEMON_IDLE_TIMEOUT).
    let port = routing_port(&env);
    assert_eq!(
        out.stdout.trim(),
        format!("https://web.urls.localhost:{port} https://my-api.urls.localhost:{port}")
    );
}

#[test]
fn moat_open_prints_an_endpoints_url_and_list_shows_the_endpoints() {
    let env = common::ProxiedEnv::new(&[]);
    start_server(&env, "opened", 18434);
    let port = routing_port(&env);
    let out = env.run(&["open", "opened", "--print"]);
    out.success();
    assert_eq!(out.stdout, format!("https://web.opened.localhost:{port}\n"));
    let out = env.run(&["open", "--print"]);
    assert_eq!(out.stdout, format!("https://localhost:{port}/\n"));
    let out = env.run(&["open", "opened", "api", "--print"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r"
    Error: run opened has endpoints web; name one of them

    For example: moat open opened <endpoint>
    ");
    let list = env.run(&["list"]);
    let header = list.stdout.lines().next().unwrap_or_default().to_owned();
    assert!(header.trim_end().ends_with("ENDPOINTS"), "{}", list.stdout);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with("opened") && l.trim_end().ends_with("web")),
        "{}",
        list.stdout
    );
    env.run(&["stop", "opened"]).success();
}

/// `moat run -d` on a container runtime: the same Python server as
/// [`start_server`], in the local Debian image.
fn start_server_on(env: &common::ProxiedEnv, runtime: &str, name: &str, port: u16) {
    let script = format!(
        "mkdir -p /tmp/s && echo {name} > /tmp/s/who && cd /tmp/s && \
         exec python3 -m http.server {port} --bind 127.0.0.1"
    );
    let web = format!("web={port}");
    env.run_with(
        &[
            "run", "-d", "--name", name, "--port", &web, "--", "sh", "-c", &script,
        ],
        &[
            ("MOAT_RUNTIME", runtime),
            (
                "MOAT_IMAGE_MAP",
                "debian:bookworm-slim=local/debian:bookworm",
            ),
        ],
    )
    .success();
}

/// Two runs in containers serving the same port, each at its own URL;
/// no host port is published for them; gone once stopped.
fn containers_are_routed_without_published_ports(runtime: &str, engine: &str) {
    let env = common::ProxiedEnv::new(&[]);
    start_server_on(&env, runtime, "cont-a", 8000);
    start_server_on(&env, runtime, "cont-b", 8000);
    let port = routing_port(&env);
    for name in ["cont-a", "cont-b"] {
        let url = format!("https://web.{name}.localhost:{port}/who");
        assert_eq!(curl_ready(&env, &url), ("200".into(), format!("{name}\n")));
    }
    let http = format!("http://cont-a.localhost:{port}/who");
    assert_eq!(curl(&env, &http), ("200".into(), "cont-a\n".into()));
    // Nothing of the runs listens on the host's interfaces.
    let ports = std::process::Command::new(engine)
        .args([
            "ps",
            "--filter",
            "label=moat.managed=true",
            "--format",
            "{{.Names}} {{.Ports}}",
        ])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&ports.stdout);
    for line in ports.lines() {
        assert!(
            line.split_whitespace().nth(1).is_none(),
            "a published port: {line}"
        );
    }
    // Nor does the service answer on the container's own address (Docker's
    // bridge; Podman's slirp4netns has none the host reaches): the guard's
    // firewall takes no connection from outside.
    let addresses = std::process::Command::new(engine)
        .args(["ps", "--filter", "label=moat.managed=true", "-q"])
        .output()
        .unwrap();
    for id in String::from_utf8_lossy(&addresses.stdout).split_whitespace() {
        let ip = std::process::Command::new(engine)
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                id,
            ])
            .output()
            .unwrap();
        for ip in String::from_utf8_lossy(&ip.stdout).split_whitespace() {
            let addr: std::net::SocketAddr = format!("{ip}:8000").parse().unwrap();
            let reached =
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2));
            assert!(reached.is_err(), "{addr} answers from the host");
        }
    }
    env.run_with(&["stop", "cont-a"], &[("MOAT_RUNTIME", runtime)])
        .success();
    env.run_with(&["stop", "cont-b"], &[("MOAT_RUNTIME", runtime)])
        .success();
    let url = format!("https://web.cont-a.localhost:{port}/who");
    assert_eq!(curl(&env, &url).0, "404");
}

#[test]
fn docker_runs_are_routed_without_published_ports() {
    if !common::docker_available() {
        return;
    }
    containers_are_routed_without_published_ports("docker", "docker");
}

#[test]
fn podman_runs_are_routed_without_published_ports() {
    if !moat_testkit::require::podman() {
        return;
    }
    containers_are_routed_without_published_ports("podman", "podman");
}

/// Whether `program` is on PATH; without it the calling test skips with
/// the reason printed, unless `require` is set in the environment (CI),
/// which makes it fail.
fn have(program: &str, require: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os(require).is_none(),
            "{require} is set but {program} is missing (Debian: apt-get install chromium libnss3-tools)"
        );
        eprintln!("skipped: {program} is not installed");
    }
    found
}

#[test]
fn a_browser_renders_a_page_the_run_serves_through_its_https_url() {
    if !have("chromium", "MOAT_REQUIRE_BROWSER") || !have("certutil", "MOAT_REQUIRE_BROWSER") {
        return;
    }
    let env = common::ProxiedEnv::new(&[]);
    std::fs::write(
        env.project().join("page.html"),
        "<html><body><p id=\"x\">static</p><script>\
         document.getElementById('x').textContent = 'built-by-js-' + (6 * 7);\
         </script></body></html>\n",
    )
    .unwrap();
    env.run(&[
        "run",
        "-d",
        "--name",
        "browse",
        "--port",
        "web=18435",
        "--",
        "python3",
        "-m",
        "http.server",
        "18435",
        "--bind",
        "127.0.0.1",
    ])
    .success();
    let port = routing_port(&env);
    let url = format!("https://web.browse.localhost:{port}/page.html");
    assert_eq!(curl_ready(&env, &url).0, "200");
    // A throwaway profile that trusts moat's CA (Chromium reads the NSS
    // database under $HOME/.pki).
    let browser_home = env.env.dir.path().join("browser");
    let nssdb = browser_home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let ca = env.env.moat_home().join("proxy/ca/ca.crt");
    for args in [
        vec!["-N", "-d", &db, "--empty-password"],
        vec![
            "-A",
            "-d",
            &db,
            "-n",
            "moat",
            "-t",
            "C,,",
            "-i",
            ca.to_str().unwrap(),
        ],
    ] {
        assert!(std::process::Command::new("certutil")
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
    let out = std::process::Command::new("chromium")
        .env("HOME", &browser_home)
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!(
            "--user-data-dir={}",
            browser_home.join("profile").display()
        ))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("<p id=\"x\">built-by-js-42</p>"), "{dom}");
    env.run(&["stop", "browse"]).success();
}

/// An SSE server: one event at once, then the response stays open.
const SSE_SERVER: &str = r#"import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18436))
s.listen(8)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        data += c.recv(4096)
    if b"GET /events" not in data:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        c.close()
        continue
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: first-event\n\n")
    time.sleep(3600)
"#;

#[test]
fn server_sent_events_arrive_before_the_response_ends() {
    server_sent_events_on("native");
}

#[test]
fn server_sent_events_arrive_as_sent_from_a_docker_run() {
    if common::docker_available() {
        server_sent_events_on("docker");
    }
}

#[test]
fn server_sent_events_arrive_as_sent_from_a_podman_run() {
    if moat_testkit::require::podman() {
        server_sent_events_on("podman");
    }
}

fn server_sent_events_on(runtime: &str) {
    let env = common::ProxiedEnv::new(&[]);
    std::fs::write(env.project().join("sse.py"), SSE_SERVER).unwrap();
    if runtime != "native" {
        common::give_to_sandbox_user(&env.project());
    }
    let on = [
        ("MOAT_RUNTIME", runtime),
        (
            "MOAT_IMAGE_MAP",
            "debian:bookworm-slim=local/debian:bookworm",
        ),
    ];
    env.run_with(
        &[
            "run",
            "-d",
            "--name",
            "events",
            "--port",
            "sse=18436",
            "--",
            "python3",
            "sse.py",
        ],
        &on,
    )
    .success();
    let port = routing_port(&env);
    assert_eq!(
        curl_ready(&env, &format!("https://events.localhost:{port}/")).0,
        "200"
    );
    // The response never ends: curl gives up after 5 s (exit 28) with
    // what it received by then.
    let ca = env.env.moat_home().join("proxy/ca/ca.crt");
    let out = std::process::Command::new("curl")
        .args(["-sN", "--max-time", "5", "--cacert"])
        .arg(&ca)
        .arg(format!("https://sse.events.localhost:{port}/events"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(28), "the response ended");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "data: first-event\n\n"
    );
    env.run_with(&["stop", "events"], &on).success();
}
