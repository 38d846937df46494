//! Connections from the proxy to upstream servers: TCP with the
//! connect-to overrides, TLS verified against the system roots plus the
//! configured extra CA, ALPN `h2`/`http/1.1`, pooled by hyper-util's client.

use std::future::Future;
use std::io;
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
                connect_to: config.connect_to.clone(),
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
    connect_to: Vec<ConnectTo>,
    timeout: Duration,
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

fn bare_host(host: &str) -> &str {
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
    let (to_host, to_port) = ConnectTo::resolve(&inner.connect_to, &host, port);
    let tcp = TcpStream::connect((bare_host(&to_host), to_port))
        .await
        .map_err(|e| {
            ProxyError::new(
                ErrorKind::UpstreamConnect,
                format!("moat: cannot connect to upstream {host}:{port}"),
            )
            .with_source(e)
        })?;
    let _ = tcp.set_nodelay(true);
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
