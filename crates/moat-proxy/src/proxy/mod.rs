//! The proxy handle, its listeners and how a connection is told apart
//! (an explicit request, a `CONNECT`, a captured connection); the rest
//! in `responses` (its own answers), `connect` (tunnels and captured
//! protocols), `forward` (one request upstream), `mcp` (the relay),
//! `shared` (the state every connection shares) and `target` (where a
//! request goes). Each imports what it uses by name, and the files
//! depend one way: `mod` on all, `connect` and `mcp` on `forward`, all
//! three on `responses`, `shared` and `target`, which depend on none.

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::body::{boxed_request, ProxyBody};
use crate::ca::CertificateAuthority;
use crate::config::ProxyConfig;
use crate::error::{Fault, ProxyError};
use crate::h1::{self, server::ServeOptions, server::Served, server::Tunnel};
use crate::run::{build_run, Registry, Run, RunRegistration};
use crate::secret::RunToken;
use crate::trace::{RequestObserver, TraceSink};
use crate::upstream::{Binding, Upstream};

mod connect;
mod forward;
mod mcp;
mod responses;
mod shared;
mod target;

use connect::{handle_connect, handle_tcp_tunnel, tunnel_target};
use forward::{forward, injections};
use mcp::handle_mcp;
use responses::{auth_failure, error_response, text};
pub use responses::{BLOCKED_REASON, CLEARTEXT_REASON, INVALID_TOKEN_BODY, MISSING_AUTH_BODY};
use shared::Inner;
use target::{path_and_query, target_of};

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
            TraceSink::open(path, &self.inner.config)
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
            Some(path) => Some(TraceSink::open(path, &self.inner.config)?),
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

    /// Replaces a registered run's network policy at once (`moat allow`,
    /// `moat deny`): the next request or `CONNECT` of the run is decided by
    /// it, on connections already open too (inside an intercepted tunnel
    /// every request is checked). A raw tunnel spliced before the change
    /// (SSH, `network.host` ports, a non-HTTP stream the old policy
    /// allowed whole) stays open until it closes. `false` when no such run
    /// is registered.
    pub fn set_policy(&self, run_id: &str, policy: moat_policy::NetworkPolicy) -> bool {
        let done = self.inner.registry.set_policy(run_id, policy);
        if done {
            tracing::debug!(run = %run_id, "policy replaced");
        }
        done
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
        let handle = move |req: Request<ProxyBody>| {
            let inner = inner.clone();
            let binding = binding.clone();
            // Boxed: the connection's loop would otherwise keep room for
            // a request's whole handling while it waits.
            async move { Box::pin(handle_outer(inner, req, &binding)).await }
        };
        let config = &self.inner.config;
        // moat's lean server first; hyper's for the rest of the connection
        // from the first request the lean one does not take.
        let opts = ServeOptions {
            header_timeout: config.client_timeout,
            max_head: config.max_header_bytes.max(8192),
            proxy_forms: true,
        };
        let served = tokio::select! {
            served = Box::pin(h1::server::serve(io, opts, handle.clone())) => served,
            () = self.inner.shutdown.cancelled() => return,
        };
        let Served::Handoff(io) = served else {
            return;
        };
        let service = service_fn(move |mut req: Request<Incoming>| {
            // A CONNECT's tunnel runs once hyper lets go of the connection.
            let upgrade = (req.method() == Method::CONNECT).then(|| hyper::upgrade::on(&mut req));
            let resp = handle(boxed_request(req));
            async move {
                let mut resp = resp.await;
                let tunnel = resp
                    .extensions_mut()
                    .remove::<Tunnel>()
                    .and_then(|t| t.take());
                if let (Some(upgrade), Some(tunnel)) = (upgrade, tunnel) {
                    tokio::spawn(async move {
                        match upgrade.await {
                            Ok(upgraded) => tunnel(Box::new(TokioIo::new(upgraded))).await,
                            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                        }
                    });
                }
                Ok::<_, Infallible>(resp)
            }
        });
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

async fn handle_outer(
    inner: Arc<Inner>,
    req: Request<ProxyBody>,
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
        let inject = injections(&run, target.host.bare());
        return forward(&inner, run.clone(), uri, inject, req, Some(binding)).await;
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
