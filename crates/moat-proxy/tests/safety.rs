//! Issue #12: credentials only on TLS legs, MCP routes under the run's
//! policy, blocked requests that say so in the status line, method
//! overrides policed, silent upstreams answered with 504 and secrets an
//! upstream echoes scrubbed before they reach the sandbox. Real sockets on
//! 127.0.0.1 throughout; "public" names are routed there with connect-to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::Request;
use moat_policy::{HostPattern, HostRules, NetworkPolicy, Policy, Rule};
use moat_proxy::{HeaderName, McpRoute, RunRegistration, SecretValue};
use moat_testkit::TestCa;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const SECRET: &str = "ghp_cleartextSecret0123456789abcdefgh";

async fn raw(h: &Harness, request: &str) -> RawResponse {
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut stream).await.expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_never_travels_on_a_cleartext_leg() {
    let plain = http_upstream().await;
    let port = plain.addr.port();
    // A public name routed to a plain-HTTP server on loopback: the refusal
    // must come from the leg's scheme, not from where it lands.
    let h = Harness::start_config(
        TestCa::new(),
        &format!("api.github.com:80:127.0.0.1:{port},other.test:80:127.0.0.1:{port}"),
        |_| {},
    )
    .await;
    let token = h.register(
        "clear",
        permissive(),
        &[(
            "api.github.com",
            "authorization",
            &format!("Bearer {SECRET}"),
        )],
    );
    let auth = basic(token.expose());

    // Absolute-form plain HTTP.
    let resp = raw(
        &h,
        &format!("GET http://api.github.com/user HTTP/1.1\r\nHost: api.github.com\r\nProxy-Authorization: {auth}\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(
        resp.head
            .starts_with("HTTP/1.1 403 Credential needs TLS (moat)\r\n"),
        "{}",
        resp.head
    );
    assert!(resp.body.contains("plain HTTP"), "{}", resp.body);
    assert!(
        resp.body.contains("https://api.github.com/user"),
        "{}",
        resp.body
    );
    assert!(!resp.body.contains(SECRET));
    assert!(resp
        .head
        .to_ascii_lowercase()
        .contains("proxy-status: moat; error=http_request_denied"));

    // Plain HTTP inside a CONNECT tunnel to port 80.
    let (resp, stream) = connect(h.addr, Some(&auth), "api.github.com:80").await;
    assert_eq!(resp.status, 200);
    let mut send = h1(stream).await;
    send.ready().await.unwrap();
    let resp = send
        .send_request(
            Request::builder()
                .uri("/user")
                .header("host", "api.github.com")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body = body_string(resp).await;
    assert!(body.contains("plain HTTP"), "{body}");

    // The upstream never saw a request for the credentialed host.
    assert!(plain.requests().is_empty(), "{:?}", plain.requests());

    // A host without a credential still works over plain HTTP.
    let resp = raw(
        &h,
        &format!("GET http://other.test/x HTTP/1.1\r\nHost: other.test\r\nProxy-Authorization: {auth}\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(!resp.body.contains(SECRET));

    // Both refusals are traced.
    let lines = trace_lines(&h.trace_path("clear"), 3).await;
    let refused: Vec<_> = lines.iter().filter(|l| l["status_code"] == 403).collect();
    assert_eq!(refused.len(), 2, "{lines:?}");
    assert!(refused[0]["error"].as_str().unwrap().contains("plain HTTP"));
    let text = std::fs::read_to_string(h.trace_path("clear")).unwrap();
    assert!(!text.contains(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_upstreams_may_take_cleartext_unless_disabled() {
    let plain = http_upstream().await;
    let target = format!("127.0.0.1:{}", plain.addr.port());
    for (allowed, status) in [(true, 200), (false, 403)] {
        let h = Harness::start_config(TestCa::new(), "", |c| c.cleartext_loopback = allowed).await;
        let token = h.register(
            "lo",
            permissive(),
            &[("127.0.0.1", "x-api-key", "k-secret-value")],
        );
        let resp = raw(
            &h,
            &format!(
                "GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
                basic(token.expose())
            ),
        )
        .await;
        assert_eq!(resp.status, status, "{resp:?}");
    }
    assert_eq!(plain.requests().len(), 1);
    assert_eq!(plain.last().header("x-api-key"), Some("k-secret-value"));
}

async fn mcp_harness() -> (Harness, Upstream) {
    let ca = TestCa::new();
    let upstream = https_upstream(&ca, &["mcp.test"]).await;
    let port = upstream.addr.port();
    let h = Harness::start(ca, &[("mcp.test", port)]).await;
    (h, upstream)
}

fn mcp_registration(h: &Harness, policy: NetworkPolicy, url: &str) -> RunRegistration {
    RunRegistration {
        run_id: "mcp".into(),
        name: String::new(),
        injections: vec![],
        policy,
        mcp: vec![McpRoute {
            name: moat_policy::McpServerName::parse("gh").unwrap(),
            url: url.parse().unwrap(),
            headers: vec![(
                HeaderName::from_static("x-mcp-token"),
                SecretValue::new("mcp-secret-123").unwrap(),
            )],
        }],
        trace: Some(h.trace_path("mcp")),
        tunnels: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_routes_obey_the_runs_policy() {
    let (h, upstream) = mcp_harness().await;
    // Strict, and mcp.test allowed nowhere: the relay is blocked too.
    let token = h
        .proxy
        .try_register(mcp_registration(
            &h,
            NetworkPolicy::new(Policy::Strict),
            "https://mcp.test/mcp",
        ))
        .unwrap();
    let resp = raw(
        &h,
        &format!(
            "GET /mcp/gh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            token.expose()
        ),
    )
    .await;
    assert_eq!(resp.status, 407, "{resp:?}");
    assert!(resp
        .body
        .starts_with("Moat: request blocked by network policy."));
    assert!(upstream.requests().is_empty());
    h.proxy.unregister("mcp");

    // A deny rule on the MCP host applies to the relay.
    let mut policy = NetworkPolicy::new(Policy::Permissive);
    policy.hosts.push(HostRules {
        host: HostPattern::parse("mcp.test").unwrap(),
        rules: vec![Rule::parse("deny * /mcp/admin/**").unwrap()],
    });
    let token = h
        .proxy
        .try_register(mcp_registration(&h, policy, "https://mcp.test/mcp"))
        .unwrap();
    let resp = raw(
        &h,
        &format!(
            "GET /mcp/gh/admin/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            token.expose()
        ),
    )
    .await;
    assert_eq!(resp.status, 407, "{resp:?}");
    let resp = raw(
        &h,
        &format!(
            "GET /mcp/gh/tools HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            token.expose()
        ),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(upstream.last().path, "/mcp/tools");
    h.proxy.unregister("mcp");

    // An MCP route over plain HTTP to a non-loopback host carries no header.
    let token = h
        .proxy
        .try_register(mcp_registration(
            &h,
            NetworkPolicy::new(Policy::Permissive),
            "http://mcp.test/mcp",
        ))
        .unwrap();
    let resp = raw(
        &h,
        &format!(
            "GET /mcp/gh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            token.expose()
        ),
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert!(resp.body.contains("plain HTTP"), "{}", resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_requests_say_so_in_the_status_line() {
    let plain = http_upstream().await;
    let h = Harness::start_config(TestCa::new(), "", |_| {}).await;
    let token = h.register("strict", NetworkPolicy::new(Policy::Strict), &[]);
    let (resp, _) = connect(h.addr, Some(&basic(token.expose())), "example.com:443").await;
    assert_eq!(resp.status, 407);
    assert!(
        resp.head
            .starts_with("HTTP/1.1 407 Blocked by moat network policy\r\n"),
        "{}",
        resp.head
    );
    let head = resp.head.to_ascii_lowercase();
    assert!(
        head.contains("proxy-status: moat; error=http_request_denied; details=\"host example.com is not in the allow list\""),
        "{head}"
    );
    assert!(!head.contains("proxy-authenticate"), "{head}");
    assert!(resp
        .body
        .starts_with("Moat: request blocked by network policy."));

    // Plain HTTP, same.
    let target = format!("127.0.0.1:{}", plain.addr.port());
    let resp = raw(
        &h,
        &format!(
            "GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
            basic(token.expose())
        ),
    )
    .await;
    assert!(resp
        .head
        .starts_with("HTTP/1.1 407 Blocked by moat network policy\r\n"));

    // A missing token keeps the standard phrase and a challenge.
    let (resp, _) = connect(h.addr, None, "example.com:443").await;
    assert!(
        resp.head
            .starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
        "{}",
        resp.head
    );
    assert!(resp
        .head
        .to_ascii_lowercase()
        .contains("proxy-authenticate"));

    let lines = trace_lines(&h.trace_path("strict"), 2).await;
    assert_eq!(lines[0]["status_code"], 407);
    assert_eq!(lines[0]["error"], "blocked by network policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_override_headers_are_policed() {
    let ca = TestCa::new();
    let upstream = https_upstream(&ca, &["api.github.com"]).await;
    let h = Harness::start(ca, &[("api.github.com", upstream.addr.port())]).await;
    let mut policy = NetworkPolicy::new(Policy::Permissive);
    policy.hosts.push(HostRules {
        host: HostPattern::parse("api.github.com").unwrap(),
        rules: vec![Rule::parse("deny DELETE /**").unwrap()],
    });
    let token = h.register("ovr", policy, &[]);
    let mut send = h1(tunnel(&h, &token, "api.github.com", &[b"http/1.1"]).await).await;
    for header in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        send.ready().await.unwrap();
        let resp = send
            .send_request(
                Request::builder()
                    .method("POST")
                    .uri("/repos/a/b")
                    .header(header, "DELETE")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 407, "{header}");
        let _ = body_string(resp).await;
    }
    assert!(upstream.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_a_504_in_time() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let h = Harness::start_config(TestCa::new(), "", |c| {
        c.upstream_timeout = Duration::from_secs(1)
    })
    .await;
    let token = h.register("slow", permissive(), &[]);
    let started = Instant::now();
    let resp = raw(
        &h,
        &format!(
            "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nProxy-Authorization: {}\r\n\r\n",
            basic(token.expose())
        ),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(resp.status, 504, "{resp:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(resp.body.contains("MOAT_UPSTREAM_TIMEOUT"), "{}", resp.body);
    let lines = trace_lines(&h.trace_path("slow"), 1).await;
    assert_eq!(lines[0]["status_code"], 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_an_upstream_echoes_are_scrubbed() {
    let ca = TestCa::new();
    let upstream = https_upstream(&ca, &["api.github.com"]).await;
    let h = Harness::start(ca, &[("api.github.com", upstream.addr.port())]).await;
    let token = h.register(
        "echo",
        permissive(),
        &[(
            "api.github.com",
            "authorization",
            &format!("Bearer {SECRET}"),
        )],
    );
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let io = tunnel(&h, &token, "api.github.com", &[alpn]).await;
        let resp = if alpn == b"h2" {
            let mut send = h2(io).await;
            send.ready().await.unwrap();
            send.send_request(get("https://api.github.com/echo"))
                .await
                .unwrap()
        } else {
            let mut send = h1(io).await;
            send.ready().await.unwrap();
            send.send_request(get("/echo")).await.unwrap()
        };
        assert_eq!(resp.status(), 200);
        let body = body_string(resp).await;
        // The upstream reflected the header it got...
        assert!(body.contains("\"authorization\""), "{body}");
        // ...but the sandbox sees no secret.
        assert!(!body.contains(SECRET), "{body}");
        assert!(!body.contains(&SECRET[..SECRET.len() - 1]), "{body}");
    }
    assert_eq!(
        upstream.last().header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    let lines = trace_lines(&h.trace_path("echo"), 2).await;
    assert!(
        lines[0]["scrubbed"].as_u64().unwrap_or(0) >= 1,
        "{:?}",
        lines[0]
    );
}

/// Reads until EOF; how long the proxy took to close the connection.
async fn closed_within(mut stream: TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connections_are_reaped() {
    let plain = http_upstream().await;
    let h = Harness::start_config(TestCa::new(), "", |c| {
        c.client_timeout = Duration::from_secs(1)
    })
    .await;
    let token = h.register("idle", permissive(), &[]);
    // Silent from the start.
    let stream = TcpStream::connect(h.addr).await.unwrap();
    assert!(closed_within(stream, Duration::from_secs(5))
        .await
        .is_some());
    // Idle after a keep-alive request.
    let target = format!("127.0.0.1:{}", plain.addr.port());
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
                basic(token.expose())
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.unwrap().status, 200);
    assert!(closed_within(stream, Duration::from_secs(5))
        .await
        .is_some());
    // Idle inside an intercepted tunnel, HTTP/1.1 and HTTP/2.
    let ca = TestCa::new();
    let upstream = https_upstream(&ca, &["api.github.com"]).await;
    let h = Harness::start_with(
        ca,
        &[("api.github.com", upstream.addr.port())],
        Duration::from_secs(1),
    )
    .await;
    let token = h.register("idle", permissive(), &[]);
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let (resp, stream) =
            connect(h.addr, Some(&basic(token.expose())), "api.github.com:443").await;
        assert_eq!(resp.status, 200);
        let tls = tls(stream, &h.ca_pem, "api.github.com", &[alpn]).await;
        if alpn == b"h2" {
            // A real HTTP/2 client, one request, then idle: GOAWAY.
            let mut send = h2(tls).await;
            send.ready().await.unwrap();
            let resp = send
                .send_request(get("https://api.github.com/x"))
                .await
                .unwrap();
            let _ = body_string(resp).await;
            let started = Instant::now();
            while !send.is_closed() && started.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(send.is_closed(), "h2 tunnel left open");
            continue;
        }
        let (mut r, _w) = tokio::io::split(tls);
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        let started = Instant::now();
        let closed = loop {
            match tokio::time::timeout(
                Duration::from_secs(5).saturating_sub(started.elapsed()),
                r.read(&mut buf),
            )
            .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        assert!(closed, "h1 tunnel left open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_machine_is_not_an_upstream() {
    let plain = http_upstream().await;
    let port = plain.addr.port();
    let h = Harness::start_config(
        TestCa::new(),
        &format!("mapped.test:80:127.0.0.1:{port}"),
        |c| c.allow_host_addresses = false,
    )
    .await;
    let token = h.register("lo", permissive(), &[]);
    let auth = basic(token.expose());
    for host in ["127.0.0.1", "localhost", "127.1.2.3", "[::1]", "0.0.0.0"] {
        let target = format!("{host}:{port}");
        let resp = raw(
            &h,
            &format!(
                "GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(resp.status, 403, "{host}: {resp:?}");
        assert!(resp.body.contains("network.host"), "{resp:?}");
        let (resp, _) = connect(h.addr, Some(&auth), &target).await;
        assert_eq!(resp.status, 403, "CONNECT {host}: {resp:?}");
    }
    // A name the caller mapped is the caller's choice.
    let resp = raw(
        &h,
        &format!("GET http://mapped.test/ok HTTP/1.1\r\nHost: mapped.test\r\nProxy-Authorization: {auth}\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(plain.requests().len(), 1);
}

/// A server that greets first, then echoes one line back upper-cased.
async fn greeter() -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                w.write_all(b"220 hello\r\n").await.unwrap();
                let mut line = String::new();
                let _ = BufReader::new(r).read_line(&mut line).await;
                let _ = w.write_all(line.to_uppercase().as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_that_are_not_http_are_spliced_when_the_host_is_wholly_allowed() {
    use tokio::io::AsyncReadExt;
    let server = greeter().await;
    let h = Harness::start_config(
        TestCa::new(),
        &format!(
            "mail.test:25:127.0.0.1:{p},ruled.test:25:127.0.0.1:{p}",
            p = server.port()
        ),
        |_| {},
    )
    .await;
    let mut policy = NetworkPolicy::new(Policy::Strict);
    policy.allow_host(HostPattern::parse("mail.test").unwrap());
    let mut ruled = HostRules::allow_all(HostPattern::parse("ruled.test").unwrap());
    ruled.rules.push(Rule::parse("allow GET /only").unwrap());
    policy.hosts.push(ruled);
    let token = h.register("raw", policy, &[]);
    let auth = basic(token.expose());

    // The server speaks first: the greeting arrives without a byte sent.
    let (resp, mut stream) = connect(h.addr, Some(&auth), "mail.test:25").await;
    assert_eq!(resp.status, 200);
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting))
        .await
        .expect("the greeting in time")
        .unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");
    stream.write_all(b"ehlo moat\r\n").await.unwrap();
    let mut echo = [0u8; 11];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"EHLO MOAT\r\n");
    drop(stream);

    // A host with request rules cannot be checked without HTTP: refused.
    let (resp, mut stream) = connect(h.addr, Some(&auth), "ruled.test:25").await;
    assert_eq!(resp.status, 200);
    stream.write_all(b"\x00\x01binary\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "{rest:?}");

    let lines = trace_lines(&h.trace_path("raw"), 2).await;
    let text = format!("{lines:?}");
    assert!(text.contains("mail.test:25"), "{text}");
    assert!(text.contains("bytes up"), "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l["url"].as_str().unwrap_or("").contains("ruled.test")
                && l["status_code"] == 407),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_that_is_not_http_passes_through_on_other_ports() {
    let ca = TestCa::new();
    let upstream = https_upstream(&ca, &["imap.test"]).await;
    let upstream_ca = ca.pem();
    let h = Harness::start_config(
        ca,
        &format!("imap.test:993:127.0.0.1:{}", upstream.addr.port()),
        |_| {},
    )
    .await;
    let token = h.register("tls", permissive(), &[]);
    let (resp, stream) = connect(h.addr, Some(&basic(token.expose())), "imap.test:993").await;
    assert_eq!(resp.status, 200);
    // No ALPN: the upstream's own certificate answers, not a moat leaf.
    let tls = tls(stream, &upstream_ca, "imap.test", &[]).await;
    let mut send = h1(tls).await;
    send.ready().await.unwrap();
    let resp = send.send_request(get("/through")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().path, "/through");
}

/// A client that speaks first, but only after the proxy stopped waiting
/// for it, still reaches its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_client_first_protocol_still_gets_through() {
    use tokio::io::AsyncReadExt;
    let server = greeter().await;
    let h = Harness::start_config(
        TestCa::new(),
        &format!("late.test:5432:127.0.0.1:{}", server.port()),
        |_| {},
    )
    .await;
    let token = h.register("late", permissive(), &[]);
    let (resp, mut stream) = connect(h.addr, Some(&basic(token.expose())), "late.test:5432").await;
    assert_eq!(resp.status, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(b"late line\r\n").await.unwrap();
    let mut got = vec![0u8; 22];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(&got, b"220 hello\r\nLATE LINE\r\n");
}

/// Issue #22: a trailing dot, an empty label or another spelling of an
/// address of this machine is still this machine. Each form is refused
/// before anything is dialled, in absolute form and as a `CONNECT`, with
/// the reason and the fix; the server behind them is never reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_this_machine_is_refused() {
    let plain = http_upstream().await;
    let port = plain.addr.port();
    let h = Harness::start_config(
        TestCa::new(),
        &format!("mapped.test:80:127.0.0.1:{port}"),
        |c| {
            c.allow_host_addresses = false;
            c.connect_timeout = Duration::from_secs(2);
        },
    )
    .await;
    let token = h.register("spell", permissive(), &[]);
    let auth = basic(token.expose());
    let this_machine = [
        "localhost.",
        "LOCALHOST.",
        "127.0.0.1.",
        "a.localhost.",
        "0x7f000001",
        "2130706433",
        "127.1",
        "0177.0.0.1",
        "0x7f.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ];
    for host in this_machine {
        let target = format!("{host}:{port}");
        let resp = raw(
            &h,
            &format!(
                "GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(resp.status, 403, "{host}: {resp:?}");
        assert!(
            resp.body.contains("an address of the host machine"),
            "{host}: {resp:?}"
        );
        assert!(resp.body.contains("network.host"), "{host}: {resp:?}");
        let (resp, _) = connect(h.addr, Some(&auth), &target).await;
        assert_eq!(resp.status, 403, "CONNECT {host}: {resp:?}");
    }
    // Names that are no host name at all are refused as such.
    for host in ["localhost..", "..", "a..b"] {
        let target = format!("{host}:{port}");
        let (resp, _) = connect(h.addr, Some(&auth), &target).await;
        assert_eq!(resp.status, 400, "CONNECT {host}: {resp:?}");
        assert!(resp.body.contains("empty label"), "{host}: {resp:?}");
    }
    // Cloud metadata, with and without the dot: refused at once, not
    // dialled (which would time out here).
    for host in ["169.254.169.254", "169.254.169.254.", "0xa9fea9fe"] {
        let (resp, _) = connect(h.addr, Some(&auth), &format!("{host}:80")).await;
        assert_eq!(resp.status, 403, "CONNECT {host}: {resp:?}");
        assert!(resp.body.contains("link-local"), "{host}: {resp:?}");
    }
    assert!(plain.requests().is_empty(), "{:?}", plain.requests());
    // A name the caller mapped is still the caller's choice.
    let resp = raw(
        &h,
        &format!("GET http://mapped.test/ok HTTP/1.1\r\nHost: mapped.test\r\nProxy-Authorization: {auth}\r\n\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
}

/// Issue #22: a host rule on an IPv4 address holds for every spelling
/// of it that a resolver accepts (inet_aton forms, IPv4-mapped IPv6, a
/// trailing dot), and an allowed address is allowed in any spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_spellings_cannot_dodge_a_host_rule() {
    let plain = http_upstream().await;
    let port = plain.addr.port();
    let h = Harness::start_config(TestCa::new(), "", |_| {}).await;
    let mut denying = permissive();
    denying.hosts.push(HostRules {
        host: HostPattern::parse("127.0.0.1").unwrap(),
        rules: vec![Rule::parse("deny * /admin/**").unwrap()],
    });
    let deny = basic(h.register("deny", denying, &[]).expose());
    let mut strict = NetworkPolicy::new(Policy::Strict);
    strict.allow_host(HostPattern::parse("0x7f000001").unwrap());
    let allow = basic(h.register("allow", strict, &[]).expose());
    let spellings = [
        "127.0.0.1",
        "127.0.0.1.",
        "0x7f000001",
        "0X7F000001",
        "2130706433",
        "127.1",
        "127.0.1",
        "0177.0.0.1",
        "0177.0.0.01",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ];
    for host in spellings {
        let target = format!("{host}:{port}");
        let get = |path: &str, auth: &str| {
            format!(
                "GET http://{target}{path} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
            )
        };
        let resp = raw(&h, &get("/admin/x", &deny)).await;
        assert_eq!(resp.status, 407, "{host}: {resp:?}");
        assert!(resp.body.contains("deny * /admin/**"), "{host}: {resp:?}");
        let resp = raw(&h, &get("/ok", &allow)).await;
        assert_eq!(resp.status, 200, "{host}: {resp:?}");
    }
    assert!(plain
        .requests()
        .iter()
        .all(|r| !r.path.starts_with("/admin")));
}
