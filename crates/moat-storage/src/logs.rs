use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a run's output, as stored in `logs.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When moat read it.
    pub ts: DateTime<Utc>,
    /// Which stream.
    pub stream: LogStream,
    /// The text, without its newline.
    pub line: String,
}

/// The default cap on a run's `logs.jsonl` (`MOAT_MAX_LOG_BYTES`).
pub const DEFAULT_MAX_LOG_BYTES: u64 = 100 << 20;

/// Appends lines to `logs.jsonl`.
///
/// Each line is one `write` on a file opened with `O_APPEND`, so a crash
/// loses at most the line being written and concurrent writers (stdout and
/// stderr pumps) never interleave within a line.
///
/// Nothing is lost silently: the file stops growing at its cap
/// (`MOAT_MAX_LOG_BYTES`, default 100 MiB) with a marker line saying so,
/// and lines that cannot be written (a full disk) are counted and
/// reported once, then recorded as a marker line as soon as writing works
/// again. A write cut short is truncated away, so the file never holds a
/// torn line.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: PathBuf,
    cap: u64,
    state: std::sync::Mutex<WriterState>,
}

#[derive(Debug, Default)]
struct WriterState {
    /// Bytes in the file.
    len: u64,
    /// Lines lost since the last successful write, and why.
    lost: u64,
    lost_reason: Option<String>,
    /// Whether the cap was reached (the marker is written).
    capped: bool,
}

impl LogWriter {
    /// Opens (creating, mode 0600) `path` for appending, capped at
    /// `MOAT_MAX_LOG_BYTES` (default [`DEFAULT_MAX_LOG_BYTES`]).
    pub fn open(path: &Path) -> io::Result<Self> {
        let cap = std::env::var("MOAT_MAX_LOG_BYTES")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_MAX_LOG_BYTES);
        Self::open_capped(path, cap)
    }

    /// Opens `path` for appending, keeping it under `cap` bytes.
    pub fn open_capped(path: &Path, cap: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(LogWriter {
            file,
            path: path.to_path_buf(),
            cap,
            state: std::sync::Mutex::new(WriterState {
                len,
                ..WriterState::default()
            }),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. An error is returned (and logged as a warning)
    /// only for the first line of a run of failures; the lines lost are
    /// counted and the count written when writing works again.
    pub fn write_line(&self, stream: LogStream, line: &str) -> io::Result<()> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.capped {
            return Ok(());
        }
        if state.lost > 0 {
            let note = format!(
                "[moat: {} line(s) of output lost here: {}]",
                state.lost,
                state.lost_reason.as_deref().unwrap_or("write error")
            );
            if self.append(&mut state, LogStream::Stderr, &note).is_err() {
                state.lost += 1;
                return Ok(());
            }
            state.lost = 0;
            state.lost_reason = None;
        }
        let bytes = record(stream, line)?;
        if state.len + bytes.len() as u64 > self.cap {
            state.capped = true;
            let note = format!(
                "[moat: the run log reached its cap of {} bytes (MOAT_MAX_LOG_BYTES); \
                 later output was shown but not recorded]",
                self.cap
            );
            let _ = self.append(&mut state, LogStream::Stderr, &note);
            return Ok(());
        }
        match self.append_bytes(&mut state, &bytes) {
            Ok(()) => Ok(()),
            Err(e) => {
                let first = state.lost == 0;
                state.lost += 1;
                state.lost_reason = Some(e.to_string());
                if first {
                    tracing::warn!(
                        "cannot write the run log {}: {e}. Output is still shown; the lines \
                         lost are counted in the log once writing works again",
                        self.path.display()
                    );
                    return Err(e);
                }
                Ok(())
            }
        }
    }

    fn append(&self, state: &mut WriterState, stream: LogStream, line: &str) -> io::Result<()> {
        let bytes = record(stream, line)?;
        self.append_bytes(state, &bytes)
    }

    /// Writes `bytes` whole, or truncates the file back to its length
    /// before (a full disk can cut a write short).
    fn append_bytes(&self, state: &mut WriterState, bytes: &[u8]) -> io::Result<()> {
        match (&self.file).write_all(bytes) {
            Ok(()) => {
                state.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(state.len);
                Err(e)
            }
        }
    }
}

fn record(stream: LogStream, line: &str) -> io::Result<Vec<u8>> {
    let record = LogLine {
        ts: Utc::now(),
        stream,
        line: line.to_string(),
    };
    let mut bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Reads `logs.jsonl`, keeping the last `tail` lines when given. A damaged
/// line (a crash mid-write, an edit) is skipped and counted, never fatal.
pub fn read_logs(path: &Path, tail: Option<usize>) -> io::Result<(Vec<LogLine>, usize)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut lines = std::collections::VecDeque::new();
    let mut damaged = 0;
    for raw in BufReader::new(file).split(b'\n') {
        let raw = raw?;
        if raw.is_empty() {
            continue;
        }
        match serde_json::from_slice::<LogLine>(&raw) {
            Ok(line) => {
                lines.push_back(line);
                if let Some(n) = tail {
                    while lines.len() > n {
                        lines.pop_front();
                    }
                }
            }
            Err(_) => damaged += 1,
        }
    }
    Ok((lines.into_iter().collect(), damaged))
}

/// The saved output of a run's service sidecars (`services/NAME.log`,
/// written when the run ended or a sidecar failed): each service's name
/// and its last `lines` lines, services in name order.
pub fn read_service_logs(dir: &Path, lines: usize) -> io::Result<Vec<(String, Vec<String>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut logs: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    let mut out = Vec::new();
    for path in logs {
        let service = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)?;
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| (*l).to_owned())
            .collect();
        out.push((service, tail));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_and_tail_skipping_damage() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("logs.jsonl");
        let w = LogWriter::open(&path).unwrap();
        for i in 0..5 {
            w.write_line(LogStream::Stdout, &format!("line {i}"))
                .unwrap();
        }
        w.write_line(LogStream::Stderr, "oops \u{1b}[31m").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"ts\": truncated")
            .unwrap();
        let (all, damaged) = read_logs(&path, None).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(damaged, 1);
        assert_eq!(all[5].stream, LogStream::Stderr);
        let (tail, _) = read_logs(&path, Some(2)).unwrap();
        assert_eq!(tail[0].line, "line 4");
        assert_eq!(
            read_logs(&tmp.path().join("none"), None).unwrap().0.len(),
            0
        );
    }

    #[test]
    fn the_cap_stops_the_log_with_a_marker() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("logs.jsonl");
        let w = LogWriter::open_capped(&path, 1000).unwrap();
        for i in 0..100 {
            w.write_line(LogStream::Stdout, &format!("line {i}"))
                .unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() < 1200);
        let (all, damaged) = read_logs(&path, None).unwrap();
        assert_eq!(damaged, 0);
        let last = &all.last().unwrap().line;
        assert!(last.contains("reached its cap of 1000 bytes"), "{last}");
        assert_eq!(all.iter().filter(|l| l.line.contains("cap")).count(), 1);
    }
}
