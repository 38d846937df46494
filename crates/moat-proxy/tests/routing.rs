//! The routing listener (`ports:`) as a reverse proxy, against a local
//! HTTP/1.1 backend (`Backend::Tcp`): HTTP/1.1 keep-alive, HTTP/2 over TLS
//! and with prior knowledge, WebSocket, server-sent events, the error
//! answers, and one trace line per request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use moat_proxy::{Backend, CertificateAuthority, Router, RunRoutes};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A guard against a hang, not a timed assertion.
const GUARD: Duration = Duration::from_secs(30);

struct Fixture {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    trace: PathBuf,
    ca_der: rustls_pki_types::CertificateDer<'static>,
    sse_end: Arc<Notify>,
}

/// The router on a loopback port, with run `demo` whose endpoint `web` is
/// the fake backend, and `down` whose endpoint answers nothing.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = CertificateAuthority::load_or_create(&dir.path().join("ca")).expect("ca");
    let ca_der = ca.cert_der().clone();
    let trace = dir.path().join("network.jsonl");
    std::fs::write(&trace, "").expect("trace file");
    let sse_end = Arc::new(Notify::new());
    let backend = backend(sse_end.clone()).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed_addr = closed.local_addr().expect("addr");
    drop(closed);
    let router = Router::new(ca);
    for (id, name, backend) in [("r1", "demo", backend), ("r2", "down", closed_addr)] {
        router.insert(RunRoutes {
            run_id: id.into(),
            name: name.into(),
            endpoints: BTreeMap::from([("web".to_owned(), Backend::Tcp(backend))]),
            trace_path: Some(trace.clone()),
        });
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(router.serve(listener));
    Fixture {
        _dir: dir,
        addr,
        trace,
        ca_der,
        sse_end,
    }
}

/// An HTTP/1.1 server: `/ws` switches protocols and echoes, `/sse` sends
/// one event, then another once `sse_end` is notified, and anything else
/// answers what it was asked, keeping the connection alive.
async fn backend(sse_end: Arc<Notify>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(backend_conn(conn, sse_end.clone()));
        }
    });
    addr
}

async fn backend_conn(conn: TcpStream, sse_end: Arc<Notify>) {
    let mut conn = BufReader::new(conn);
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            match conn.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push(line.trim_end().to_owned()),
            }
        }
        let path = head
            .first()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_owned();
        let header = |name: &str| {
            head.iter()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        let conn = conn.get_mut();
        if path == "/ws" {
            let _ = conn
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await;
            let (mut r, mut w) = conn.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            return;
        }
        if path == "/sse" {
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: one\n\n")
                .await;
            sse_end.notified().await;
            let _ = conn.write_all(b"data: two\n\n").await;
            return;
        }
        let body = format!(
            "path={path} host={} proto={} fwd-host={} fwd-for={} connection={}",
            header("host"),
            header("x-forwarded-proto"),
            header("x-forwarded-host"),
            header("x-forwarded-for"),
            header("connection"),
        );
        let status = if path == "/missing" {
            "404 Not Found"
        } else {
            "200 OK"
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if conn.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The trace file's lines as (method, url, status).
fn trace_lines(path: &Path) -> Vec<(String, String, u64)> {
    std::fs::read_to_string(path)
        .expect("trace")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            assert_eq!(v["direction"], "inbound");
            (
                v["method"].as_str().unwrap_or("").to_owned(),
                v["url"].as_str().unwrap_or("").to_owned(),
                v["status_code"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

async fn body_text(resp: http::Response<hyper::body::Incoming>) -> String {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn get(uri: &str, host: Option<&str>) -> Request<Empty<Bytes>> {
    let mut req = Request::get(uri);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    req.body(Empty::new()).expect("request")
}

async fn tls(f: &Fixture, sni: &str, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(f.ca_der.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(f.addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("tls handshake")
}

#[tokio::test]
async fn three_keep_alive_requests_are_forwarded_and_traced_each_with_its_status() {
    let f = fixture().await;
    let tcp = TcpStream::connect(f.addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let host = format!("web.demo.localhost:{}", f.addr.port());
    let mut bodies = Vec::new();
    for path in ["/a", "/missing", "/c?x=1"] {
        let req = get(path, Some(&host));
        let resp = send.send_request(req).await.expect("response");
        bodies.push((resp.status(), body_text(resp).await));
    }
    assert_eq!(bodies[1].0, StatusCode::NOT_FOUND);
    assert_eq!(
        bodies[0].1,
        format!("path=/a host={host} proto=http fwd-host={host} fwd-for=127.0.0.1 connection=")
    );
    let lines = trace_lines(&f.trace);
    let want: Vec<(String, String, u64)> = [("/a", 200), ("/missing", 404), ("/c?x=1", 200)]
        .iter()
        .map(|(p, s)| ("GET".into(), format!("http://web.demo.localhost{p}"), *s))
        .collect();
    assert_eq!(lines, want);
}

#[tokio::test]
async fn http2_over_tls_is_served_and_forwarded_with_the_authority_as_host() {
    let f = fixture().await;
    let stream = tls(&f, "web.demo.localhost", b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let authority = format!("web.demo.localhost:{}", f.addr.port());
    let resp = send
        .send_request(get(&format!("https://{authority}/page"), None))
        .await
        .expect("response");
    assert_eq!(
        (resp.status(), resp.version()),
        (StatusCode::OK, Version::HTTP_2)
    );
    let body = body_text(resp).await;
    assert!(
        body.starts_with(&format!(
            "path=/page host={authority} proto=https fwd-host={authority}"
        )),
        "{body}"
    );
    assert_eq!(trace_lines(&f.trace)[0].2, 200);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_on_plain_http() {
    let f = fixture().await;
    let tcp = TcpStream::connect(f.addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let uri = format!("http://web.demo.localhost:{}/h2c", f.addr.port());
    let resp = send.send_request(get(&uri, None)).await.expect("response");
    assert_eq!(
        (resp.status(), resp.version()),
        (StatusCode::OK, Version::HTTP_2)
    );
    assert!(body_text(resp).await.starts_with("path=/h2c "));
}

/// Reads until the blank line ending a response head.
async fn read_head(conn: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).await.expect("read") == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn a_websocket_upgrade_is_joined_to_the_backend_and_traced_as_101() {
    let f = fixture().await;
    let mut conn = TcpStream::connect(f.addr).await.expect("connect");
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: web.demo.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .expect("write");
    let head = tokio::time::timeout(GUARD, read_head(&mut conn))
        .await
        .expect("head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    conn.write_all(b"hello").await.expect("write");
    let mut echo = [0u8; 5];
    tokio::time::timeout(GUARD, conn.read_exact(&mut echo))
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(&echo, b"hello");
    let lines = trace_lines(&f.trace);
    assert_eq!(
        lines,
        vec![("GET".into(), "http://web.demo.localhost/ws".into(), 101)]
    );
}

#[tokio::test]
async fn a_server_sent_event_arrives_before_the_backend_ends_the_response() {
    let f = fixture().await;
    let mut conn = TcpStream::connect(f.addr).await.expect("connect");
    conn.write_all(b"GET /sse HTTP/1.1\r\nHost: web.demo.localhost\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: one") {
        let n = tokio::time::timeout(GUARD, conn.read(&mut chunk))
            .await
            .expect("the first event, before the response ends")
            .expect("read");
        assert!(n > 0, "the response ended before its first event: {seen:?}");
        seen.extend_from_slice(&chunk[..n]);
    }
    assert!(!String::from_utf8_lossy(&seen).contains("data: two"));
    f.sse_end.notify_one();
    while !String::from_utf8_lossy(&seen).contains("data: two") {
        let n = tokio::time::timeout(GUARD, conn.read(&mut chunk))
            .await
            .expect("the second event")
            .expect("read");
        assert!(
            n > 0,
            "the response ended before its second event: {seen:?}"
        );
        seen.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn unknown_hosts_garbage_and_silent_backends_get_404_400_and_502() {
    let f = fixture().await;
    let ask = |request: &'static [u8]| async move {
        let mut conn = TcpStream::connect(f.addr).await.expect("connect");
        conn.write_all(request).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(GUARD, conn.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let not_found =
        ask(b"GET / HTTP/1.1\r\nHost: web.nobody.localhost\r\nConnection: close\r\n\r\n").await;
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
    assert!(
        not_found.contains("no running run serves web.nobody.localhost"),
        "{not_found}"
    );
    let garbage = ask(b"\x01\x02 nonsense\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let down =
        ask(b"GET /x HTTP/1.1\r\nHost: web.down.localhost\r\nConnection: close\r\n\r\n").await;
    assert!(down.starts_with("HTTP/1.1 502"), "{down}");
    assert!(
        down.contains("nothing answers on endpoint web of run down yet"),
        "{down}"
    );
    let lines = trace_lines(&f.trace);
    assert_eq!(
        lines,
        vec![("GET".into(), "http://web.down.localhost/x".into(), 502)]
    );
}

#[tokio::test]
async fn a_request_for_another_host_than_the_tls_name_is_misdirected() {
    let f = fixture().await;
    let stream = tls(&f, "web.demo.localhost", b"http/1.1").await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = send
        .send_request(get("/", Some("web.down.localhost")))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
    let resp = send
        .send_request(get("/same", Some("web.demo.localhost")))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body_text(resp).await.starts_with("path=/same "));
}

#[tokio::test]
async fn the_index_lists_the_runs_as_json() {
    let f = fixture().await;
    let tcp = TcpStream::connect(f.addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = get("/", Some("localhost"));
    req.headers_mut()
        .insert("accept", http::HeaderValue::from_static("application/json"));
    let resp = send.send_request(req).await.expect("response");
    let body = body_text(resp).await;
    let port = f.addr.port();
    assert!(
        body.contains(&format!("https://web.demo.localhost:{port}")),
        "{body}"
    );
}
