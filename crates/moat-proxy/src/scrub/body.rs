//! The response body with the run's injected secrets masked as it
//! streams (gzip decoded on the way), counting what it masks into the
//! request's trace.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use super::Secrets;
use crate::error::BoxError;
use crate::trace::exchange::Exchange;

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
}
