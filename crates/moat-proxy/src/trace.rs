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

use crate::config::ProxyConfig;
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
    /// One JSON line, without its newline.
    Line(Vec<u8>),
    Flush,
}

/// The writing end of one run's trace file.
pub(crate) struct TraceSink {
    tx: SyncSender<Msg>,
    /// Lines dropped because the queue was full; the writer records the
    /// count in the trace.
    dropped: Arc<AtomicU64>,
    path: PathBuf,
    /// The writer, unparked to write at once (see [`GATHER`]).
    writer: std::thread::Thread,
}

/// How long the writer waits after a line for more before writing them
/// together. It waits parked rather than blocked on the queue: a sender
/// wakes only a thread blocked in `recv`, so the lines of the window cost
/// one wake-up, not a context switch per proxied request.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

impl TraceSink {
    /// Opens (appending, creating `0600`) `path` and starts its writer,
    /// with `config`'s queue length and size cap (`trace_max_bytes`).
    pub(crate) fn open(path: &Path, config: &ProxyConfig) -> Result<Self, ProxyError> {
        Self::open_capped(path, config.trace_queue, config.trace_max_bytes)
    }

    /// [`TraceSink::open`] with its settings given one by one.
    pub(crate) fn open_capped(
        path: &Path,
        queue: usize,
        max_bytes: u64,
    ) -> Result<Self, ProxyError> {
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
            // Read too: the end of the file says whether its cap was met.
            .read(true)
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
        let handle = std::thread::Builder::new()
            .name("moat-trace".into())
            .spawn(move || writer(file, rx, display, &queue_dropped, max_bytes))
            .map_err(|e| {
                ProxyError::new(ErrorKind::Io, "starting the trace writer").with_source(e)
            })?;
        Ok(TraceSink {
            tx,
            dropped,
            path: path.to_path_buf(),
            writer: handle.thread().clone(),
        })
    }

    fn send(&self, line: Vec<u8>) {
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
        self.writer.unpark();
    }
}

impl Drop for TraceSink {
    fn drop(&mut self) {
        // The writer ends (after writing what is queued) once it sees the
        // queue closed; without this it would notice only after `GATHER`.
        self.writer.unpark();
    }
}

/// The `event` of the line written once when a trace reaches its cap.
pub(crate) const TRUNCATED_EVENT: &str = "trace_truncated";

/// Whether the end of the trace file already holds the cap's marker (a
/// daemon that reopens a run's trace must not write a second one).
fn ends_with_marker(file: &mut std::fs::File, len: u64) -> bool {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let tail = len.min(512);
    let mut buf = Vec::new();
    let read = file
        .seek(SeekFrom::Start(len - tail))
        .and_then(|_| (&*file).take(tail).read_to_end(&mut buf));
    // Appending ignores the position; it is only put back for tidiness.
    let _ = file.seek(SeekFrom::End(0));
    read.is_ok()
        && String::from_utf8_lossy(&buf)
            .lines()
            .last()
            .is_some_and(|l| l.contains(TRUNCATED_EVENT))
}

/// Writes each batch of lines whole or not at all: a write cut short (a
/// full disk) is truncated away, so the file never holds a torn line. The
/// lines lost are counted, reported once, and recorded as a
/// `{"ts", "dropped", "reason"}` line as soon as writing works again.
///
/// The file stops at `max_bytes`: the lines that fit are written, then one
/// `{"event": "trace_truncated", "max_bytes"}` line, then nothing more.
fn writer(
    mut file: std::fs::File,
    rx: Receiver<Msg>,
    path: String,
    queue_dropped: &AtomicU64,
    max_bytes: u64,
) {
    let mut len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut capped = ends_with_marker(&mut file, len);
    let mut lost: u64 = 0;
    let mut reason = String::new();
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut write_batch = |file: &mut std::fs::File, batch: &mut Vec<u8>, lines: u64| {
        if capped {
            // Past the cap nothing is written, nor counted as lost.
            batch.clear();
            queue_dropped.swap(0, Ordering::Relaxed);
            return;
        }
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
        let mut reached_cap = false;
        if len + out.len() as u64 > max_bytes {
            // The whole lines that fit, then the marker.
            let room = usize::try_from(max_bytes.saturating_sub(len)).unwrap_or(usize::MAX);
            let keep = out[..room.min(out.len())]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            out.truncate(keep);
            let marker = serde_json::json!({
                "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "event": TRUNCATED_EVENT,
                "max_bytes": max_bytes,
            });
            out.extend_from_slice(marker.to_string().as_bytes());
            out.push(b'\n');
            reached_cap = true;
        }
        match file.write_all(&out) {
            Ok(()) => {
                len += out.len() as u64;
                lost = 0;
                reason.clear();
                if reached_cap {
                    capped = true;
                    tracing::warn!(
                        "the request trace {path} reached its cap of {max_bytes} bytes \
                         (MOAT_MAX_TRACE_BYTES); later requests of the run are not recorded"
                    );
                }
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
    // A batch is what arrives within `GATHER` of its first line (less when
    // a flush is asked for or the queue closes), so the file lags the
    // requests by milliseconds at most.
    while let Ok(msg) = rx.recv() {
        let deadline = Instant::now() + GATHER;
        let mut next = Some(msg);
        let mut lines = 0;
        loop {
            let mut flush = false;
            while let Some(msg) = next {
                match msg {
                    Msg::Line(line) => {
                        batch.extend_from_slice(&line);
                        batch.push(b'\n');
                        lines += 1;
                    }
                    Msg::Flush => flush = true,
                }
                if batch.len() >= 64 * 1024 {
                    write_batch(&mut file, &mut batch, lines);
                    lines = 0;
                }
                next = match rx.try_recv() {
                    Ok(msg) => Some(msg),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        flush = true;
                        None
                    }
                };
            }
            let now = Instant::now();
            if flush || now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
            next = rx.try_recv().ok();
        }
        write_batch(&mut file, &mut batch, lines);
    }
    // Lines the full queue dropped at the very end are counted too.
    write_batch(&mut file, &mut batch, 0);
}

/// Replaces every secret of `run` in `text`.
pub(crate) fn redact<'a>(run: &Run, text: &'a str) -> std::borrow::Cow<'a, str> {
    run.redactor.redact(text)
}

/// All the secrets of a run in one automaton, so a text is searched once
/// whatever their number.
pub(crate) enum Redactor {
    /// No secrets.
    Nothing,
    Automaton(aho_corasick::AhoCorasick),
    /// Only if the automaton cannot be built (a pattern set beyond its
    /// limits): each secret searched for at every position.
    Plain(Vec<zeroize::Zeroizing<String>>),
}

impl Redactor {
    pub(crate) fn new(secrets: &[String]) -> Self {
        let secrets: Vec<&str> = secrets
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        if secrets.is_empty() {
            return Redactor::Nothing;
        }
        // Standard match semantics, so overlapping matches can be asked for
        // and secrets that overlap in a text are all covered.
        match aho_corasick::AhoCorasick::new(&secrets) {
            Ok(automaton) => Redactor::Automaton(automaton),
            Err(e) => {
                tracing::warn!(error = %e, "building the trace redactor; searching secret by secret");
                Redactor::Plain(
                    secrets
                        .iter()
                        .map(|s| zeroize::Zeroizing::new((*s).to_owned()))
                        .collect(),
                )
            }
        }
    }

    /// Where secrets occur in `text` (overlapping occurrences included).
    fn spans(&self, text: &str) -> Vec<(usize, usize)> {
        match self {
            Redactor::Nothing => Vec::new(),
            Redactor::Automaton(automaton) => automaton
                .find_overlapping_iter(text)
                .map(|m| (m.start(), m.end()))
                .collect(),
            Redactor::Plain(secrets) => {
                let mut spans = Vec::new();
                for secret in secrets {
                    let mut from = 0;
                    while let Some(i) = text.get(from..).and_then(|t| t.find(secret.as_str())) {
                        spans.push((from + i, from + i + secret.len()));
                        from += i + 1;
                        while from < text.len() && !text.is_char_boundary(from) {
                            from += 1;
                        }
                    }
                }
                spans
            }
        }
    }

    /// `text` with every stretch covered by an occurrence of a secret
    /// replaced by [`REDACTED`]: overlapping occurrences (of one secret or
    /// of several) become one marker, so no part of any secret is left.
    pub(crate) fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        self.redact_prefix(text, text.len())
    }

    /// [`Redactor::redact`] of the first `limit` bytes of `text` (cut at a
    /// character boundary), where an occurrence that begins before the cut
    /// and ends after it is replaced whole. The cut is made in `text`, not
    /// in the redacted text: markers longer or shorter than the secrets
    /// they replace cannot bring a secret's beginning, cut off in `text`,
    /// into the kept part.
    pub(crate) fn redact_prefix<'a>(
        &self,
        text: &'a str,
        limit: usize,
    ) -> std::borrow::Cow<'a, str> {
        use std::borrow::Cow;
        let mut cut = limit.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut spans = self.spans(text);
        if spans.is_empty() {
            return Cow::Borrowed(&text[..cut]);
        }
        spans.sort_unstable();
        let bytes = text.as_bytes();
        let mut out: Vec<u8> = Vec::with_capacity(cut + REDACTED.len());
        let mut done = 0;
        let mut i = 0;
        while i < spans.len() && spans[i].0 < cut {
            let (start, mut end) = spans[i];
            i += 1;
            while i < spans.len() && spans[i].0 < end {
                end = end.max(spans[i].1);
                i += 1;
            }
            out.extend_from_slice(&bytes[done..start]);
            out.extend_from_slice(REDACTED.as_bytes());
            done = end;
        }
        if done < cut {
            out.extend_from_slice(&bytes[done..cut]);
        }
        // A secret is whole UTF-8, so the cuts fall between characters.
        Cow::Owned(
            String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        )
    }
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
        // Written directly, keys in the sorted order a JSON object of
        // `serde_json` has always given these lines.
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
        if let Some(error) = &error {
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
        drop(s);
        sink.send(line);
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
    use super::*;

    /// Every line is either in the trace or counted in a `dropped` line.
    #[test]
    fn the_trace_stops_at_its_cap_with_one_marker_even_when_reopened() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.jsonl");
        let line = format!("{{\"url\":\"{}\"}}", "u".repeat(90));
        for _ in 0..2 {
            let sink = TraceSink::open_capped(&path, 64, 1000).unwrap();
            for _ in 0..30 {
                sink.send(line.clone().into_bytes());
            }
            drop(sink);
            // The writer ends once it has drained the closed queue.
            let deadline = Instant::now() + std::time::Duration::from_secs(5);
            while Instant::now() < deadline {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.contains(TRUNCATED_EVENT) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // 100-byte lines: nine fit in 1000 bytes, then the marker, once.
        assert_eq!(lines.len(), 10, "{text}");
        assert!(lines[..9].iter().all(|l| *l == line));
        let marker: serde_json::Value = serde_json::from_str(lines[9]).unwrap();
        assert_eq!(marker["event"], TRUNCATED_EVENT);
        assert_eq!(marker["max_bytes"], 1000);
    }

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

    #[test]
    fn lines_the_full_queue_drops_are_counted_in_the_trace() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("network.jsonl");
        let sink = TraceSink::open_capped(&path, 1, u64::MAX).unwrap();
        for i in 0..2000 {
            sink.send(format!("{{\"n\":{i}}}").into_bytes());
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

    fn redactor(secrets: &[&str]) -> Redactor {
        Redactor::new(&secrets.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    /// No window of `len` bytes of any secret is left in `out`.
    fn assert_no_piece(out: &str, secrets: &[&str], len: usize) {
        for secret in secrets {
            for piece in secret.as_bytes().windows(len.min(secret.len())) {
                let piece = std::str::from_utf8(piece).unwrap();
                assert!(
                    !out.contains(piece),
                    "{piece:?} of {secret:?} left in {out:?}"
                );
            }
        }
    }

    #[test]
    fn every_secret_is_redacted_overlapping_or_not() {
        let secrets = [
            "abcdef12",
            "ef123456",
            "Bearer tok_0123456789",
            "tok_0123456789",
        ];
        let r = redactor(&secrets);
        assert_eq!(r.redact("no secret here"), "no secret here");
        assert_eq!(r.redact("xxabcdef123456yy"), "xx[REDACTED]yy");
        assert_eq!(r.redact("a Bearer tok_0123456789 b"), "a [REDACTED] b");
        assert_eq!(
            r.redact("tok_0123456789tok_0123456789"),
            "[REDACTED][REDACTED]"
        );
        // One secret overlapping itself.
        let r = redactor(&["abab"]);
        assert_eq!(r.redact("xabababx"), "x[REDACTED]x");
        // Multi-byte characters around and inside secrets.
        let r = redactor(&["clé-secrète"]);
        assert_eq!(r.redact("été clé-secrète été"), "été [REDACTED] été");
    }

    /// Texts made of random pieces of overlapping secrets: every occurrence
    /// of every secret is gone, with the automaton and the fallback alike.
    #[test]
    fn random_mixes_of_secret_pieces_never_leak() {
        use rand::{Rng, SeedableRng};
        let secrets = ["k3y-AAAA-BBBB", "BBBB-CCCC", "CCCC-k3y", "xyzw", "wxyzwxyz"];
        let owned: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
        let plain = Redactor::Plain(
            owned
                .iter()
                .map(|s| zeroize::Zeroizing::new(s.clone()))
                .collect(),
        );
        let automaton = Redactor::new(&owned);
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..rng.gen_range(0..8) {
                let s = secrets[rng.gen_range(0..secrets.len())];
                let a = rng.gen_range(0..s.len());
                let b = rng.gen_range(a..=s.len());
                text.push_str(if rng.gen_bool(0.5) { s } else { &s[a..b] });
            }
            for r in [&automaton, &plain] {
                let out = r.redact(&text);
                for s in secrets {
                    assert!(!out.contains(s), "{s:?} left in {out:?} (from {text:?})");
                }
            }
            assert_eq!(automaton.redact(&text), plain.redact(&text), "{text:?}");
        }
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
