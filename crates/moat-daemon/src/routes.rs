//! The daemon's side of hostname routing (`ports:`): the listener and the
//! runs' endpoints as they register and leave. The routing itself is
//! `moat_proxy::Router`.

use std::sync::Arc;

use crate::lockfile::DaemonPaths;
use crate::protocol::RunSpec;
use crate::server::DaemonConfig;

/// The routing listener's port unless `MOAT_ROUTING_LISTEN` says
/// otherwise (the proxy's is 8080).
pub const DEFAULT_ROUTING_PORT: u16 = 8081;

/// Binds the routing listener and serves it. A daemon whose routing
/// cannot listen (the port is taken) still proxies: runs' endpoints are
/// then unreachable, which `moat proxy status` shows (no index).
pub(crate) async fn start(
    config: &DaemonConfig,
    paths: &DaemonPaths,
) -> Option<Arc<moat_proxy::Router>> {
    let addr = config.routing_listen;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "routing listens beyond loopback: other hosts can reach the runs' endpoints");
    }
    let ca = match moat_proxy::CertificateAuthority::load_or_create(&paths.ca_dir) {
        Ok(ca) => ca,
        Err(e) => {
            tracing::warn!(error = %e, "routing disabled: no CA");
            return None;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "routing disabled: cannot listen (set MOAT_ROUTING_LISTEN)");
            return None;
        }
    };
    let router = moat_proxy::Router::new(ca);
    if let Ok(local) = listener.local_addr() {
        router.set_port(local.port());
    }
    tokio::spawn(router.clone().serve(listener));
    Some(router)
}

/// Adds `run`'s endpoints, if it has any.
pub(crate) fn insert(router: Option<&moat_proxy::Router>, run: &RunSpec) {
    let (Some(router), false) = (router, run.name.is_empty()) else {
        return;
    };
    let name = &run.name;
    if run.endpoints.is_empty() {
        return;
    }
    let endpoints = run
        .endpoints
        .iter()
        .filter_map(|e| {
            let backend = match (&e.socket, e.addr) {
                (_, Some(addr)) => moat_proxy::Backend::Tcp(addr),
                (Some(path), None) => moat_proxy::Backend::Socket {
                    path: path.clone(),
                    port: e.port,
                },
                (None, None) => return None,
            };
            Some((e.name.clone(), backend))
        })
        .collect();
    router.insert(moat_proxy::RunRoutes {
        run_id: run.run_id.clone(),
        name: name.clone(),
        endpoints,
        trace_path: run.trace_path.clone(),
    });
}

/// Removes a run's endpoints.
pub(crate) fn remove(router: Option<&moat_proxy::Router>, run_id: &str) {
    if let Some(router) = router {
        router.remove(run_id);
    }
}
