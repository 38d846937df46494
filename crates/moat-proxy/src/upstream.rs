//! Connections from the proxy to upstream servers: TCP with the
//! connect-to overrides, TLS verified against the system roots plus the
//! configured extra CA, ALPN `h2`/`http/1.1`.
//!
//! An HTTP/1.1 client connection gets its own upstream connection per
//! destination ([`Binding`]), kept for the client connection's life and
//! then left idle for the next client connection to the same destination;
//! it speaks HTTP/1.1 through [`crate::h1`], which holds no buffer between
//! requests.
//! Upstreams that speak HTTP/2 are shared by everyone through hyper-util's
//! pooled client, as are requests of HTTP/2 client connections.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::connect::Connection;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use moat_policy::CanonicalHost;

use crate::body::ProxyBody;
use crate::config::{ConnectTo, ProxyConfig};
use crate::error::BoxError;
use crate::error::{ErrorKind, ProxyError};
use crate::h1::{H1Conn, Release, SendFailure};
use crate::io::{PooledIo, UpstreamIo};

/// The pooled upstream clients.
#[derive(Clone)]
pub(crate) struct Upstream {
    /// Offers `h2` and `http/1.1`; used for ordinary requests.
    pub(crate) auto: Client<Connector, ProxyBody>,
    /// Offers only `http/1.1`; used for upgrade (WebSocket) requests.
    pub(crate) h1: Client<Connector, ProxyBody>,
    /// Speaks only HTTP/2 (one connection per destination, opened once
    /// however many requests arrive together); for destinations known to
    /// speak it.
    h2: Client<Connector, ProxyBody>,
    /// For tunnels, which are not pooled.
    pub(crate) dialer: Dialer,
    /// Upstream connections bound to HTTP/1.1 client connections.
    direct: Arc<Direct>,
}

impl Upstream {
    pub(crate) fn new(config: &ProxyConfig) -> Result<Self, ProxyError> {
        let roots = Arc::new(root_store(config)?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = |alpn: Vec<Vec<u8>>| -> Result<Arc<ClientConfig>, ProxyError> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| ProxyError::new(ErrorKind::Internal, "TLS versions").with_source(e))?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn;
            Ok(Arc::new(c))
        };
        let connector = |tls: Arc<ClientConfig>| Connector {
            inner: Arc::new(ConnectorInner {
                tls: TlsConnector::from(tls),
                dialer: Dialer::new(config),
                timeout: config.connect_timeout,
            }),
        };
        let build = |c: Connector| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .build(c)
        };
        let auto = connector(tls(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?);
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .http2_only(true)
            .build(connector(tls(vec![b"h2".to_vec()])?));
        Ok(Upstream {
            auto: build(auto.clone()),
            h1: build(connector(tls(vec![b"http/1.1".to_vec()])?)),
            h2,
            dialer: Dialer::new(config),
            direct: Arc::new(Direct {
                connector: auto,
                idle: Mutex::new(HashMap::new()),
                protocols: Mutex::new(HashMap::new()),
                reaper: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// A fresh binding for one client connection.
    pub(crate) fn binding(&self) -> Binding {
        Binding {
            direct: self.direct.clone(),
            held: Mutex::new(None),
        }
    }

    /// Sends `req` (absolute URI) upstream and returns the response head:
    /// upgrades on an HTTP/1.1-only pooled connection, requests of a
    /// client connection with a `binding` on its own upstream connection
    /// unless the destination is known to speak HTTP/2, the rest through
    /// the shared pool.
    pub(crate) async fn send(
        &self,
        binding: Option<&Binding>,
        upgrade: bool,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let host = bare_host(req.uri().host().unwrap_or_default()).to_owned();
        if upgrade {
            return self
                .h1
                .request(req)
                .await
                .map(boxed)
                .map_err(|e| upstream_error(&host, &e, e.is_connect()));
        }
        let key = match (binding, req.uri().scheme(), req.uri().authority()) {
            (Some(_), Some(scheme), Some(authority)) => Some((scheme.clone(), authority.clone())),
            _ => None,
        };
        let (Some(binding), Some(key)) = (binding, key) else {
            return self
                .auto
                .request(req)
                .await
                .map(boxed)
                .map_err(|e| upstream_error(&host, &e, e.is_connect()));
        };
        // Until one connection has told what a destination speaks, other
        // requests for it wait: were it HTTP/2, a burst of new clients
        // would otherwise each open a connection.
        let mut probe = None;
        let mut known = None;
        if !binding.holds(&key) {
            loop {
                match self.direct.gate(&key) {
                    Gate::Known(protocol) => {
                        known = protocol;
                        break;
                    }
                    Gate::Probe(guard) => {
                        probe = Some(guard);
                        break;
                    }
                    Gate::Wait(notify) => {
                        let _ =
                            tokio::time::timeout(self.direct.connector.inner.timeout, notify).await;
                    }
                }
            }
        }
        if known == Some(Protocol::H2) {
            drop(probe);
            return self.h2.request(req).await.map(boxed).map_err(|e| {
                // Perhaps it no longer speaks HTTP/2: the next request
                // finds out again.
                self.direct.forget(&key);
                upstream_error(&host, &e, e.is_connect())
            });
        }
        let result = self
            .direct
            .send(binding, key, req, &host, probe.is_some())
            .await;
        drop(probe);
        result
    }
}

/// How long an upstream connection may stay idle (unused by any client
/// connection) before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many destinations have their protocol remembered.
const MAX_REMEMBERED: usize = 4096;

/// What an upstream spoke when last connected to (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    H1,
    H2,
}

/// Where a request goes: scheme and authority.
type Key = (Scheme, Authority);

/// The upstream connections that are not in hyper-util's pool.
struct Direct {
    /// Offers `h2` and `http/1.1`.
    connector: Connector,
    /// Connections no client connection holds, most recently used last.
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
    /// What each destination spoke when last connected to: HTTP/2
    /// destinations go to the shared pool (one connection multiplexes
    /// every client's requests).
    protocols: Mutex<HashMap<Key, Known>>,
    /// Whether the task closing expired idle connections runs.
    reaper: std::sync::atomic::AtomicBool,
}

struct Idle {
    conn: H1Conn,
    since: Instant,
}

/// A destination's protocol, or the notice that it is being found out.
enum Known {
    Is(Protocol),
    Probing(Arc<tokio::sync::Notify>),
}

enum Gate {
    Known(Option<Protocol>),
    Probe(Probe),
    Wait(tokio::sync::futures::OwnedNotified),
}

/// Held by the request finding out a destination's protocol: if it ends
/// without learning it (the connection failed), the waiting requests
/// are let go, and the next one probes.
struct Probe {
    direct: Arc<Direct>,
    key: Key,
}

impl Drop for Probe {
    fn drop(&mut self) {
        let probing = match self.direct.protocols.lock() {
            Ok(mut protocols) => match protocols.get(&self.key) {
                Some(Known::Probing(_)) => protocols.remove(&self.key),
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(Known::Probing(notify)) = probing {
            notify.notify_waiters();
        }
    }
}

impl Direct {
    fn learn(&self, key: &Key, protocol: Protocol) {
        let previous = match self.protocols.lock() {
            Ok(mut protocols) => {
                if protocols.len() >= MAX_REMEMBERED && !protocols.contains_key(key) {
                    protocols.clear();
                }
                protocols.insert(key.clone(), Known::Is(protocol))
            }
            Err(_) => None,
        };
        if let Some(Known::Probing(notify)) = previous {
            notify.notify_waiters();
        }
    }

    fn forget(&self, key: &Key) {
        if let Ok(mut protocols) = self.protocols.lock() {
            if matches!(protocols.get(key), Some(Known::Is(_))) {
                protocols.remove(key);
            }
        }
    }

    /// Whether a request to `key` may go ahead: known, the first (it
    /// probes), or it waits for the probe.
    fn gate(self: &Arc<Self>, key: &Key) -> Gate {
        let Ok(mut protocols) = self.protocols.lock() else {
            return Gate::Known(None);
        };
        match protocols.get(key) {
            Some(Known::Is(protocol)) => Gate::Known(Some(*protocol)),
            // Made under the lock, so the probe's notice cannot be missed.
            Some(Known::Probing(notify)) => Gate::Wait(notify.clone().notified_owned()),
            None => {
                if protocols.len() >= MAX_REMEMBERED {
                    protocols.clear();
                }
                protocols.insert(
                    key.clone(),
                    Known::Probing(Arc::new(tokio::sync::Notify::new())),
                );
                Gate::Probe(Probe {
                    direct: self.clone(),
                    key: key.clone(),
                })
            }
        }
    }

    /// Sends `req` on the binding's connection to `key`, else on an idle
    /// one, else on a new one; a request a reused connection could not
    /// start (closed meanwhile) is sent again on another.
    async fn send(
        self: &Arc<Self>,
        binding: &Binding,
        key: Key,
        mut req: Request<ProxyBody>,
        host: &str,
        probing: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut held = binding.take(&key).or_else(|| self.checkout(&key));
        loop {
            let reused = held.is_some();
            let sender = match held.take() {
                Some(conn) => Sender::H1(conn),
                // Boxed: its state (over a KB) would otherwise be part of
                // every request's, which waits on a held connection.
                None => Box::pin(self.connect(&key)).await?,
            };
            if reused && probing {
                // Only HTTP/1.1 connections are held or left idle: the
                // requests waiting for this one's answer can go.
                self.learn(&key, Protocol::H1);
            }
            let conn = match sender {
                // An HTTP/2 connection (the first to a destination not
                // yet known to speak it) serves this request only: the
                // next go to the shared pool.
                Sender::H2(mut sender) => {
                    return sender
                        .send_request(req)
                        .await
                        .map(boxed)
                        .map_err(|e| upstream_error(host, &e, false));
                }
                Sender::H1(conn) => conn,
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            match conn.send(req, reused, self.release(key.clone(), tx)).await {
                Ok(resp) => {
                    binding.hold(key, rx);
                    return Ok(resp);
                }
                Err(SendFailure {
                    unsent: Some(again),
                    ..
                }) => {
                    req = again;
                    held = self.checkout(&key);
                }
                Err(SendFailure { error, .. }) => return Err(upstream_error(host, &error, false)),
            }
        }
    }

    /// Where a connection goes when its response has been read: to the
    /// binding that sent the request while it still waits for it, else
    /// idle.
    fn release(
        self: &Arc<Self>,
        key: Key,
        to_binding: tokio::sync::oneshot::Sender<H1Conn>,
    ) -> Release {
        let direct = Arc::downgrade(self);
        Box::new(move |conn| {
            if let Err(conn) = to_binding.send(conn) {
                if let Some(direct) = direct.upgrade() {
                    direct.check_in(key, conn);
                }
            }
        })
    }

    /// A new connection to `key`, ready for a request.
    async fn connect(&self, key: &Key) -> Result<Sender, ProxyError> {
        let uri = Uri::builder()
            .scheme(key.0.clone())
            .authority(key.1.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| ProxyError::bad_request("moat: invalid request target").with_source(e))?;
        let host = bare_host(key.1.host()).to_owned();
        let io = tower_service::Service::call(&mut self.connector.clone(), uri).await?;
        let h2 = io.inner().connected().is_negotiated_h2();
        self.learn(key, if h2 { Protocol::H2 } else { Protocol::H1 });
        if !h2 {
            return Ok(Sender::H1(H1Conn::new(io.into_inner())));
        }
        let failed = |e: hyper::Error| upstream_error(&host, &e, true);
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(failed)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        sender.ready().await.map_err(failed)?;
        Ok(Sender::H2(sender))
    }

    /// The most recently idled open connection to `key`, if any.
    fn checkout(&self, key: &Key) -> Option<H1Conn> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        let mut found = None;
        while let Some(mut entry) = list.pop() {
            if entry.since.elapsed() < IDLE_TIMEOUT && !entry.conn.is_closed() {
                found = Some(entry.conn);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Leaves a connection no client connection holds for the next one.
    fn check_in(self: &Arc<Self>, key: Key, mut conn: H1Conn) {
        if conn.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.entry(key).or_default().push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        if !self.reaper.swap(true, std::sync::atomic::Ordering::AcqRel) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(reap(Arc::downgrade(self)));
            } else {
                self.reaper
                    .store(false, std::sync::atomic::Ordering::Release);
            }
        }
    }
}

/// Closes idle connections that expired or whose upstream closed them,
/// until the proxy is dropped.
async fn reap(direct: Weak<Direct>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 6).await;
        let Some(direct) = direct.upgrade() else {
            return;
        };
        let expired: Vec<Idle> = match direct.idle.lock() {
            Ok(mut idle) => {
                let mut expired = Vec::new();
                idle.retain(|_, list| {
                    expired.extend(list.extract_if(.., |e| {
                        e.since.elapsed() >= IDLE_TIMEOUT || e.conn.is_closed()
                    }));
                    !list.is_empty()
                });
                expired
            }
            Err(_) => return,
        };
        // Closed outside the lock.
        drop(expired);
    }
}

/// A client connection's upstream connection: used for each of its
/// requests to the same destination, left idle when it closes.
pub(crate) struct Binding {
    direct: Arc<Direct>,
    held: Mutex<Option<(Key, Held)>>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding").finish_non_exhaustive()
    }
}

/// The connection a binding holds, sent back through this channel once
/// its last response has been read; while it is still being read, it is
/// not at hand, and dropping the receiver sends it to the idle
/// connections instead.
type Held = tokio::sync::oneshot::Receiver<H1Conn>;

impl Binding {
    fn holds(&self, key: &Key) -> bool {
        self.held
            .lock()
            .is_ok_and(|held| held.as_ref().is_some_and(|(k, _)| k == key))
    }

    /// The held connection, if it goes to `key`, is back from its last
    /// response and still open; one to elsewhere is left idle.
    fn take(&self, key: &Key) -> Option<H1Conn> {
        let (held_key, mut held) = self.held.lock().ok()?.take()?;
        let mut conn = held.try_recv().ok()?;
        if held_key != *key {
            self.direct.check_in(held_key, conn);
            return None;
        }
        (!conn.is_closed()).then_some(conn)
    }

    /// Holds the connection whose response is being read.
    fn hold(&self, key: Key, busy: Held) {
        let previous = match self.held.lock() {
            Ok(mut held) => held.replace((key, busy)),
            Err(_) => None,
        };
        if let Some((key, mut held)) = previous {
            if let Ok(conn) = held.try_recv() {
                self.direct.check_in(key, conn);
            }
        }
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        let held = self.held.get_mut().ok().and_then(Option::take);
        if let Some((key, mut held)) = held {
            if let Ok(conn) = held.try_recv() {
                self.direct.check_in(key, conn);
            }
        }
    }
}

/// A new connection, as the upstream's ALPN answer made it.
enum Sender {
    H1(H1Conn),
    H2(http2::SendRequest<ProxyBody>),
}

/// A hyper client's response with moat's body type.
fn boxed(resp: Response<Incoming>) -> Response<ProxyBody> {
    resp.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync())
}

/// Turns a client error into a [`ProxyError`] blaming the upstream (the
/// connector's own error when there is one); `connect` when it happened
/// while connecting.
pub(crate) fn upstream_error(
    host: &str,
    e: &(dyn std::error::Error + 'static),
    connect: bool,
) -> ProxyError {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(pe) = err.downcast_ref::<ProxyError>() {
            return ProxyError::new(pe.kind(), pe.detail());
        }
        source = err.source();
    }
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        chain.push_str(": ");
        chain.push_str(&err.to_string());
        source = err.source();
    }
    let kind = if connect {
        ErrorKind::UpstreamConnect
    } else {
        ErrorKind::UpstreamProtocol
    };
    ProxyError::new(kind, format!("moat: upstream {host} failed: {chain}"))
}

fn root_store(config: &ProxyConfig) -> Result<RootCertStore, ProxyError> {
    let mut roots = RootCertStore::empty();
    if config.use_system_roots {
        let native = rustls_native_certs::load_native_certs();
        for err in &native.errors {
            tracing::warn!(error = %err, "loading a system root certificate");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system root certificates");
    }
    if let Some(path) = &config.upstream_ca_file {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|e| {
            ProxyError::config(format!("reading upstream CA file {}", path.display()))
                .with_source(e)
        })?;
        let mut count = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| {
                ProxyError::config(format!("parsing upstream CA file {}", path.display()))
                    .with_source(e)
            })?;
            roots.add(cert).map_err(|e| {
                ProxyError::config(format!("using a certificate of {}", path.display()))
                    .with_source(e)
            })?;
            count += 1;
        }
        if count == 0 {
            return Err(ProxyError::config(format!(
                "upstream CA file {} holds no PEM certificate",
                path.display()
            )));
        }
    }
    Ok(roots)
}

struct ConnectorInner {
    tls: TlsConnector,
    dialer: Dialer,
    timeout: Duration,
}

/// Opens TCP connections to upstreams: applies the connect-to overrides
/// and keeps sandboxes off the proxy's own machine and its networks.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    connect_to: Vec<ConnectTo>,
    allow_host_addresses: bool,
}

impl Dialer {
    pub(crate) fn new(config: &ProxyConfig) -> Dialer {
        Dialer {
            connect_to: config.connect_to.clone(),
            allow_host_addresses: config.allow_host_addresses,
        }
    }

    /// Where `host:port` is dialled: the connect-to rule's target, and
    /// whether the rule chose the address (then the caller chose it, and
    /// it is not checked). A rule that changes only the port leaves the
    /// client's host, which is checked as any other.
    fn route(&self, host: &CanonicalHost, port: u16) -> (String, u16, bool) {
        match ConnectTo::find(&self.connect_to, host, port) {
            Some(rule) => (
                if rule.to_host.is_empty() {
                    host.bare().to_owned()
                } else {
                    rule.to_host.clone()
                },
                rule.to_port.unwrap_or(port),
                !rule.to_host.is_empty(),
            ),
            None => (host.bare().to_owned(), port, false),
        }
    }

    /// The refusal [`dial`](Self::dial) would give, known without
    /// resolving: for IP hosts and `localhost` names.
    pub(crate) fn refuses_at_once(&self, host: &CanonicalHost, port: u16) -> Option<ProxyError> {
        if self.allow_host_addresses || self.route(host, port).2 {
            return None;
        }
        let ip = if host.is_localhost() {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            host.ip()?
        };
        local_destination(ip).map(|local| host_address_refused(host, port, ip, &local))
    }

    /// Connects to `host:port`, trying each address it resolves to.
    /// Addresses of this machine and of its private networks are refused
    /// unless the config allows them, a connect-to override chose the
    /// destination, or the caller says the destination was given to the
    /// run (`granted`: a host port, an SSH endpoint). What is checked is
    /// each address as resolved, the one connected to, whatever the
    /// host's spelling.
    pub(crate) async fn dial(
        &self,
        host: &CanonicalHost,
        port: u16,
        granted: bool,
    ) -> Result<TcpStream, ProxyError> {
        let (to_host, to_port, chosen) = self.route(host, port);
        let checked = !granted && !chosen && !self.allow_host_addresses;
        // `localhost` is loopback whatever a hosts file says (RFC 6761).
        if checked && host.is_localhost() {
            let ip = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
            return Err(host_address_refused(host, port, ip, &LocalKind::Loopback));
        }
        let resolved = tokio::net::lookup_host((bare_host(&to_host), to_port))
            .await
            .map_err(|e| {
                ProxyError::new(
                    ErrorKind::UpstreamConnect,
                    format!("moat: cannot resolve upstream {host}"),
                )
                .with_source(e)
            })?;
        let mut refused = None;
        let mut last_error = None;
        for addr in resolved {
            if checked {
                if let Some(local) = local_destination(addr.ip()) {
                    refused.get_or_insert((addr.ip(), local));
                    continue;
                }
            }
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (last_error, refused) {
            (Some(e), _) => Err(ProxyError::new(
                ErrorKind::UpstreamConnect,
                format!("moat: cannot connect to upstream {host}:{port}"),
            )
            .with_source(e)),
            (None, Some((ip, local))) => Err(host_address_refused(host, port, ip, &local)),
            (None, None) => Err(ProxyError::new(
                ErrorKind::UpstreamConnect,
                format!("moat: upstream {host} resolves to no address"),
            )),
        }
    }
}

/// Why an address is not an upstream: where it leads on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LocalKind {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `0.0.0.0`, `::` (connecting there reaches this machine).
    Unspecified,
    /// `169.254.0.0/16`, `fe80::/10`: cloud metadata services answer there.
    LinkLocal,
    /// An address of one of this machine's interfaces.
    Own,
    /// Another address of the private network of one of this machine's
    /// bridges (a Docker or Podman network's containers, libvirt's VMs):
    /// `network` as `address/prefix`, and the interface.
    Network { network: String, interface: String },
}

/// The refusal of a destination on the proxy's own machine or its
/// networks, with the cause and the fix.
pub(crate) fn host_address_refused(
    host: &CanonicalHost,
    port: u16,
    ip: IpAddr,
    local: &LocalKind,
) -> ProxyError {
    let shown = if host.bare() == ip.to_string() {
        String::new()
    } else {
        format!(" ({ip})")
    };
    let what = match local {
        LocalKind::Loopback => "its loopback",
        LocalKind::Unspecified => "the unspecified address",
        LocalKind::Own => "one of its interfaces",
        LocalKind::LinkLocal => {
            return ProxyError::new(
                ErrorKind::HostAddress,
                format!(
                    "moat: {host}:{port}{shown} is a link-local address, where cloud metadata \
                     services answer; sandboxes cannot reach it through the proxy, under any policy."
                ),
            )
        }
        LocalKind::Network { network, interface } => {
            return ProxyError::new(
                ErrorKind::HostAddress,
                format!(
                    "moat: {host}:{port}{shown} is on {network}, a private network of the host machine \
                     (interface {interface}, e.g. a container bridge), whose members sandboxes cannot \
                     reach through the proxy. To give the sandbox such a service, publish its port \
                     on the host, list the port under network.host in moat.yaml \
                     (network: {{host: [{port}]}}) and connect to $MOAT_HOST_GATEWAY:{port}."
                ),
            )
        }
    };
    ProxyError::new(
        ErrorKind::HostAddress,
        format!(
            "moat: {host}:{port}{shown} is an address of the host machine ({what}), which sandboxes \
             cannot reach. To give the sandbox a host service, list its port under network.host in \
             moat.yaml (network: {{host: [{port}]}}) and connect to $MOAT_HOST_GATEWAY:{port}."
        ),
    )
}

/// Where `ip` leads on the machine the proxy runs on, if it does:
/// loopback, the unspecified address, link-local (cloud metadata), an
/// address of one of its interfaces (the kernel lets a socket bind only
/// to those), or another address of a private network one of its
/// interfaces is on (containers on a bridge).
pub(crate) fn local_destination(ip: IpAddr) -> Option<LocalKind> {
    let ip = CanonicalHost::from_ip(ip).ip().unwrap_or(ip);
    if ip.is_loopback() {
        return Some(LocalKind::Loopback);
    }
    if ip.is_unspecified() {
        return Some(LocalKind::Unspecified);
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    };
    if link_local {
        return Some(LocalKind::LinkLocal);
    }
    if !binds_anywhere() && std::net::UdpSocket::bind((ip, 0)).is_ok() {
        return Some(LocalKind::Own);
    }
    interfaces().iter().find_map(|iface| iface.classify(ip))
}

/// One address of one of this machine's interfaces, with its netmask.
#[derive(Debug, Clone)]
pub(crate) struct Interface {
    pub(crate) name: String,
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u32,
    /// A Linux bridge (`docker0`, `br-…`, `podman0`, `virbr0`): its other
    /// members are this machine's containers and VMs. The network of an
    /// ordinary interface (the office LAN, a VPC subnet) is the user's to
    /// reach under `permissive`.
    pub(crate) bridge: bool,
}

impl Interface {
    /// What `ip` is to this interface: its own address, or another on its
    /// network when it is a bridge with a private network (a public
    /// subnet's other members are the internet's).
    pub(crate) fn classify(&self, ip: IpAddr) -> Option<LocalKind> {
        if ip == self.addr {
            return Some(LocalKind::Own);
        }
        let same = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => same_prefix(
                u128::from(u32::from(a)),
                u128::from(u32::from(b)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                same_prefix(u128::from(a), u128::from(b), 128, self.prefix)
            }
            _ => false,
        };
        (same && self.bridge && is_private(self.addr)).then(|| LocalKind::Network {
            network: format!("{}/{}", network_of(self.addr, self.prefix), self.prefix),
            interface: self.name.clone(),
        })
    }
}

/// The network address of `addr/prefix` (172.17.0.1/16 -> 172.17.0.0).
fn network_of(addr: IpAddr, prefix: u32) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - prefix.min(32)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - prefix.min(128)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

fn same_prefix(a: u128, b: u128, bits: u32, prefix: u32) -> bool {
    let prefix = prefix.min(bits);
    prefix == 0 || (a ^ b) >> (bits - prefix) == 0
}

/// RFC 1918, shared address space (RFC 6598, carrier-grade NAT and
/// some VM networks), and IPv6 unique local addresses.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => v6.segments()[0] & 0xfe00 == 0xfc00,
    }
}

/// This machine's interface addresses, read again at most once a second:
/// Docker and Podman add a bridge per network they create.
fn interfaces() -> Arc<Vec<Interface>> {
    type Cache = Mutex<Option<(Instant, Arc<Vec<Interface>>)>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(None));
    if let Ok(guard) = cache.lock() {
        if let Some((at, list)) = guard.as_ref() {
            if at.elapsed() < Duration::from_secs(1) {
                return list.clone();
            }
        }
    }
    let list = Arc::new(read_interfaces());
    if let Ok(mut guard) = cache.lock() {
        *guard = Some((Instant::now(), list.clone()));
    }
    list
}

fn read_interfaces() -> Vec<Interface> {
    let addrs = match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs,
        Err(e) => {
            // Own addresses are still caught by binding; only bridge
            // peers go unrecognised.
            tracing::warn!(error = %e, "listing this machine's interfaces");
            return Vec::new();
        }
    };
    addrs
        .filter_map(|a| {
            let (addr, mask) = (a.address?, a.netmask?);
            let (addr, prefix) =
                if let (Some(addr), Some(mask)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                    (IpAddr::V4(addr.ip()), u32::from(mask.ip()).count_ones())
                } else if let (Some(addr), Some(mask)) =
                    (addr.as_sockaddr_in6(), mask.as_sockaddr_in6())
                {
                    (IpAddr::V6(addr.ip()), u128::from(mask.ip()).count_ones())
                } else {
                    return None;
                };
            let bridge = std::path::Path::new("/sys/class/net")
                .join(&a.interface_name)
                .join("bridge")
                .is_dir();
            Some(Interface {
                name: a.interface_name,
                addr,
                prefix,
                bridge,
            })
        })
        .collect()
}

/// Whether this machine lets sockets bind to addresses it does not have
/// (`net.ipv4.ip_nonlocal_bind`), which would make every address look
/// like one of its own.
fn binds_anywhere() -> bool {
    static ANYWHERE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANYWHERE.get_or_init(|| {
        // 192.0.2.1 (TEST-NET-1) is never a machine's own address.
        std::net::UdpSocket::bind(("192.0.2.1", 0)).is_ok()
    })
}

/// A hyper-util connector: plain TCP for `http`, TLS for `https`.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: Arc<ConnectorInner>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = PooledIo;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<PooledIo, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let timeout = inner.timeout;
            let host = uri.host().unwrap_or_default().to_owned();
            match tokio::time::timeout(timeout, connect(inner, uri)).await {
                Ok(result) => result.map(TokioIo::new),
                Err(_) => Err(ProxyError::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "moat: connecting to upstream {host} timed out after {} s",
                        timeout.as_secs()
                    ),
                )),
            }
        })
    }
}

pub(crate) fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

async fn connect(inner: Arc<ConnectorInner>, uri: Uri) -> Result<UpstreamIo, ProxyError> {
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => {
            return Err(ProxyError::bad_request(format!(
                "moat: unsupported scheme {:?}",
                other.unwrap_or("")
            )))
        }
    };
    let canonical = CanonicalHost::parse(uri.host().unwrap_or_default())
        .map_err(|e| ProxyError::bad_request(format!("moat: {e}")))?;
    let host = canonical.bare().to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = inner.dialer.dial(&canonical, port, false).await?;
    if !tls {
        return Ok(UpstreamIo::Plain(tcp));
    }
    let name = ServerName::try_from(host.clone()).map_err(|e| {
        ProxyError::bad_request(format!("moat: invalid upstream host name {host:?}")).with_source(e)
    })?;
    let stream = inner.tls.connect(name, tcp).await.map_err(|e| {
        let verification = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| {
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                )
            });
        let what = if verification {
            "upstream TLS verification failed"
        } else {
            "upstream TLS handshake failed"
        };
        ProxyError::new(
            ErrorKind::UpstreamTls,
            format!("moat: {what} for {host}: {e}"),
        )
    })?;
    Ok(UpstreamIo::Tls(Box::new(stream)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn iface(addr: &str, prefix: u32) -> Interface {
        Interface {
            name: "docker0".into(),
            addr: addr.parse().unwrap(),
            prefix,
            bridge: true,
        }
    }

    #[test]
    fn the_network_of_an_ordinary_interface_is_reachable() {
        let lan = Interface {
            name: "eth0".into(),
            addr: "10.1.2.3".parse().unwrap(),
            prefix: 16,
            bridge: false,
        };
        assert_eq!(
            lan.classify("10.1.2.3".parse().unwrap()),
            Some(LocalKind::Own)
        );
        assert_eq!(lan.classify("10.1.9.9".parse().unwrap()), None);
    }

    #[test]
    fn a_private_networks_other_members_are_this_machines_too() {
        let bridge = iface("172.17.0.1", 16);
        assert_eq!(
            bridge.classify("172.17.0.1".parse().unwrap()),
            Some(LocalKind::Own)
        );
        assert_eq!(
            bridge.classify("172.17.3.9".parse().unwrap()),
            Some(LocalKind::Network {
                network: "172.17.0.0/16".into(),
                interface: "docker0".into()
            })
        );
        assert_eq!(bridge.classify("172.18.0.2".parse().unwrap()), None);
        assert_eq!(bridge.classify("fd00::2".parse().unwrap()), None);
        // A public subnet's other members are the internet's.
        assert_eq!(
            iface("192.0.2.2", 24).classify("192.0.2.9".parse().unwrap()),
            None
        );
        let ula = iface("fd00::2", 64);
        assert!(matches!(
            ula.classify("fd00::99".parse().unwrap()),
            Some(LocalKind::Network { .. })
        ));
        assert_eq!(ula.classify("fd01::99".parse().unwrap()), None);
        assert!(matches!(
            iface("100.64.1.1", 10).classify("100.100.0.1".parse().unwrap()),
            Some(LocalKind::Network { .. })
        ));
    }

    #[test]
    fn loopback_metadata_and_mapped_forms_are_refused_without_interfaces() {
        for (ip, local) in [
            ("127.0.0.1", LocalKind::Loopback),
            ("127.9.9.9", LocalKind::Loopback),
            ("::1", LocalKind::Loopback),
            ("::ffff:127.0.0.1", LocalKind::Loopback),
            ("0.0.0.0", LocalKind::Unspecified),
            ("::", LocalKind::Unspecified),
            ("169.254.169.254", LocalKind::LinkLocal),
            ("::ffff:169.254.169.254", LocalKind::LinkLocal),
            ("fe80::1", LocalKind::LinkLocal),
        ] {
            assert_eq!(local_destination(ip.parse().unwrap()), Some(local), "{ip}");
        }
    }

    #[test]
    fn only_a_rule_that_names_the_address_chooses_it() {
        let dialer = Dialer {
            connect_to: ConnectTo::parse_list("a.test:80:127.0.0.1:8080,:443::8443").unwrap(),
            allow_host_addresses: false,
        };
        let host = |h: &str| CanonicalHost::parse(h).unwrap();
        assert_eq!(
            dialer.route(&host("A.test."), 80),
            ("127.0.0.1".into(), 8080, true)
        );
        // Only the port changed: the client's host is still checked.
        assert_eq!(
            dialer.route(&host("localhost."), 443),
            ("localhost".into(), 8443, false)
        );
        assert!(dialer.refuses_at_once(&host("localhost."), 443).is_some());
        assert!(dialer.refuses_at_once(&host("0x7f000001"), 9).is_some());
        assert!(dialer.refuses_at_once(&host("a.test"), 80).is_none());
    }
}
