//! Every byte through the proxy, on the native runtime: a sandbox has a
//! network of its own under either policy, and clients that ignore the
//! proxy variables are captured and handed to the proxy, which injects,
//! polices and traces them like any other request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;

const GH_TOKEN: &str = "ghp_captureSecret0123456789abcdefghijk";

/// The proxy variables removed, as a client with its own HTTP stack sees
/// the world.
const NO_PROXY_ENV: &str =
    "env -u HTTP_PROXY -u HTTPS_PROXY -u http_proxy -u https_proxy -u NODE_USE_ENV_PROXY";

fn trace_of(t: &common::ProxiedEnv) -> String {
    let runs = t.env.moat_home().join("runs");
    let mut out = String::new();
    for entry in std::fs::read_dir(runs).unwrap().flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path().join("network.jsonl")) {
            out.push_str(&text);
        }
    }
    out
}

#[test]
fn clients_ignoring_the_proxy_are_captured_injected_and_traced() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    t.grant_github(GH_TOKEN);
    let script = format!(
        r#"
        {NO_PROXY_ENV} curl -sS -o /dev/null -w "curl=%{{http_code}}\n" https://api.github.com/user -H "Authorization: Bearer $GH_TOKEN"
        {NO_PROXY_ENV} node -e 'fetch("https://api.github.com/from-node", {{headers: {{authorization: "Bearer " + process.env.GH_TOKEN}}}}).then(r => console.log("node=" + r.status), e => console.log("node-error=" + e.cause))'
        "#
    );
    let out = t.run(&["run", "--grant", "github", "--", "sh", "-c", &script]);
    out.success();
    assert!(
        out.stdout.contains("curl=200"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("node=200"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let seen = t.upstream.requests();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/user", "/from-node"], "{}", out.stderr);
    for request in &seen {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {GH_TOKEN}").as_str()),
            "the credential was not injected into a captured request"
        );
    }
    let trace = trace_of(&t);
    assert!(trace.contains("https://api.github.com/user"), "{trace}");
    assert!(
        trace.contains("https://api.github.com/from-node"),
        "{trace}"
    );
    assert!(!trace.contains(GH_TOKEN));
}

#[test]
fn under_strict_a_captured_connection_to_a_host_not_allowed_is_refused_and_traced() {
    let t = common::ProxiedEnv::new(&["api.github.com", "elsewhere.test"]);
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\n  rules:\n    - api.github.com\n",
    )
    .unwrap();
    let script = format!(
        r#"
        {NO_PROXY_ENV} curl -sS -o /dev/null -w "allowed=%{{http_code}}\n" https://api.github.com/ok
        {NO_PROXY_ENV} curl -sS -o /dev/null --max-time 5 https://elsewhere.test/secret 2>/dev/null && echo REACHED || echo refused
        "#
    );
    let out = t.run(&["run", "--", "sh", "-c", &script]);
    out.success();
    assert!(
        out.stdout.contains("allowed=200"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("refused"), "{}", out.stdout);
    let seen = t.upstream.requests();
    assert!(seen.iter().all(|r| r.path != "/secret"), "{seen:?}");
    let trace = trace_of(&t);
    assert!(trace.contains("elsewhere.test"), "{trace}");
    assert!(trace.contains("blocked"), "{trace}");
}

#[test]
fn host_loopback_udp_and_abstract_sockets_are_out_of_reach_in_permissive() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let abstract_name = format!("moat-capture-test-{}", std::process::id());
    let abstract_addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            abstract_name.as_bytes(),
        )
        .unwrap();
    let abstract_listener = UnixListener::bind_addr(&abstract_addr).unwrap();
    abstract_listener.set_nonblocking(true).unwrap();
    let script = format!(
        r#"
        if (exec 3<>/dev/tcp/127.0.0.1/{tcp_port}) 2>/dev/null; then echo TCP-REACHED; else echo tcp-refused; fi
        echo hello > /dev/udp/127.0.0.1/{udp_port} 2>/dev/null; echo udp-sent
        python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect("\0{abstract_name}"); print("ABSTRACT-REACHED")' 2>/dev/null || echo abstract-refused
        "#
    );
    let out = t.run(&["run", "--", "bash", "-c", &script]);
    out.success();
    assert_eq!(
        out.stdout.trim(),
        "tcp-refused\nudp-sent\nabstract-refused",
        "{}",
        out.stderr
    );
    let mut buf = [0u8; 16];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a datagram reached the host"
    );
    assert!(
        abstract_listener.accept().is_err(),
        "the abstract socket was reached"
    );
}

#[test]
fn network_host_ports_are_reachable_at_the_host_gateway_and_no_others() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    let given_port = common::line_server();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    std::fs::write(
        t.project().join("moat.yaml"),
        format!("network:\n  policy: strict\n  host: [{given_port}]\n"),
    )
    .unwrap();
    let script = format!(
        r#"
        echo "gateway=$MOAT_HOST_GATEWAY"
        exec 3<>/dev/tcp/$MOAT_HOST_GATEWAY/{given_port}; echo hi >&3; head -n1 <&3
        (exec 4<>/dev/tcp/$MOAT_HOST_GATEWAY/{other_port} && echo hi >&4 && timeout 3 head -c1 <&4 | grep -q . && echo OTHER-REACHED) 2>/dev/null || echo other-refused
        "#
    );
    let out = t.run(&["run", "--", "bash", "-c", &script]);
    out.success();
    assert_eq!(
        out.stdout.trim(),
        "gateway=moat-host\nmodel says hi\nother-refused",
        "{}",
        out.stderr
    );
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_err(), "a host port not given was reached");
}

#[test]
fn a_client_that_rejects_the_moat_certificate_shows_in_the_trace() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    // Only the system roots: moat's CA is not among them.
    let out = t.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "curl -sS --cacert /etc/ssl/certs/ca-certificates.crt https://api.github.com/ >/dev/null 2>&1 || echo refused",
    ]);
    out.success();
    assert_eq!(out.stdout, "refused\n", "{}", out.stderr);
    let trace = t.run(&["trace", "--network"]);
    trace.success();
    assert!(
        trace
            .stdout
            .contains("the client rejected moat's certificate for api.github.com"),
        "{}",
        trace.stdout
    );
    assert!(
        trace.stdout.contains("/etc/ssl/certs/moat-ca/ca.crt"),
        "{}",
        trace.stdout
    );
}

/// A server that speaks first, as SMTP, SSH and MySQL do: a client that
/// waits for it must not wait for moat as well.
fn greeting_server(greeting: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut &conn, greeting.as_bytes());
        }
    });
    port
}

#[test]
fn captured_tcp_on_any_port_reaches_its_destination_through_the_proxy() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    let client_first = common::line_server();
    let server_first = greeting_server("220 greeter ready\r\n");
    let connect_to = format!(
        "{},db.test:5432:127.0.0.1:{client_first},mail.test:25:127.0.0.1:{server_first}",
        t.upstream.connect_to(&["api.github.com"])
    );
    let script = r#"
        exec 3<>/dev/tcp/db.test/5432; echo hi >&3; head -n1 <&3
        exec 4<>/dev/tcp/mail.test/25; timeout 5 head -n1 <&4 | tr -d '\r'
        "#;
    let started = std::time::Instant::now();
    let out = t.run_with(
        &["run", "--", "bash", "-c", script],
        &[("MOAT_CONNECT_TO", &connect_to)],
    );
    out.success();
    assert_eq!(
        out.stdout.trim(),
        "model says hi\n220 greeter ready",
        "{}",
        out.stderr
    );
    // A server-first protocol is not held up for the client's first bytes.
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    let trace = trace_of(&t);
    assert!(trace.contains("db.test:5432"), "{trace}");
    assert!(trace.contains("mail.test:25"), "{trace}");

    // Under strict, the same connection to a host not allowed is refused.
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\n  rules:\n    - api.github.com\n",
    )
    .unwrap();
    let out = t.run_with(
        &[
            "run",
            "--",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/db.test/5432 && echo hi >&3 && head -n1 <&3; echo done",
        ],
        &[("MOAT_CONNECT_TO", &connect_to)],
    );
    out.success();
    assert_eq!(out.stdout.trim(), "done", "{}", out.stderr);
    let trace = trace_of(&t);
    assert!(
        trace
            .lines()
            .any(|l| l.contains("db.test:5432") && l.contains("blocked")),
        "{trace}"
    );
}

/// The host's own addresses (loopback, and those of its interfaces) are
/// host services: a sandbox reaches them only through `network.host`.
#[test]
fn the_hosts_own_addresses_are_unreachable_through_the_proxy_too() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    let loopback_port = common::line_server();
    let everywhere = TcpListener::bind("0.0.0.0:0").unwrap();
    let everywhere_port = everywhere.local_addr().unwrap().port();
    // The address the host would use to go out (nothing is sent).
    let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
    probe.connect("192.0.2.1:9").unwrap();
    let host_ip = probe.local_addr().unwrap().ip();
    let script = format!(
        r#"
        curl -sS -o /dev/null -w "proxied-loopback=%{{http_code}}\n" --noproxy '' -x "$HTTP_PROXY" http://127.0.0.1:{loopback_port}/
        curl -sS -o /dev/null -w "proxied-localhost=%{{http_code}}\n" --noproxy '' -x "$HTTP_PROXY" http://localhost:{loopback_port}/
        curl -sS -o /dev/null -w "proxied-host-ip=%{{http_code}}\n" --noproxy '' -x "$HTTP_PROXY" http://{host_ip}:{everywhere_port}/
        (exec 3<>/dev/tcp/{host_ip}/{everywhere_port} && echo hi >&3 && timeout 3 head -c1 <&3 | grep -q . && echo captured-host-ip=REACHED) 2>/dev/null || echo captured-host-ip=refused
        "#
    );
    let out = t.run_with(
        &["run", "--", "bash", "-c", &script],
        &[("MOAT_UPSTREAM_TIMEOUT", "5")],
    );
    out.success();
    assert_eq!(
        out.stdout.trim(),
        "proxied-loopback=403\nproxied-localhost=403\nproxied-host-ip=403\ncaptured-host-ip=refused",
        "{}",
        out.stderr
    );
    everywhere.set_nonblocking(true).unwrap();
    assert!(everywhere.accept().is_err(), "the host address was reached");
    let trace = trace_of(&t);
    assert!(trace.contains("network.host"), "{trace}");
}
