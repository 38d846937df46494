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

/// Appends lines to `logs.jsonl`.
///
/// Each line is one `write` on a file opened with `O_APPEND`, so a crash
/// loses at most the line being written and concurrent writers (stdout and
/// stderr pumps) never interleave within a line.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    path: PathBuf,
}

impl LogWriter {
    /// Opens (creating, mode 0600) `path` for appending.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(LogWriter {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line.
    pub fn write_line(&self, stream: LogStream, line: &str) -> io::Result<()> {
        let record = LogLine {
            ts: Utc::now(),
            stream,
            line: line.to_string(),
        };
        let mut bytes = serde_json::to_vec(&record).map_err(io::Error::other)?;
        bytes.push(b'\n');
        (&self.file).write_all(&bytes)
    }
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
}
