//! A lean HTTP/1.1 client connection for the upstream connections that
//! HTTP/1.1 client connections hold ([`crate::upstream`]'s binding).
//!
//! Why not hyper's: its client connection keeps an 8 KB read buffer, an
//! 8 KB write buffer and a request channel (9–17 KB) for its whole life,
//! and runs as a task of its own that every request wakes twice. A
//! connection bound to one client connection carries one request at a
//! time, so this one is driven by the request itself and holds buffers
//! only while a response is being read: about 27 KB less per proxied
//! connection, which is what 1,000 connections under 60 MB needs.
//!
//! The request head is written from an [`http::Request`], whose names and
//! values cannot hold CR, LF or NUL; its framing is moat's own (the
//! client's `Content-Length` or `Transfer-Encoding` is never copied), so
//! nothing a sandbox sends can split one request into two upstream. The
//! response head is parsed by `httparse` (hyper's parser), its body framed
//! as RFC 9112 section 6.3 says; anything ambiguous closes the connection
//! instead of reusing it.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Waker};

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

mod body;
pub(crate) mod server;
mod wire;

use self::body::{read_into, DecodedBody, Framing};
pub(crate) use self::wire::H1Error;
use self::wire::{content_length, has_token, MAX_HEAD, MAX_HEADERS};
use crate::body::ProxyBody;
use crate::io::UpstreamIo;

/// The first read of a response, for its head.
const HEAD_READ_SIZE: usize = 2 * 1024;

/// One upstream HTTP/1.1 connection, idle between requests.
pub(crate) struct H1Conn {
    io: UpstreamIo,
}

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn").finish_non_exhaustive()
    }
}

/// A request that failed, and the request itself when it can be sent
/// again on another connection: nothing of a response came back, the
/// connection was an idle one, and the request had no body (and, once
/// written, is idempotent).
pub(crate) struct SendFailure {
    pub(crate) error: H1Error,
    pub(crate) unsent: Option<Request<ProxyBody>>,
}

/// Where a connection goes once its response has been read to the end
/// and it may carry another request.
pub(crate) type Release = Box<dyn FnOnce(H1Conn) + Send>;

impl H1Conn {
    pub(crate) fn new(io: UpstreamIo) -> H1Conn {
        H1Conn { io }
    }

    /// Whether the upstream closed the connection (or sent something
    /// unasked, which makes it unusable) while it was idle. Never waits.
    pub(crate) fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_ready()
    }

    /// Sends `req` (absolute URI, no `Host`) and reads the response head.
    /// `reused`: the connection was idle before, so a request it could
    /// not start comes back in the failure. `release` gets the connection
    /// back once the response body has been read whole.
    pub(crate) async fn send(
        mut self,
        req: Request<ProxyBody>,
        reused: bool,
        release: Release,
    ) -> Result<Response<ProxyBody>, SendFailure> {
        let body_empty = req.body().is_end_stream();
        let head = encode_head(&req);
        if let Err(e) = self.write(&head).await {
            return Err(SendFailure {
                error: e.into(),
                unsent: (reused && body_empty).then_some(req),
            });
        }
        drop(head);
        let (parts, body) = req.into_parts();
        let head_only = parts.method == Method::HEAD;
        let mut kept = None;
        if body_empty {
            kept = Some(body);
        } else {
            let chunked = body.size_hint().exact().is_none();
            if let Err(e) = self.write_body(body, chunked).await {
                let H1Error::Io(_) = e else {
                    return Err(SendFailure {
                        error: e,
                        unsent: None,
                    });
                };
                // The upstream may have answered early (a refusal) and
                // closed: its answer is worth more than the write error.
                return match self.read_head(head_only).await {
                    Ok((resp, mut rest)) => {
                        rest.reusable = false;
                        Ok(rest.into_response(resp, self, release))
                    }
                    Err(_) => Err(SendFailure {
                        error: e,
                        unsent: None,
                    }),
                };
            }
        }
        if let Err(e) = self.io.flush().await {
            return Err(SendFailure {
                error: e.into(),
                unsent: None,
            });
        }
        match self.read_head(head_only).await {
            Ok((resp, rest)) => Ok(rest.into_response(resp, self, release)),
            Err((error, nothing_read)) => {
                let retry = reused && nothing_read && is_idempotent(&parts.method);
                Err(SendFailure {
                    error,
                    unsent: kept
                        .filter(|_| retry)
                        .map(|body| Request::from_parts(parts, body)),
                })
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await
    }

    async fn write_body(&mut self, mut body: ProxyBody, chunked: bool) -> Result<(), H1Error> {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(H1Error::RequestBody)?;
            let Ok(data) = frame.into_data() else {
                // Trailers are not forwarded.
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                // One write per chunk: one TLS record instead of three.
                let mut chunk = Vec::with_capacity(data.len() + 20);
                chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                self.write(&chunk).await?;
            } else {
                self.write(&data).await?;
            }
        }
        if chunked {
            self.write(b"0\r\n\r\n").await?;
        }
        Ok(())
    }

    /// Reads up to the end of a final (non-1xx) response head. On failure,
    /// also whether nothing at all was read.
    async fn read_head(&mut self, head_only: bool) -> Result<(Head, Rest), (H1Error, bool)> {
        // Most response heads fit in 2 KB; the body's reads take more.
        let mut buf = BytesMut::with_capacity(HEAD_READ_SIZE);
        let mut anything = false;
        loop {
            match parse_head(&buf, head_only) {
                Ok(Some((len, head, framing, reusable))) => {
                    buf.advance(len);
                    let Some(framing) = framing else {
                        // 1xx: the final response follows.
                        continue;
                    };
                    return Ok((
                        head,
                        Rest {
                            buf,
                            framing,
                            reusable,
                        },
                    ));
                }
                Ok(None) if buf.len() >= MAX_HEAD => {
                    return Err((H1Error::Invalid("response head over 64 KiB"), false));
                }
                Ok(None) => {}
                Err(e) => return Err((e, false)),
            }
            if buf.capacity() == buf.len() {
                buf.reserve(buf.len().max(HEAD_READ_SIZE));
            }
            match poll_fn(|cx| read_into(&mut self.io, cx, &mut buf)).await {
                Ok(0) if !anything => return Err((H1Error::Closed, true)),
                Ok(0) => return Err((H1Error::Closed, false)),
                Ok(_) => anything = true,
                Err(e) => return Err((e.into(), !anything)),
            }
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The request line and headers, with `Host` from the URI unless given,
/// and moat's own framing: `Content-Length` when the body's size is
/// known, else chunked.
fn encode_head(req: &Request<ProxyBody>) -> Vec<u8> {
    let uri = req.uri();
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = if target.is_empty() { "/" } else { target };
    let mut head = Vec::with_capacity(256 + req.headers().len() * 48);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = uri.host() {
            head.extend_from_slice(b"host: ");
            head.extend_from_slice(host.as_bytes());
            let default = if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            };
            if let Some(port) = uri.port_u16().filter(|p| *p != default) {
                head.extend_from_slice(format!(":{port}").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let body = req.body();
    if body.is_end_stream() {
        if !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
        ) {
            head.extend_from_slice(b"content-length: 0\r\n");
        }
    } else if let Some(len) = body.size_hint().exact() {
        head.extend_from_slice(format!("content-length: {len}\r\n").as_bytes());
    } else {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// A parsed head: its length, the response without body, the framing
/// (`None` for a 1xx response) and whether the connection may be reused.
type Parsed = (usize, Head, Option<Framing>, bool);

/// A response head, parsed.
#[derive(Default)]
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

fn parse_head(buf: &[u8], head_only: bool) -> Result<Option<Parsed>, H1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Invalid("more than 100 header lines"))
        }
        Err(_) => return Err(H1Error::Invalid("malformed response head")),
    };
    let code = resp.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Invalid("invalid status code"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(H1Error::Invalid("an upgrade nobody asked for"));
    }
    if status.is_informational() {
        return Ok(Some((len, Head::default(), None, true)));
    }
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut map = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| H1Error::Invalid("invalid header name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| H1Error::Invalid("invalid header value"))?;
        map.append(name, value);
    }
    let mut reusable = version == Version::HTTP_11 && !has_token(&map, header::CONNECTION, "close");
    let no_body =
        head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if map.contains_key(header::TRANSFER_ENCODING) {
        if map.contains_key(header::CONTENT_LENGTH) {
            // RFC 9112 6.3: the length is ignored, and the connection
            // not trusted with another request.
            map.remove(header::CONTENT_LENGTH);
            reusable = false;
        }
        if last_coding_is_chunked(&map) {
            Framing::Chunked
        } else {
            reusable = false;
            Framing::UntilClose
        }
    } else if map.contains_key(header::CONTENT_LENGTH) {
        Framing::Length(content_length(&map)?)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    let head = Head {
        status,
        version,
        headers: map,
    };
    Ok(Some((len, head, Some(framing), reusable)))
}

fn last_coding_is_chunked(map: &HeaderMap) -> bool {
    map.get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

/// What follows a response head: the bytes already read and how to
/// read the body.
struct Rest {
    buf: BytesMut,
    framing: Framing,
    reusable: bool,
}

impl Rest {
    fn into_response(self, head: Head, conn: H1Conn, release: Release) -> Response<ProxyBody> {
        // The connection goes back once the body is whole, unless
        // something unasked followed it.
        let reusable = self.reusable;
        let body = DecodedBody::new(conn.io, self.buf, self.framing, move |io, rest| {
            if reusable && rest.is_empty() {
                release(H1Conn::new(io));
            }
        });
        let mut resp = Response::new(body.boxed_unsync());
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        resp
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn framing(raw: &str, head_only: bool) -> Result<(Framing, bool), H1Error> {
        let (_, _, framing, reusable) = parse_head(raw.as_bytes(), head_only)?.unwrap();
        Ok((framing.unwrap(), reusable))
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let ok = "HTTP/1.1 200 OK\r\n";
        assert_eq!(
            framing(&format!("{ok}content-length: 5\r\n\r\n"), false).unwrap(),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing(&format!("{ok}content-length: 5, 5\r\n\r\n"), false).unwrap(),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing(
                &format!("{ok}transfer-encoding: gzip, chunked\r\n\r\n"),
                false
            )
            .unwrap(),
            (Framing::Chunked, true)
        );
        // Chunked not last: only the close ends it.
        assert_eq!(
            framing(
                &format!("{ok}transfer-encoding: chunked, gzip\r\n\r\n"),
                false
            )
            .unwrap(),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing(&format!("{ok}\r\n"), false).unwrap(),
            (Framing::UntilClose, false)
        );
        assert_eq!(
            framing(&format!("{ok}content-length: 5\r\n\r\n"), true).unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
                false
            )
            .unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing(
                &format!("{ok}connection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n"),
                false
            )
            .unwrap(),
            (Framing::Length(0), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false).unwrap(),
            (Framing::Length(1), false)
        );
        for bad in ["+5", "5 5", "-1", "", "0x10", "99999999999999999999999"] {
            let raw = format!("{ok}content-length: {bad}\r\n\r\n");
            assert!(framing(&raw, false).is_err(), "{bad:?}");
        }
        assert!(parse_head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", false)
            .unwrap()
            .is_none());
        let (_, _, framing, _) = parse_head(b"HTTP/1.1 100 Continue\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(framing.is_none());
    }

    #[test]
    fn the_head_is_moats_framing_and_host() {
        let req = |method: Method, uri: &str, body: ProxyBody| {
            let mut r = Request::new(body);
            *r.method_mut() = method;
            *r.uri_mut() = uri.parse().unwrap();
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
            r.headers_mut().insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            r
        };
        let empty = || {
            http_body_util::Empty::new()
                .map_err(|n| match n {})
                .boxed_unsync()
        };
        let full = |s: &'static str| {
            http_body_util::Full::new(bytes::Bytes::from(s))
                .map_err(|n| match n {})
                .boxed_unsync()
        };
        let head = String::from_utf8(encode_head(&req(
            Method::GET,
            "https://a.test/x?y=1",
            empty(),
        )))
        .unwrap();
        assert_eq!(head, "GET /x?y=1 HTTP/1.1\r\nhost: a.test\r\n\r\n");
        let head = String::from_utf8(encode_head(&req(
            Method::POST,
            "https://a.test:8443",
            full("abc"),
        )))
        .unwrap();
        assert_eq!(
            head,
            "POST / HTTP/1.1\r\nhost: a.test:8443\r\ncontent-length: 3\r\n\r\n"
        );
        let head = String::from_utf8(encode_head(&req(Method::PUT, "http://a.test:80/", empty())))
            .unwrap();
        assert_eq!(
            head,
            "PUT / HTTP/1.1\r\nhost: a.test\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
