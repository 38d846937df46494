//! Hostile and broken clients: garbage, oversized heads, conflicting
//! framing, stalls. Each gets an error or a closed connection, and the
//! proxy keeps serving other runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use moat_testkit::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes` and returns the status of the response, or `None` when
/// the proxy closed the connection without one.
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    read_response(&mut stream).await.map(|r| r.status)
}

async fn still_serves(h: &Harness, upstream: &Upstream) {
    let token = h.register(&format!("other-{}", rand_id()), permissive(), &[]);
    let mut send = h1(tunnel(h, &token, "api.github.com", &[b"http/1.1"]).await).await;
    send.ready().await.unwrap();
    let resp = send.send_request(get("/still-alive")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().path, "/still-alive");
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn setup(timeout: Duration) -> (Harness, Upstream) {
    let ca = TestCa::new();
    let upstream = https_upstream(&ca, &["api.github.com"]).await;
    let port = upstream.addr.port();
    let h = Harness::start_with(ca, &[("api.github.com", port)], timeout).await;
    (h, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_conflicting_requests_are_refused() {
    let (h, upstream) = setup(Duration::from_secs(30)).await;
    let token = h.register("victim", permissive(), &[]);
    let auth = basic(token.expose());

    // Garbage bytes.
    let status = send_raw(h.addr, b"\x00\x01\x02 not http at all\r\n\r\n").await;
    assert!(matches!(status, None | Some(400)), "{status:?}");

    // An oversized head (200 KiB of headers).
    let mut big = format!("GET http://127.0.0.1:9/ HTTP/1.1\r\nProxy-Authorization: {auth}\r\n");
    for i in 0..2000 {
        big.push_str(&format!("X-Fill-{i}: {}\r\n", "a".repeat(100)));
    }
    big.push_str("\r\n");
    let status = send_raw(h.addr, big.as_bytes()).await;
    assert!(matches!(status, None | Some(431) | Some(400)), "{status:?}");

    // Content-Length and Transfer-Encoding together (a smuggling attempt):
    // hyper either refuses it or, as RFC 9112 section 6.3 allows, frames
    // it by Transfer-Encoding alone and closes the connection afterwards;
    // the smuggled second request must never be seen.
    let plain = http_upstream().await;
    let target = format!("127.0.0.1:{}", plain.addr.port());
    let conflict = format!(
        "POST http://{target}/cl-te HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\
         Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         GET http://{target}/smuggled HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\r\n"
    );
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    stream.write_all(conflict.as_bytes()).await.unwrap();
    let first = read_response(&mut stream).await.map(|r| r.status);
    assert!(matches!(first, None | Some(400) | Some(200)), "{first:?}");
    let second = read_response(&mut stream).await;
    assert!(
        second.is_none(),
        "the connection stays open after CL+TE: {second:?}"
    );
    assert!(plain.requests().iter().all(|r| r.path != "/smuggled"));
    assert!(plain.requests().len() <= 1);

    // Two different Content-Lengths.
    let conflict = format!(
        "POST http://{target}/cl-cl HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {auth}\r\n\
         Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    );
    let status = send_raw(h.addr, conflict.as_bytes()).await;
    assert!(matches!(status, None | Some(400)), "{status:?}");
    assert!(plain.requests().iter().all(|r| r.path != "/cl-cl"));

    // Garbage inside an intercepted tunnel, after CONNECT.
    let (resp, mut stream) = connect(h.addr, Some(&auth), "api.github.com:443").await;
    assert_eq!(resp.status, 200);
    stream
        .write_all(b"\x16\x03\x01\x00\x05garbage-garbage")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;

    // A CONNECT target without a port or host.
    let status = send_raw(
        h.addr,
        format!("CONNECT :443 HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(matches!(status, None | Some(400)), "{status:?}");

    assert!(upstream.requests().is_empty());
    still_serves(&h, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_closed() {
    let (h, upstream) = setup(Duration::from_millis(500)).await;
    // Half a request head, then silence.
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127")
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    // A tunnel whose TLS handshake never starts.
    let token = h.register("stall", permissive(), &[]);
    let (resp, mut tunnel_stall) =
        connect(h.addr, Some(&basic(token.expose())), "api.github.com:443").await;
    assert_eq!(resp.status, 200);

    let started = Instant::now();
    for stream in [&mut slow, &mut silent, &mut tunnel_stall] {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a stalled connection stayed open");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    still_serves(&h, &upstream).await;
}
