//! Moat's proxy engine: everything that touches proxied traffic.
//!
//! The sandbox sends all its HTTP(S) traffic here with a per-run token
//! (`http://moat:<token>@host:port`). The engine:
//!
//! - authenticates every request and `CONNECT` against the registered runs
//!   ([`Proxy::register`] / [`Proxy::unregister`]), `407` otherwise;
//! - intercepts TLS with leaf certificates minted by a local
//!   [`CertificateAuthority`], and verifies upstream TLS against the system
//!   roots plus an optional extra CA ([`ProxyConfig::upstream_ca_file`]);
//! - applies the run's network policy (`moat-policy`) at `CONNECT` and per
//!   request (paths in canonical form, method-override headers checked),
//!   answering `407` with the three-line deny message as the body and
//!   [`BLOCKED_REASON`] in the status line and a `Proxy-Status` header;
//! - answers `504` when an upstream sends no response head within
//!   [`ProxyConfig::upstream_timeout`], and closes idle client connections;
//! - injects the run's credentials ([`Injection`]) as headers, replacing
//!   the client's placeholders, and strips proxy credentials and hop-by-hop
//!   headers before forwarding;
//! - streams bodies both ways (SSE, WebSocket upgrades, HTTP/1.1 and
//!   HTTP/2 on both sides), relays MCP servers ([`McpRoute`]), and appends
//!   one redacted JSON line per request to the run's `network.jsonl`, and
//!   tells a [`RequestObserver`] (the daemon's audit log) of each one;
//! - injects credentials only on TLS upstream legs (plain HTTP to a host
//!   with a credential is refused, `403`), and masks any injected secret
//!   an upstream reflects in its response headers or body (gzip bodies
//!   decoded), so the sandbox never reads one.
//!
//! HTTP/1.1 (the proxy's listener, `CONNECT` included, and both legs
//! inside tunnels) goes through moat's own lean client and server (`h1`),
//! which hold no buffer while a connection waits: a proxied connection
//! costs about 30 KB of heap instead of 70. hyper serves HTTP/2, WebSocket
//! upgrades and every request the lean server does not take.
//!
//! It owns nothing outside traffic: the daemon crate owns the process, the
//! control socket, lock files and the run registry's persistence, and
//! decides policies and credentials; this crate must not read credentials
//! from the store, persist runs, or touch any file besides the CA files and
//! the trace files it is given.

mod body;
mod ca;
mod config;
mod error;
mod h1;
mod io;
mod proxy;
mod routing;
mod run;
mod scrub;
mod secret;
mod trace;
mod upstream;

pub use crate::ca::{CertificateAuthority, LEAF_CACHE_CAPACITY};
pub use crate::config::{ConnectTo, ProxyConfig, DEFAULT_MAX_TRACE_BYTES};
pub use crate::error::{BoxError, ErrorKind, Fault, ProxyError};
pub use crate::proxy::{
    Proxy, BLOCKED_REASON, CLEARTEXT_REASON, INVALID_TOKEN_BODY, MISSING_AUTH_BODY,
};
pub use crate::routing::{Backend, Router, RunRoutes};
pub use crate::run::{Injection, McpRoute, RunRegistration, TcpTunnel};
pub use crate::secret::{RunToken, SecretValue};
pub use crate::trace::{RequestEvent, RequestObserver};
pub use http::HeaderName;
pub use moat_policy::{HostPattern, NetworkPolicy};
