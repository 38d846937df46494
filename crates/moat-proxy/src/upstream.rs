//! Connections from the proxy to upstream servers: TCP with the
//! connect-to overrides, TLS verified against the system roots plus the
//! configured extra CA, ALPN `h2`/`http/1.1`, pooled by hyper-util's client.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{ConnectTo, ProxyConfig};
use crate::error::{ErrorKind, ProxyError};
use crate::ProxyBody;

/// The pooled upstream clients.
#[derive(Clone)]
pub(crate) struct Upstream {
    /// Offers `h2` and `http/1.1`; used for ordinary requests.
    pub(crate) auto: Client<Connector, ProxyBody>,
    /// Offers only `http/1.1`; used for upgrade (WebSocket) requests.
    pub(crate) h1: Client<Connector, ProxyBody>,
    /// For tunnels, which are not pooled.
    pub(crate) dialer: Dialer,
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
                .pool_idle_timeout(Duration::from_secs(60))
                .build(c)
        };
        Ok(Upstream {
            auto: build(connector(tls(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?)),
            h1: build(connector(tls(vec![b"http/1.1".to_vec()])?)),
            dialer: Dialer::new(config),
        })
    }
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
/// and keeps sandboxes off the proxy's own machine.
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

    /// The refusal [`dial`](Self::dial) would give, known without
    /// resolving: for IP literals and `localhost` names.
    pub(crate) fn refuses_at_once(&self, host: &str, port: u16) -> Option<ProxyError> {
        let host = bare_host(host);
        if self.allow_host_addresses {
            return None;
        }
        let (to_host, to_port) = ConnectTo::resolve(&self.connect_to, host, port);
        if bare_host(&to_host) != host || to_port != port {
            return None;
        }
        let ip = if host == "localhost" || host.ends_with(".localhost") {
            IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            host.parse::<IpAddr>().ok()?
        };
        is_host_address(ip).then(|| host_address_refused(host, port, ip))
    }

    /// Connects to `host:port` (a name, or an IP literal, IPv6 in brackets
    /// or not), trying each address it resolves to. Addresses of this
    /// machine are refused unless the config allows them, a connect-to
    /// override chose the destination, or the caller says the destination
    /// was given to the run (`granted`: a host port, an SSH endpoint).
    pub(crate) async fn dial(
        &self,
        host: &str,
        port: u16,
        granted: bool,
    ) -> Result<TcpStream, ProxyError> {
        let host = bare_host(host);
        let (to_host, to_port) = ConnectTo::resolve(&self.connect_to, host, port);
        let overridden = bare_host(&to_host) != host || to_port != port;
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
            if !granted && !overridden && !self.allow_host_addresses && is_host_address(addr.ip()) {
                refused.get_or_insert(addr.ip());
                continue;
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
            (None, Some(ip)) => Err(host_address_refused(host, port, ip)),
            (None, None) => Err(ProxyError::new(
                ErrorKind::UpstreamConnect,
                format!("moat: upstream {host} resolves to no address"),
            )),
        }
    }
}

/// The refusal of a destination on the proxy's own machine, with the fix.
pub(crate) fn host_address_refused(host: &str, port: u16, ip: IpAddr) -> ProxyError {
    let shown = if host == ip.to_string() {
        String::new()
    } else {
        format!(" ({ip})")
    };
    ProxyError::new(
        ErrorKind::HostAddress,
        format!(
            "moat: {host}:{port}{shown} is an address of the host machine, which sandboxes cannot \
             reach. To give the sandbox a host service, list its port under network.host in \
             moat.yaml (network: {{host: [{port}]}}) and connect to $MOAT_HOST_GATEWAY:{port}."
        ),
    )
}

/// Whether `ip` belongs to the machine the proxy runs on: loopback, the
/// unspecified address, an address of one of its interfaces (the kernel
/// lets a socket bind only to those), or link-local (cloud metadata
/// services answer there).
pub(crate) fn is_host_address(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let special = ip.is_loopback()
        || ip.is_unspecified()
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        };
    special || (!binds_anywhere() && std::net::UdpSocket::bind((ip, 0)).is_ok())
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
    let host = bare_host(uri.host().unwrap_or_default()).to_owned();
    if host.is_empty() {
        return Err(ProxyError::bad_request("moat: request without a host"));
    }
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = inner.dialer.dial(&host, port, false).await?;
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

/// An upstream connection, plain or TLS.
pub(crate) enum UpstreamIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            UpstreamIo::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        }
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// What the pooled client reads and writes; hyper-util implements
/// `Connection` for `TokioIo<T: Connection>`.
pub(crate) type PooledIo = TokioIo<UpstreamIo>;
