//! The proxy's secrets, on [`moat_secret::Secret`]: a header value to
//! inject (with its `HeaderValue` made once, marked sensitive) and the run
//! token (with its digest). Nothing here prints its value.

use std::fmt;

use http::HeaderValue;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::ProxyError;

/// A secret header value to inject (a token, an API key).
///
/// `Debug` and `Display` print `[REDACTED]`; the bytes are zeroed on drop.
/// [`SecretValue::expose`] is the only way to the value.
#[derive(Clone)]
pub struct SecretValue {
    text: moat_secret::Secret,
    header: HeaderValue,
}

impl SecretValue {
    /// Wraps `value`. Fails when it cannot be an HTTP header value (control
    /// characters, newlines); the error never contains the value.
    pub fn new(value: impl Into<String>) -> Result<Self, ProxyError> {
        let text = moat_secret::Secret::new(value);
        let mut header = HeaderValue::from_str(text.expose()).map_err(|_| {
            ProxyError::config(
                "a secret header value contains characters not allowed in HTTP headers",
            )
        })?;
        header.set_sensitive(true);
        Ok(SecretValue { text, header })
    }

    /// The secret itself. Callers must not log or display it.
    pub fn expose(&self) -> &str {
        self.text.expose()
    }

    pub(crate) fn header_value(&self) -> &HeaderValue {
        &self.header
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// The proxy credential of one run: 32 random bytes, hex-encoded.
///
/// The sandbox reaches the proxy as `http://moat:<token>@host:port`; build
/// that URL with [`RunToken::expose`]. `Debug` and `Display` print
/// `[REDACTED]`.
#[derive(Clone)]
pub struct RunToken(moat_secret::Secret);

impl RunToken {
    pub(crate) fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        RunToken(moat_secret::Secret::new(hex::encode(bytes.as_ref())))
    }

    /// A token handed out earlier (by a daemon that has since stopped), to
    /// register the same run again with it: the sandbox keeps its proxy
    /// URL. `None` unless it is 64 lowercase hex characters.
    pub fn from_existing(token: &str) -> Option<Self> {
        let valid = token.len() == 64
            && token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| RunToken(moat_secret::Secret::new(token)))
    }

    /// The 64-character hex token, for the sandbox's proxy URL. Callers must
    /// not log it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    pub(crate) fn digest(&self) -> TokenDigest {
        TokenDigest::of(self.0.expose().as_bytes())
    }
}

impl fmt::Debug for RunToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunToken([REDACTED])")
    }
}

impl fmt::Display for RunToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// SHA-256 of a token: the registry is keyed by it, so a presented token is
/// hashed and its digest compared in constant time.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub(crate) fn of(token: &[u8]) -> Self {
        TokenDigest(Sha256::digest(token).into())
    }

    pub(crate) fn ct_eq(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = SecretValue::new("Bearer ghp_abc").unwrap_or_else(|_| unreachable!());
        assert_eq!(format!("{s:?} {s}"), "[REDACTED] [REDACTED]");
        let t = RunToken::generate();
        assert_eq!(t.expose().len(), 64);
        assert!(t.expose().bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!format!("{t:?}{t}").contains(t.expose()));
    }

    #[test]
    fn bad_header_values_are_rejected_without_echo() {
        let err = SecretValue::new("abc\r\nX-Evil: 1")
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(!err.is_empty());
        assert!(!err.contains("abc"));
    }
}
