//! Hostname routing to the runs' endpoints (`ports:`): one listener,
//! loopback by default, serving `http://` and `https://` on the same port,
//! as an HTTP reverse proxy.
//!
//! `<endpoint>.<run>.localhost` reaches the endpoint of that run, and
//! `<run>.localhost` a run with one endpoint. `localhost` itself is the
//! index of running runs and their endpoints (HTML, or JSON for `Accept:
//! application/json`). A TLS client gets a leaf for the name it asks for
//! (SNI), minted by moat's CA and cached; ALPN offers `h2` and `http/1.1`,
//! and plain HTTP takes HTTP/2 with prior knowledge too.
//!
//! Each request is routed on its own (so each is traced, with its status):
//! by the SNI on TLS, where a request whose `Host` names another host is
//! refused (421, the client opens a new connection), and by `Host` (or
//! `:authority`) otherwise. It is forwarded over HTTP/1.1, the protocol
//! the dev servers speak, on pooled keep-alive connections to the run's
//! port socket (native) or address ([`Backend`]), with the client's
//! `Host` (dev servers check it), `X-Forwarded-{Proto,Host,For}`, and no
//! hop-by-hop header. Bodies are streamed frame by frame both ways, so
//! server-sent events arrive as they are written; an HTTP/1.1 WebSocket
//! upgrade is forwarded and, on `101`, both upgraded connections are
//! joined. HTTP/2 WebSocket (RFC 8441) is not offered, so browsers use
//! HTTP/1.1 for it. Each routed request appends one line, `"direction":
//! "inbound"`, with its status to the run's `network.jsonl` when the
//! response head (or the `101`) arrives.

mod backend;
mod forward;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::CertificateAuthority;

/// The largest request head (and HTTP/2 header list) a client may send.
const MAX_HEAD: usize = 64 * 1024;

/// How long a client connection may wait for a request head (HTTP/1.1,
/// idle keep-alive included) or an HTTP/2 ping answer.
const CLIENT_IDLE: Duration = Duration::from_secs(60);

/// Where an endpoint's server is reached from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The run's port socket (native): `PORT\n`, then one byte, `+` once
    /// connected inside, then the stream (see moat-runtime-native).
    Socket {
        /// The socket on the host.
        path: PathBuf,
        /// The port inside the sandbox.
        port: u16,
    },
    /// A TCP address only the host reaches (a container's address on its
    /// private network).
    Tcp(SocketAddr),
}

/// One running run's endpoints.
#[derive(Debug, Clone)]
pub struct RunRoutes {
    /// Run id.
    pub run_id: String,
    /// Run name (a DNS label): the host is `<endpoint>.<name>.localhost`.
    pub name: String,
    /// Endpoint name to its backend.
    pub endpoints: BTreeMap<String, Backend>,
    /// The run's `network.jsonl`, for a line per routed request.
    pub trace_path: Option<PathBuf>,
}

/// A run in the routing table: its routes, and its trace opened once
/// (appending), not for every request.
#[derive(Debug)]
struct Routed {
    routes: RunRoutes,
    trace: Option<std::fs::File>,
}

/// The routing table and the listener's TLS settings.
pub struct Router {
    ca: Arc<CertificateAuthority>,
    runs: Mutex<BTreeMap<String, Arc<Routed>>>,
    tls: Mutex<HashMap<String, Arc<ServerConfig>>>,
    port: Mutex<u16>,
    client: backend::BackendClient,
    server: auto::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router whose leaves `ca` signs.
    pub fn new(ca: CertificateAuthority) -> Arc<Self> {
        Arc::new(Router {
            ca: Arc::new(ca),
            runs: Mutex::new(BTreeMap::new()),
            tls: Mutex::new(HashMap::new()),
            port: Mutex::new(0),
            client: backend::client(),
            server: server(),
        })
    }

    /// Adds (or replaces) a run's endpoints.
    pub fn insert(&self, run: RunRoutes) {
        let trace = run.trace_path.as_ref().and_then(|path| {
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new().append(true).create(true),
                0o600,
            )
            .open(path)
                .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "routed requests will not be traced"))
                .ok()
        });
        let routed = Arc::new(Routed { routes: run, trace });
        if let Ok(mut runs) = self.runs.lock() {
            runs.insert(routed.routes.run_id.clone(), routed);
        }
    }

    /// Removes a run's endpoints: its hosts answer 404 from now on.
    pub fn remove(&self, run_id: &str) {
        if let Ok(mut runs) = self.runs.lock() {
            runs.remove(run_id);
        }
    }

    /// The URL of `endpoint` of run `name` on this listener.
    pub fn url(&self, name: &str, endpoint: &str) -> String {
        format!("https://{endpoint}.{name}.localhost:{}", self.port())
    }

    /// Sets the port the URLs name (the listener's).
    pub fn set_port(&self, port: u16) {
        if let Ok(mut p) = self.port.lock() {
            *p = port;
        }
    }

    /// The listener's port (0 before [`Router::serve`]).
    pub fn port(&self) -> u16 {
        self.port.lock().map(|p| *p).unwrap_or(0)
    }

    /// Serves `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            if let Ok(mut port) = self.port.lock() {
                *port = addr.port();
            }
        }
        loop {
            let Ok((conn, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let router = self.clone();
            tokio::spawn(async move {
                let _ = conn.set_nodelay(true);
                if let Err(e) = router.handle(conn, peer.ip()).await {
                    tracing::debug!(error = %e, "routed connection");
                }
            });
        }
    }

    /// Serves one client connection, TLS or plain.
    async fn handle(self: Arc<Self>, conn: TcpStream, peer: IpAddr) -> std::io::Result<()> {
        let mut first = [0u8; 1];
        if conn.peek(&mut first).await? == 0 {
            return Ok(());
        }
        if first[0] != 0x16 {
            let info = forward::Conn {
                scheme: "http",
                sni: None,
                peer,
            };
            return self.serve_http(conn, info).await;
        }
        let acceptor =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), conn);
        let start = acceptor.await?;
        let sni = start
            .client_hello()
            .server_name()
            .map(|s| s.to_ascii_lowercase());
        let config = self
            .tls_config(sni.as_deref().unwrap_or("localhost"))
            .await?;
        let tls = start.into_stream(config).await?;
        let info = forward::Conn {
            scheme: "https",
            sni,
            peer,
        };
        self.serve_http(tls, info).await
    }

    /// Serves HTTP/1.1 or HTTP/2 on `io`, each request through
    /// [`forward::serve`].
    async fn serve_http<I>(self: Arc<Self>, io: I, info: forward::Conn) -> std::io::Result<()>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = Arc::new(info);
        let router = self.clone();
        let service = hyper::service::service_fn(move |req| {
            forward::serve(router.clone(), info.clone(), req)
        });
        self.server
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .await
            .map_err(std::io::Error::other)
    }

    /// The TLS settings presenting a leaf for `host`, ALPN `h2` and
    /// `http/1.1`.
    async fn tls_config(&self, host: &str) -> std::io::Result<Arc<ServerConfig>> {
        if let Some(config) = self.tls.lock().ok().and_then(|c| c.get(host).cloned()) {
            return Ok(config);
        }
        let base = self
            .ca
            .server_config(host)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut config = (*base).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if let Ok(mut cache) = self.tls.lock() {
            if cache.len() >= crate::LEAF_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(host.to_owned(), config.clone());
        }
        Ok(config)
    }

    /// The run and endpoint `host` names (`<endpoint>.<run>.localhost`, or
    /// `<run>.localhost` for a run with one endpoint).
    fn lookup(&self, host: &str) -> Option<(Arc<Routed>, String, Backend)> {
        let labels = host.strip_suffix(".localhost")?;
        let runs = self.runs.lock().ok()?;
        let (endpoint, name) = match labels.split_once('.') {
            Some((endpoint, name)) => (Some(endpoint), name),
            None => (None, labels),
        };
        let routed = runs.values().find(|r| r.routes.name == name)?;
        let run = &routed.routes;
        let (endpoint, backend) = match endpoint {
            Some(e) => (e.to_owned(), run.endpoints.get(e)?.clone()),
            None if run.endpoints.len() == 1 => {
                let (e, b) = run.endpoints.iter().next()?;
                (e.clone(), b.clone())
            }
            None => return None,
        };
        Some((routed.clone(), endpoint, backend))
    }

    /// The index page: running runs and their endpoints' URLs.
    fn index(&self, json: bool) -> (&'static str, String) {
        let runs: Vec<RunRoutes> = self
            .runs
            .lock()
            .map(|r| r.values().map(|routed| routed.routes.clone()).collect())
            .unwrap_or_default();
        if json {
            let list: Vec<serde_json::Value> = runs
                .iter()
                .map(|r| {
                    let endpoints: BTreeMap<&String, String> = r
                        .endpoints
                        .keys()
                        .map(|e| (e, self.url(&r.name, e)))
                        .collect();
                    serde_json::json!({"run": r.name, "id": r.run_id, "endpoints": endpoints})
                })
                .collect();
            let body = serde_json::json!({ "runs": list }).to_string();
            return ("application/json", body);
        }
        let mut body = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>moat</title></head>\
             <body><h1>Running runs</h1><ul>",
        );
        for r in &runs {
            body.push_str(&format!("<li>{}<ul>", html_escape(&r.name)));
            for e in r.endpoints.keys() {
                let url = html_escape(&self.url(&r.name, e));
                body.push_str(&format!(
                    "<li><a href=\"{url}\">{}</a></li>",
                    html_escape(e)
                ));
            }
            body.push_str("</ul></li>");
        }
        if runs.is_empty() {
            body.push_str("<li>No run serves an endpoint.</li>");
        }
        body.push_str("</ul></body></html>\n");
        ("text/html; charset=utf-8", body)
    }
}

/// The client side's HTTP/1.1 and HTTP/2 settings: bounded heads, idle
/// connections closed, no extended CONNECT (RFC 8441) advertised.
fn server() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_IDLE)
        .max_buf_size(MAX_HEAD)
        .max_headers(100);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(CLIENT_IDLE)
        .keep_alive_timeout(Duration::from_secs(20))
        .max_header_list_size(MAX_HEAD as u32);
    builder
}

/// `host` without its port or trailing dot, lowercase.
fn bare_host(host: &str) -> String {
    let host = host.trim();
    let host = match host.rsplit_once(':') {
        Some((h, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || (h.starts_with('[') && h.ends_with(']'))) =>
        {
            h
        }
        _ => host,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(bare_host("Web.Run.localhost:8081"), "web.run.localhost");
        assert_eq!(bare_host("run.localhost."), "run.localhost");
        assert_eq!(bare_host("[::1]:80"), "::1");
    }
}
