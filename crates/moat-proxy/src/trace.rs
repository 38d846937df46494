//! Per-run `network.jsonl` traces: one JSON line per request, written by a
//! background thread so a slow disk never slows a request.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use crate::config::ProxyConfig;
use crate::error::{ErrorKind, ProxyError};

pub(crate) mod exchange;

pub(crate) const REDACTED: &str = "[REDACTED]";

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
    file: std::fs::File,
    rx: Receiver<Msg>,
    path: String,
    queue_dropped: &AtomicU64,
    max_bytes: u64,
) {
    let mut out = TraceFile::new(file, path, queue_dropped, max_bytes);
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
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
                if batch.len() >= BATCH_BYTES {
                    out.write_batch(&mut batch, lines);
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
        out.write_batch(&mut batch, lines);
    }
    // Lines the full queue dropped at the very end are counted too.
    out.write_batch(&mut batch, 0);
}

/// The size at which the writer writes a batch without waiting for more.
const BATCH_BYTES: usize = 64 * 1024;

/// The trace file as its writer keeps it: how long it is, whether it has
/// reached its cap, and the lines lost since the last write that worked.
struct TraceFile<'q> {
    file: std::fs::File,
    /// For messages.
    path: String,
    max_bytes: u64,
    len: u64,
    capped: bool,
    lost: u64,
    /// Why the lines in `lost` were lost.
    reason: String,
    /// Lines the full queue dropped, counted by the senders.
    queue_dropped: &'q AtomicU64,
}

impl<'q> TraceFile<'q> {
    fn new(
        mut file: std::fs::File,
        path: String,
        queue_dropped: &'q AtomicU64,
        max_bytes: u64,
    ) -> Self {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let capped = ends_with_marker(&mut file, len);
        TraceFile {
            file,
            path,
            max_bytes,
            len,
            capped,
            lost: 0,
            reason: String::new(),
            queue_dropped,
        }
    }

    /// Writes `batch` (`lines` lines), emptying it, after the record of
    /// any lines lost before it, and cut at the cap.
    fn write_batch(&mut self, batch: &mut Vec<u8>, lines: u64) {
        let queued = self.queue_dropped.swap(0, Ordering::Relaxed);
        if self.capped {
            // Past the cap nothing is written, nor counted as lost.
            batch.clear();
            return;
        }
        if queued > 0 {
            self.lost += queued;
            if self.reason.is_empty() {
                self.reason = "the trace queue was full".into();
            }
        }
        if batch.is_empty() && self.lost == 0 {
            return;
        }
        let mut out = Vec::new();
        if self.lost > 0 {
            let marker = serde_json::json!({
                "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "dropped": self.lost,
                "reason": self.reason,
            });
            out.extend_from_slice(marker.to_string().as_bytes());
            out.push(b'\n');
        }
        out.append(batch);
        let reached_cap = self.cut_at_cap(&mut out);
        match self.file.write_all(&out) {
            Ok(()) => self.written(out.len() as u64, reached_cap),
            Err(e) => self.failed(&e, lines),
        }
    }

    /// Keeps the whole lines of `out` that fit under the cap, then the
    /// truncation marker; whether the cap is reached.
    fn cut_at_cap(&self, out: &mut Vec<u8>) -> bool {
        if self.len + out.len() as u64 <= self.max_bytes {
            return false;
        }
        let room = usize::try_from(self.max_bytes.saturating_sub(self.len)).unwrap_or(usize::MAX);
        let keep = out[..room.min(out.len())]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        out.truncate(keep);
        let marker = serde_json::json!({
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "event": TRUNCATED_EVENT,
            "max_bytes": self.max_bytes,
        });
        out.extend_from_slice(marker.to_string().as_bytes());
        out.push(b'\n');
        true
    }

    fn written(&mut self, bytes: u64, reached_cap: bool) {
        self.len += bytes;
        self.lost = 0;
        self.reason.clear();
        if reached_cap {
            self.capped = true;
            tracing::warn!(
                "the request trace {} reached its cap of {} bytes \
                 (MOAT_MAX_TRACE_BYTES); later requests of the run are not recorded",
                self.path,
                self.max_bytes
            );
        }
    }

    /// A write cut short is truncated away (no torn line); its lines count
    /// as lost, reported once.
    fn failed(&mut self, e: &std::io::Error, lines: u64) {
        let _ = self.file.set_len(self.len);
        if self.lost == 0 {
            tracing::warn!(
                "cannot write the request trace {}: {e}. Requests go on; the \
                 records lost are counted in the trace once writing works again",
                self.path
            );
        }
        self.lost += lines;
        self.reason = e.to_string();
    }
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
    pub(super) fn assert_no_piece(out: &str, secrets: &[&str], len: usize) {
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
}
