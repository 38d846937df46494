//! End-to-end tests: real TLS on 127.0.0.1, a fake `api.github.com` served
//! through connect-to, clients that CONNECT through the proxy trusting the
//! moat CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use moat_policy::{HostDecision, HostPattern, NetworkPolicy, Policy, Rule};
use moat_proxy::{
    HeaderName, McpRoute, RunRegistration, SecretValue, INVALID_TOKEN_BODY, MISSING_AUTH_BODY,
};
use moat_testkit::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET_A: &str = "ghp_secretAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

async fn github() -> (Harness, Upstream) {
    let ca = TestCa::new();
    let upstream = https_upstream(&ca, &["api.github.com", "mcp.test"]).await;
    let port = upstream.addr.port();
    let h = Harness::start(
        ca,
        &[
            ("api.github.com", port),
            ("mcp.test", port),
            ("wrong.test", port),
        ],
    )
    .await;
    (h, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_per_run_and_redacts_traces() {
    let (h, upstream) = github().await;
    let a = h.register(
        "run-a",
        permissive(),
        &[(
            "api.github.com",
            "authorization",
            &format!("Bearer {SECRET_A}"),
        )],
    );
    let b = h.register("run-b", permissive(), &[]);

    // Run A: the placeholder is replaced by the secret.
    let mut send = h1(tunnel(&h, &a, "api.github.com", &[b"http/1.1"]).await).await;
    let req = Request::builder()
        .method("POST")
        .uri("/user?x=1")
        .header("host", "api.github.com")
        .header("authorization", "Bearer placeholder")
        .body(Full::new(Bytes::from("hello body")))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo = body_string(resp).await;
    let seen = upstream.last();
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {SECRET_A}"))
    );
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(seen.path, "/user?x=1");
    assert!(echo.contains("hello body"));

    // Keep-alive: a second request on the same tunnel.
    send.ready().await.unwrap();
    let resp = send.send_request(get("/second")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = body_string(resp).await;

    // Run B: no injection, its placeholder passes untouched.
    let mut send = h1(tunnel(&h, &b, "api.github.com", &[b"http/1.1"]).await).await;
    let req = Request::builder()
        .uri("/user")
        .header("authorization", "Bearer placeholder-b")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = body_string(resp).await;
    assert_eq!(
        upstream.last().header("authorization"),
        Some("Bearer placeholder-b")
    );

    // A's trace: three lines, secret never written (the echo body carried it).
    let lines = trace_lines(&h.trace_path("run-a"), 2).await;
    assert!(lines.len() >= 2, "{lines:?}");
    let first = &lines[0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["url"], "https://api.github.com/user?x=1");
    assert_eq!(first["status_code"], 200);
    assert_eq!(first["policy"], "allow");
    assert_eq!(first["req_headers"]["authorization"], "[REDACTED]");
    assert_eq!(first["req_body"], "hello body");
    // The upstream echoed the secret; it was masked before the sandbox (and
    // the trace) saw the body.
    assert!(first["resp_body"]
        .as_str()
        .unwrap()
        .contains("[moat-scrubbed]"));
    assert!(first["scrubbed"].as_u64().unwrap() >= 1);
    assert_eq!(first["credential_used"], "api.github.com");
    assert!(first["ts"].as_str().unwrap().ends_with('Z'));
    assert!(first["duration_ms"].is_number());
    h.proxy.unregister("run-a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bytes = std::fs::read(h.trace_path("run-a")).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains(SECRET_A), "secret leaked into the trace");
    assert!(!text.contains(a.expose()), "token leaked into the trace");
    let b_trace = std::fs::read_to_string(h.trace_path("run-b")).unwrap_or_default();
    assert!(!b_trace.contains(SECRET_A));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requires_a_valid_token() {
    let (h, _upstream) = github().await;
    let _a = h.register("run-a", permissive(), &[]);

    let (resp, _) = connect(h.addr, None, "api.github.com:443").await;
    assert_eq!(resp.status, 407);
    assert_eq!(resp.body, MISSING_AUTH_BODY);
    assert_eq!(resp.body, "Proxy authentication required");
    assert!(resp
        .head
        .to_ascii_lowercase()
        .contains("proxy-authenticate: basic realm=\"moat\""));

    let (resp, _) = connect(h.addr, Some(&basic(&"0".repeat(64))), "api.github.com:443").await;
    assert_eq!(resp.status, 407);
    assert_eq!(resp.body, INVALID_TOKEN_BODY);
    assert_eq!(resp.body, "Invalid proxy token");

    // Plain HTTP, too.
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    stream
        .write_all(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (407, MISSING_AUTH_BODY));
    stream
        .write_all(
            b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nProxy-Authorization: Bearer nope\r\n\r\n",
        )
        .await
        .unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (407, INVALID_TOKEN_BODY));
}

/// The body of a block in run `strict` (registered without a name): the
/// reason's three lines, then the `moat allow` command.
fn blocked_body(reason: &moat_policy::DenyReason) -> String {
    format!(
        "{}\nOr allow it for this run now: {}",
        reason.message(),
        reason.allow_command("strict").unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_policy_blocks_with_the_three_line_message_and_the_allow_command() {
    let (h, upstream) = github().await;
    let plain = http_upstream().await;
    let mut policy = NetworkPolicy::new(Policy::Strict);
    policy.hosts.push(moat_policy::HostRules {
        host: HostPattern::parse("api.github.com").unwrap(),
        rules: vec![Rule::parse("deny DELETE /**").unwrap()],
    });
    policy.allow_host(HostPattern::parse("api.github.com").unwrap());
    let token = h.register("strict", policy.clone(), &[]);

    // CONNECT to a host outside the list: refused before any TLS.
    let (resp, _) = connect(h.addr, Some(&basic(token.expose())), "example.com:443").await;
    let HostDecision::Denied(reason) = policy.host_decision("example.com") else {
        panic!("expected a denial");
    };
    assert_eq!(resp.status, 407);
    assert_eq!(resp.body, blocked_body(&reason));
    assert_eq!(resp.body.lines().count(), 4);

    // Plain HTTP to a host outside the list.
    let target = format!("127.0.0.1:{}", plain.addr.port());
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let req = format!(
        "GET http://{target}/x HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {}\r\n\r\n",
        basic(token.expose())
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let resp = read_response(&mut stream).await.unwrap();
    let moat_policy::Decision::Deny(reason) = policy.decide("127.0.0.1", "GET", "/x") else {
        panic!("expected a denial");
    };
    assert_eq!(
        (resp.status, resp.body.clone()),
        (407, blocked_body(&reason))
    );
    assert_eq!(resp.body.lines().count(), 4);
    assert!(plain.requests().is_empty());

    // Inside an intercepted tunnel: GET allowed, DELETE denied by rule.
    let mut send = h1(tunnel(&h, &token, "api.github.com", &[b"http/1.1"]).await).await;
    send.ready().await.unwrap();
    let resp = send.send_request(get("/repos/a/b")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = body_string(resp).await;
    let req = Request::builder()
        .method("DELETE")
        .uri("/repos/a/b")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 407);
    let body = body_string(resp).await;
    let moat_policy::Decision::Deny(reason) =
        policy.decide("api.github.com", "DELETE", "/repos/a/b")
    else {
        panic!("expected a denial");
    };
    assert_eq!(body, blocked_body(&reason));
    assert!(
        body.ends_with("moat allow strict api.github.com 'DELETE /repos/a/b'"),
        "{body}"
    );
    assert_eq!(
        upstream.requests().len(),
        1,
        "the DELETE never reached upstream"
    );

    let lines = trace_lines(&h.trace_path("strict"), 4).await;
    let denies: Vec<_> = lines.iter().filter(|l| l["policy"] == "deny").collect();
    assert_eq!(denies.len(), 3, "{lines:?}");
    assert!(denies
        .iter()
        .any(|l| l["method"] == "CONNECT" && l["status_code"] == 407));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_end_to_end() {
    let (h, upstream) = github().await;
    let a = h.register(
        "run-a",
        permissive(),
        &[(
            "api.github.com",
            "authorization",
            &format!("Bearer {SECRET_A}"),
        )],
    );
    let tls = tunnel(&h, &a, "api.github.com", &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = h2(tls).await;
    for i in 0..3 {
        let req = Request::builder()
            .uri(format!("https://api.github.com/h2/{i}"))
            .header("authorization", "Bearer placeholder")
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let _ = body_string(resp).await;
    }
    let seen = upstream.last();
    assert_eq!(seen.path, "/h2/2");
    assert_eq!(seen.version, "HTTP/2.0", "upstream negotiated h2 too");
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {SECRET_A}"))
    );
}

/// One GET on an HTTP/1.1 client connection; the upstream's echo.
async fn h1_get(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> String {
    send.ready().await.unwrap();
    let resp = send.send_request(get(path)).await.unwrap();
    assert_eq!(resp.status(), 200);
    body_string(resp).await
}

#[tokio::test]
async fn http1_client_connections_each_hold_one_upstream_connection() {
    let ca = TestCa::new();
    let upstream = https_upstream_h1(&ca, &["h1.test"]).await;
    let h = Harness::start(ca, &[("h1.test", upstream.addr.port())]).await;
    let a = h.register(
        "run-a",
        permissive(),
        &[("h1.test", "x-api-key", "secret-for-h1")],
    );

    // Requests of one client connection share one upstream connection,
    // with the Host and origin-form target of the destination.
    let mut first = h1(tunnel(&h, &a, "h1.test", &[b"http/1.1"]).await).await;
    for i in 0..3 {
        let echo = h1_get(&mut first, &format!("/one/{i}?q=1")).await;
        assert!(echo.contains(&format!("/one/{i}?q=1")), "{echo}");
    }
    let seen = upstream.last();
    assert_eq!(seen.path, "/one/2?q=1");
    assert_eq!(seen.version, "HTTP/1.1");
    assert_eq!(seen.header("host"), Some("h1.test"));
    assert_eq!(seen.header("x-api-key"), Some("secret-for-h1"));
    assert_eq!(upstream.connections(), 1);

    // A second client connection open at the same time gets its own.
    let mut second = h1(tunnel(&h, &a, "h1.test", &[b"http/1.1"]).await).await;
    h1_get(&mut second, "/two").await;
    h1_get(&mut first, "/one/again").await;
    assert_eq!(upstream.connections(), 2);

    // An upstream that closes its connection: the next request opens
    // another.
    h1_get(&mut first, "/close").await;
    h1_get(&mut first, "/one/after-close").await;
    assert_eq!(upstream.connections(), 3);
    assert_eq!(upstream.last().path, "/one/after-close");

    // Once the client connections close, their upstream connections
    // serve the next client connections.
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..2 {
        let mut next = h1(tunnel(&h, &a, "h1.test", &[b"http/1.1"]).await).await;
        h1_get(&mut next, "/three").await;
    }
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test]
async fn http2_upstreams_are_shared_by_http1_client_connections() {
    let (h, upstream) = github().await;
    let a = h.register("run-a", permissive(), &[]);
    // New client connections arriving together: one connection finds out
    // that the upstream speaks HTTP/2 while the others wait, then all
    // share one pooled connection.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(h1(tunnel(&h, &a, "api.github.com", &[b"http/1.1"]).await).await);
    }
    futures_util::future::join_all(
        clients
            .iter_mut()
            .enumerate()
            .map(|(i, send)| async move { h1_get(send, &format!("/shared/{i}")).await }),
    )
    .await;
    for send in &mut clients {
        h1_get(send, "/shared/again").await;
        assert_eq!(upstream.last().version, "HTTP/2.0");
    }
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_stream_one_by_one() {
    let (h, upstream) = github().await;
    let a = h.register("run-a", permissive(), &[]);
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let tls = tunnel(&h, &a, "api.github.com", &[alpn]).await;
        let resp = if alpn == b"h2" {
            let mut send = h2(tls).await;
            send.send_request(get("https://api.github.com/sse"))
                .await
                .unwrap()
        } else {
            let mut send = h1(tls).await;
            send.send_request(get("/sse")).await.unwrap()
        };
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        // The upstream only sends the second event after we got the first:
        // a buffering proxy would hang here.
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("first event arrives before the second is sent")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: one\n\n");
        upstream.sse_gate.notify_one();
        let second = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(second.into_data().unwrap(), "data: two\n\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_relayed() {
    let (h, _upstream) = github().await;
    let a = h.register("run-a", permissive(), &[]);
    let mut send = h1(tunnel(&h, &a, "api.github.com", &[b"http/1.1"]).await).await;
    let req = websocket_request("api.github.com");
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    for msg in [&b"ping"[..], b"second frame"] {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_revokes_at_once() {
    let (h, _upstream) = github().await;
    let a = h.register("run-a", permissive(), &[]);
    let b = h.register("run-b", permissive(), &[]);
    assert_eq!(h.proxy.runs(), vec!["run-a".to_owned(), "run-b".to_owned()]);
    let mut send = h1(tunnel(&h, &a, "api.github.com", &[b"http/1.1"]).await).await;
    send.ready().await.unwrap();
    let resp = send.send_request(get("/before")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = body_string(resp).await;

    assert!(h.proxy.unregister("run-a"));
    assert!(!h.proxy.unregister("run-a"));
    assert_eq!(h.proxy.runs(), vec!["run-b".to_owned()]);
    // The open tunnel is closed (or answers 407).
    let after = match send.ready().await {
        Ok(()) => send.send_request(get("/after")).await,
        Err(e) => Err(e),
    };
    if let Ok(resp) = after {
        assert_eq!(resp.status(), 407);
    }
    let (resp, _) = connect(h.addr, Some(&basic(a.expose())), "api.github.com:443").await;
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (407, "Invalid proxy token")
    );

    // Run B is untouched.
    let mut send = h1(tunnel(&h, &b, "api.github.com", &[b"http/1.1"]).await).await;
    send.ready().await.unwrap();
    let resp = send.send_request(get("/b")).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_unix_socket() {
    let ca = TestCa::new();
    let h = Harness::start(ca, &[]).await;
    let plain = http_upstream().await;
    let token = h.register(
        "run",
        permissive(),
        &[("127.0.0.1", "x-api-key", "k-secret-value")],
    );
    let target = format!("127.0.0.1:{}", plain.addr.port());

    let mut send = h1(TcpStream::connect(h.addr).await.unwrap()).await;
    let req = Request::builder()
        .uri(format!("http://{target}/plain?q=1"))
        .header("proxy-authorization", basic(token.expose()))
        .header("x-api-key", "placeholder")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = body_string(resp).await;
    let seen = plain.last();
    assert_eq!(seen.path, "/plain?q=1");
    assert_eq!(seen.header("x-api-key"), Some("k-secret-value"));
    assert_eq!(seen.header("x-hop"), None);
    assert_eq!(seen.header("proxy-authorization"), None);
    assert_eq!(seen.header("host"), Some(&*target));

    // The same through a Unix socket.
    let sock = h.dir.path().join("proxy.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let p = h.proxy.clone();
    tokio::spawn(async move { p.serve_unix(listener).await });
    let mut send = h1(tokio::net::UnixStream::connect(&sock).await.unwrap()).await;
    let req = Request::builder()
        .uri(format!("http://{target}/via-unix"))
        .header("proxy-authorization", format!("Bearer {}", token.expose()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(plain.last().path, "/via-unix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_relay_injects_route_headers_and_hides_the_token() {
    let (h, upstream) = github().await;
    let token = h
        .proxy
        .try_register(RunRegistration {
            run_id: "mcp".into(),
            name: String::new(),
            injections: vec![],
            // The relay obeys the policy: the daemon grants the host of an
            // MCP server whose credential the run holds.
            policy: {
                let mut p = NetworkPolicy::new(Policy::Strict);
                p.grant_host(HostPattern::parse("mcp.test").unwrap());
                p
            },
            mcp: vec![McpRoute {
                name: moat_policy::McpServerName::parse("gh").unwrap(),
                url: http::Uri::from_static("https://mcp.test/mcp"),
                headers: vec![(
                    HeaderName::from_static("x-mcp-token"),
                    SecretValue::new("mcp-secret-123").unwrap(),
                )],
            }],
            trace: Some(h.trace_path("mcp")),
            tunnels: vec![],
        })
        .unwrap();
    let mut send = h1(TcpStream::connect(h.addr).await.unwrap()).await;
    let req = Request::builder()
        .method("POST")
        .uri("/mcp/gh/messages?session=1")
        .header("host", h.addr.to_string())
        .header("authorization", format!("Bearer {}", token.expose()))
        .body(Full::new(Bytes::from("{\"jsonrpc\":\"2.0\"}")))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = body_string(resp).await;
    let seen = upstream.last();
    assert_eq!(seen.path, "/mcp/messages?session=1");
    assert_eq!(seen.header("x-mcp-token"), Some("mcp-secret-123"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the run token never goes upstream"
    );
    assert!(seen
        .headers
        .iter()
        .all(|(_, v)| !v.contains(token.expose())));

    // SSE through the relay.
    let req = Request::builder()
        .uri("/mcp/gh/sse")
        .header("proxy-authorization", basic(token.expose()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: one\n\n");
    upstream.sse_gate.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;

    // Unknown route, no token.
    send.ready().await.unwrap();
    let resp = send
        .send_request(
            Request::builder()
                .uri("/mcp/nope")
                .header("authorization", format!("Bearer {}", token.expose()))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let _ = body_string(resp).await;
    send.ready().await.unwrap();
    let resp = send.send_request(get("/mcp/gh")).await.unwrap();
    assert_eq!(resp.status(), 407);
    let _ = body_string(resp).await;

    let lines = trace_lines(&h.trace_path("mcp"), 2).await;
    assert_eq!(lines[0]["credential_used"], "mcp:gh");
    let text = std::fs::read_to_string(h.trace_path("mcp")).unwrap();
    assert!(!text.contains("mcp-secret-123"));
    assert!(!text.contains(token.expose()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_failure_is_a_502_that_explains() {
    let (h, _upstream) = github().await;
    let a = h.register("run-a", permissive(), &[]);
    // wrong.test is routed to an upstream whose certificate does not name it.
    let mut send = h1(tunnel(&h, &a, "wrong.test", &[b"http/1.1"]).await).await;
    send.ready().await.unwrap();
    let resp = send.send_request(get("/")).await.unwrap();
    assert_eq!(resp.status(), 502);
    let body = body_string(resp).await;
    assert!(
        body.starts_with("moat: upstream TLS verification failed for wrong.test: "),
        "{body}"
    );
    let lines = trace_lines(&h.trace_path("run-a"), 1).await;
    assert_eq!(lines[0]["status_code"], 502);
    assert!(lines[0]["error"]
        .as_str()
        .unwrap()
        .contains("verification failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_hosts_get_fresh_leaves_ip_targets_too() {
    let ca = TestCa::new();
    let upstream = https_upstream(&ca, &["127.0.0.1"]).await;
    let h = Harness::start(ca, &[]).await;
    let a = h.register("run-a", permissive(), &[]);
    // An IP target: no SNI, the leaf is minted for the CONNECT target.
    let target = format!("127.0.0.1:{}", upstream.addr.port());
    let (resp, stream) = connect(h.addr, Some(&basic(a.expose())), &target).await;
    assert_eq!(resp.status, 200);
    let tls = tls(stream, &h.ca_pem, "127.0.0.1", &[b"http/1.1"]).await;
    let mut send = h1(tls).await;
    send.ready().await.unwrap();
    let resp = send.send_request(get("/ip")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().path, "/ip");
    assert_eq!(h.proxy.ca().cached_leaves(), 1);
}
