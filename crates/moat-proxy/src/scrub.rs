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

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use hyper::body::{Body, Frame, SizeHint};

use crate::error::BoxError;
use crate::trace::Exchange;

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

type Inner = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A response body with the run's injected secrets masked.
pub(crate) struct Scrubbed {
    inner: Inner,
    secrets: Secrets,
    /// Seen but not yet sent (at most `longest - 1` bytes between polls).
    pending: BytesMut,
    gunzip: Option<flate2::write::GzDecoder<Vec<u8>>>,
    trailers: Option<HeaderMap>,
    done: bool,
    exchange: Option<Arc<Exchange>>,
}

impl Scrubbed {
    pub(crate) fn new(
        inner: Inner,
        secrets: Secrets,
        gzip: bool,
        exchange: Option<Arc<Exchange>>,
    ) -> Self {
        Scrubbed {
            inner,
            secrets,
            pending: BytesMut::new(),
            gunzip: gzip.then(|| flate2::write::GzDecoder::new(Vec::new())),
            trailers: None,
            done: false,
            exchange,
        }
    }

    fn count(&self, n: usize) {
        if n > 0 {
            if let Some(ex) = &self.exchange {
                ex.add_scrubbed(n);
            }
        }
    }

    fn push(&mut self, data: &[u8]) -> Result<(), BoxError> {
        use std::io::Write;
        match &mut self.gunzip {
            Some(dec) => {
                dec.write_all(data)
                    .map_err(|e| format!("moat: the upstream's gzip body is corrupt: {e}"))?;
                let out = std::mem::take(dec.get_mut());
                self.pending.extend_from_slice(&out);
            }
            None => self.pending.extend_from_slice(data),
        }
        Ok(())
    }

    /// Scrubs what is pending and splits off what can be sent: all of it at
    /// the end, otherwise all but the bytes a split secret could span.
    fn ready(&mut self, end: bool) -> Option<Bytes> {
        let n = self.secrets.scrub(&mut self.pending);
        self.count(n);
        let keep = if end {
            0
        } else {
            self.secrets.held(&self.pending)
        };
        let send = self.pending.len().saturating_sub(keep);
        (send > 0).then(|| self.pending.split_to(send).freeze())
    }

    fn finish_gzip(&mut self) -> Result<(), BoxError> {
        if let Some(mut dec) = self.gunzip.take() {
            dec.try_finish()
                .map_err(|e| format!("moat: the upstream's gzip body is truncated: {e}"))?;
            let out = std::mem::take(dec.get_mut());
            self.pending.extend_from_slice(&out);
        }
        Ok(())
    }
}

impl Body for Scrubbed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                if let Some(data) = this.ready(true) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Err(e) = this.push(&data) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        if let Some(out) = this.ready(false) {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(mut t) = frame.into_trailers() {
                            let n = this.secrets.scrub_headers(&mut t);
                            this.count(n);
                            this.trailers = Some(t);
                        }
                        if let Err(e) = this.finish_gzip() {
                            return Poll::Ready(Some(Err(e)));
                        }
                        this.done = true;
                    }
                },
                Poll::Ready(None) => {
                    if let Err(e) = this.finish_gzip() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.done = true;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.gunzip.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    /// A body yielding `chunks` one frame each.
    fn body_of(chunks: Vec<Vec<u8>>) -> Inner {
        struct Chunks(std::collections::VecDeque<Vec<u8>>);
        impl Body for Chunks {
            type Data = Bytes;
            type Error = BoxError;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
                Poll::Ready(
                    self.get_mut()
                        .0
                        .pop_front()
                        .map(|c| Ok(Frame::data(Bytes::from(c)))),
                )
            }
        }
        Chunks(chunks.into()).boxed_unsync()
    }

    async fn run(chunks: Vec<Vec<u8>>, secrets: &Secrets, gzip: bool) -> Vec<u8> {
        Scrubbed::new(body_of(chunks), secrets.clone(), gzip, None)
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

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

    #[tokio::test]
    async fn secrets_split_across_every_chunk_boundary_are_masked() {
        let secret = "ghp_SECRETsecret0123456789";
        let s = Secrets::of([secret]);
        let text = format!("a {secret} b {secret}");
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let bytes = text.as_bytes();
                let out = run(
                    vec![
                        bytes[..cut].to_vec(),
                        bytes[cut..cut2].to_vec(),
                        bytes[cut2..].to_vec(),
                    ],
                    &s,
                    false,
                )
                .await;
                assert_eq!(out.len(), text.len());
                let out = String::from_utf8(out).unwrap();
                assert!(!out.contains(secret), "{cut} {cut2}: {out}");
                assert!(out.starts_with("a [moat-scrubbed]"), "{out}");
            }
        }
    }

    #[tokio::test]
    async fn gzip_bodies_are_decoded_and_scrubbed() {
        use std::io::Write;
        let secret = "ghp_SECRETsecret0123456789";
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(format!("{{\"authorization\":\"Bearer {secret}\"}}").as_bytes())
            .unwrap();
        let gz = enc.finish().unwrap();
        let (a, b) = gz.split_at(gz.len() / 2);
        let out = run(vec![a.to_vec(), b.to_vec()], &Secrets::of([secret]), true).await;
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.starts_with("{\"authorization\":\"Bearer [moat-scrubbed]"),
            "{out}"
        );
        assert!(!out.contains(secret));
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
