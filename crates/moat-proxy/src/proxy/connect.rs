//! `CONNECT` and captured connections: tunnels, telling TLS, HTTP and
//! other protocols apart from the first bytes, interception, splicing.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use moat_policy::{CanonicalHost, HostDecision};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::body::{boxed_request, ProxyBody};
use crate::error::{BoxError, Fault};
use crate::h1::{self, server::ServeOptions, server::Served, server::Tunnel};
use crate::io::Prefixed;
use crate::run::Run;
use crate::trace::exchange::{Exchange, Side};

use super::forward::{handle_inner, injections};
use super::responses::{blocked, empty, error_response, text};
use super::shared::Inner;
use super::target::{canonical_host, Target};

pub(super) fn handle_connect(
    inner: Arc<Inner>,
    run: Arc<Run>,
    req: Request<ProxyBody>,
) -> Response<ProxyBody> {
    let Some(authority) = req.uri().authority() else {
        return text(StatusCode::BAD_REQUEST, "moat: CONNECT needs host:port");
    };
    if authority.host().is_empty() {
        return text(StatusCode::BAD_REQUEST, "moat: CONNECT needs host:port");
    }
    let port = authority.port_u16().unwrap_or(443);
    let host = match canonical_host(authority.host()) {
        Ok(host) => host,
        Err(e) => {
            let shown = authority.host().to_owned();
            let refused = (e.status().as_u16(), e.detail());
            trace_refused_connect(
                &inner,
                &run,
                &req,
                &shown,
                port,
                (refused.0, &refused.1),
                None,
            );
            return error_response(&e);
        }
    };
    if let HostDecision::Denied(reason) = run.policy().host_decision_for(&host) {
        let message = run.deny_message(&reason);
        let refused = (407, "blocked by network policy");
        trace_refused_connect(
            &inner,
            &run,
            &req,
            host.as_str(),
            port,
            refused,
            Some(&message),
        );
        return blocked(&reason, &message);
    }
    if let Some(e) = inner.upstream.dialer.refuses_at_once(&host, port) {
        let refused = (e.status().as_u16(), e.detail());
        trace_refused_connect(
            &inner,
            &run,
            &req,
            host.as_str(),
            port,
            (refused.0, &refused.1),
            Some(&refused.1),
        );
        return error_response(&e);
    }
    let mut resp = Response::new(empty());
    resp.extensions_mut().insert(Tunnel::new(move |io| {
        let target = Target {
            scheme: "https",
            host,
            port,
        };
        tunnel(inner, run, target, io)
    }));
    resp
}

/// Traces a `CONNECT` refused before any tunnel: its status and reason,
/// and the body the client is told, if any.
fn trace_refused_connect(
    inner: &Inner,
    run: &Arc<Run>,
    req: &Request<ProxyBody>,
    host: &str,
    port: u16,
    (status, reason): (u16, &str),
    body: Option<&str>,
) {
    let Some(ex) = Exchange::new(
        run.clone(),
        "CONNECT",
        &format!("{host}:{port}"),
        false,
        (req.headers(), &[]),
        None,
        inner.config.trace_body_bytes,
    ) else {
        return;
    };
    ex.set_error(status, reason);
    if let Some(body) = body {
        ex.set_body(Side::Response, body.as_bytes());
    }
    ex.finish();
}

/// The `CONNECT` target, when the run may open a raw TCP tunnel to it
/// (compared canonical: `127.0.0.1.` is the granted 127.0.0.1).
pub(super) fn tunnel_target(run: &Run, req: &Request<ProxyBody>) -> Option<(CanonicalHost, u16)> {
    let authority = req.uri().authority()?;
    let host = CanonicalHost::parse(authority.host()).ok()?;
    let port = authority.port_u16()?;
    run.tunnels
        .iter()
        .any(|t| t.port == port && CanonicalHost::parse(&t.host).is_ok_and(|h| h == host))
        .then_some((host, port))
}

/// A raw TCP tunnel to a granted endpoint (SSH): connect first, so a dead
/// upstream is a `502` the client sees, then splice bytes both ways until
/// either side closes or the run is unregistered. The bytes are the
/// client's own end-to-end encrypted protocol: nothing is inspected.
pub(super) async fn handle_tcp_tunnel(
    inner: Arc<Inner>,
    run: Arc<Run>,
    host: CanonicalHost,
    port: u16,
    req: Request<ProxyBody>,
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
    let mut resp = Response::new(empty());
    resp.extensions_mut()
        .insert(Tunnel::new(move |io| async move {
            splice(&run, exchange, io, upstream).await;
        }));
    resp
}

/// Copies bytes both ways between a tunnel's client and its upstream until
/// either side closes or the run is unregistered, then finishes the
/// tunnel's trace line with the byte counts.
pub(super) async fn splice<C>(
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
pub(super) const SERVER_FIRST_WAIT: Duration = Duration::from_millis(250);

/// What a tunnel's client speaks, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Speech {
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
pub(super) fn speech(head: &[u8]) -> Option<Speech> {
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
pub(super) const MAX_METHOD: usize = 20;

/// Serves an accepted `CONNECT` tunnel, after a look at what the client
/// speaks: TLS is intercepted (on ports other than 443, only when the
/// client offers HTTP over it, or the run has a credential for the host),
/// HTTP is served as such, and anything else (a database, SSH, TLS that is
/// not HTTP) is spliced to the destination when the policy allows every
/// request to the host, and refused otherwise.
pub(super) async fn tunnel<IO>(inner: Arc<Inner>, run: Arc<Run>, mut target: Target, mut io: IO)
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
                _ if injections(&run, target.host.bare()).label.is_some() => Speech::Tls,
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
pub(super) async fn first_speech<IO>(
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
pub(super) async fn accept_tls<IO>(
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
    let bare = target.host.bare();
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
pub(super) async fn read_client_hello<IO>(
    io: &mut IO,
    head: &mut Vec<u8>,
    timeout: Duration,
) -> Option<bool>
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
pub(super) async fn raw_tunnel<IO>(inner: Arc<Inner>, run: Arc<Run>, target: Target, io: IO)
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
    let bare = target.host.bare();
    if !matches!(
        run.policy().host_decision_for(&target.host),
        HostDecision::Allowed
    ) {
        if let Some(ex) = exchange {
            ex.set_error(407, "blocked by network policy");
            ex.set_body(
                Side::Response,
                format!(
                    "Moat: connection blocked by network policy.\n\
                     {authority} is not HTTP or TLS, and the policy has rules for host {bare:?} \
                     that moat cannot check on it.\n\
                     Allow the whole host in network.rules in moat.yaml (- {bare}) or use policy: permissive.\n\
                     Or allow it for this run now: moat allow {} {bare}",
                    run.name
                )
                .as_bytes(),
            );
            ex.finish();
        }
        return;
    }
    let connect = tokio::time::timeout(
        inner.config.connect_timeout,
        inner.upstream.dialer.dial(&target.host, target.port, false),
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
pub(super) fn certificate_rejection(e: &std::io::Error, name: &str) -> Option<String> {
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

pub(super) async fn serve_inner<IO>(
    inner: Arc<Inner>,
    run: Arc<Run>,
    target: Target,
    io: IO,
    h2: bool,
) where
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
    let handle = {
        let activity = activity.clone();
        move |req: Request<ProxyBody>| {
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
                resp.map(|body| Busy { body, _busy: busy }.boxed_unsync())
            }
        }
    };
    if h2 {
        let service = service_fn(move |req: Request<Incoming>| {
            let resp = handle(boxed_request(req));
            async move { Ok::<_, Infallible>(resp.await) }
        });
        // Boxed: inline, HTTP/2's larger connection state would size every
        // HTTP/1.1 tunnel's task too.
        let io = TokioIo::new(io);
        Box::pin(serve_h2(io, service, cancel, &activity, config_timeout)).await;
        return;
    }
    serve_h1(io, handle, cancel, config_timeout, max_buf).await;
}

/// Serves a tunnel's HTTP/1.1 connection: moat's lean server takes the
/// plain requests, hyper's the rest of the connection from the first one
/// it does not.
async fn serve_h1<IO, F, Fut>(
    io: IO,
    handle: F,
    cancel: CancellationToken,
    header_timeout: Duration,
    max_buf: usize,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<ProxyBody>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let opts = ServeOptions {
        header_timeout,
        max_head: max_buf,
        proxy_forms: false,
    };
    let served = tokio::select! {
        served = Box::pin(h1::server::serve(io, opts, handle.clone())) => served,
        () = cancel.cancelled() => return,
    };
    let Served::Handoff(io) = served else {
        return;
    };
    let service = service_fn(move |req: Request<Incoming>| {
        let resp = handle(boxed_request(req));
        async move { Ok::<_, Infallible>(resp.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_buf);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(fault = %Fault::Downstream, error = %e, "tunnel connection ended");
            }
        }
        () = cancel.cancelled() => {}
    }
}

pub(super) async fn serve_h2<IO, S>(
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
pub(super) struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new(Some(std::time::Instant::now())),
        }
    }

    pub(super) fn enter(self: &Arc<Self>) -> BusyGuard {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut since) = self.idle_since.lock() {
            *since = None;
        }
        BusyGuard(self.clone())
    }

    /// How long no request has been in flight; `None` while one is.
    pub(super) fn idle_for(&self) -> Option<Duration> {
        self.idle_since
            .lock()
            .ok()
            .and_then(|s| s.map(|t| t.elapsed()))
    }
}

/// Held from a request's arrival until its response body is done.
pub(super) struct BusyGuard(Arc<Activity>);

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
pub(super) struct Busy {
    pub(super) body: ProxyBody,
    pub(super) _busy: BusyGuard,
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
