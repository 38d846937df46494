//! One request through the routing: the index, an error, or the request
//! forwarded to the endpoint its host names, the response streamed back,
//! and a line in the run's `network.jsonl`.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{backend, bare_host, Backend, Routed, Router};
use crate::body::{boxed_request, ProxyBody};
use crate::error::BoxError;

/// What a request's connection tells about it.
#[derive(Debug)]
pub(super) struct Conn {
    /// `http` or `https`.
    pub(super) scheme: &'static str,
    /// The TLS server name, lowercase, when the client sent one.
    pub(super) sni: Option<String>,
    /// The client's address, for `X-Forwarded-For`.
    pub(super) peer: IpAddr,
}

/// Headers that describe one connection, not the message (RFC 9110
/// section 7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Answers one request on the routing listener.
pub(super) async fn serve(
    router: Arc<Router>,
    conn: Arc<Conn>,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            let host = req.headers().get(header::HOST)?;
            host.to_str().ok().map(str::to_owned)
        });
    let asked = authority.as_deref().map(bare_host);
    let host = match (&conn.sni, asked) {
        (Some(sni), Some(asked)) if asked != *sni => {
            let body = format!("this connection is for {sni}, not {asked}: open a new one (421)\n");
            return Ok(text(StatusCode::MISDIRECTED_REQUEST, "text/plain", body));
        }
        (Some(sni), _) => sni.clone(),
        (None, asked) => asked.unwrap_or_default(),
    };
    if host == "localhost" || host.parse::<IpAddr>().is_ok() {
        let json = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("application/json"));
        let (kind, body) = router.index(json);
        return Ok(text(StatusCode::OK, kind, body));
    }
    let Some((run, endpoint, target)) = router.lookup(&host) else {
        let body = format!(
            "no running run serves {host}: see https://localhost:{}/\n",
            router.port()
        );
        return Ok(text(StatusCode::NOT_FOUND, "text/plain", body));
    };
    let started = Instant::now();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let line = TraceLine {
        method: req.method().to_string(),
        url: format!("{}://{host}{path}", conn.scheme),
        started,
    };
    let client_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let authority = authority.unwrap_or(host);
    let outgoing = outgoing(req, &target, &authority, &conn, client_upgrade.is_some());
    let sent = match outgoing {
        Ok(outgoing) => router
            .client
            .request(outgoing)
            .await
            .map_err(BoxError::from),
        Err(e) => Err(e.into()),
    };
    let mut resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "routed request");
            line.write(&run, StatusCode::BAD_GATEWAY);
            let body = format!(
                "nothing answers on endpoint {endpoint} of run {} yet (is its server \
                 listening on 127.0.0.1 in the sandbox?)\n",
                run.routes.name
            );
            return Ok(text(StatusCode::BAD_GATEWAY, "text/plain", body));
        }
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(join_upgraded(client_upgrade, backend_upgrade));
    }
    line.write(&run, resp.status());
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    let body = body.map_err(|e| Box::new(e) as BoxError).boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket).
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The request to the backend: HTTP/1.1, the client's `Host`, the
/// `X-Forwarded-*` headers, no hop-by-hop header (but the upgrade's).
fn outgoing(
    req: Request<Incoming>,
    target: &Backend,
    authority: &str,
    conn: &Conn,
    upgrade: bool,
) -> Result<Request<ProxyBody>, http::Error> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri = backend::uri(target, path)?;
    let mut req = boxed_request(req);
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    let host = HeaderValue::from_str(authority)?;
    headers.insert(header::HOST, host.clone());
    headers.insert("x-forwarded-host", host);
    headers.insert("x-forwarded-proto", HeaderValue::from_static(conn.scheme));
    let peer = conn.peer.to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {peer}"),
        None => peer,
    };
    headers.insert("x-forwarded-for", HeaderValue::from_str(&forwarded_for)?);
    Ok(req)
}

/// The comma-separated tokens of the `Connection` headers.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the hop-by-hop headers and those `Connection` names; keeps
/// `Upgrade` (and says `Connection: upgrade`) for a protocol switch.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Joins the client's and the backend's upgraded connections.
async fn join_upgraded(client: hyper::upgrade::OnUpgrade, backend: hyper::upgrade::OnUpgrade) {
    let (client, backend) = tokio::join!(client, backend);
    let (Ok(client), Ok(backend)) = (client, backend) else {
        tracing::debug!("a routed upgrade failed on one side");
        return;
    };
    let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
        tracing::debug!(error = %e, "routed upgraded connection");
    }
}

/// A response moat writes itself.
fn text(status: StatusCode, kind: &'static str, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    resp
}

/// The trace line of a routed request, written once its status is known.
struct TraceLine {
    method: String,
    url: String,
    started: Instant,
}

impl TraceLine {
    /// Appends the line to the run's `network.jsonl`.
    fn write(&self, run: &Routed, status: StatusCode) {
        let Some(mut trace) = run.trace.as_ref() else {
            return;
        };
        let line = serde_json::json!({
            "ts": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "method": self.method,
            "url": self.url,
            "status_code": status.as_u16(),
            "duration_ms": self.started.elapsed().as_secs_f64() * 1000.0,
            "direction": "inbound",
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        // One write on an append-only descriptor: the line is not
        // interleaved with the proxy's own.
        let _ = trace.write_all(&bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let mut upgrade = headers.clone();
        strip_hop_by_hop(&mut headers, false);
        assert_eq!(headers.len(), 1, "{headers:?}");
        strip_hop_by_hop(&mut upgrade, true);
        assert_eq!(
            upgrade.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            upgrade.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert!(!upgrade.contains_key("x-secret"));
    }
}
