//! The body type flowing through the proxy, both ways.

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::BoxError;

/// A request or response body as the proxy passes it on: boxed, so the
/// client's, hyper's and moat's own bodies are one type.
pub(crate) type ProxyBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// A request as hyper's server reads it, with moat's body type (the lean
/// server's requests have it already).
pub(crate) fn boxed_request(req: Request<Incoming>) -> Request<ProxyBody> {
    req.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed_unsync())
}
