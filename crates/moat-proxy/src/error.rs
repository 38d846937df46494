//! The proxy's error type: every error records who is at fault, which picks
//! the status code the client sees and the log level.

use std::fmt;

use http::StatusCode;

/// A boxed error, as hyper and rustls hand them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Who caused a failure (the pingora idea): it decides the response status
/// and whether it is worth a warning in the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The client in the sandbox sent something wrong (bad request, bad
    /// credentials). Answered with a 4xx.
    Downstream,
    /// The server moat forwarded to failed (refused, TLS, timeout, protocol).
    /// Answered with a 502 or 504.
    Upstream,
    /// Moat itself failed (configuration, CA, files).
    Internal,
    /// The run's network policy blocked the request. Answered with a 407.
    Policy,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Downstream => "downstream",
            Fault::Upstream => "upstream",
            Fault::Internal => "internal",
            Fault::Policy => "policy",
        })
    }
}

/// What kind of failure, more precise than [`Fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Invalid configuration or registration passed by the caller.
    Config,
    /// A run with this id is already registered.
    DuplicateRun,
    /// Creating, reading or using the certificate authority failed.
    Ca,
    /// A local file or socket operation failed.
    Io,
    /// The client sent a malformed or unsupported request.
    BadRequest,
    /// The upstream could not be reached.
    UpstreamConnect,
    /// The upstream TLS handshake or certificate verification failed.
    UpstreamTls,
    /// The upstream took too long.
    UpstreamTimeout,
    /// The upstream broke the HTTP protocol or closed the connection.
    UpstreamProtocol,
    /// Blocked by the network policy.
    PolicyDenied,
    /// The destination is an address of the machine the proxy runs on
    /// (loopback, one of its interfaces, link-local), which a sandbox
    /// reaches only through the host ports it was given.
    HostAddress,
    /// Anything else inside moat.
    Internal,
}

/// An error of the proxy engine.
///
/// `Display` is a one-line human explanation that never contains secrets;
/// the source chain carries the underlying error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProxyError {
    kind: ErrorKind,
    fault: Fault,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl ProxyError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let fault = match kind {
            ErrorKind::Config | ErrorKind::DuplicateRun | ErrorKind::Ca | ErrorKind::Io => {
                Fault::Internal
            }
            ErrorKind::Internal => Fault::Internal,
            ErrorKind::BadRequest => Fault::Downstream,
            ErrorKind::UpstreamConnect
            | ErrorKind::UpstreamTls
            | ErrorKind::UpstreamTimeout
            | ErrorKind::UpstreamProtocol => Fault::Upstream,
            ErrorKind::PolicyDenied | ErrorKind::HostAddress => Fault::Policy,
        };
        ProxyError {
            kind,
            fault,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn ca(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Ca, message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    /// What kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        self.fault
    }

    /// The status code a client should see for this error.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::PolicyDenied => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ErrorKind::HostAddress => StatusCode::FORBIDDEN,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::UpstreamConnect | ErrorKind::UpstreamTls | ErrorKind::UpstreamProtocol => {
                StatusCode::BAD_GATEWAY
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message followed by the source chain, `: `-separated.
    pub fn detail(&self) -> String {
        let mut out = self.message.clone();
        let mut next: Option<&(dyn std::error::Error + 'static)> =
            self.source.as_deref().map(|e| e as _);
        while let Some(err) = next {
            let text = err.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            next = err.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_pick_statuses() {
        let e = ProxyError::new(ErrorKind::UpstreamTls, "moat: upstream TLS failed");
        assert_eq!(e.fault(), Fault::Upstream);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        let e = ProxyError::bad_request("bad");
        assert_eq!(e.fault(), Fault::Downstream);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = ProxyError::new(ErrorKind::PolicyDenied, "no");
        assert_eq!(e.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        let e = ProxyError::new(ErrorKind::UpstreamConnect, "refused")
            .with_source(std::io::Error::other("connection refused"));
        assert_eq!(e.detail(), "refused: connection refused");
    }
}
