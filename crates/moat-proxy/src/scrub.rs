//! Response scrubbing: a secret moat injected into a request never comes
//! back to the sandbox verbatim in that response, even from an upstream
//! that reflects request headers (echo and debug endpoints, error pages).
//!
//! Each occurrence is replaced by a mask of the same length, so
//! `Content-Length` stays right and the body keeps streaming: the scrubber
//! holds back only a tail of what it has seen that begins some secret (at
//! most `longest secret - 1` bytes), so an occurrence split across chunks
//! is still found whole while other bytes (SSE events) pass at once. A gzip body
//! is decompressed on the fly (and sent without `Content-Encoding`) so a
//! compressed echo is scrubbed too; other encodings (`br`, `zstd`,
//! `deflate`) are refused by asking the upstream for them no more: the
//! request's `Accept-Encoding` is narrowed to `gzip, identity` whenever a
//! credential is injected.
//!
//! This file holds what is masked ([`Secrets`]) and how; [`body`] the
//! response body that masks it as it streams.

use std::sync::Arc;

use base64::Engine;
use http::{HeaderMap, HeaderValue};

pub(crate) mod body;

/// The shortest value scrubbed: shorter ones would mangle ordinary text.
const MIN_SECRET: usize = 8;

/// The byte strings to take out of one response, longest first.
#[derive(Clone, Default)]
pub(crate) struct Secrets {
    values: Arc<Vec<Vec<u8>>>,
}

impl Secrets {
    /// Every form of the injected header values a server might reflect:
    /// the value itself, the token after its scheme (`Bearer x` → `x`),
    /// and for `Basic` the decoded `user:password` and the password.
    pub(crate) fn of<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for v in values {
            out.push(v.as_bytes().to_vec());
            if let Some((scheme, rest)) = v.split_once(' ') {
                let rest = rest.trim();
                out.push(rest.as_bytes().to_vec());
                if scheme.eq_ignore_ascii_case("basic") {
                    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) {
                        if let Some(i) = decoded.iter().position(|b| *b == b':') {
                            out.push(decoded[i + 1..].to_vec());
                        }
                        out.push(decoded);
                    }
                }
            }
        }
        out.retain(|s| s.len() >= MIN_SECRET);
        out.sort_by_key(|s| std::cmp::Reverse(s.len()));
        out.dedup();
        Secrets {
            values: Arc::new(out),
        }
    }

    /// The secrets of all of `sets` (usually one, shared as is).
    pub(crate) fn merge(sets: &[&Secrets]) -> Self {
        match sets {
            [] => Secrets::default(),
            [one] => (*one).clone(),
            many => {
                let mut out: Vec<Vec<u8>> =
                    many.iter().flat_map(|s| s.values.iter().cloned()).collect();
                out.sort_by_key(|s| std::cmp::Reverse(s.len()));
                out.dedup();
                Secrets {
                    values: Arc::new(out),
                }
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// How many bytes at the end of `buf` must wait for the next chunk:
    /// the longest tail that begins some secret (a proper prefix of it).
    /// Anything else cannot become a secret, so streams (SSE) flow on.
    fn held(&self, buf: &[u8]) -> usize {
        let longest = self.values.first().map(Vec::len).unwrap_or(0);
        let max = longest.saturating_sub(1).min(buf.len());
        (1..=max)
            .rev()
            .find(|&k| {
                let tail = &buf[buf.len() - k..];
                self.values
                    .iter()
                    .any(|s| s.len() > k && s.starts_with(tail))
            })
            .unwrap_or(0)
    }

    /// Masks every occurrence in `buf`; returns how many.
    pub(crate) fn scrub(&self, buf: &mut [u8]) -> usize {
        let mut count = 0;
        for secret in self.values.iter() {
            let n = secret.len();
            let Some(&first) = secret.first() else {
                continue;
            };
            let mut i = 0;
            while i + n <= buf.len() {
                match buf[i..=buf.len() - n].iter().position(|b| *b == first) {
                    None => break,
                    Some(off) => {
                        i += off;
                        if buf[i..i + n] == secret[..] {
                            mask(&mut buf[i..i + n]);
                            count += 1;
                            i += n;
                        } else {
                            i += 1;
                        }
                    }
                }
            }
        }
        count
    }

    /// Masks secrets in header values; returns how many.
    pub(crate) fn scrub_headers(&self, headers: &mut HeaderMap) -> usize {
        let mut count = 0;
        for value in headers.values_mut() {
            let mut bytes = value.as_bytes().to_vec();
            let n = self.scrub(&mut bytes);
            if n > 0 {
                count += n;
                if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                    *value = v;
                }
            }
        }
        count
    }
}

/// `[moat-scrubbed]` cut or padded with `*` to the length of `out`.
fn mask(out: &mut [u8]) {
    const LABEL: &[u8] = b"[moat-scrubbed]";
    for (i, b) in out.iter_mut().enumerate() {
        *b = LABEL.get(i).copied().unwrap_or(b'*');
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn forms_of_a_header_value() {
        let s = Secrets::of([
            "Bearer ghp_abcdefgh12345",
            "Basic dXNlcjpwYXNzd29yZDEyMw==",
            "short",
        ]);
        let all: Vec<String> = s
            .values
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        assert!(all.contains(&"ghp_abcdefgh12345".to_owned()));
        assert!(all.contains(&"user:password123".to_owned()));
        assert!(all.contains(&"password123".to_owned()));
        assert!(!all.contains(&"short".to_owned()));
    }

    #[test]
    fn header_values_are_masked() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo",
            "token=ghp_SECRETsecret0123456789".parse().unwrap(),
        );
        assert_eq!(
            Secrets::of(["ghp_SECRETsecret0123456789"]).scrub_headers(&mut h),
            1
        );
        assert!(h["x-echo"]
            .to_str()
            .unwrap()
            .starts_with("token=[moat-scrubbed]"));
    }
}
