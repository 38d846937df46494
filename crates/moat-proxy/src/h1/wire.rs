//! What moat's HTTP/1.1 client, server and body decoding share: the
//! limits, the error, and the readings of framing headers.

use std::io;

use http::header::{self, HeaderName};
use http::HeaderMap;

use crate::error::BoxError;

/// Most header lines a response may have (hyper's default).
pub(super) const MAX_HEADERS: usize = 100;
/// Largest response head, and largest chunk-size or trailer section.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// How much is read at once.
pub(super) const READ_SIZE: usize = 8 * 1024;

/// Why an exchange on an upstream HTTP/1.1 connection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("the connection closed before a response")]
    Closed,
    #[error("the connection closed in the middle of the response body")]
    Truncated,
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
}

/// Whether a comma-separated header lists `token` (in any case).
pub(super) fn has_token(map: &HeaderMap, name: HeaderName, token: &str) -> bool {
    map.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The one length every `Content-Length` value gives.
pub(super) fn content_length(map: &HeaderMap) -> Result<u64, H1Error> {
    let mut length = None;
    for value in map.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(H1Error::Invalid("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(H1Error::Invalid("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    length.ok_or(H1Error::Invalid("invalid Content-Length"))
}
