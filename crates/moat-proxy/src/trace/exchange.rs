//! One request's trace line in the making ([`Exchange`]), filled in as the
//! request goes and emitted when it ends, and the body adapter that
//! copies what streams through into it ([`Tapped`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use super::{RequestEvent, REDACTED};
use crate::run::Run;

/// Header names whose values are always redacted in traces.
const SENSITIVE: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "private-token",
];

/// Replaces every secret of `run` in `text`.
pub(crate) fn redact<'a>(run: &Run, text: &'a str) -> std::borrow::Cow<'a, str> {
    run.redactor.redact(text)
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The most of one header value a trace line records: a sandbox may send
/// headers of tens of kilobytes with every request.
pub(crate) const MAX_HEADER_VALUE_BYTES: usize = 4096;

/// `value` cut at [`MAX_HEADER_VALUE_BYTES`] (on a character boundary),
/// saying how much was left out.
fn cap_header_value(value: std::borrow::Cow<'_, str>) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_HEADER_VALUE_BYTES {
        return value;
    }
    let mut cut = MAX_HEADER_VALUE_BYTES;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!(
        "{}[moat: {} more bytes not recorded]",
        &value[..cut],
        value.len() - cut
    ))
}

/// Headers as the text of a JSON object (keys sorted, as `moat trace` and
/// older lines have them), sensitive and injected ones redacted, each
/// value cut at [`MAX_HEADER_VALUE_BYTES`] (after redaction, so a secret
/// across the cut is still masked).
pub(crate) fn headers_json(run: &Run, headers: &HeaderMap, injected: &[&str]) -> Vec<u8> {
    let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    let mut out = Vec::with_capacity(64 * names.len() + 2);
    out.push(b'{');
    for (i, key) in names.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(&mut out, key);
        out.push(b':');
        if SENSITIVE.contains(&key) || injected.contains(&key) {
            push_str(&mut out, REDACTED);
            continue;
        }
        let mut values = headers.get_all(key).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => push_str(
                &mut out,
                &cap_header_value(redact(run, &String::from_utf8_lossy(v.as_bytes()))),
            ),
            _ => {
                let joined = headers
                    .get_all(key)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()))
                    .collect::<Vec<_>>()
                    .join(", ");
                push_str(&mut out, &cap_header_value(redact(run, &joined)));
            }
        }
    }
    out.push(b'}');
    out
}

const EMPTY_OBJECT: &[u8] = b"{}";

#[derive(Default)]
struct State {
    status: Option<u16>,
    /// A JSON object; empty until the response arrives.
    resp_headers: Vec<u8>,
    error: Option<String>,
    req_body: Vec<u8>,
    resp_body: Vec<u8>,
    truncated: bool,
    /// Secrets masked in the response (see `scrub`).
    scrubbed: u64,
    emitted: bool,
}

/// One request's trace line in the making; emitted once, when the response
/// body ends or is dropped, or explicitly on early failure.
///
/// Headers are turned into JSON and bodies kept only when the run has a
/// trace: the observer sees neither.
pub(crate) struct Exchange {
    run: Arc<Run>,
    ts: chrono::DateTime<chrono::Utc>,
    started: Instant,
    method: String,
    url: String,
    allowed: bool,
    /// A JSON object (empty without a trace).
    req_headers: Vec<u8>,
    credential: Option<String>,
    /// Bytes kept per body: the configured limit plus the longest secret, so
    /// a secret straddling the limit is still recognised and redacted.
    keep: usize,
    limit: usize,
    state: Mutex<State>,
}

/// Which body a tap captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Request,
    Response,
}

impl Exchange {
    /// `req_headers` are the headers sent upstream; those named in
    /// `injected` are redacted whatever their value.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        run: Arc<Run>,
        method: &str,
        url: &str,
        allowed: bool,
        (req_headers, injected): (&HeaderMap, &[&str]),
        credential: Option<String>,
        limit: usize,
    ) -> Option<Arc<Self>> {
        if run.trace.is_none() && run.observer.is_none() {
            return None;
        }
        let req_headers = if run.trace.is_some() {
            headers_json(&run, req_headers, injected)
        } else {
            Vec::new()
        };
        let longest = run.secrets.iter().map(String::len).max().unwrap_or(0);
        let url = redact(&run, url).into_owned();
        Some(Arc::new(Exchange {
            run,
            ts: chrono::Utc::now(),
            started: Instant::now(),
            method: method.to_owned(),
            url,
            allowed,
            req_headers,
            credential,
            keep: limit + longest,
            limit,
            state: Mutex::new(State::default()),
        }))
    }

    pub(crate) fn set_response(&self, status: u16, headers: &HeaderMap) {
        let json = if self.run.trace.is_some() {
            headers_json(&self.run, headers, &[])
        } else {
            Vec::new()
        };
        if let Ok(mut s) = self.state.lock() {
            s.status = Some(status);
            s.resp_headers = json;
        }
    }

    pub(crate) fn set_error(&self, status: u16, error: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.status = Some(status);
            s.error = Some(error.to_owned());
        }
    }

    /// Records a failure that produced no HTTP status (a refused TLS
    /// handshake).
    pub(crate) fn set_failure(&self, error: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.error = Some(error.to_owned());
        }
    }

    /// Counts secrets masked in the response, for the trace's `scrubbed`.
    pub(crate) fn add_scrubbed(&self, n: usize) {
        if let Ok(mut s) = self.state.lock() {
            s.scrubbed += n as u64;
        }
    }

    pub(crate) fn set_body(&self, side: Side, body: &[u8]) {
        self.capture(side, body);
    }

    fn capture(&self, side: Side, data: &[u8]) {
        if self.run.trace.is_none() {
            return;
        }
        if let Ok(mut s) = self.state.lock() {
            let keep = self.keep;
            let limit = self.limit;
            let buf = match side {
                Side::Request => &mut s.req_body,
                Side::Response => &mut s.resp_body,
            };
            let room = keep.saturating_sub(buf.len());
            buf.extend_from_slice(&data[..data.len().min(room)]);
            let over = buf.len() > limit || data.len() > room;
            if over {
                s.truncated = true;
            }
        }
    }

    /// The kept body as text, redacted and cut at the limit.
    fn body_text(&self, body: &[u8]) -> String {
        self.run
            .redactor
            .redact_prefix(&String::from_utf8_lossy(body), self.limit)
            .into_owned()
    }

    /// Writes the trace line and tells the observer (once).
    pub(crate) fn finish(&self) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        if s.emitted {
            return;
        }
        s.emitted = true;
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let error = s.error.as_deref().map(|e| redact(&self.run, e));
        if let Some(observer) = &self.run.observer {
            observer.on_request(&RequestEvent {
                run_id: &self.run.id,
                method: &self.method,
                url: &self.url,
                status_code: s.status,
                duration_ms,
                allowed: self.allowed,
                credential_used: self.credential.as_deref(),
                error: error.as_deref(),
            });
        }
        let Some(sink) = self.run.trace.as_ref() else {
            return;
        };
        let line = self.trace_line(&s, duration_ms, error.as_deref());
        drop(s);
        sink.send(line);
    }

    /// The JSON line of a finished request, written directly, keys in the
    /// sorted order a JSON object of `serde_json` has always given these
    /// lines.
    fn trace_line(&self, s: &State, duration_ms: f64, error: Option<&str>) -> Vec<u8> {
        let mut line = Vec::with_capacity(
            256 + self.req_headers.len()
                + s.resp_headers.len()
                + s.req_body.len()
                + s.resp_body.len(),
        );
        line.push(b'{');
        if let Some(label) = &self.credential {
            line.extend_from_slice(b"\"credential_used\":");
            push_str(&mut line, label);
            line.push(b',');
        }
        line.extend_from_slice(b"\"duration_ms\":");
        let _ = serde_json::to_writer(&mut line, &duration_ms);
        if let Some(error) = error {
            line.extend_from_slice(b",\"error\":");
            push_str(&mut line, error);
        }
        line.extend_from_slice(b",\"method\":");
        push_str(&mut line, &self.method);
        line.extend_from_slice(b",\"policy\":");
        line.extend_from_slice(if self.allowed {
            b"\"allow\""
        } else {
            b"\"deny\""
        });
        if !s.req_body.is_empty() {
            line.extend_from_slice(b",\"req_body\":");
            push_str(&mut line, &self.body_text(&s.req_body));
        }
        line.extend_from_slice(b",\"req_headers\":");
        line.extend_from_slice(non_empty(&self.req_headers));
        if !s.resp_body.is_empty() {
            line.extend_from_slice(b",\"resp_body\":");
            push_str(&mut line, &self.body_text(&s.resp_body));
        }
        line.extend_from_slice(b",\"resp_headers\":");
        line.extend_from_slice(non_empty(&s.resp_headers));
        if s.scrubbed > 0 {
            line.extend_from_slice(b",\"scrubbed\":");
            let _ = serde_json::to_writer(&mut line, &s.scrubbed);
        }
        line.extend_from_slice(b",\"status_code\":");
        match s.status {
            Some(code) => {
                let _ = serde_json::to_writer(&mut line, &code);
            }
            None => line.extend_from_slice(b"null"),
        }
        if s.truncated {
            line.extend_from_slice(b",\"truncated\":true");
        }
        line.extend_from_slice(b",\"ts\":");
        push_str(
            &mut line,
            &self.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        line.extend_from_slice(b",\"url\":");
        push_str(&mut line, &self.url);
        line.push(b'}');
        line
    }
}

fn non_empty(object: &[u8]) -> &[u8] {
    if object.is_empty() {
        EMPTY_OBJECT
    } else {
        object
    }
}

/// A body that copies what streams through it into an [`Exchange`] without
/// delaying it; the response side emits the trace line when it ends or is
/// dropped.
pub(crate) struct Tapped<B> {
    inner: B,
    exchange: Option<Arc<Exchange>>,
    side: Side,
}

impl<B> Tapped<B> {
    pub(crate) fn new(inner: B, exchange: Option<Arc<Exchange>>, side: Side) -> Self {
        Tapped {
            inner,
            exchange,
            side,
        }
    }
}

impl<B> Drop for Tapped<B> {
    fn drop(&mut self) {
        if self.side == Side::Response {
            if let Some(ex) = &self.exchange {
                ex.finish();
            }
        }
    }
}

impl<B> Body for Tapped<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(ex) = &this.exchange {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        ex.capture(this.side, data);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    if let Ok(mut s) = ex.state.lock() {
                        if s.error.is_none() {
                            s.error = Some(format!("{:?} body: {e}", this.side).to_lowercase());
                        }
                    }
                    if this.side == Side::Response {
                        ex.finish();
                    }
                }
                Poll::Ready(None) => {
                    if this.side == Side::Response {
                        ex.finish();
                    }
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::tests::assert_no_piece;
    use super::super::TraceSink;
    use super::*;

    #[test]
    fn header_values_are_cut_after_redaction() {
        let long = format!("{}é{}", "a".repeat(4095), "b".repeat(100));
        let cut = cap_header_value(long.as_str().into());
        assert_eq!(
            cut,
            format!("{}[moat: 102 more bytes not recorded]", "a".repeat(4095))
        );
        assert_eq!(cap_header_value("short".into()), "short");
    }

    /// A body captured in chunks split at every position, with a secret
    /// across the trace limit and secrets longer than the marker before
    /// it: no piece of any secret reaches the trace line.
    #[test]
    fn secrets_split_across_chunks_and_the_limit_are_redacted() {
        let tmp = tempfile::tempdir().unwrap();
        let token = crate::secret::RunToken::generate();
        let secret = "sk-live-0123456789abcdefghijklmnopqrstuvwxyz";
        let reg = crate::run::RunRegistration {
            run_id: "r".into(),
            name: String::new(),
            injections: vec![crate::run::Injection {
                host: moat_policy::HostPattern::parse("example.com").unwrap(),
                headers: vec![(
                    http::HeaderName::from_static("x-key"),
                    crate::SecretValue::new(secret).unwrap(),
                )],
            }],
            policy: moat_policy::NetworkPolicy::default(),
            mcp: vec![],
            trace: None,
            tunnels: vec![],
        };
        let sink = TraceSink::open_capped(&tmp.path().join("t.jsonl"), 16, u64::MAX).unwrap();
        let run = Arc::new(
            crate::run::build_run(
                reg,
                &token,
                Some(sink),
                &tokio_util::sync::CancellationToken::new(),
                true,
            )
            .unwrap(),
        );
        let limit = 200;
        let tok = token.expose();
        // Two long secrets shrink the text by more than a secret's length
        // when redacted; a third begins just past the limit, cut in the
        // kept bytes (cutting the redacted text at the limit, as moat once
        // did, kept 63 of the token's 64 characters).
        let mut body = format!("{secret}{tok}");
        body.push_str(&"x".repeat(limit + 1 - body.len()));
        body.push_str(tok);
        body.push_str(secret);
        let body = body.as_bytes();
        let secrets = [secret, tok];
        for cut in 0..body.len() {
            let ex = Exchange::new(
                run.clone(),
                "GET",
                "https://example.com/",
                true,
                (&HeaderMap::new(), &[]),
                None,
                limit,
            )
            .unwrap();
            ex.capture(Side::Response, &body[..cut]);
            ex.capture(Side::Response, &body[cut..]);
            let s = ex.state.lock().unwrap();
            let text = ex.body_text(&s.resp_body);
            assert!(s.truncated);
            assert_no_piece(&text, &secrets, 4);
            assert!(text.starts_with("[REDACTED]"), "{text}");
        }
    }

    #[test]
    fn header_objects_are_sorted_and_redacted() {
        let token = crate::secret::RunToken::generate();
        let reg = crate::run::RunRegistration {
            run_id: "r".into(),
            name: String::new(),
            injections: vec![],
            policy: moat_policy::NetworkPolicy::default(),
            mcp: vec![],
            trace: None,
            tunnels: vec![],
        };
        let run = crate::run::build_run(
            reg,
            &token,
            None,
            &tokio_util::sync::CancellationToken::new(),
            true,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-b", "1".parse().unwrap());
        h.append("x-a", "one \"q\"".parse().unwrap());
        h.append("x-a", format!("t={}", token.expose()).parse().unwrap());
        h.insert("cookie", "c=1".parse().unwrap());
        h.insert("x-inj", "v".parse().unwrap());
        let json = String::from_utf8(headers_json(&run, &h, &["x-inj"])).unwrap();
        assert_eq!(
            json,
            r#"{"cookie":"[REDACTED]","x-a":"one \"q\", t=[REDACTED]","x-b":"1","x-inj":"[REDACTED]"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v.is_object());
    }

    /// The line is what a `serde_json` object of the same fields gives
    /// (sorted keys, same escapes and numbers), as it always was.
    #[test]
    fn trace_lines_keep_their_format() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.jsonl");
        let token = crate::secret::RunToken::generate();
        let reg = crate::run::RunRegistration {
            run_id: "r".into(),
            name: String::new(),
            injections: vec![],
            policy: moat_policy::NetworkPolicy::default(),
            mcp: vec![],
            trace: None,
            tunnels: vec![],
        };
        let sink = TraceSink::open_capped(&path, 16, u64::MAX).unwrap();
        let run = Arc::new(
            crate::run::build_run(
                reg,
                &token,
                Some(sink),
                &tokio_util::sync::CancellationToken::new(),
                true,
            )
            .unwrap(),
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-q",
            "a\"b\\c\u{7f}"
                .parse()
                .unwrap_or(http::HeaderValue::from_static("q")),
        );
        let ex = Exchange::new(
            run.clone(),
            "POST",
            "https://h/p?q=\"",
            true,
            (&h, &[]),
            Some("h".into()),
            4,
        )
        .unwrap();
        ex.set_body(Side::Request, "é\n\t\u{1}".as_bytes());
        ex.set_response(502, &h);
        ex.set_body(Side::Response, b"0123456789");
        ex.add_scrubbed(2);
        ex.set_error(502, &format!("bad {}", token.expose()));
        ex.finish();
        let ex = Exchange::new(
            run.clone(),
            "CONNECT",
            "h:443",
            false,
            (&HeaderMap::new(), &[]),
            None,
            4,
        )
        .unwrap();
        ex.set_failure("no");
        ex.finish();
        drop((ex, run));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 2 {
                break text;
            }
            assert!(Instant::now() < deadline, "{text}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        for line in text.lines() {
            // The duration aside (serde_json reads floats to the nearest
            // value only with its float_roundtrip feature, so 0.011026 can
            // come back as 0.011026000000000001), each line is exactly
            // what serde_json writes for its value.
            let key = "\"duration_ms\":";
            let at = line.find(key).unwrap() + key.len();
            let end = at + line[at..].find(',').unwrap();
            let number: f64 = line[at..end].parse().unwrap();
            assert!(number >= 0.0);
            let line = format!("{}0{}", &line[..at], &line[end..]);
            let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
            v["duration_ms"] = serde_json::json!(0);
            assert_eq!(v.to_string(), line);
            assert!(!line.contains(token.expose()));
        }
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["truncated"], true);
        assert_eq!(first["scrubbed"], 2);
        assert_eq!(first["error"], "bad [REDACTED]");
        assert_eq!(first["resp_body"], "0123");
        let second: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!(second["status_code"], serde_json::Value::Null);
        assert_eq!(second["policy"], "deny");
    }
}
