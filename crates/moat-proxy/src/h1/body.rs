//! Reading an HTTP/1.1 message body off its connection, as its framing
//! says (RFC 9112 sections 6 and 7): shared by the upstream client's
//! responses and the tunnel server's requests.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;

use super::wire::{H1Error, MAX_HEAD, READ_SIZE};
use crate::error::BoxError;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// A body being read: the bytes read past what was handed out, and where
/// in the framing the next ones belong.
#[derive(Debug)]
pub(crate) struct Decoder {
    pub(crate) buf: BytesMut,
    state: State,
}

impl Decoder {
    /// A body starting at the front of `buf` (bytes read with its head).
    pub(crate) fn new(buf: BytesMut, framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Decoder { buf, state }
    }

    /// Whether the body has been read whole; `buf` then holds what
    /// followed it.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The next piece of the body, reading from `io` when `buf` holds
    /// none; `None` once the body is whole. Trailer fields are read and
    /// dropped.
    pub(crate) fn poll_next<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
    ) -> Poll<Result<Option<Bytes>, H1Error>> {
        let result = self.step(cx, io);
        if let Poll::Ready(Err(_)) = result {
            // Nothing after an error is trusted.
            self.state = State::Done;
            self.buf = BytesMut::new();
        }
        result
    }

    fn step<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
    ) -> Poll<Result<Option<Bytes>, H1Error>> {
        loop {
            match self.state {
                State::Done => return Poll::Ready(Ok(None)),
                State::Length(left) | State::ChunkData(left) if !self.buf.is_empty() => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    let data = self.buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Poll::Ready(Ok(Some(data)));
                }
                State::UntilClose if !self.buf.is_empty() => {
                    return Poll::Ready(Ok(Some(self.buf.split().freeze())));
                }
                State::ChunkSize => {
                    if let Some(line) = take_line(&mut self.buf)? {
                        let size = chunk_size(&line)?;
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                        continue;
                    }
                }
                State::ChunkEnd if self.buf.len() >= 2 => {
                    if &self.buf[..2] != b"\r\n" {
                        return Poll::Ready(Err(H1Error::Invalid("chunk not followed by CRLF")));
                    }
                    self.buf.advance(2);
                    self.state = State::ChunkSize;
                    continue;
                }
                State::Trailers => {
                    if let Some(line) = take_line(&mut self.buf)? {
                        if line.is_empty() {
                            self.state = State::Done;
                            return Poll::Ready(Ok(None));
                        }
                        continue;
                    }
                }
                _ => {}
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(READ_SIZE);
            }
            match read_into(io, cx, &mut self.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(0)) if self.state == State::UntilClose => {
                    self.state = State::Done;
                    return Poll::Ready(Ok(None));
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(H1Error::Truncated)),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

/// A message body read off its connection `R`, which goes to `on_end`
/// with the bytes read past the body the moment the body's last byte is
/// read; after an error, or if the body is dropped before its end, the
/// connection is dropped instead.
pub(crate) struct DecodedBody<R, F> {
    io: Option<R>,
    decoder: Decoder,
    on_end: Option<F>,
}

impl<R, F> DecodedBody<R, F>
where
    R: AsyncRead + Unpin,
    F: FnOnce(R, BytesMut),
{
    /// The body starting at the front of `buf`; one with nothing to read
    /// hands its connection on at once.
    pub(crate) fn new(io: R, buf: BytesMut, framing: Framing, on_end: F) -> Self {
        let mut body = DecodedBody {
            io: Some(io),
            decoder: Decoder::new(buf, framing),
            on_end: Some(on_end),
        };
        body.end_if_done();
        body
    }

    fn end_if_done(&mut self) {
        if !self.decoder.is_done() {
            return;
        }
        if let (Some(io), Some(on_end)) = (self.io.take(), self.on_end.take()) {
            on_end(io, std::mem::take(&mut self.decoder.buf));
        }
    }
}

impl<R, F> Body for DecodedBody<R, F>
where
    R: AsyncRead + Unpin,
    F: FnOnce(R, BytesMut) + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(None);
        };
        match this.decoder.poll_next(cx, io) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(data)) => {
                this.end_if_done();
                Poll::Ready(data.map(|d| Ok(Frame::data(d))))
            }
            Poll::Ready(Err(e)) => {
                this.io = None;
                this.on_end = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}

/// A CRLF-ended line taken off the front of `buf`, without its end;
/// `None` until it is whole.
pub(crate) fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, H1Error> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_HEAD => Err(H1Error::Invalid("chunk line over 64 KiB")),
        None => Ok(None),
    }
}

/// A chunk-size line's size; extensions after `;` are ignored.
pub(crate) fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let hex = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if hex.is_empty() || hex.len() > 15 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(H1Error::Invalid("invalid chunk size"));
    }
    std::str::from_utf8(hex)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or(H1Error::Invalid("invalid chunk size"))
}

/// Reads what `io` has into `buf`'s spare room; `Ok(0)` at its end.
pub(crate) fn read_into<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"A;ext=\"x;y\"").unwrap(), 10);
        assert_eq!(chunk_size(b"0").unwrap(), 0);
        for bad in [&b""[..], b"g", b"-1", b" ", b"1000000000000000", b"0x1"] {
            assert!(chunk_size(bad).is_err(), "{bad:?}");
        }
        let mut buf = BytesMut::from(&b"5\r\nhello"[..]);
        assert_eq!(&take_line(&mut buf).unwrap().unwrap()[..], b"5");
        assert_eq!(&buf[..], b"hello");
        assert!(take_line(&mut buf).unwrap().is_none());
    }

    /// Random bytes after a chunked head: decoding always ends (whole, or
    /// an error), never panics, and never hands out more than it read.
    #[test]
    fn random_chunked_input_ends_cleanly() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let pieces: [&[u8]; 8] = [
            b"5\r\n",
            b"hello",
            b"\r\n",
            b"0\r\n\r\n",
            b"a;x=y\r\n",
            b"ffffffff\r\n",
            b"\n",
            b"T: v\r\n",
        ];
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..rng.gen_range(0..8) {
                input.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
            }
            let mut reader: &[u8] = &input;
            let mut decoder = Decoder::new(BytesMut::new(), Framing::Chunked);
            let mut out = 0;
            loop {
                match decoder.poll_next(&mut cx, &mut reader) {
                    Poll::Ready(Ok(Some(data))) => out += data.len(),
                    Poll::Ready(Ok(None)) | Poll::Ready(Err(_)) => break,
                    Poll::Pending => panic!("a slice never waits"),
                }
            }
            assert!(out <= input.len());
        }
    }
}
