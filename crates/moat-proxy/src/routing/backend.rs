//! The connections to the runs' servers: a pooled HTTP/1.1 client whose
//! connector dials a [`Backend`] (the run's port socket, or TCP).
//!
//! hyper-util's pool is keyed by a URI's scheme and authority, so a
//! backend is written into the authority the forwarded request carries
//! (its `Host` header is the client's, set apart): `ip:port` for TCP, and
//! `<hex of the socket path>.<port>.moat-socket` for a port socket.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::Backend;
use crate::body::ProxyBody;

/// How long an idle backend connection stays pooled.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The suffix of a port socket's authority.
const SOCKET_SUFFIX: &str = ".moat-socket";

/// The pooled client to the runs' servers (HTTP/1.1 only: dev servers
/// speak it).
pub(super) type BackendClient = Client<BackendConnector, ProxyBody>;

pub(super) fn client() -> BackendClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(BackendConnector)
}

/// The URI a request to `backend` for `path_and_query` is sent to.
pub(super) fn uri(backend: &Backend, path_and_query: &str) -> Result<Uri, http::Error> {
    let authority = match backend {
        Backend::Tcp(addr) => addr.to_string(),
        Backend::Socket { path, port } => {
            let path = path.as_os_str().as_encoded_bytes();
            format!("{}.{port}{SOCKET_SUFFIX}", hex::encode(path))
        }
    };
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path_and_query)
        .build()
}

/// The backend [`uri`] wrote into `uri`.
fn backend_of(uri: &Uri) -> Option<Backend> {
    let authority = uri.authority()?.as_str();
    if let Some(socket) = authority.strip_suffix(SOCKET_SUFFIX) {
        let (path, port) = socket.rsplit_once('.')?;
        let path = String::from_utf8(hex::decode(path).ok()?).ok()?;
        return Some(Backend::Socket {
            path: PathBuf::from(path),
            port: port.parse().ok()?,
        });
    }
    authority.parse().ok().map(Backend::Tcp)
}

/// Dials the backend a URI names.
#[derive(Clone, Copy, Debug)]
pub(super) struct BackendConnector;

impl tower_service::Service<Uri> for BackendConnector {
    type Response = TokioIo<BackendIo>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<BackendIo>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let backend = backend_of(&uri)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a backend"))?;
            connect(&backend).await.map(TokioIo::new)
        })
    }
}

async fn connect(backend: &Backend) -> io::Result<BackendIo> {
    match backend {
        Backend::Tcp(addr) => {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            Ok(BackendIo(tcp))
        }
        Backend::Socket { path, port } => {
            // The run's side connects and hands over the connected socket
            // (see `moat_capture::serve_ports`).
            let mut conn = UnixStream::connect(path).await?;
            conn.write_all(format!("{port}\n").as_bytes()).await?;
            let fd = loop {
                conn.readable().await?;
                match conn.try_io(Interest::READABLE, || {
                    moat_capture::receive_port_socket(&conn, *port)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => break other?,
                }
            };
            let tcp = std::net::TcpStream::from(fd);
            tcp.set_nonblocking(true)?;
            let tcp = TcpStream::from_std(tcp)?;
            let _ = tcp.set_nodelay(true);
            Ok(BackendIo(tcp))
        }
    }
}

/// A connection to a run's server: a TCP socket, connected by the daemon
/// (`Backend::Tcp`) or by the run's side and handed over
/// (`Backend::Socket`).
pub(super) struct BackendIo(TcpStream);

impl Connection for BackendIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for BackendIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BackendIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_round_trips_through_its_uri() {
        let socket = Backend::Socket {
            path: PathBuf::from("/run/moat/runs/x/ports.sock"),
            port: 5173,
        };
        let tcp = Backend::Tcp("10.0.0.2:8080".parse().expect("addr"));
        for backend in [socket, tcp] {
            let uri = uri(&backend, "/a?b=c").expect("uri");
            assert_eq!(uri.path_and_query().map(|p| p.as_str()), Some("/a?b=c"));
            assert_eq!(backend_of(&uri), Some(backend));
        }
    }
}
