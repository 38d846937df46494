//! Where a request goes, read from its URI: the target, the host in its
//! one canonical form, the path.

use http::Uri;
use moat_policy::CanonicalHost;

use crate::error::ProxyError;

/// Where a request goes: scheme, host (canonical: what every check
/// compares and the dialler connects to) and port.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) scheme: &'static str,
    pub(super) host: CanonicalHost,
    pub(super) port: u16,
}

impl Target {
    pub(super) fn authority(&self) -> String {
        let default = matches!((self.scheme, self.port), ("https", 443) | ("http", 80));
        if default {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub(super) fn uri(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.scheme)
            .authority(self.authority())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ProxyError::bad_request("moat: invalid request target").with_source(e))
    }
}

pub(super) fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/")
        .to_owned()
}

pub(super) fn target_of(uri: &Uri) -> Result<Target, ProxyError> {
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
        host: canonical_host(host)?,
        port: uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 }),
    })
}

/// A request's host in its one canonical form, or the `400` of a host
/// that names no destination unambiguously (`localhost..`, `256.1.1.1`).
pub(super) fn canonical_host(host: &str) -> Result<CanonicalHost, ProxyError> {
    CanonicalHost::parse(host).map_err(|e| {
        ProxyError::bad_request(format!(
            "moat: {e}. Moat refuses hosts it cannot read one way only, so that no spelling \
             of a host gets past its checks."
        ))
    })
}
