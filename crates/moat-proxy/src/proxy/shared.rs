//! The state every clone of a `Proxy` shares, and so every connection
//! and request it serves.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::ca::CertificateAuthority;
use crate::config::ProxyConfig;
use crate::run::Registry;
use crate::trace::RequestObserver;
use crate::upstream::Upstream;

/// What a `Proxy` handle points to.
pub(super) struct Inner {
    pub(super) config: ProxyConfig,
    pub(super) ca: Arc<CertificateAuthority>,
    pub(super) registry: Registry,
    pub(super) upstream: Upstream,
    pub(super) shutdown: CancellationToken,
    /// Told of every finished request (the daemon's audit log).
    pub(super) observer: std::sync::OnceLock<Arc<dyn RequestObserver>>,
}
