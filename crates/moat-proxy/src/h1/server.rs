//! A lean HTTP/1.1 server for what a sandbox sends: its `CONNECT`s and
//! plain-HTTP requests on the proxy's listener, and its requests inside
//! TLS tunnels, the proxy's hot path.
//!
//! Why not hyper's for everything: its server connection keeps an 8 KB
//! read buffer and an 8 KB write buffer for its whole life; this one holds
//! none while the connection waits for the next request. It takes only
//! the plain cases: HTTP/1.1, origin-form target (on the listener also
//! `CONNECT host:port` and absolute `http(s)://` targets), a body framed
//! by one `Content-Length` or by `Transfer-Encoding: chunked` alone, no
//! upgrade and no `Expect`. A `CONNECT` answered `2xx` with a [`Tunnel`]
//! turns the connection into that tunnel.
//! Anything else (including every malformed or oversized head) is handed,
//! with the bytes read so far, to hyper's server, which answers it as
//! before: this server never judges a doubtful request.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::body::{read_into, DecodedBody, Framing};
use super::wire::{content_length, has_token, MAX_HEADERS};
use crate::body::ProxyBody;
use crate::error::BoxError;
use crate::io::Prefixed;

/// How a connection served by [`serve`] ended.
pub(crate) enum Served<IO> {
    /// Closed (by either side, or idle too long).
    Closed,
    /// A request this server does not take: hyper serves the rest of the
    /// connection, starting with the bytes read already.
    Handoff(Prefixed<IO>),
}

/// Limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeOptions {
    /// How long a request head may take to arrive, waiting included:
    /// an idle connection is closed after it.
    pub(crate) header_timeout: Duration,
    /// The largest request head taken here (a larger one goes to hyper,
    /// which refuses it).
    pub(crate) max_head: usize,
    /// Whether `CONNECT` and absolute-form targets are taken (the proxy's
    /// own listener; inside a tunnel they go to hyper).
    pub(crate) proxy_forms: bool,
}

/// Any byte stream a tunnel can run over.
pub(crate) trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

type TunnelFn =
    Box<dyn FnOnce(Box<dyn TunnelIo>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Set on a `2xx` answer to `CONNECT`: what runs over the connection once
/// the answer is written (with the bytes the client sent after its
/// request). Whichever server wrote the answer runs it.
#[derive(Clone)]
pub(crate) struct Tunnel(Arc<Mutex<Option<TunnelFn>>>);

impl Tunnel {
    pub(crate) fn new<F, Fut>(run: F) -> Tunnel
    where
        F: FnOnce(Box<dyn TunnelIo>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let run: TunnelFn = Box::new(move |io| Box::pin(run(io)));
        Tunnel(Arc::new(Mutex::new(Some(run))))
    }

    /// The tunnel, taken once.
    pub(crate) fn take(&self) -> Option<TunnelFn> {
        self.0.lock().ok()?.take()
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tunnel")
    }
}

/// Reads requests off `io` and writes `handle`'s responses, one at a
/// time, until the connection closes or a request needs hyper.
pub(crate) async fn serve<IO, F, Fut>(mut io: IO, opts: ServeOptions, mut handle: F) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut(Request<ProxyBody>) -> Fut,
    Fut: Future<Output = Response<ProxyBody>>,
{
    let mut buf = BytesMut::new();
    loop {
        let read = read_head(&mut io, &mut buf, opts);
        let head = match tokio::time::timeout(opts.header_timeout, read).await {
            Ok(Ok(Head::Request(head))) => head,
            Ok(Ok(Head::Odd)) => return Served::Handoff(Prefixed::new(buf.freeze(), io)),
            Ok(Ok(Head::Closed)) | Ok(Err(_)) => return Served::Closed,
            Err(_) => {
                // Idle too long: told with a TLS close_notify, briefly.
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                return Served::Closed;
            }
        };
        let RequestHead {
            request,
            framing,
            close,
        } = *head;
        let head_only = request.method() == Method::HEAD;
        let (rd, mut wr) = tokio::io::split(io);
        let (back_tx, mut back_rx) = oneshot::channel();
        // The read half comes back with what followed the body.
        let body = DecodedBody::new(rd, std::mem::take(&mut buf), framing, move |rd, rest| {
            let _ = back_tx.send((rd, rest));
        });
        let connect = request.method() == Method::CONNECT;
        let mut response = handle(request.map(|()| body.boxed_unsync())).await;
        if connect && response.status().is_success() {
            // The connection becomes the tunnel, or closes.
            let tunnel = response
                .extensions_mut()
                .remove::<Tunnel>()
                .and_then(|t| t.take());
            if write_response(&mut wr, response, true, false, true)
                .await
                .is_err()
            {
                return Served::Closed;
            }
            let (Some(tunnel), Ok((rd, rest))) = (tunnel, back_rx.try_recv()) else {
                return Served::Closed;
            };
            // A task of its own: this loop's state (sized for a request's
            // whole handling) is not kept for the tunnel's life.
            let prefix = if rest.is_empty() {
                Bytes::new()
            } else {
                rest.freeze()
            };
            tokio::spawn(tunnel(Box::new(Prefixed::new(prefix, rd.unsplit(wr)))));
            return Served::Closed;
        }
        let whole = match write_response(&mut wr, response, head_only, close, false).await {
            Ok(whole) => whole,
            Err(_) => return Served::Closed,
        };
        // A request body not read to its end leaves the connection
        // somewhere inside it: nothing more can be read from it.
        let Ok((rd, rest)) = back_rx.try_recv() else {
            return Served::Closed;
        };
        io = rd.unsplit(wr);
        if close || !whole {
            let _ = io.shutdown().await;
            return Served::Closed;
        }
        // An empty buffer is freed: a waiting connection holds none.
        buf = if rest.is_empty() {
            BytesMut::new()
        } else {
            rest
        };
    }
}

enum Head {
    Request(Box<RequestHead>),
    /// Not one this server takes.
    Odd,
    /// The client closed the connection before a request.
    Closed,
}

struct RequestHead {
    request: Request<()>,
    framing: Framing,
    /// The client asked for the connection to close after this request.
    close: bool,
}

async fn read_head<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    opts: ServeOptions,
) -> io::Result<Head> {
    let max_head = opts.max_head;
    loop {
        if !buf.is_empty() {
            match parse_request(buf, opts.proxy_forms) {
                Parsed::Complete(head, len) => {
                    buf.advance(len);
                    return Ok(Head::Request(head));
                }
                Parsed::Partial if buf.len() < max_head => {}
                Parsed::Partial | Parsed::Odd => return Ok(Head::Odd),
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(buf.len().max(2048));
        }
        if poll_fn(|cx| read_into(io, cx, buf)).await? == 0 {
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Odd
            });
        }
    }
}

enum Parsed {
    Complete(Box<RequestHead>, usize),
    Partial,
    Odd,
}

fn parse_request(buf: &[u8], proxy_forms: bool) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Odd,
    };
    match take(&req, proxy_forms) {
        Some(head) => Parsed::Complete(Box::new(head), len),
        None => Parsed::Odd,
    }
}

/// The request, if it is one of the plain cases this server takes.
fn take(req: &httparse::Request<'_, '_>, proxy_forms: bool) -> Option<RequestHead> {
    if req.version != Some(1) {
        return None;
    }
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let path = req.path?;
    let connect = method == Method::CONNECT;
    let plain_target = if connect {
        // Authority form, host:port.
        !path.contains('/') && path.contains(':')
    } else {
        path.starts_with('/') || path.starts_with("http://") || path.starts_with("https://")
    };
    if !plain_target || (!proxy_forms && (connect || !path.starts_with('/'))) {
        return None;
    }
    let uri: Uri = path.parse().ok()?;
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        map.append(name, value);
    }
    if map.contains_key(header::UPGRADE)
        || map.contains_key(header::EXPECT)
        || has_token(&map, header::CONNECTION, "upgrade")
    {
        return None;
    }
    let framing = match (
        map.contains_key(header::TRANSFER_ENCODING),
        map.contains_key(header::CONTENT_LENGTH),
    ) {
        (true, true) => return None,
        (true, false) => {
            let mut codings = map.get_all(header::TRANSFER_ENCODING).iter();
            let only = codings.next()?;
            if codings.next().is_some() || !only.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            Framing::Chunked
        }
        (false, true) => {
            // One plain value; repeated or listed lengths go to hyper.
            let mut values = map.get_all(header::CONTENT_LENGTH).iter();
            let only = values.next()?;
            if values.next().is_some() || only.as_bytes().contains(&b',') {
                return None;
            }
            Framing::Length(content_length(&map).ok()?)
        }
        (false, false) => Framing::Empty,
    };
    if connect && framing != Framing::Empty {
        return None;
    }
    let close = has_token(&map, header::CONNECTION, "close");
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Some(RequestHead {
        request,
        framing,
        close,
    })
}

/// Gathered before a write: one TLS record carries the head and the
/// first pieces of the body when they are ready together.
const WRITE_BATCH: usize = 16 * 1024;

/// Writes `response`; whether the body matched its declared length (the
/// connection may carry another request).
async fn write_response<W: AsyncWrite + Unpin>(
    wr: &mut W,
    response: Response<ProxyBody>,
    head_only: bool,
    close: bool,
    connect: bool,
) -> io::Result<bool> {
    let (parts, body) = response.into_parts();
    let mut out = Vec::with_capacity(1024);
    let length = match write_head(&mut out, &parts, &body, head_only, close, connect) {
        BodyFraming::None => {
            wr.write_all(&out).await?;
            wr.flush().await?;
            return Ok(true);
        }
        BodyFraming::Length(n) => Some(n),
        BodyFraming::Chunked => None,
    };
    write_body(wr, body, out, length).await
}

/// How a response's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// There is none (`HEAD`, `1xx`, `204`, `304`).
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// Puts the response head in `out` with moat's own framing headers (the
/// declared `Content-Length`, else the body's exact size, else chunked;
/// none on a tunnel's answer), and says how the body follows.
fn write_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &ProxyBody,
    head_only: bool,
    close: bool,
    connect: bool,
) -> BodyFraming {
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = parts
        .headers
        .contains_key(header::CONTENT_LENGTH)
        .then(|| content_length(&parts.headers).ok())
        .flatten();
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = if no_body {
        BodyFraming::None
    } else {
        match declared.or_else(|| body.size_hint().exact()) {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::Chunked,
        }
    };
    match framing {
        // RFC 9110 9.3.6: no framing on a tunnel's answer.
        _ if connect => {}
        BodyFraming::None => {
            if let (true, Some(n)) = (head_only, declared) {
                out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
            }
        }
        BodyFraming::Length(n) => {
            out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes())
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes `body` after what `out` holds (the head), `length` bytes or
/// chunked when `None`, gathering pieces ready together into one write;
/// whether it matched its length (a body cut short or longer does not).
async fn write_body<W: AsyncWrite + Unpin>(
    wr: &mut W,
    mut body: ProxyBody,
    mut out: Vec<u8>,
    length: Option<u64>,
) -> io::Result<bool> {
    let mut written: u64 = 0;
    loop {
        let next = match frame_now(&mut body).await {
            Some(next) => next,
            None => {
                // Nothing ready: what is gathered goes now (a stream's
                // events must not wait for the next one).
                if !out.is_empty() {
                    wr.write_all(&out).await?;
                    out.clear();
                }
                wr.flush().await?;
                body.frame().await
            }
        };
        let data = match next {
            None => break,
            Some(Err(_)) => {
                // Cut short: the client must not take it as whole.
                wr.write_all(&out).await?;
                wr.flush().await?;
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        written += data.len() as u64;
        match length {
            Some(n) if written > n => {
                wr.write_all(&out).await?;
                wr.flush().await?;
                return Ok(false);
            }
            Some(_) => out.extend_from_slice(&data),
            None => {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
        }
        if out.len() >= WRITE_BATCH {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
    if length.is_none() {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    wr.write_all(&out).await?;
    wr.flush().await?;
    Ok(length.is_none_or(|n| n == written))
}

type NextFrame = Option<Result<Frame<Bytes>, BoxError>>;

/// The body's next frame if it is ready now, without waiting.
async fn frame_now(body: &mut ProxyBody) -> Option<NextFrame> {
    poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
        Poll::Ready(next) => Poll::Ready(Some(next)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncReadExt;

    fn parsed(raw: &str) -> Option<Framing> {
        match parse_request(raw.as_bytes(), false) {
            Parsed::Complete(head, len) => {
                assert_eq!(len, raw.len());
                Some(head.framing)
            }
            Parsed::Partial => panic!("partial: {raw:?}"),
            Parsed::Odd => None,
        }
    }

    #[test]
    fn only_plain_requests_are_taken() {
        let get = "GET /x HTTP/1.1\r\nHost: a\r\n";
        assert_eq!(parsed(&format!("{get}\r\n")), Some(Framing::Empty));
        assert_eq!(
            parsed(&format!("{get}Content-Length: 12\r\n\r\n")),
            Some(Framing::Length(12))
        );
        assert_eq!(
            parsed(&format!("{get}Transfer-Encoding: Chunked\r\n\r\n")),
            Some(Framing::Chunked)
        );
        for odd in [
            "GET /x HTTP/1.0\r\n\r\n".to_owned(),
            "GET http://a/x HTTP/1.1\r\n\r\n".to_owned(),
            "CONNECT a:443 HTTP/1.1\r\n\r\n".to_owned(),
            "OPTIONS * HTTP/1.1\r\n\r\n".to_owned(),
            format!("{get}Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            format!("{get}Expect: 100-continue\r\nContent-Length: 1\r\n\r\n"),
            format!("{get}Transfer-Encoding: gzip, chunked\r\n\r\n"),
            format!("{get}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("{get}Transfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"),
            format!("{get}Content-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            format!("{get}Content-Length: -1\r\n\r\n"),
            format!("{get}Content-Length: 1, 1\r\n\r\n"),
            format!("{get}Content-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            "GET /x HTTP/1.1\r\nBad Header\r\n\r\n".to_owned(),
        ] {
            assert_eq!(parsed(&odd), None, "{odd:?}");
        }
        assert!(matches!(
            parse_request(get.as_bytes(), false),
            Parsed::Partial
        ));
    }

    /// Random edits of plain requests: parsing never panics, and a request
    /// taken here always has exactly the framing its headers give (one
    /// length, or chunked alone, never both).
    #[test]
    fn mutated_requests_are_taken_only_when_unambiguous() {
        use rand::{Rng, SeedableRng};
        let seeds: [&[u8]; 3] = [
            b"GET /a?b=1 HTTP/1.1\r\nHost: a.test\r\nAccept: */*\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nX-A: 1\r\n\r\n",
            b"PUT /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        let alphabet =
            b"\r\n :;,-0123456789/?%chunkedtransfer-encodingcontent-lengthHTTP1.\x00\x7f\xff\t";
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut taken = 0;
        for _ in 0..50_000 {
            let mut raw = seeds[rng.gen_range(0..seeds.len())].to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..raw.len());
                let byte = alphabet[rng.gen_range(0..alphabet.len())];
                match rng.gen_range(0..4) {
                    0 => raw[at] = byte,
                    1 => raw.insert(at, byte),
                    2 => {
                        raw.remove(at);
                    }
                    _ => {
                        // A header line repeated.
                        let line = b"Content-Length: 7\r\n";
                        let pos = raw.windows(2).position(|w| w == b"\r\n").unwrap_or(0) + 2;
                        raw.splice(pos.min(raw.len())..pos.min(raw.len()), line.iter().copied());
                    }
                }
            }
            let Parsed::Complete(head, _) = parse_request(&raw, false) else {
                continue;
            };
            taken += 1;
            let headers = head.request.headers();
            let te: Vec<_> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
            let cl: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
            match head.framing {
                Framing::Chunked => assert!(te.len() == 1 && cl.is_empty(), "{raw:?}"),
                Framing::Length(n) => {
                    assert!(te.is_empty() && cl.len() == 1, "{raw:?}");
                    let value = cl[0].to_str().unwrap().trim();
                    assert_eq!(value.parse::<u64>().unwrap(), n, "{raw:?}");
                }
                Framing::Empty => assert!(te.is_empty() && cl.is_empty(), "{raw:?}"),
                Framing::UntilClose => panic!("a request framed until close: {raw:?}"),
            }
            assert!(head.request.uri().path().starts_with('/'));
            assert!(
                !headers.contains_key(header::UPGRADE) && !headers.contains_key(header::EXPECT)
            );
        }
        assert!(taken > 1_000, "only {taken} mutated requests parsed");
    }

    fn echo_handler(
        seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) -> impl FnMut(Request<ProxyBody>) -> Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>
    {
        move |req: Request<ProxyBody>| {
            let seen = seen.clone();
            Box::pin(async move {
                let path = req.uri().path().to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                seen.lock()
                    .unwrap()
                    .push(format!("{path} {}", String::from_utf8_lossy(&body)));
                Response::new(
                    http_body_util::Full::new(body)
                        .map_err(|n| match n {})
                        .boxed_unsync(),
                )
            })
        }
    }

    #[tokio::test]
    async fn plain_requests_are_served_and_the_first_odd_one_is_handed_over() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let seen = std::sync::Arc::default();
        let opts = ServeOptions {
            header_timeout: Duration::from_secs(5),
            max_head: 64 * 1024,
            proxy_forms: false,
        };
        let served = tokio::spawn(serve(server, opts, echo_handler(Arc::clone(&seen))));
        client
            .write_all(
                b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\
                  POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nxyz\
                  PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
                  GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nrest",
            )
            .await
            .unwrap();
        let Served::Handoff(mut rest) = served.await.unwrap() else {
            panic!("not handed over");
        };
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["/a ".to_owned(), "/b xyz".to_owned(), "/c hi".to_owned()]
        );
        let mut answers = vec![0u8; 4096];
        let n = client.read(&mut answers).await.unwrap();
        let answers = String::from_utf8_lossy(&answers[..n]).into_owned();
        assert_eq!(
            answers,
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n\
             HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nxyz\
             HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"
        );
        // hyper reads the odd request from its first byte.
        let mut replay = vec![0u8; 128];
        let n = rest.read(&mut replay).await.unwrap();
        assert!(replay[..n].starts_with(b"GET /ws HTTP/1.1\r\n"));
    }

    #[test]
    fn proxy_forms_only_on_the_proxys_listener() {
        let connect = "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n";
        let absolute = "GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n";
        for raw in [connect, absolute] {
            assert!(
                matches!(parse_request(raw.as_bytes(), false), Parsed::Odd),
                "{raw}"
            );
            assert!(
                matches!(parse_request(raw.as_bytes(), true), Parsed::Complete(..)),
                "{raw}"
            );
        }
        for odd in [
            "CONNECT a.test:443 HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "CONNECT a.test HTTP/1.1\r\n\r\n",
            "CONNECT /x HTTP/1.1\r\n\r\n",
            "GET ftp://a.test/x HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(odd.as_bytes(), true), Parsed::Odd),
                "{odd}"
            );
        }
    }

    #[tokio::test]
    async fn a_connect_answer_hands_the_connection_to_its_tunnel() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let opts = ServeOptions {
            header_timeout: Duration::from_secs(5),
            max_head: 64 * 1024,
            proxy_forms: true,
        };
        let (got_tx, got_rx) = oneshot::channel();
        let got_tx = Arc::new(Mutex::new(Some(got_tx)));
        let handle = move |_req: Request<ProxyBody>| {
            let got_tx = got_tx.clone();
            async move {
                let mut resp = Response::new(
                    http_body_util::Empty::new()
                        .map_err(|n| match n {})
                        .boxed_unsync(),
                );
                resp.extensions_mut()
                    .insert(Tunnel::new(move |mut io| async move {
                        let mut first = [0u8; 5];
                        io.read_exact(&mut first).await.unwrap();
                        io.write_all(b"tunnel").await.unwrap();
                        if let Some(tx) = got_tx.lock().unwrap().take() {
                            let _ = tx.send(first);
                        }
                    }));
                resp
            }
        };
        let served = tokio::spawn(serve(server, opts, handle));
        // The tunnel's first bytes come with the request.
        client
            .write_all(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\nhello")
            .await
            .unwrap();
        assert_eq!(&got_rx.await.unwrap(), b"hello");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "HTTP/1.1 200 OK\r\n\r\ntunnel");
        assert!(matches!(served.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_or_says_nothing_ends_the_connection() {
        let opts = ServeOptions {
            header_timeout: Duration::from_millis(100),
            max_head: 64 * 1024,
            proxy_forms: false,
        };
        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        let served = serve(server, opts, echo_handler(Arc::default())).await;
        assert!(matches!(served, Served::Closed));
        let (_client, server) = tokio::io::duplex(1024);
        let served = serve(server, opts, echo_handler(Arc::default())).await;
        assert!(matches!(served, Served::Closed));
    }
}
