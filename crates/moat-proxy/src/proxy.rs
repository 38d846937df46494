//! The proxy handle, the listeners and the request handlers.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use moat_policy::{Decision, HostDecision};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::ca::CertificateAuthority;
use crate::config::ProxyConfig;
use crate::error::{BoxError, ErrorKind, Fault, ProxyError};
use crate::io::Prefixed;
use crate::run::{build_run, AuthFailure, ParsedMcp, Registry, Run, RunRegistration};
use crate::scrub::{Scrubbed, Secrets};
use crate::secret::RunToken;
use crate::trace::{Exchange, RequestObserver, Side, Tapped, TraceSink};
use crate::upstream::{bare_host, Binding, Upstream};
use crate::ProxyBody;

/// The body of `407` without credentials.
pub const MISSING_AUTH_BODY: &str = "Proxy authentication required";
/// The body of `407` with credentials matching no run.
pub const INVALID_TOKEN_BODY: &str = "Invalid proxy token";

/// The proxy engine: a cheaply clonable handle (all clones share one
/// state). Register runs, then serve TCP and/or Unix listeners.
///
/// Every request (plain HTTP in absolute form, `CONNECT`, or the MCP
/// relay) must carry a registered run's token; requests inside an
/// intercepted tunnel belong to the run that opened it, and stop being
/// served when that run is unregistered.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    config: ProxyConfig,
    ca: Arc<CertificateAuthority>,
    registry: Registry,
    upstream: Upstream,
    shutdown: CancellationToken,
    /// Told of every finished request (the daemon's audit log).
    observer: std::sync::OnceLock<Arc<dyn RequestObserver>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("runs", &self.runs())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy presenting leaves of `ca`. Fails when the upstream CA file
    /// cannot be read.
    pub fn new(
        config: ProxyConfig,
        ca: impl Into<Arc<CertificateAuthority>>,
    ) -> Result<Self, ProxyError> {
        let upstream = Upstream::new(&config)?;
        Ok(Proxy {
            inner: Arc::new(Inner {
                config,
                ca: ca.into(),
                registry: Registry::default(),
                upstream,
                shutdown: CancellationToken::new(),
                observer: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Sets the observer told of every finished request of every run
    /// registered from now on (once; later calls are ignored). It is called
    /// on the proxy's tasks, so it must return at once (queue, never wait).
    pub fn set_observer(&self, observer: Arc<dyn RequestObserver>) {
        let _ = self.inner.observer.set(observer);
    }

    /// The certificate authority.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.inner.ca
    }

    /// Registers a run and returns its fresh token; never fails.
    ///
    /// A run already registered under the same id is unregistered first
    /// (its old token stops working). Problems that [`Proxy::try_register`]
    /// would report are logged instead: a trace file that cannot be opened
    /// disables the trace, an invalid MCP route is skipped.
    pub fn register(&self, registration: RunRegistration) -> RunToken {
        self.register_with_token(registration, RunToken::generate())
    }

    /// [`Proxy::register`] with a token given by the caller: a run
    /// registered again after its daemon was replaced keeps the token its
    /// sandbox already uses.
    pub fn register_with_token(&self, registration: RunRegistration, token: RunToken) -> RunToken {
        if self.unregister(&registration.run_id) {
            tracing::warn!(run = %registration.run_id, "run registered again; the old token is revoked");
        }
        let trace = registration.trace.as_ref().and_then(|path| {
            TraceSink::open(path, self.inner.config.trace_queue)
                .map_err(|e| tracing::warn!(run = %registration.run_id, error = %e.detail(), "trace disabled"))
                .ok()
        });
        let run_id = registration.run_id.clone();
        match build_run(registration, &token, trace, &self.inner.shutdown, false)
            .and_then(|run| self.inner.registry.insert(self.observed(run)))
        {
            Ok(()) => tracing::debug!(run = %run_id, "run registered"),
            // Unreachable in practice (lenient build, id just removed);
            // the token then matches nothing, which is the safe outcome.
            Err(e) => tracing::error!(run = %run_id, error = %e.detail(), "registering a run"),
        }
        token
    }

    /// Registers a run, failing on a duplicate run id, an invalid MCP
    /// route, or a trace file that cannot be opened (it is created `0600`
    /// and appended to).
    pub fn try_register(&self, registration: RunRegistration) -> Result<RunToken, ProxyError> {
        let trace = match &registration.trace {
            Some(path) => Some(TraceSink::open(path, self.inner.config.trace_queue)?),
            None => None,
        };
        let token = RunToken::generate();
        let run = self.observed(build_run(
            registration,
            &token,
            trace,
            &self.inner.shutdown,
            true,
        )?);
        tracing::debug!(run = %run.id, "run registered");
        self.inner.registry.insert(run)?;
        Ok(token)
    }

    fn observed(&self, mut run: Run) -> Run {
        run.observer = self.inner.observer.get().cloned();
        run
    }

    /// Revokes a run's token at once: its open tunnels are closed, and any
    /// request still arriving on them gets `407 Invalid proxy token`. The
    /// run's trace writer flushes what it has queued and stops once the
    /// requests in flight have finished. `false` when no such run was
    /// registered.
    pub fn unregister(&self, run_id: &str) -> bool {
        let Some(run) = self.inner.registry.remove(run_id) else {
            return false;
        };
        tracing::debug!(run = %run.id, "run unregistered");
        if let Some(sink) = &run.trace {
            sink.request_flush();
        }
        true
    }

    /// The ids of the registered runs, sorted.
    pub fn runs(&self) -> Vec<String> {
        self.inner.registry.ids()
    }

    /// Stops the listeners, revokes every run (closing their tunnels) and
    /// asks open connections to finish their current request.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        for run in self.inner.registry.drain() {
            if let Some(sink) = &run.trace {
                sink.request_flush();
            }
        }
    }

    /// A token cancelled when [`Proxy::shutdown`] is called; cancelling it
    /// directly has the same effect on listeners and connections.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Accepts connections on `listener` until shutdown.
    pub async fn serve_tcp(&self, listener: TcpListener) -> Result<(), ProxyError> {
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(self.clone().serve_connection(stream));
                    }
                    Err(e) => accept_error(e).await,
                }
            }
        }
    }

    /// Accepts connections on a Unix socket until shutdown (the native
    /// sandbox's strict mode reaches the proxy this way).
    pub async fn serve_unix(&self, listener: UnixListener) -> Result<(), ProxyError> {
        loop {
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(self.clone().serve_connection(stream));
                    }
                    Err(e) => accept_error(e).await,
                }
            }
        }
    }

    /// Serves one client connection (any byte stream) to completion.
    pub async fn serve_connection<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = self.inner.clone();
        let binding = Arc::new(inner.upstream.binding());
        let service = service_fn(move |req: Request<Incoming>| {
            let inner = inner.clone();
            let binding = binding.clone();
            async move { Ok::<_, Infallible>(handle_outer(inner, req, &binding).await) }
        });
        let config = &self.inner.config;
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.client_timeout)
            .max_buf_size(config.max_header_bytes.max(8192));
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(fault = %Fault::Downstream, error = %e, "client connection ended");
                }
            }
            () = self.inner.shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            }
        }
    }
}

async fn accept_error(e: std::io::Error) {
    // Out of file descriptors and the like: back off instead of spinning.
    tracing::warn!(error = %e, "accepting a connection");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn auth_failure(failure: AuthFailure) -> Response<ProxyBody> {
    let body = match failure {
        AuthFailure::Missing => MISSING_AUTH_BODY,
        AuthFailure::Invalid => INVALID_TOKEN_BODY,
    };
    let mut resp = text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, body);
    resp.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"moat\""),
    );
    resp
}

/// The reason phrase of a `407` for a request the run's policy blocked:
/// clients that drop a failed `CONNECT`'s body (curl: `CONNECT tunnel
/// failed, response 407`) still show the status line, and the standard
/// phrase, "Proxy Authentication Required", would point at the token.
pub const BLOCKED_REASON: &str = "Blocked by moat network policy";
/// The reason phrase of a `403` for a plain-HTTP request to a host moat
/// holds a credential for.
pub const CLEARTEXT_REASON: &str = "Credential needs TLS (moat)";

/// Sets a custom HTTP/1 reason phrase and an RFC 9209 `Proxy-Status`
/// header naming moat, the error type and `details`.
fn mark(resp: &mut Response<ProxyBody>, reason: &'static str, error: &str, details: &str) {
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(reason.as_bytes()));
    // An sf-string: printable ASCII, with `"` and `\` escaped.
    let mut value = format!("moat; error={error}; details=\"");
    for c in details.chars() {
        match c {
            '"' | '\\' => {
                value.push('\\');
                value.push(c);
            }
            ' '..='~' => value.push(c),
            _ => value.push('?'),
        }
    }
    value.push('"');
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut()
            .insert(HeaderName::from_static("proxy-status"), v);
    }
}

/// A one-line summary of a denial, for `Proxy-Status` details.
fn deny_details(reason: &moat_policy::DenyReason) -> String {
    use moat_policy::DenyReason as D;
    match reason {
        D::HostNotAllowed { host } => format!("host {host} is not in the allow list"),
        D::RuleDenied {
            method, path, rule, ..
        } => format!("{method} {path} is denied by rule {rule}"),
        D::NoRuleMatched { method, path, .. } => {
            format!("{method} {path} matches no allow rule under a strict policy")
        }
        D::AmbiguousPath { method, path, .. } => {
            format!("{method} {path} has an ambiguous path")
        }
    }
}

/// The `407` for a request or `CONNECT` the run's policy blocked: the
/// three-line message as the body, and the reason in the status line and
/// `Proxy-Status`.
fn blocked(reason: &moat_policy::DenyReason) -> Response<ProxyBody> {
    let mut resp = text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, reason.message());
    mark(
        &mut resp,
        BLOCKED_REASON,
        "http_request_denied",
        &deny_details(reason),
    );
    resp
}

/// Whether `host` (bare, lower case) names the loopback interface.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Method-override headers some frameworks honour: the method they name
/// is what the server runs, so the policy checks it too.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    match e.fault() {
        Fault::Upstream | Fault::Internal => {
            tracing::warn!(fault = %e.fault(), error = %e.detail(), "request failed")
        }
        Fault::Downstream | Fault::Policy => {
            tracing::debug!(fault = %e.fault(), error = %e.detail(), "request refused")
        }
    }
    text(e.status(), e.detail())
}

/// Where a request goes: scheme, host (as in a URI, IPv6 in brackets) and
/// port.
#[derive(Debug, Clone)]
struct Target {
    scheme: &'static str,
    host: String,
    port: u16,
}

impl Target {
    fn authority(&self) -> String {
        let default = matches!((self.scheme, self.port), ("https", 443) | ("http", 80));
        if default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.scheme)
            .authority(self.authority())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ProxyError::bad_request("moat: invalid request target").with_source(e))
    }
}

async fn handle_outer(
    inner: Arc<Inner>,
    req: Request<Incoming>,
    binding: &Binding,
) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        return match inner.registry.authenticate(req.headers(), false) {
            Ok(run) => match tunnel_target(&run, &req) {
                Some((host, port)) => handle_tcp_tunnel(inner, run, host, port, req).await,
                None => handle_connect(inner, run, req),
            },
            Err(f) => auth_failure(f),
        };
    }
    if req.uri().scheme().is_some() {
        let run = match inner.registry.authenticate(req.headers(), false) {
            Ok(run) => run,
            Err(f) => return auth_failure(f),
        };
        let target = match target_of(req.uri()) {
            Ok(t) => t,
            Err(e) => return error_response(&e),
        };
        let pq = path_and_query(req.uri());
        let uri = match target.uri(&pq) {
            Ok(u) => u,
            Err(e) => return error_response(&e),
        };
        let inject = injections(&run, &target.host);
        return forward(&inner, run.clone(), uri, true, inject, req, Some(binding)).await;
    }
    if req.uri().path().starts_with("/mcp/") {
        return match inner.registry.authenticate(req.headers(), true) {
            Ok(run) => handle_mcp(inner, run, req, binding).await,
            Err(f) => auth_failure(f),
        };
    }
    text(
        StatusCode::BAD_REQUEST,
        "moat: this is moat's proxy; send absolute-form or CONNECT requests, or /mcp/<name>",
    )
}

fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/")
        .to_owned()
}

fn target_of(uri: &Uri) -> Result<Target, ProxyError> {
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => "http",
        Some(s) if s.eq_ignore_ascii_case("https") => "https",
        _ => {
            return Err(ProxyError::bad_request(
                "moat: only http and https URLs can be proxied",
            ))
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ProxyError::bad_request("moat: the request URL has no host"))?;
    Ok(Target {
        scheme,
        host: host.to_ascii_lowercase(),
        port: uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 }),
    })
}

/// What a request gets injected: headers, the trace label, and the forms
/// of the values its response is scrubbed of.
#[derive(Default)]
struct Injected {
    headers: Vec<(HeaderName, HeaderValue)>,
    label: Option<String>,
    secrets: Secrets,
}

/// The injections of `run` for `host`.
fn injections(run: &Run, host: &str) -> Injected {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let mut out = Injected::default();
    let mut secrets = Vec::new();
    for (injection, prepared) in run.injections_for(bare) {
        out.label.get_or_insert_with(|| prepared.label.clone());
        out.headers.extend(
            injection
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.header_value().clone())),
        );
        secrets.push(&prepared.secrets);
    }
    out.secrets = Secrets::merge(&secrets);
    out
}

fn handle_connect(inner: Arc<Inner>, run: Arc<Run>, req: Request<Incoming>) -> Response<ProxyBody> {
    let Some(authority) = req.uri().authority() else {
        return text(StatusCode::BAD_REQUEST, "moat: CONNECT needs host:port");
    };
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return text(StatusCode::BAD_REQUEST, "moat: CONNECT needs host:port");
    }
    let port = authority.port_u16().unwrap_or(443);
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if let HostDecision::Denied(reason) = run.policy.host_decision(&bare) {
        let message = reason.message();
        if let Some(ex) = Exchange::new(
            run.clone(),
            "CONNECT",
            &format!("{host}:{port}"),
            false,
            (req.headers(), &[]),
            None,
            inner.config.trace_body_bytes,
        ) {
            ex.set_error(407, "blocked by network policy");
            ex.set_body(Side::Response, message.as_bytes());
            ex.finish();
        }
        return blocked(&reason);
    }
    if let Some(e) = inner.upstream.dialer.refuses_at_once(&bare, port) {
        if let Some(ex) = Exchange::new(
            run.clone(),
            "CONNECT",
            &format!("{host}:{port}"),
            false,
            (req.headers(), &[]),
            None,
            inner.config.trace_body_bytes,
        ) {
            ex.set_error(e.status().as_u16(), &e.detail());
            ex.finish();
        }
        return error_response(&e);
    }
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let target = Target {
                    scheme: "https",
                    host,
                    port,
                };
                tunnel(inner, run, target, TokioIo::new(upgraded)).await;
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(empty())
}

/// The `CONNECT` target, when the run may open a raw TCP tunnel to it.
fn tunnel_target(run: &Run, req: &Request<Incoming>) -> Option<(String, u16)> {
    let authority = req.uri().authority()?;
    let host = authority.host().to_ascii_lowercase();
    let port = authority.port_u16()?;
    run.tunnels
        .iter()
        .any(|t| t.host == host && t.port == port)
        .then_some((host, port))
}

/// A raw TCP tunnel to a granted endpoint (SSH): connect first, so a dead
/// upstream is a `502` the client sees, then splice bytes both ways until
/// either side closes or the run is unregistered. The bytes are the
/// client's own end-to-end encrypted protocol: nothing is inspected.
async fn handle_tcp_tunnel(
    inner: Arc<Inner>,
    run: Arc<Run>,
    host: String,
    port: u16,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let exchange = Exchange::new(
        run.clone(),
        "CONNECT",
        &format!("{host}:{port}"),
        true,
        (req.headers(), &[]),
        None,
        inner.config.trace_body_bytes,
    );
    let connect = tokio::time::timeout(
        inner.config.connect_timeout,
        inner.upstream.dialer.dial(&host, port, true),
    )
    .await;
    let upstream = match connect {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let message = e.detail();
            if let Some(ex) = &exchange {
                ex.set_error(e.status().as_u16(), &message);
                ex.finish();
            }
            return text(e.status(), message);
        }
        Err(_) => {
            let message = format!("moat: connecting to {host}:{port} timed out");
            if let Some(ex) = &exchange {
                ex.set_error(504, &message);
                ex.finish();
            }
            return text(StatusCode::GATEWAY_TIMEOUT, message);
        }
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        splice(&run, exchange, TokioIo::new(upgraded), upstream).await;
    });
    Response::new(empty())
}

/// Copies bytes both ways between a tunnel's client and its upstream until
/// either side closes or the run is unregistered, then finishes the
/// tunnel's trace line with the byte counts.
async fn splice<C>(
    run: &Run,
    exchange: Option<Arc<Exchange>>,
    mut client: C,
    mut upstream: tokio::net::TcpStream,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let cancel = run.cancel.clone();
    let status = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok((up, down)) => format!("{up} bytes up, {down} bytes down"),
            Err(e) => format!("closed: {e}"),
        },
        _ = cancel.cancelled() => "closed: run unregistered".to_owned(),
    };
    if let Some(ex) = &exchange {
        ex.set_response(200, &HeaderMap::new());
        ex.set_body(Side::Response, status.as_bytes());
        ex.finish();
    }
}

/// How long a tunnel to a port other than 80 and 443 waits for the
/// client's first bytes before taking the server to be the one to speak
/// first (SSH, SMTP, MySQL) and splicing bytes as they come.
const SERVER_FIRST_WAIT: Duration = Duration::from_millis(250);

/// What a tunnel's client speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speech {
    /// A TLS client hello.
    Tls,
    /// An HTTP/1 request line.
    Http,
    /// Anything else, or nothing yet when the server speaks first.
    Other,
}

/// Tells TLS, HTTP and the rest apart by the first bytes, or `None` when
/// more are needed: an HTTP request starts with a method (a few capital
/// letters) and a space.
fn speech(head: &[u8]) -> Option<Speech> {
    match head.first()? {
        0x16 => Some(Speech::Tls),
        b'A'..=b'Z' => {
            for (i, b) in head.iter().enumerate().take(MAX_METHOD + 1) {
                match b {
                    b'A'..=b'Z' | b'-' | b'_' => {}
                    b' ' if i > 0 => return Some(Speech::Http),
                    _ => return Some(Speech::Other),
                }
            }
            (head.len() > MAX_METHOD).then_some(Speech::Other)
        }
        _ => Some(Speech::Other),
    }
}

/// The longest HTTP method taken for one (`VERSION-CONTROL`, `PROPPATCH`…).
const MAX_METHOD: usize = 20;

/// Serves an accepted `CONNECT` tunnel, after a look at what the client
/// speaks: TLS is intercepted (on ports other than 443, only when the
/// client offers HTTP over it, or the run has a credential for the host),
/// HTTP is served as such, and anything else (a database, SSH, TLS that is
/// not HTTP) is spliced to the destination when the policy allows every
/// request to the host, and refused otherwise.
async fn tunnel<IO>(inner: Arc<Inner>, run: Arc<Run>, mut target: Target, mut io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = inner.config.client_timeout;
    let web = matches!(target.port, 80 | 443);
    let mut head = Vec::new();
    // Boxed, as the client hello's reading below: their read buffers
    // (2 and 4 KB) would otherwise size the task that holds the connection
    // for its whole life.
    let Some(speech) = Box::pin(first_speech(&mut io, &mut head, web, timeout)).await else {
        return;
    };
    let speech = match speech {
        Speech::Tls if !web => {
            match Box::pin(read_client_hello(&mut io, &mut head, timeout)).await {
                Some(true) => Speech::Tls,
                // Without HTTP inside, TLS is the client's own business,
                // unless there is a credential to inject.
                _ if injections(&run, bare_host(&target.host)).label.is_some() => Speech::Tls,
                Some(false) => Speech::Other,
                None => return,
            }
        }
        other => other,
    };
    let io = Prefixed::new(Bytes::from(head), io);
    match speech {
        Speech::Http => {
            target.scheme = "http";
            Box::pin(serve_inner(inner, run, target, io, false)).await;
            return;
        }
        Speech::Other => {
            Box::pin(raw_tunnel(inner, run, target, io)).await;
            return;
        }
        Speech::Tls => {}
    }
    // The handshake's state lives in its own allocation, freed once it is
    // done: inline, it would size the task that holds the connection for
    // its whole life (about 3 KB more per open connection).
    let Some(tls) = Box::pin(accept_tls(&inner, &run, &target, io)).await else {
        return;
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    serve_inner(inner, run, target, tls, h2).await;
}

/// Reads the client's first bytes into `head` until they tell what it
/// speaks (`Other` when the server speaks first on a port other than 80
/// and 443); `None` when the client goes away or stays silent.
async fn first_speech<IO>(
    io: &mut IO,
    head: &mut Vec<u8>,
    web: bool,
    timeout: Duration,
) -> Option<Speech>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = [0u8; 2048];
    let mut wait = if web { timeout } else { SERVER_FIRST_WAIT };
    loop {
        match tokio::time::timeout(wait, io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => head.extend_from_slice(&buf[..n]),
            // The server speaks first, or nothing more came.
            Err(_) if !web && head.is_empty() => return Some(Speech::Other),
            Err(_) if head.is_empty() => return None,
            Err(_) => return Some(Speech::Other),
        }
        if let Some(speech) = speech(head) {
            return Some(speech);
        }
        wait = timeout;
    }
}

/// The client's TLS handshake with a leaf for the name it asks for.
async fn accept_tls<IO>(
    inner: &Inner,
    run: &Arc<Run>,
    target: &Target,
    io: Prefixed<IO>,
) -> Option<Box<tokio_rustls::server::TlsStream<Prefixed<IO>>>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = inner.config.client_timeout;
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(fault = %Fault::Downstream, error = %e, "client TLS hello");
            return None;
        }
        Err(_) => return None,
    };
    let bare = target.host.trim_start_matches('[').trim_end_matches(']');
    // The client's SNI names the certificate; without SNI (or for IP
    // targets, which have none) the CONNECT target does.
    let name = start
        .client_hello()
        .server_name()
        .filter(|s| !s.is_empty())
        .unwrap_or(bare)
        .to_owned();
    let config = match inner.ca.server_config(&name).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(fault = %e.fault(), error = %e.detail(), host = %name, "minting a certificate");
            return None;
        }
    };
    let tls = match tokio::time::timeout(timeout, start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(fault = %Fault::Downstream, error = %e, "client TLS handshake");
            // A client that does not trust moat's CA is a user's problem
            // with a fix: say so in the trace, not only in a debug log.
            if let Some(message) = certificate_rejection(&e, &name) {
                if let Some(ex) = Exchange::new(
                    run.clone(),
                    "CONNECT",
                    &format!("{}:{}", target.host, target.port),
                    true,
                    (&HeaderMap::new(), &[]),
                    None,
                    inner.config.trace_body_bytes,
                ) {
                    ex.set_failure(&message);
                    ex.finish();
                }
            }
            return None;
        }
        Err(_) => return None,
    };
    // Boxed, the TLS state (over a KB) is not copied into every future
    // that passes it on.
    Some(Box::new(tls))
}

/// Reads the rest of the client hello's first record into `head` and says
/// whether it offers HTTP (`h2` or `http/1.1` in ALPN); `None` when the
/// client goes away or sends garbage.
async fn read_client_hello<IO>(io: &mut IO, head: &mut Vec<u8>, timeout: Duration) -> Option<bool>
where
    IO: AsyncRead + Unpin,
{
    let mut buf = [0u8; 4096];
    loop {
        if head.len() >= 5 {
            let record = 5 + usize::from(u16::from_be_bytes([head[3], head[4]]));
            if head.len() >= record {
                break;
            }
        }
        match tokio::time::timeout(timeout, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    let mut acceptor = rustls::server::Acceptor::default();
    acceptor.read_tls(&mut &head[..]).ok()?;
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(
            accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == b"h2" || p == b"http/1.1")),
        ),
        // A hello spread over several records: intercept, as on 443.
        Ok(None) => Some(true),
        Err(_) => None,
    }
}

/// A tunnel whose bytes moat does not understand: spliced to the
/// destination when the run's policy allows every request to the host
/// (nothing could be checked inside), refused and traced otherwise.
async fn raw_tunnel<IO>(inner: Arc<Inner>, run: Arc<Run>, target: Target, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let authority = format!("{}:{}", target.host, target.port);
    let exchange = Exchange::new(
        run.clone(),
        "CONNECT",
        &authority,
        true,
        (&HeaderMap::new(), &[]),
        None,
        inner.config.trace_body_bytes,
    );
    let bare = bare_host(&target.host);
    if !matches!(run.policy.host_decision(bare), HostDecision::Allowed) {
        if let Some(ex) = exchange {
            ex.set_error(407, "blocked by network policy");
            ex.set_body(
                Side::Response,
                format!(
                    "Moat: connection blocked by network policy.\n\
                     {authority} is not HTTP or TLS, and the policy has rules for host {bare:?} \
                     that moat cannot check on it.\n\
                     Allow the whole host in network.rules in moat.yaml (- {bare}) or use policy: permissive."
                )
                .as_bytes(),
            );
            ex.finish();
        }
        return;
    }
    let connect = tokio::time::timeout(
        inner.config.connect_timeout,
        inner.upstream.dialer.dial(bare, target.port, false),
    )
    .await;
    let upstream = match connect {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            if let Some(ex) = exchange {
                ex.set_error(e.status().as_u16(), &e.detail());
                ex.finish();
            }
            return;
        }
        Err(_) => {
            if let Some(ex) = exchange {
                ex.set_error(504, &format!("moat: connecting to {authority} timed out"));
                ex.finish();
            }
            return;
        }
    };
    splice(&run, exchange, io, upstream).await;
}

/// What to tell the user when a client's TLS handshake with moat's
/// certificate for `name` failed, if it looks like the client refused the
/// certificate: an alert about it, or the connection closed mid-handshake.
fn certificate_rejection(e: &std::io::Error, name: &str) -> Option<String> {
    use rustls::AlertDescription as A;
    const FIX: &str = "The client does not trust moat's CA: point it at \
        /etc/ssl/certs/moat-ca/ca.crt (moat sets SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, \
        REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE to a bundle holding it); a client that pins \
        certificates cannot be used through moat.";
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        });
    match alert {
        Some(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::DecryptError),
        ) => Some(format!(
            "the client rejected moat's certificate for {name} (TLS alert: {alert:?}). {FIX}"
        )),
        Some(_) => None,
        None => matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
        )
        .then(|| {
            format!(
                "the client closed the connection during the TLS handshake for {name}, \
                 perhaps rejecting moat's certificate. {FIX}"
            )
        }),
    }
}

async fn serve_inner<IO>(inner: Arc<Inner>, run: Arc<Run>, target: Target, io: IO, h2: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cancel = run.cancel.clone();
    let target = Arc::new(target);
    let config_timeout = inner.config.client_timeout;
    let max_buf = inner.config.max_header_bytes.max(8192);
    let activity = Arc::new(Activity::new());
    // An HTTP/1.1 client sends one request at a time: it gets its own
    // upstream connection. HTTP/2 clients share the pool's.
    let binding = (!h2).then(|| Arc::new(inner.upstream.binding()));
    let service = {
        let inner = inner.clone();
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            let inner = inner.clone();
            let run = run.clone();
            let target = target.clone();
            let binding = binding.clone();
            let busy = activity.enter();
            async move {
                // Boxed: hyper keeps room for this future for the life of
                // the connection, idle or not; one request's state is
                // about 2 KB.
                let resp =
                    Box::pin(handle_inner(inner, run, &target, req, binding.as_deref())).await;
                Ok::<_, Infallible>(resp.map(|body| Busy { body, _busy: busy }.boxed_unsync()))
            }
        })
    };
    let io = TokioIo::new(io);
    if h2 {
        // Boxed: inline, HTTP/2's larger connection state would size every
        // HTTP/1.1 tunnel's task too.
        Box::pin(serve_h2(io, service, cancel, &activity, config_timeout)).await;
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config_timeout)
            .max_buf_size(max_buf);
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::select! {
            result = conn => {
                if let Err(e) = result {
                    tracing::debug!(fault = %Fault::Downstream, error = %e, "tunnel connection ended");
                }
            }
            () = cancel.cancelled() => {}
        }
    }
}

async fn serve_h2<IO, S>(
    io: TokioIo<IO>,
    service: S,
    cancel: CancellationToken,
    activity: &Activity,
    config_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = ProxyBody> + Send,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        // HTTP/1.1 idles out through the header read timeout; HTTP/2 has
        // none, so a connection without a request in flight for
        // `client_timeout` is told to go away (GOAWAY, then closed).
        let tick = config_timeout
            .min(Duration::from_secs(5))
            .max(Duration::from_millis(100));
        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(fault = %Fault::Downstream, error = %e, "tunnel h2 connection ended");
                    }
                    break;
                }
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(tick) => {
                    let idle = activity.idle_for();
                    if !closing && idle >= Some(config_timeout) {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else if closing && idle >= Some(config_timeout * 2) {
                        // A client that ignores GOAWAY (or never spoke
                        // HTTP/2) is cut off.
                        break;
                    }
                }
            }
        }
    }
}

/// Requests in flight on one connection, and since when there are none.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new(Some(std::time::Instant::now())),
        }
    }

    fn enter(self: &Arc<Self>) -> BusyGuard {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut since) = self.idle_since.lock() {
            *since = None;
        }
        BusyGuard(self.clone())
    }

    /// How long no request has been in flight; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        self.idle_since
            .lock()
            .ok()
            .and_then(|s| s.map(|t| t.elapsed()))
    }
}

/// Held from a request's arrival until its response body is done.
struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let left = self
            .0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if left == 1 {
            if let Ok(mut since) = self.0.idle_since.lock() {
                *since = Some(std::time::Instant::now());
            }
        }
    }
}

/// A response body that keeps its connection counted busy until dropped.
struct Busy {
    body: ProxyBody,
    _busy: BusyGuard,
}

impl hyper::body::Body for Busy {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn handle_inner(
    inner: Arc<Inner>,
    run: Arc<Run>,
    target: &Target,
    req: Request<Incoming>,
    binding: Option<&Binding>,
) -> Response<ProxyBody> {
    if !run.is_active() {
        return auth_failure(AuthFailure::Invalid);
    }
    let uri = match target.uri(&path_and_query(req.uri())) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    let inject = injections(&run, &target.host);
    forward(&inner, run, uri, true, inject, req, binding).await
}

async fn handle_mcp(
    inner: Arc<Inner>,
    run: Arc<Run>,
    req: Request<Incoming>,
    binding: &Binding,
) -> Response<ProxyBody> {
    let path = req.uri().path();
    let rest = path.strip_prefix("/mcp/").unwrap_or_default();
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let Some(route) = run.mcp.iter().find(|m| m.name == name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("moat: this run has no MCP server named {name:?}"),
        );
    };
    let uri = match mcp_uri(route, tail, req.uri().query()) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    let inject = Injected {
        headers: route
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.header_value().clone()))
            .collect(),
        label: Some(format!("mcp:{}", route.name)),
        secrets: route.secrets.clone(),
    };
    let mut req = req;
    // The client may have authenticated with `Authorization: Bearer
    // <token>`: it never goes upstream (route headers replace it).
    req.headers_mut().remove(header::AUTHORIZATION);
    forward(&inner, run.clone(), uri, true, inject, req, Some(binding)).await
}

fn mcp_uri(route: &ParsedMcp, tail: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let base_path = route.base.path().trim_end_matches('/');
    let mut pq = format!("{base_path}{tail}");
    if pq.is_empty() {
        pq.push('/');
    }
    let query = query.or(route.base.query());
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = route.base.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e| ProxyError::bad_request("moat: invalid MCP path").with_source(e))?,
    );
    Uri::from_parts(parts)
        .map_err(|e| ProxyError::bad_request("moat: invalid MCP URL").with_source(e))
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
}

fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), those named in
/// `Connection` included. With `keep_upgrade`, `Upgrade` survives and
/// `Connection: upgrade` is set. `TE: trailers` survives (gRPC needs it).
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    let te_trailers = header_has_token(headers, header::TE, "trailers");
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        if let Some(upgrade) = upgrade {
            headers.insert(header::UPGRADE, upgrade);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
}

/// HTTP/2 clients may split `Cookie` across fields; HTTP/1.1 wants one.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().count() < 2 {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Policy, injection, trace and forwarding of one request to `uri`.
async fn forward(
    inner: &Arc<Inner>,
    run: Arc<Run>,
    uri: Uri,
    check_policy: bool,
    inject: Injected,
    mut req: Request<Incoming>,
    binding: Option<&Binding>,
) -> Response<ProxyBody> {
    let limit = inner.config.trace_body_bytes;
    let method = req.method().clone();
    // Only what records requests, and error messages, need it as text.
    let url = || uri.to_string();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if check_policy {
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let overrides: Vec<&str> = METHOD_OVERRIDES
            .iter()
            .flat_map(|name| req.headers().get_all(*name))
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            .collect();
        if let Decision::Deny(reason) =
            run.policy
                .decide_request(&host, method.as_str(), &overrides, pq)
        {
            let message = reason.message();
            if let Some(ex) = Exchange::new(
                run.clone(),
                method.as_str(),
                &url(),
                false,
                (req.headers(), &[]),
                None,
                limit,
            ) {
                ex.set_error(407, "blocked by network policy");
                ex.set_body(Side::Response, message.as_bytes());
                ex.finish();
            }
            return blocked(&reason);
        }
    }

    // A credential only ever travels inside TLS: a plain-HTTP leg to a
    // host moat holds one for is refused whole (not sent without it, which
    // would hide the mistake). Loopback is excepted for local servers.
    let cleartext = uri.scheme_str() != Some("https");
    if cleartext
        && !inject.headers.is_empty()
        && !(inner.config.cleartext_loopback && is_loopback(&host))
    {
        let https = {
            let mut parts = uri.clone().into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTPS);
            if let Some(a) = &parts.authority {
                if a.port_u16() == Some(80) {
                    parts.authority = a.host().parse().ok();
                }
            }
            Uri::from_parts(parts)
                .map(|u| u.to_string())
                .unwrap_or_else(|_| format!("https://{host}/"))
        };
        let url = url();
        let message = format!(
            "moat: refused to send the credential for {host} over plain HTTP ({url}): anyone on the path could read it.\n\
             Use {https} instead; moat injects credentials only into TLS connections.\n"
        );
        if let Some(ex) = Exchange::new(
            run.clone(),
            method.as_str(),
            &url,
            false,
            (req.headers(), &[]),
            inject.label,
            limit,
        ) {
            ex.set_error(403, "credential refused on plain HTTP");
            ex.set_body(Side::Response, message.as_bytes());
            ex.finish();
        }
        let mut resp = text(StatusCode::FORBIDDEN, message);
        mark(
            &mut resp,
            CLEARTEXT_REASON,
            "http_request_denied",
            &format!("a credential for {host} is only sent over https"),
        );
        return resp;
    }

    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade);
    headers.remove(header::HOST);
    join_cookies(&mut headers);
    let Injected {
        headers: inject,
        label,
        secrets,
    } = inject;
    let injected: Vec<&str> = inject.iter().map(|(n, _)| n.as_str()).collect();
    for (name, value) in &inject {
        headers.insert(name.clone(), value.clone());
    }
    if !secrets.is_empty() {
        // Only encodings the scrubber can read come back.
        let gzip = header_has_token(&headers, header::ACCEPT_ENCODING, "gzip");
        headers.remove(header::ACCEPT_ENCODING);
        if gzip {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        }
    }
    let exchange = run.recorded().then(url).and_then(|url| {
        Exchange::new(
            run.clone(),
            method.as_str(),
            &url,
            true,
            (&headers, &injected),
            label,
            limit,
        )
    });

    let mut upstream_req = Request::new(
        Tapped::new(body, exchange.clone(), Side::Request)
            .map_err(|e| Box::new(e) as BoxError)
            .boxed_unsync(),
    );
    *upstream_req.method_mut() = method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = headers;

    let timeout = inner.config.upstream_timeout;
    let sent = inner.upstream.send(binding, upgrade, upstream_req);
    let mut resp = match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(resp)) => resp,
        Err(_) => {
            let err = ProxyError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "moat: upstream {host} sent no response within {} s. \
                     Raise MOAT_UPSTREAM_TIMEOUT (seconds, read by the daemon) if it is just slow.",
                    timeout.as_secs()
                ),
            );
            if let Some(ex) = &exchange {
                ex.set_error(err.status().as_u16(), &err.detail());
                ex.finish();
            }
            return error_response(&err);
        }
        Ok(Err(err)) => {
            if let Some(ex) = &exchange {
                ex.set_error(err.status().as_u16(), &err.detail());
                ex.finish();
            }
            return error_response(&err);
        }
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let cancel = run.cancel.clone();
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade)
                else {
                    return;
                };
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                    () = cancel.cancelled() => {}
                }
            });
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    let body = body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
    let body = if secrets.is_empty() || switching {
        body
    } else {
        let n = secrets.scrub_headers(&mut parts.headers);
        if n > 0 {
            if let Some(ex) = &exchange {
                ex.add_scrubbed(n);
            }
        }
        let encoding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        let gzip = match encoding.as_deref() {
            None | Some("identity") => false,
            Some("gzip" | "x-gzip") => true,
            Some(other) => {
                let err = ProxyError::new(
                    ErrorKind::UpstreamProtocol,
                    format!(
                        "moat: upstream {host} answered with Content-Encoding {other:?}, which moat cannot check for \
                         echoed credentials; only gzip or none is accepted when a credential is injected"
                    ),
                );
                if let Some(ex) = &exchange {
                    ex.set_error(err.status().as_u16(), &err.detail());
                    ex.finish();
                }
                return error_response(&err);
            }
        };
        if gzip {
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        Scrubbed::new(body, secrets, gzip, exchange.clone()).boxed_unsync()
    };
    if let Some(ex) = &exchange {
        ex.set_response(parts.status.as_u16(), &parts.headers);
    }
    let body = Tapped::new(body, exchange, Side::Response).boxed_unsync();
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Custom".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic abc".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        let mut a = h.clone();
        strip_hop_by_hop(&mut a, false);
        let mut names: Vec<_> = a.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "x-keep"]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(h.get(header::PROXY_AUTHORIZATION).is_none());
    }

    #[test]
    fn mcp_paths_map_onto_the_route_url() {
        let route = ParsedMcp {
            name: "gh".into(),
            base: "https://mcp.example.com/v1/mcp/".parse().unwrap(),
            headers: vec![],
            secrets: Secrets::default(),
        };
        assert_eq!(
            mcp_uri(&route, "", None).unwrap().to_string(),
            "https://mcp.example.com/v1/mcp"
        );
        assert_eq!(
            mcp_uri(&route, "/sse", Some("a=1")).unwrap().to_string(),
            "https://mcp.example.com/v1/mcp/sse?a=1"
        );
        let root = ParsedMcp {
            name: "r".into(),
            base: "http://127.0.0.1:9".parse().unwrap(),
            headers: vec![],
            secrets: Secrets::default(),
        };
        assert_eq!(
            mcp_uri(&root, "", None).unwrap().to_string(),
            "http://127.0.0.1:9/"
        );
    }
}
