//! Both HTTP/1.1 legs of a tunnel, against a scripted upstream that writes
//! raw bytes. Upstream: response framings (chunked with extensions and
//! trailers, split at every byte, `Content-Length`, until close, 1xx
//! before the answer, HEAD, 204), uploads of known and unknown length,
//! connection reuse and what breaks it, malformed answers. Client side,
//! with raw requests: pipelining, chunked uploads, requests handed to
//! hyper (smuggling-shaped framing, malformed heads, upgrades after plain
//! requests), `Connection: close`, unread bodies and idle connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use moat_policy::{HostPattern, HostRules, NetworkPolicy, Policy, Rule};
use moat_testkit::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the scripted upstream saw of one request: its head as written,
/// and its body, de-chunked.
#[derive(Debug, Clone)]
struct Got {
    head: String,
    body: Vec<u8>,
}

struct Scripted {
    port: u16,
    connections: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Scripted {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    fn last(&self) -> Got {
        self.got.lock().unwrap().last().cloned().unwrap()
    }
}

/// The raw answer to a request for `path`, and whether to close the
/// connection after it.
fn script(method: &str, path: &str, body: &[u8]) -> (Vec<u8>, bool) {
    let raw = |s: &str| s.as_bytes().to_vec();
    match path {
        "/chunked" => (
            raw("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                 5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"),
            false,
        ),
        "/informational" => (
            raw(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n\
                 HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
            ),
            false,
        ),
        "/until-close" => (raw("HTTP/1.1 200 OK\r\n\r\nall of it"), true),
        "/both" => (
            raw(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n\
                 3\r\nabc\r\n0\r\n\r\n",
            ),
            false,
        ),
        "/garbage" => (raw("NOT HTTP AT ALL\r\n\r\n"), true),
        "/truncated" => (
            raw("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
            true,
        ),
        "/conflicting-length" => (
            raw("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"),
            true,
        ),
        "/no-content" => (raw("HTTP/1.1 204 No Content\r\n\r\n"), false),
        "/silent-close" => (raw("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"), true),
        _ if method == "HEAD" => (
            raw("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
            false,
        ),
        _ => {
            let mut out =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend_from_slice(body);
            (out, false)
        }
    }
}

/// A TLS upstream on 127.0.0.1 for `raw.test` answering with [`script`],
/// written a few bytes at a time so that every parse sees partial input.
async fn scripted(ca: &TestCa) -> Scripted {
    let acceptor = tls_acceptor(ca, &["raw.test"], &[b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let (c2, g2) = (connections.clone(), got.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            c2.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let got = g2.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                loop {
                    let Some(request) = read_request(&mut tls, &mut buf).await else {
                        return;
                    };
                    let (method, path) = {
                        let mut words = request.head.split(' ');
                        (
                            words.next().unwrap_or_default().to_owned(),
                            words.next().unwrap_or_default().to_owned(),
                        )
                    };
                    let (answer, close) = script(&method, &path, &request.body);
                    got.lock().unwrap().push(request);
                    for piece in answer.chunks(3) {
                        if tls.write_all(piece).await.is_err() {
                            return;
                        }
                        let _ = tls.flush().await;
                    }
                    if close {
                        let _ = tls.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        port,
        connections,
        got,
    }
}

/// Reads one request (head, then a `Content-Length` or chunked body).
async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
) -> Option<Got> {
    async fn more<S: tokio::io::AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.ok()?;
        (n > 0).then(|| buf.extend_from_slice(&chunk[..n]))
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        more(io, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let lower = head.to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(len) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        while buf.len() < len {
            more(io, buf).await?;
        }
        body = buf.drain(..len).collect();
    } else if lower.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                more(io, buf).await?;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?, 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                more(io, buf).await?;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    Some(Got { head, body })
}

type Body = BoxBody<Bytes, Infallible>;

async fn client(h: &Harness, token: &moat_proxy::RunToken) -> SendRequest<Body> {
    let io = tunnel(h, token, "raw.test", &[b"http/1.1"]).await;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn exchange(
    send: &mut SendRequest<Body>,
    method: &str,
    path: &str,
    body: Body,
) -> (u16, String) {
    send.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "raw.test")
        .body(body)
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

async fn start() -> (Harness, Scripted, moat_proxy::RunToken) {
    let ca = TestCa::new();
    let upstream = scripted(&ca).await;
    let h = Harness::start(ca, &[("raw.test", upstream.port)]).await;
    let token = h.register(
        "run",
        permissive(),
        &[("raw.test", "x-api-key", "k-raw-0123456789")],
    );
    (h, upstream, token)
}

#[tokio::test]
async fn every_response_framing_arrives_whole_and_the_connection_is_reused() {
    let (h, upstream, token) = start().await;
    let mut send = client(&h, &token).await;
    assert_eq!(
        exchange(&mut send, "GET", "/chunked", empty()).await,
        (200, "hello world".into())
    );
    assert_eq!(
        exchange(&mut send, "GET", "/informational", empty()).await,
        (200, "final".into())
    );
    assert_eq!(
        exchange(&mut send, "GET", "/no-content", empty()).await,
        (204, String::new())
    );
    assert_eq!(
        exchange(&mut send, "HEAD", "/head", empty()).await,
        (200, String::new())
    );
    let (status, body) = exchange(&mut send, "GET", "/echo", empty()).await;
    assert_eq!((status, body.as_str()), (200, ""));
    // Everything so far on one upstream connection, with moat's Host,
    // the origin-form target and the injected header.
    assert_eq!(upstream.connections(), 1);
    let head = upstream.last().head;
    assert!(head.starts_with("GET /echo HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("host: raw.test\r\n"), "{head}");
    assert!(head.contains("x-api-key: k-raw-0123456789\r\n"), "{head}");

    // Ended by closing: read to the end, and the next request opens a
    // new connection.
    assert_eq!(
        exchange(&mut send, "GET", "/until-close", empty()).await,
        (200, "all of it".into())
    );
    assert_eq!(exchange(&mut send, "GET", "/echo", empty()).await.0, 200);
    assert_eq!(upstream.connections(), 2);

    // Chunked and a Content-Length: the chunks count, and the connection
    // is not trusted with another request.
    assert_eq!(
        exchange(&mut send, "GET", "/both", empty()).await,
        (200, "abc".into())
    );
    assert_eq!(exchange(&mut send, "GET", "/echo", empty()).await.0, 200);
    assert_eq!(upstream.connections(), 3);
}

#[tokio::test]
async fn uploads_of_known_and_unknown_length_arrive_intact() {
    let (h, upstream, token) = start().await;
    let mut send = client(&h, &token).await;
    let payload = "x".repeat(100_000);
    let (status, echoed) = exchange(
        &mut send,
        "POST",
        "/upload",
        Full::new(Bytes::from(payload.clone())).boxed(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(echoed, payload);
    assert!(upstream.last().head.contains("content-length: 100000\r\n"));

    // No length known in advance: moat sends it chunked.
    let pieces = vec!["first,", "second,", "third"];
    let stream = futures_util::stream::iter(
        pieces
            .into_iter()
            .map(|p| Ok::<_, Infallible>(Frame::data(Bytes::from(p)))),
    );
    let (status, echoed) =
        exchange(&mut send, "PUT", "/stream", StreamBody::new(stream).boxed()).await;
    assert_eq!((status, echoed.as_str()), (200, "first,second,third"));
    let head = upstream.last().head;
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(!head.contains("content-length"), "{head}");

    // An empty POST says so.
    exchange(&mut send, "POST", "/empty", empty()).await;
    assert!(upstream.last().head.contains("content-length: 0\r\n"));
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    let (h, upstream, token) = start().await;
    let mut send = client(&h, &token).await;
    // The upstream answers, then closes without saying so.
    assert_eq!(
        exchange(&mut send, "GET", "/silent-close", empty()).await,
        (200, "ok".into())
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A POST, which moat may not send twice, goes on a new connection.
    let (status, echoed) = exchange(
        &mut send,
        "POST",
        "/after",
        Full::new(Bytes::from("payload")).boxed(),
    )
    .await;
    assert_eq!((status, echoed.as_str()), (200, "payload"));
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn malformed_answers_are_502s_that_say_why() {
    let (h, _upstream, token) = start().await;
    let mut send = client(&h, &token).await;
    let (status, body) = exchange(&mut send, "GET", "/garbage", empty()).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("upstream raw.test failed: invalid response: malformed response head"),
        "{body}"
    );

    let (status, body) = exchange(&mut send, "GET", "/conflicting-length", empty()).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("conflicting Content-Length values"), "{body}");

    // A body cut short fails the client's response, not silently.
    send.ready().await.unwrap();
    let req = Request::builder()
        .uri("/truncated")
        .header("host", "raw.test")
        .body(empty())
        .unwrap();
    // (The head may not even have left the proxy when the body fails.)
    let whole = match send.send_request(req).await {
        Ok(resp) => resp.into_body().collect().await.is_ok(),
        Err(_) => false,
    };
    assert!(!whole, "a truncated body reached the client as complete");
}

/// A raw client connection through a tunnel to `raw.test`.
async fn raw_tunnel(
    h: &Harness,
    token: &moat_proxy::RunToken,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tunnel(h, token, "raw.test", &[b"http/1.1"]).await
}

/// Reads until `done` holds for what was read, or the connection ends;
/// what was read, and whether it ended.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(
    io: &mut S,
    done: impl Fn(&str) -> bool,
) -> (String, bool) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if done(&String::from_utf8_lossy(&got)) {
            return (String::from_utf8_lossy(&got).into_owned(), false);
        }
        match tokio::time::timeout(Duration::from_secs(5), io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!(
                "no answer within 5 s; so far: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

fn count(s: &str, needle: &str) -> usize {
    s.matches(needle).count()
}

#[tokio::test]
async fn pipelined_and_chunked_requests_are_answered_in_order() {
    let (h, upstream, token) = start().await;
    let mut io = raw_tunnel(&h, &token).await;
    // Two requests in one write, the second a chunked upload with an
    // extension and a trailer.
    io.write_all(
        b"GET /first HTTP/1.1\r\nHost: raw.test\r\n\r\n\
          POST /second HTTP/1.1\r\nHost: raw.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nx-t: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let (out, closed) = read_until(&mut io, |s| s.ends_with("abcdefg")).await;
    assert!(!closed, "{out}");
    assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), 2, "{out}");
    assert!(
        out.find("content-length: 0").unwrap() < out.find("abcdefg").unwrap(),
        "{out}"
    );
    assert_eq!(upstream.last().body, b"abcdefg");
    // The connection still serves.
    io.write_all(b"GET /third HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .await
        .unwrap();
    let (out, _) = read_until(&mut io, |s| s.contains("\r\n\r\n")).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert_eq!(upstream.connections(), 1);
}

#[tokio::test]
async fn doubtful_requests_get_hypers_answer() {
    let (h, upstream, token) = start().await;
    // Both framings, a request smuggling shape: hyper takes the chunked
    // framing (RFC 9112 6.1) and closes the connection after answering.
    let mut io = raw_tunnel(&h, &token).await;
    io.write_all(
        b"POST /x HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let (out, closed) = read_until(&mut io, |_| false).await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(closed && out.contains("connection: close\r\n"), "{out}");
    assert_eq!(upstream.last().body, b"");
    let seen = upstream.connections();

    for request in [
        // Two different lengths.
        &b"POST /x HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"[..],
        // Not HTTP.
        b"GET /x HTTP/1.1\r\nHost raw.test\r\n\r\n",
    ] {
        let mut io = raw_tunnel(&h, &token).await;
        io.write_all(request).await.unwrap();
        let (out, _) = read_until(&mut io, |s| s.contains("\r\n\r\n")).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    }
    assert_eq!(
        upstream.connections(),
        seen,
        "a malformed request reached the upstream"
    );

    // A plain request, then an upgrade on the same connection: hyper takes
    // over where the lean server stops, with what it already read.
    let (h, _upstream) = {
        let ca = TestCa::new();
        let up = https_upstream_h1(&ca, &["ws.test"]).await;
        let h = Harness::start(ca, &[("ws.test", up.addr.port())]).await;
        (h, up)
    };
    let token = h.register("run", permissive(), &[]);
    let mut send = h1(tunnel(&h, &token, "ws.test", &[b"http/1.1"]).await).await;
    send.ready().await.unwrap();
    let resp = send.send_request(get("/plain")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let req = websocket_request("ws.test");
    send.ready().await.unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn close_unread_bodies_and_idle_connections_end_the_connection() {
    let ca = TestCa::new();
    let upstream = scripted(&ca).await;
    let h = Harness::start_with(
        ca,
        &[("raw.test", upstream.port)],
        Duration::from_millis(500),
    )
    .await;
    let mut policy = NetworkPolicy::new(Policy::Permissive);
    policy.hosts.push(HostRules {
        host: HostPattern::parse("raw.test").unwrap(),
        rules: vec![Rule::parse("deny * /admin/**").unwrap()],
    });
    let token = h.register("run", policy, &[]);

    // Connection: close is honoured.
    let mut io = raw_tunnel(&h, &token).await;
    io.write_all(b"GET /a HTTP/1.1\r\nHost: raw.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_until(&mut io, |_| false).await;
    assert!(closed && out.contains("connection: close\r\n"), "{out}");

    // A blocked upload: the answer (with its reason phrase), then the
    // connection ends, so the unread body is never taken for a request.
    let mut io = raw_tunnel(&h, &token).await;
    io.write_all(
        b"POST /admin/x HTTP/1.1\r\nHost: raw.test\r\nContent-Length: 45\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: raw.test\r\n\r\n",
    )
    .await
    .unwrap();
    let (out, closed) = read_until(&mut io, |_| false).await;
    assert!(
        out.starts_with("HTTP/1.1 407 Blocked by moat network policy\r\n"),
        "{out}"
    );
    assert!(closed);
    assert_eq!(count(&out, "HTTP/1.1"), 1, "{out}");
    assert!(upstream
        .got
        .lock()
        .unwrap()
        .iter()
        .all(|g| !g.head.contains("smuggled")));

    // An idle connection is closed after the client timeout.
    let mut io = raw_tunnel(&h, &token).await;
    io.write_all(b"GET /b HTTP/1.1\r\nHost: raw.test\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_until(&mut io, |s| s.contains("\r\n\r\n")).await;
    assert!(!closed && out.starts_with("HTTP/1.1 200 OK"), "{out}");
    let started = std::time::Instant::now();
    let (_, closed) = read_until(&mut io, |_| false).await;
    assert!(closed);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
