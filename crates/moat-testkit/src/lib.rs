//! Test support for moat's end-to-end tests: a throwaway certificate
//! authority and an HTTPS upstream on 127.0.0.1 that answers every request
//! with a JSON echo of it and records what it saw.
//!
//! Tests point the proxy at it with `MOAT_CONNECT_TO` (so a request for
//! `api.github.com:443` lands here) and `MOAT_UPSTREAM_CA_FILE` (so the
//! proxy trusts this CA). [`ssh`] runs real OpenSSH peers. Nothing here
//! touches a public host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod models;
pub mod require;
pub mod ssh;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA made for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "moat test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `dir/upstream-ca.pem`.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("upstream-ca.pem");
        std::fs::write(&path, self.pem()).expect("write CA");
        path
    }

    /// A leaf certificate and key for `hosts`.
    pub fn leaf(&self, hosts: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body (empty for WebSocket upgrades).
    pub body: Vec<u8>,
}

impl Seen {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTPS server on 127.0.0.1 answering `200` with a JSON echo.
#[derive(Debug)]
pub struct EchoUpstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Every request, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Whether WebSocket upgrades (the Responses API's) are accepted.
    websockets: Arc<std::sync::atomic::AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

/// How a test upstream answers: the request as recorded, and its body.
pub type Responder = Arc<dyn Fn(&Seen, &[u8]) -> Response<Full<Bytes>> + Send + Sync>;

/// A TLS server config for `hosts`, with a leaf from `ca`, speaking h2
/// and HTTP/1.1.
fn tls_acceptor(ca: &TestCa, hosts: &[&str]) -> tokio_rustls::TlsAcceptor {
    let (cert, key) = ca.leaf(hosts);
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// What a request said, its body not read yet.
fn record_of(req: &Request<hyper::body::Incoming>) -> Seen {
    Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: Vec::new(),
    }
}

/// Records one request and answers it: a WebSocket upgrade when
/// `websockets` allows one, else what `respond` says.
async fn answer(
    req: Request<hyper::body::Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    respond: Responder,
    websockets: bool,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let mut record = record_of(&req);
    let req = if websockets {
        match models::accept_websocket(&record, req) {
            Ok(response) => {
                seen.lock().expect("lock").push(record);
                return Ok(response);
            }
            Err(req) => req,
        }
    } else {
        req
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let response = respond(&record, &body);
    record.body = body.to_vec();
    seen.lock().expect("lock").push(record);
    Ok(response)
}

impl EchoUpstream {
    /// Starts serving `hosts` with a certificate from `ca`.
    pub fn start(ca: &TestCa, hosts: &[&str]) -> Self {
        Self::start_with(
            ca,
            hosts,
            Arc::new(|record: &Seen, body: &[u8]| {
                let json = serde_json::json!({
                    "method": record.method,
                    "path": record.path,
                    "headers": record.headers.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
                    "body_len": body.len(),
                });
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(json.to_string())))
                    .expect("response")
            }),
        )
    }

    /// Starts serving `hosts` with a certificate from `ca`, answering with
    /// `respond`.
    pub fn start_with(ca: &TestCa, hosts: &[&str], respond: Responder) -> Self {
        let acceptor = tls_acceptor(ca, hosts);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let websockets = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let websockets2 = websockets.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let seen = seen2.clone();
                let respond = respond.clone();
                let websockets = websockets2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let websockets = websockets.load(std::sync::atomic::Ordering::Relaxed);
                            answer(req, seen.clone(), respond.clone(), websockets)
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        EchoUpstream {
            addr,
            seen,
            websockets,
            _runtime: runtime,
        }
    }

    /// `MOAT_CONNECT_TO` entries sending `host:443` here, comma-joined.
    pub fn connect_to(&self, hosts: &[&str]) -> String {
        hosts
            .iter()
            .map(|h| format!("{h}:443:127.0.0.1:{}", self.addr.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Refuses WebSocket upgrades from now on (they get the responder's
    /// answer, a 404 for the Responses API), as an API or a corporate
    /// proxy without WebSocket support would.
    pub fn refuse_websockets(&self) {
        self.websockets
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}
