//! Shared harness: a test CA, an HTTPS upstream on 127.0.0.1 (echo, SSE,
//! WebSocket-style upgrade), a plain HTTP upstream, a proxy, and clients
//! that CONNECT through it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use moat_policy::{HostPattern, NetworkPolicy, Policy};
use moat_proxy::{
    CertificateAuthority, ConnectTo, HeaderName, Injection, Proxy, ProxyConfig, RunRegistration,
    RunToken, SecretValue,
};
use moat_testkit::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub type Body = BoxBody<Bytes, Infallible>;

/// A request the upstream saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Released by the test to let `/sse` send its second event.
    pub sse_gate: Arc<Notify>,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().last().cloned().expect("a request")
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

async fn upstream_service(
    mut req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Notify>,
) -> Result<Response<Body>, Infallible> {
    let record = Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    seen.lock().unwrap().push(record.clone());
    let path = req.uri().path().to_owned();
    match path.as_str() {
        p if p.ends_with("/sse") => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: one\n\n")).await;
                gate.notified().await;
                let _ = tx.send(Bytes::from_static(b"data: two\n\n")).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            Ok(Response::builder()
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed())
                .unwrap())
        }
        p if p.ends_with("/close") => Ok(Response::builder()
            .header("connection", "close")
            .body(full("closing"))
            .unwrap()),
        p if p.ends_with("/ws") => {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            });
            Ok(Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .body(full(Bytes::new()))
                .unwrap())
        }
        _ => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let headers: BTreeMap<String, String> = record.headers.iter().cloned().collect();
            let json = serde_json::json!({
                "method": record.method,
                "path": record.path,
                "version": record.version,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            Ok(Response::builder()
                .header("content-type", "application/json")
                .body(full(json.to_string()))
                .unwrap())
        }
    }
}

/// An HTTPS upstream on 127.0.0.1 serving `hosts` with a leaf of `ca`,
/// offering HTTP/2 and HTTP/1.1.
pub async fn https_upstream(ca: &TestCa, hosts: &[&str]) -> Upstream {
    https_upstream_alpn(ca, hosts, &[b"h2", b"http/1.1"]).await
}

/// [`https_upstream`] speaking only HTTP/1.1.
pub async fn https_upstream_h1(ca: &TestCa, hosts: &[&str]) -> Upstream {
    https_upstream_alpn(ca, hosts, &[b"http/1.1"]).await
}

async fn https_upstream_alpn(ca: &TestCa, hosts: &[&str], alpn: &[&[u8]]) -> Upstream {
    serve_upstream(Some(tls_acceptor(ca, hosts, alpn))).await
}

/// TLS for an upstream serving `hosts` with a leaf of `ca`, offering `alpn`.
pub fn tls_acceptor(ca: &TestCa, hosts: &[&str], alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let (cert, key) = ca.leaf(hosts);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// A plain HTTP upstream on 127.0.0.1.
pub async fn http_upstream() -> Upstream {
    serve_upstream(None).await
}

async fn serve_upstream(acceptor: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let gate = Arc::new(Notify::new());
    let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let (seen2, gate2, accepted2) = (seen.clone(), gate.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            accepted2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let (seen, gate) = (seen2.clone(), gate2.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    upstream_service(req, seen.clone(), gate.clone())
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(tls), service)
                            .await;
                    }
                    None => {
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                            .await;
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        seen,
        sse_gate: gate,
        accepted,
    }
}

pub struct Harness {
    pub proxy: Proxy,
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub dir: tempfile::TempDir,
    pub upstream_ca: TestCa,
}

pub struct Options {
    pub client_timeout: Duration,
    pub connect_to: Vec<(String, u16)>,
}

impl Harness {
    /// A proxy trusting only `upstream_ca`, with `host:443 -> 127.0.0.1:port`
    /// for every (host, port) in `connect_to`.
    pub async fn start(upstream_ca: TestCa, connect_to: &[(&str, u16)]) -> Harness {
        Self::start_with(upstream_ca, connect_to, Duration::from_secs(30)).await
    }

    pub async fn start_with(
        upstream_ca: TestCa,
        connect_to: &[(&str, u16)],
        client_timeout: Duration,
    ) -> Harness {
        let list = connect_to
            .iter()
            .map(|(h, p)| format!("{h}:443:127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        Self::start_config(upstream_ca, &list, |c| c.client_timeout = client_timeout).await
    }

    /// A proxy trusting only `upstream_ca`, with the `MOAT_CONNECT_TO`
    /// list `connect_to` and whatever `tweak` changes in the defaults.
    pub async fn start_config(
        upstream_ca: TestCa,
        connect_to: &str,
        tweak: impl FnOnce(&mut ProxyConfig),
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = upstream_ca.write_pem(dir.path());
        let mut config = ProxyConfig {
            upstream_ca_file: Some(ca_file),
            use_system_roots: false,
            connect_to: ConnectTo::parse_list(connect_to).unwrap(),
            // The test upstreams stand in for remote hosts on 127.0.0.1.
            allow_host_addresses: true,
            ..ProxyConfig::default()
        };
        tweak(&mut config);
        let ca = CertificateAuthority::load_or_create(&dir.path().join("ca")).unwrap();
        let ca_pem = ca.cert_pem().to_owned();
        let proxy = Proxy::new(config, ca).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = proxy.clone();
        tokio::spawn(async move { p.serve_tcp(listener).await });
        Harness {
            proxy,
            addr,
            ca_pem,
            dir,
            upstream_ca,
        }
    }

    pub fn trace_path(&self, run: &str) -> PathBuf {
        self.dir.path().join("runs").join(run).join("network.jsonl")
    }

    /// Registers `run` with `policy`, a trace, and the given injections.
    pub fn register(
        &self,
        run: &str,
        policy: NetworkPolicy,
        injections: &[(&str, &str, &str)],
    ) -> RunToken {
        let injections = injections
            .iter()
            .map(|(host, name, value)| Injection {
                host: HostPattern::parse(host).unwrap(),
                headers: vec![(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    SecretValue::new(*value).unwrap(),
                )],
            })
            .collect();
        self.proxy
            .try_register(RunRegistration {
                run_id: run.into(),
                name: String::new(),
                injections,
                policy,
                mcp: vec![],
                trace: Some(self.trace_path(run)),
                tunnels: vec![],
            })
            .unwrap()
    }
}

pub fn permissive() -> NetworkPolicy {
    NetworkPolicy::new(Policy::Permissive)
}

pub fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("moat:{token}"))
    )
}

/// A raw HTTP/1.1 response head and body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Reads one response (head + Content-Length body) from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(RawResponse {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `CONNECT target` with an optional `Proxy-Authorization` value.
pub async fn connect(
    proxy: SocketAddr,
    auth: Option<&str>,
    target: &str,
) -> (RawResponse, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = auth {
        req.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let resp = read_response(&mut stream)
        .await
        .expect("a CONNECT response");
    (resp, stream)
}

/// TLS over an established tunnel, trusting only the moat CA.
pub async fn tls(
    stream: TcpStream,
    ca_pem: &str,
    server_name: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    connector.connect(name, stream).await.unwrap()
}

/// An HTTP/1.1 client over `io`.
pub async fn h1<IO>(io: IO) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

/// An HTTP/2 client over `io`.
pub async fn h2<IO>(io: IO) -> hyper::client::conn::http2::SendRequest<Full<Bytes>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// A tunnel to `host:443` for `token`, TLS with `alpn`, ready for HTTP.
pub async fn tunnel(
    h: &Harness,
    token: &RunToken,
    host: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let (resp, stream) =
        connect(h.addr, Some(&basic(token.expose())), &format!("{host}:443")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    tls(stream, &h.ca_pem, host, alpn).await
}

/// A WebSocket upgrade request for `/ws` on `host` (the test upstream
/// echoes what follows the upgrade).
pub fn websocket_request(host: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri("/ws")
        .header("host", host)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(uri)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub async fn body_string(resp: Response<Incoming>) -> String {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits until `path` holds at least `n` lines; returns them.
pub async fn trace_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if lines.len() >= n || tokio::time::Instant::now() > deadline {
            // The schema `moat trace` and the HAR export read: every line
            // the proxy writes for a request is a `TraceRecord`, whole.
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                if value.get("method").is_some() {
                    let record: moat_storage::TraceRecord = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("not a TraceRecord ({e}): {line}"));
                    assert_eq!(
                        serde_json::to_value(&record).unwrap(),
                        value,
                        "a field the record does not carry"
                    );
                }
            }
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
