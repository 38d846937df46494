//! The proxy's own answers: authentication failures, policy blocks
//! (keeping the seed's status with a reason phrase and `Proxy-Status`),
//! and errors.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

use crate::body::ProxyBody;
use crate::error::{Fault, ProxyError};
use crate::run::AuthFailure;

/// The body of `407` without credentials.
pub const MISSING_AUTH_BODY: &str = "Proxy authentication required";

/// The body of `407` with credentials matching no run.
pub const INVALID_TOKEN_BODY: &str = "Invalid proxy token";

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(super) fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub(super) fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

pub(super) fn auth_failure(failure: AuthFailure) -> Response<ProxyBody> {
    let body = match failure {
        AuthFailure::Missing => MISSING_AUTH_BODY,
        AuthFailure::Invalid => INVALID_TOKEN_BODY,
    };
    let mut resp = text(StatusCode::PROXY_AUTHENTICATION_REQUIRED, body);
    resp.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"moat\""),
    );
    resp
}

/// The reason phrase of a `407` for a request the run's policy blocked:
/// clients that drop a failed `CONNECT`'s body (curl: `CONNECT tunnel
/// failed, response 407`) still show the status line, and the standard
/// phrase, "Proxy Authentication Required", would point at the token.
pub const BLOCKED_REASON: &str = "Blocked by moat network policy";

/// The reason phrase of a `403` for a plain-HTTP request to a host moat
/// holds a credential for.
pub const CLEARTEXT_REASON: &str = "Credential needs TLS (moat)";

/// Sets a custom HTTP/1 reason phrase and an RFC 9209 `Proxy-Status`
/// header naming moat, the error type and `details`.
pub(super) fn mark(
    resp: &mut Response<ProxyBody>,
    reason: &'static str,
    error: &str,
    details: &str,
) {
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(reason.as_bytes()));
    // An sf-string: printable ASCII, with `"` and `\` escaped.
    let mut value = format!("moat; error={error}; details=\"");
    for c in details.chars() {
        match c {
            '"' | '\\' => {
                value.push('\\');
                value.push(c);
            }
            ' '..='~' => value.push(c),
            _ => value.push('?'),
        }
    }
    value.push('"');
    if let Ok(v) = HeaderValue::from_str(&value) {
        resp.headers_mut()
            .insert(HeaderName::from_static("proxy-status"), v);
    }
}

/// A one-line summary of a denial, for `Proxy-Status` details.
pub(super) fn deny_details(reason: &moat_policy::DenyReason) -> String {
    use moat_policy::DenyReason as D;
    match reason {
        D::HostNotAllowed { host } => format!("host {host} is not in the allow list"),
        D::RuleDenied {
            method, path, rule, ..
        } => format!("{method} {path} is denied by rule {rule}"),
        D::NoRuleMatched { method, path, .. } => {
            format!("{method} {path} matches no allow rule under a strict policy")
        }
        D::AmbiguousPath { method, path, .. } => {
            format!("{method} {path} has an ambiguous path")
        }
        D::InvalidHost { host, .. } => format!("host {host} is not a valid host name"),
        D::HostDenied { host, pattern } => format!("host {host} was denied by moat deny {pattern}"),
    }
}

/// The `407` for a request or `CONNECT` the run's policy blocked: the
/// message (the three lines, then the `moat allow` command) as the body,
/// and the reason in the status line and `Proxy-Status`.
pub(super) fn blocked(reason: &moat_policy::DenyReason, message: &str) -> Response<ProxyBody> {
    let mut resp = text(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        message.to_owned(),
    );
    mark(
        &mut resp,
        BLOCKED_REASON,
        "http_request_denied",
        &deny_details(reason),
    );
    resp
}

pub(super) fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    match e.fault() {
        Fault::Upstream | Fault::Internal => {
            tracing::warn!(fault = %e.fault(), error = %e.detail(), "request failed")
        }
        Fault::Downstream | Fault::Policy => {
            tracing::debug!(fault = %e.fault(), error = %e.detail(), "request refused")
        }
    }
    text(e.status(), e.detail())
}
