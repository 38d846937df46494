//! The MCP relay: `/mcp/<name>` routes to the configured servers.

use std::sync::Arc;

use http::header::{self};
use http::{Request, Response, StatusCode, Uri};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::run::{ParsedMcp, Run};
use crate::upstream::Binding;

use super::forward::{forward, Injected};
use super::responses::{error_response, text};
use super::shared::Inner;

pub(super) async fn handle_mcp(
    inner: Arc<Inner>,
    run: Arc<Run>,
    req: Request<ProxyBody>,
    binding: &Binding,
) -> Response<ProxyBody> {
    let path = req.uri().path();
    let rest = path.strip_prefix("/mcp/").unwrap_or_default();
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let Some(route) = run.mcp.iter().find(|m| m.name == name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("moat: this run has no MCP server named {name:?}"),
        );
    };
    let uri = match mcp_uri(route, tail, req.uri().query()) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    let inject = Injected {
        headers: route
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.header_value().clone()))
            .collect(),
        label: Some(format!("mcp:{}", route.name)),
        secrets: route.secrets.clone(),
    };
    let mut req = req;
    // The client may have authenticated with `Authorization: Bearer
    // <token>`: it never goes upstream (route headers replace it).
    req.headers_mut().remove(header::AUTHORIZATION);
    forward(&inner, run.clone(), uri, inject, req, Some(binding)).await
}

pub(super) fn mcp_uri(
    route: &ParsedMcp,
    tail: &str,
    query: Option<&str>,
) -> Result<Uri, ProxyError> {
    let base_path = route.base.path().trim_end_matches('/');
    let mut pq = format!("{base_path}{tail}");
    if pq.is_empty() {
        pq.push('/');
    }
    let query = query.or(route.base.query());
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = route.base.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|e| ProxyError::bad_request("moat: invalid MCP path").with_source(e))?,
    );
    Uri::from_parts(parts)
        .map_err(|e| ProxyError::bad_request("moat: invalid MCP URL").with_source(e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::scrub::Secrets;

    #[test]
    fn mcp_paths_map_onto_the_route_url() {
        let route = ParsedMcp {
            name: "gh".into(),
            base: "https://mcp.example.com/v1/mcp/".parse().unwrap(),
            headers: vec![],
            secrets: Secrets::default(),
        };
        assert_eq!(
            mcp_uri(&route, "", None).unwrap().to_string(),
            "https://mcp.example.com/v1/mcp"
        );
        assert_eq!(
            mcp_uri(&route, "/sse", Some("a=1")).unwrap().to_string(),
            "https://mcp.example.com/v1/mcp/sse?a=1"
        );
        let root = ParsedMcp {
            name: "r".into(),
            base: "http://127.0.0.1:9".parse().unwrap(),
            headers: vec![],
            secrets: Secrets::default(),
        };
        assert_eq!(
            mcp_uri(&root, "", None).unwrap().to_string(),
            "http://127.0.0.1:9/"
        );
    }
}
