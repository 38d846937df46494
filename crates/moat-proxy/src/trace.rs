//! Per-run `network.jsonl` traces: one JSON line per request, written by a
//! background thread so a slow disk never slows a request.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use serde_json::{Map, Value};

use crate::error::{ErrorKind, ProxyError};
use crate::run::Run;

pub(crate) const REDACTED: &str = "[REDACTED]";

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

/// A finished request, as a [`RequestObserver`] sees it. URL and error are
/// redacted like the trace line.
#[derive(Debug, Clone)]
pub struct RequestEvent<'a> {
    /// The run it belongs to.
    pub run_id: &'a str,
    /// `GET`, `CONNECT`...
    pub method: &'a str,
    /// The URL (`host:port` for `CONNECT`).
    pub url: &'a str,
    /// The status answered, if any.
    pub status_code: Option<u16>,
    /// From the request's arrival to the end of its response.
    pub duration_ms: f64,
    /// Whether the network policy allowed it.
    pub allowed: bool,
    /// The injection label (host pattern) when a credential was injected.
    pub credential_used: Option<&'a str>,
    /// What went wrong, if anything.
    pub error: Option<&'a str>,
}

/// Told of every finished request of the runs of a [`crate::Proxy`]; see
/// [`crate::Proxy::set_observer`]. Called on the proxy's tasks: it must
/// not block.
pub trait RequestObserver: Send + Sync {
    /// One request finished (or was refused).
    fn on_request(&self, event: &RequestEvent<'_>);
}

enum Msg {
    Line(String),
    Flush,
}

/// The writing end of one run's trace file.
pub(crate) struct TraceSink {
    tx: SyncSender<Msg>,
    /// Lines dropped because the queue was full; the writer records the
    /// count in the trace.
    dropped: Arc<AtomicU64>,
    path: PathBuf,
}

impl TraceSink {
    /// Opens (appending, creating `0600`) `path` and starts its writer.
    pub(crate) fn open(path: &Path, queue: usize) -> Result<Self, ProxyError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                moat_home::ensure_private_dir(dir).map_err(|e| {
                    ProxyError::new(ErrorKind::Io, format!("creating {}", dir.display()))
                        .with_source(e)
                })?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                ProxyError::new(ErrorKind::Io, format!("opening trace {}", path.display()))
                    .with_source(e)
            })?;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let display = path.display().to_string();
        let dropped = Arc::new(AtomicU64::new(0));
        let queue_dropped = dropped.clone();
        std::thread::Builder::new()
            .name("moat-trace".into())
            .spawn(move || writer(file, rx, display, &queue_dropped))
            .map_err(|e| {
                ProxyError::new(ErrorKind::Io, "starting the trace writer").with_source(e)
            })?;
        Ok(TraceSink {
            tx,
            dropped,
            path: path.to_path_buf(),
        })
    }

    fn send(&self, line: String) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(path = %self.path.display(), dropped = n, "trace queue full; dropping trace lines");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Asks the writer to flush (it also flushes whenever its queue runs
    /// empty) without waiting.
    pub(crate) fn request_flush(&self) {
        let _ = self.tx.try_send(Msg::Flush);
    }
}

/// Writes each batch of lines whole or not at all: a write cut short (a
/// full disk) is truncated away, so the file never holds a torn line. The
/// lines lost are counted, reported once, and recorded as a
/// `{"ts", "dropped", "reason"}` line as soon as writing works again.
fn writer(mut file: std::fs::File, rx: Receiver<Msg>, path: String, queue_dropped: &AtomicU64) {
    let mut len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut lost: u64 = 0;
    let mut reason = String::new();
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut write_batch = |file: &mut std::fs::File, batch: &mut Vec<u8>, lines: u64| {
        let queued = queue_dropped.swap(0, Ordering::Relaxed);
        if queued > 0 {
            lost += queued;
            if reason.is_empty() {
                reason = "the trace queue was full".into();
            }
        }
        if batch.is_empty() && lost == 0 {
            return;
        }
        let mut out = Vec::new();
        if lost > 0 {
            let marker = serde_json::json!({
                "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "dropped": lost,
                "reason": reason,
            });
            out.extend_from_slice(marker.to_string().as_bytes());
            out.push(b'\n');
        }
        out.append(batch);
        match file.write_all(&out) {
            Ok(()) => {
                len += out.len() as u64;
                lost = 0;
                reason.clear();
            }
            Err(e) => {
                let _ = file.set_len(len);
                if lost == 0 {
                    tracing::warn!(
                        "cannot write the request trace {path}: {e}. Requests go on; the \
                         records lost are counted in the trace once writing works again"
                    );
                }
                lost += lines;
                reason = e.to_string();
            }
        }
    };
    // Lines are written as they come, a batch whenever the queue runs
    // empty, so the file lags the requests by milliseconds at most.
    while let Ok(msg) = rx.recv() {
        let mut next = Some(msg);
        let mut lines = 0;
        while let Some(msg) = next {
            if let Msg::Line(line) = msg {
                batch.extend_from_slice(line.as_bytes());
                batch.push(b'\n');
                lines += 1;
            }
            if batch.len() >= 64 * 1024 {
                write_batch(&mut file, &mut batch, lines);
                lines = 0;
            }
            next = rx.try_recv().ok();
        }
        write_batch(&mut file, &mut batch, lines);
    }
    // Lines the full queue dropped at the very end are counted too.
    write_batch(&mut file, &mut batch, 0);
}

/// Replaces every secret of `run` in `text`.
pub(crate) fn redact(run: &Run, text: &str) -> String {
    let mut out = text.to_owned();
    for secret in &run.secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

/// Headers as a JSON object, sensitive and injected ones redacted.
pub(crate) fn headers_json(
    run: &Run,
    headers: &HeaderMap,
    injected: &[&str],
) -> Map<String, Value> {
    let mut map = Map::new();
    for name in headers.keys() {
        let key = name.as_str();
        let value = if SENSITIVE.contains(&key) || injected.contains(&key) {
            REDACTED.to_owned()
        } else {
            let joined = headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join(", ");
            redact(run, &joined)
        };
        map.insert(key.to_owned(), Value::String(value));
    }
    map
}

#[derive(Default)]
struct State {
    status: Option<u16>,
    resp_headers: Map<String, Value>,
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
pub(crate) struct Exchange {
    run: Arc<Run>,
    ts: chrono::DateTime<chrono::Utc>,
    started: Instant,
    method: String,
    url: String,
    allowed: bool,
    req_headers: Map<String, Value>,
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
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        run: Arc<Run>,
        method: &str,
        url: &str,
        allowed: bool,
        req_headers: Map<String, Value>,
        credential: Option<String>,
        limit: usize,
    ) -> Option<Arc<Self>> {
        if run.trace.is_none() && run.observer.is_none() {
            return None;
        }
        let longest = run.secrets.iter().map(String::len).max().unwrap_or(0);
        let url = redact(&run, url);
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
        let json = headers_json(&self.run, headers, &[]);
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

    fn body_text(&self, body: &[u8]) -> String {
        let text = redact(&self.run, &String::from_utf8_lossy(body));
        if text.len() <= self.limit {
            return text;
        }
        let mut end = self.limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
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
        let mut line = Map::new();
        line.insert(
            "ts".into(),
            Value::String(self.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        line.insert("method".into(), Value::String(self.method.clone()));
        line.insert("url".into(), Value::String(self.url.clone()));
        line.insert(
            "status_code".into(),
            s.status.map(Value::from).unwrap_or(Value::Null),
        );
        line.insert("duration_ms".into(), Value::from(duration_ms));
        if let Some(error) = error {
            line.insert("error".into(), Value::String(error));
        }
        line.insert(
            "policy".into(),
            Value::String(if self.allowed { "allow" } else { "deny" }.into()),
        );
        line.insert(
            "req_headers".into(),
            Value::Object(self.req_headers.clone()),
        );
        line.insert(
            "resp_headers".into(),
            Value::Object(std::mem::take(&mut s.resp_headers)),
        );
        if !s.req_body.is_empty() {
            line.insert(
                "req_body".into(),
                Value::String(self.body_text(&s.req_body)),
            );
        }
        if !s.resp_body.is_empty() {
            line.insert(
                "resp_body".into(),
                Value::String(self.body_text(&s.resp_body)),
            );
        }
        if s.truncated {
            line.insert("truncated".into(), Value::Bool(true));
        }
        if s.scrubbed > 0 {
            line.insert("scrubbed".into(), Value::from(s.scrubbed));
        }
        if let Some(label) = &self.credential {
            line.insert("credential_used".into(), Value::String(label.clone()));
        }
        drop(s);
        sink.send(Value::Object(line).to_string());
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
    use super::*;

    /// Every line is either in the trace or counted in a `dropped` line.
    #[test]
    fn lines_the_full_queue_drops_are_counted_in_the_trace() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("network.jsonl");
        let sink = TraceSink::open(&path, 1).unwrap();
        for i in 0..2000 {
            sink.send(format!("{{\"n\":{i}}}"));
        }
        drop(sink);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&path).unwrap();
            let (mut written, mut dropped) = (0u64, 0u64);
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                match v.get("dropped").and_then(|d| d.as_u64()) {
                    Some(n) => dropped += n,
                    None => written += 1,
                }
            }
            if written + dropped == 2000 {
                break;
            }
            assert!(Instant::now() < deadline, "{written} + {dropped} != 2000");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
