//! Hostname routing to the runs' endpoints (`ports:`): one listener,
//! loopback by default, serving `http://` and `https://` on the same port.
//!
//! `<endpoint>.<run>.localhost` reaches the endpoint of that run, and
//! `<run>.localhost` a run with one endpoint. `localhost` itself is the
//! index of running runs and their endpoints (HTML, or JSON for `Accept:
//! application/json`). A TLS client gets a leaf for the name it asks for
//! (SNI), minted by moat's CA and cached; ALPN offers `http/1.1` only, as
//! the bytes are relayed to the sandbox's server as they are.
//!
//! The decision is made once per connection, on the SNI (TLS) or the
//! first request's `Host` (plain HTTP): after it the connection is a byte
//! relay, so keep-alive, WebSocket upgrades and server-sent events pass
//! through without buffering. Each routed connection appends one line,
//! `"direction": "inbound"`, to the run's `network.jsonl`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::CertificateAuthority;

/// The largest request head read to find the `Host`.
const MAX_HEAD: usize = 64 * 1024;

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
    /// The run's `network.jsonl`, for a line per routed connection.
    pub trace_path: Option<PathBuf>,
}

/// The routing table and the listener's TLS settings.
pub struct Router {
    ca: Arc<CertificateAuthority>,
    runs: Mutex<BTreeMap<String, RunRoutes>>,
    tls: Mutex<HashMap<String, Arc<ServerConfig>>>,
    port: Mutex<u16>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("port", &self.port())
            .finish_non_exhaustive()
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Router {
    /// A router whose leaves `ca` signs.
    pub fn new(ca: CertificateAuthority) -> Arc<Self> {
        Arc::new(Router {
            ca: Arc::new(ca),
            runs: Mutex::new(BTreeMap::new()),
            tls: Mutex::new(HashMap::new()),
            port: Mutex::new(0),
        })
    }

    /// Adds (or replaces) a run's endpoints.
    pub fn insert(&self, run: RunRoutes) {
        if let Ok(mut runs) = self.runs.lock() {
            runs.insert(run.run_id.clone(), run);
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
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            };
            let router = self.clone();
            tokio::spawn(async move {
                let _ = conn.set_nodelay(true);
                if let Err(e) = router.handle(conn).await {
                    tracing::debug!(error = %e, "routed connection");
                }
            });
        }
    }

    async fn handle(&self, conn: TcpStream) -> std::io::Result<()> {
        let mut first = [0u8; 1];
        if conn.peek(&mut first).await? == 0 {
            return Ok(());
        }
        if first[0] != 0x16 {
            return self.route(Box::new(conn), None, "http").await;
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
        self.route(Box::new(tls), sni, "https").await
    }

    /// The TLS settings presenting a leaf for `host`, ALPN `http/1.1`.
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
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if let Ok(mut cache) = self.tls.lock() {
            if cache.len() >= crate::LEAF_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(host.to_owned(), config.clone());
        }
        Ok(config)
    }

    /// Reads the first request head, then answers the index, an error, or
    /// relays the connection to the endpoint the host names.
    async fn route(
        &self,
        mut client: Box<dyn Stream>,
        sni: Option<String>,
        scheme: &str,
    ) -> std::io::Result<()> {
        let head = read_head(&mut client).await?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if !matches!(request.parse(&head), Ok(httparse::Status::Complete(_))) {
            return respond(&mut client, 400, "text/plain", "bad request\n").await;
        }
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        let host = sni
            .or_else(|| header("host").map(str::to_owned))
            .unwrap_or_default();
        let host = bare_host(&host);
        let (method, path) = (
            request.method.unwrap_or("GET").to_owned(),
            request.path.unwrap_or("/").to_owned(),
        );
        if host == "localhost" || host.parse::<std::net::IpAddr>().is_ok() {
            let json = header("accept").is_some_and(|a| a.contains("application/json"));
            let (kind, body) = self.index(json);
            return respond(&mut client, 200, kind, &body).await;
        }
        let Some((run, endpoint, backend)) = self.lookup(&host) else {
            let body = format!(
                "no running run serves {host}: see https://localhost:{}/\n",
                self.port()
            );
            return respond(&mut client, 404, "text/plain", &body).await;
        };
        let started = std::time::Instant::now();
        let mut upstream = match connect(&backend).await {
            Ok(upstream) => upstream,
            Err(_) => {
                let body = format!(
                    "nothing answers on endpoint {endpoint} of run {} yet (is its server \
                     listening on 127.0.0.1 in the sandbox?)\n",
                    run.name
                );
                trace(
                    &run,
                    &method,
                    &format!("{scheme}://{host}{path}"),
                    Some(502),
                    started,
                );
                return respond(&mut client, 502, "text/plain", &body).await;
            }
        };
        trace(
            &run,
            &method,
            &format!("{scheme}://{host}{path}"),
            None,
            started,
        );
        upstream.write_all(&head).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        Ok(())
    }

    /// The run and endpoint `host` names (`<endpoint>.<run>.localhost`, or
    /// `<run>.localhost` for a run with one endpoint).
    fn lookup(&self, host: &str) -> Option<(RunRoutes, String, Backend)> {
        let labels = host.strip_suffix(".localhost")?;
        let runs = self.runs.lock().ok()?;
        let (endpoint, name) = match labels.split_once('.') {
            Some((endpoint, name)) => (Some(endpoint), name),
            None => (None, labels),
        };
        let run = runs.values().find(|r| r.name == name)?;
        let (endpoint, backend) = match endpoint {
            Some(e) => (e.to_owned(), run.endpoints.get(e)?.clone()),
            None if run.endpoints.len() == 1 => {
                let (e, b) = run.endpoints.iter().next()?;
                (e.clone(), b.clone())
            }
            None => return None,
        };
        Some((run.clone(), endpoint, backend))
    }

    /// The index page: running runs and their endpoints' URLs.
    fn index(&self, json: bool) -> (&'static str, String) {
        let runs: Vec<RunRoutes> = self
            .runs
            .lock()
            .map(|r| r.values().cloned().collect())
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

/// The request head, up to and with its blank line.
async fn read_head(client: &mut Box<dyn Stream>) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1];
    // One byte at a time: nothing after the head is consumed, and the
    // head is small.
    while head.len() < MAX_HEAD {
        if client.read(&mut chunk).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(chunk[0]);
        if head.ends_with(b"\r\n\r\n") {
            return Ok(head);
        }
    }
    Err(std::io::Error::other("request head too large"))
}

async fn respond(
    client: &mut Box<dyn Stream>,
    status: u16,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Bad Gateway",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.write_all(body.as_bytes()).await?;
    client.shutdown().await
}

async fn connect(backend: &Backend) -> std::io::Result<Box<dyn Stream>> {
    match backend {
        Backend::Tcp(addr) => {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            Ok(Box::new(tcp))
        }
        Backend::Socket { path, port } => {
            let mut conn = UnixStream::connect(path).await?;
            conn.write_all(format!("{port}\n").as_bytes()).await?;
            let mut answer = [0u8; 1];
            conn.read_exact(&mut answer).await?;
            if answer[0] != b'+' {
                return Err(std::io::ErrorKind::ConnectionRefused.into());
            }
            Ok(Box::new(conn))
        }
    }
}

/// One line in the run's `network.jsonl` for a routed connection.
fn trace(
    run: &RunRoutes,
    method: &str,
    url: &str,
    status: Option<u16>,
    started: std::time::Instant,
) {
    let Some(trace_path) = &run.trace_path else {
        return;
    };
    let line = serde_json::json!({
        "ts": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "method": method,
        "url": url,
        "status_code": status,
        "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
        "direction": "inbound",
    });
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    // One write on an append-only descriptor: the line is not interleaved
    // with the proxy's own.
    let _ = std::fs::OpenOptions::new()
        .append(true)
        .open(trace_path)
        .and_then(|mut f| f.write_all(&bytes));
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
