//! The background writer of one run's log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::entry::RUN_ID_FIELD;
use crate::error::{LineError, WriteFailure};
use crate::verify::{Attestation, SigFile};
use crate::{AuditError, Entry, SigningKey};

type Reply<T> = SyncSender<Result<T, WriteFailure>>;

enum Msg {
    Event {
        ts: String,
        kind: String,
        data: Value,
    },
    Flush(Reply<()>),
    Seal(Arc<SigningKey>, Reply<Option<Attestation>>),
}

/// Appends entries to one log from a background thread.
///
/// [`AuditWriter::append`] never blocks; [`AuditWriter::flush`] and
/// [`AuditWriter::close`] wait for the thread and are for the end of a run
/// and tests. Dropping the writer lets the thread write what is queued and
/// exit.
pub struct AuditWriter {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    total_dropped: AtomicU64,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("path", &self.path)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The longest an event waits to be written and synced with the events
/// that follow it (group commit); a flush or a seal does not wait.
const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// How long `flush` and `close` wait for the writer thread.
const WAIT: Duration = Duration::from_secs(10);

impl AuditWriter {
    /// Opens the log at `path` (created `0600`, in a `0700` directory),
    /// continuing its chain if it has entries, and starts the writer with a
    /// queue of `queue` events. Refuses a log whose last line is damaged.
    pub fn open(path: &Path, queue: usize) -> Result<AuditWriter, AuditError> {
        Self::open_inner(path, None, queue, u64::MAX)
    }

    /// [`AuditWriter::open`] for the log of run `run_id`: every entry it
    /// writes carries `run_id` in its data, so the log cannot be passed
    /// off as another run's ([`crate::verify_run_log`] checks it).
    pub fn open_for_run(
        path: &Path,
        run_id: &str,
        queue: usize,
    ) -> Result<AuditWriter, AuditError> {
        Self::open_inner(path, Some(run_id.to_owned()), queue, u64::MAX)
    }

    /// [`AuditWriter::open_for_run`], the log kept near `max_bytes`: once
    /// it reaches them, one `audit{action:"capped", max_bytes}` entry is
    /// written and later events are dropped, except the run's own
    /// (`run` entries: its start and stop), so the end is still recorded
    /// and the chain still verifies. A sandbox's requests are one event
    /// each, and it can send them as fast as it likes.
    pub fn open_for_run_capped(
        path: &Path,
        run_id: &str,
        queue: usize,
        max_bytes: u64,
    ) -> Result<AuditWriter, AuditError> {
        Self::open_inner(path, Some(run_id.to_owned()), queue, max_bytes)
    }

    fn open_inner(
        path: &Path,
        run_id: Option<String>,
        queue: usize,
        max_bytes: u64,
    ) -> Result<AuditWriter, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                moat_home::ensure_private_dir(dir)?;
            }
        }
        let (head, torn) = read_head(path, run_id.is_some())?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| AuditError::io("opening", path, e))?;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let durable_len = file
            .metadata()
            .map_err(|e| AuditError::io("reading the size of", path, e))?
            .len();
        // A log reopened after its cap was met (its daemon was replaced)
        // stays capped: its head is the marker or a run entry after it.
        let capped = durable_len >= max_bytes;
        let state = Thread {
            max_bytes,
            capped,
            file,
            pending: Vec::new(),
            pending_events: 0,
            carry: 0,
            durable_len,
            durable_head: head.clone(),
            head,
            lost: 0,
            lost_reason: None,
            dropped: dropped.clone(),
            path: path.to_path_buf(),
            failed: None,
            run_id,
        };
        let mut state = state;
        if torn > 0 {
            state.record_cut(torn);
        }
        let thread = std::thread::Builder::new()
            .name("moat-audit".into())
            .spawn(move || state.run(rx))
            .map_err(|e| AuditError::io("starting the writer for", path, e))?;
        Ok(AuditWriter {
            tx,
            dropped,
            total_dropped: AtomicU64::new(0),
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues an event, timestamped now; never blocks. When the queue is
    /// full the event is counted as dropped, and the count is recorded in
    /// the log as soon as there is room.
    pub fn append(&self, kind: &str, data: Value) {
        let msg = Msg::Event {
            ts: crate::now_ts(),
            kind: kind.to_owned(),
            data,
        };
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                let n = self.total_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(path = %self.path.display(), dropped = n, "audit queue full; dropping events");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.total_dropped.load(Ordering::Relaxed)
    }

    /// Waits until everything queued so far is written and synced.
    pub fn flush(&self) -> Result<(), AuditError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.request(Msg::Flush(reply), rx)
    }

    /// Waits until everything queued so far is written, then seals the log
    /// with `key` (when given and the log has entries): the head hash is
    /// signed and the attestation added to the sidecar file. Blocks for at
    /// most a few seconds; returns the new attestation. Entries appended
    /// later are not covered until the next seal.
    pub fn seal(&self, key: Option<Arc<SigningKey>>) -> Result<Option<Attestation>, AuditError> {
        match key {
            Some(key) => {
                let (reply, rx) = mpsc::sync_channel(1);
                self.request(Msg::Seal(key, reply), rx)
            }
            None => self.flush().map(|()| None),
        }
    }

    /// [`AuditWriter::seal`], then stops the writer thread.
    pub fn close(
        mut self,
        key: Option<Arc<SigningKey>>,
    ) -> Result<Option<Attestation>, AuditError> {
        let result = self.seal(key);
        if let Some(thread) = self.thread.take() {
            // Dropping our sender ends the thread once it has drained.
            let (dummy, _) = mpsc::sync_channel(1);
            drop(std::mem::replace(&mut self.tx, dummy));
            let _ = thread.join();
        }
        result
    }

    fn request<T>(&self, msg: Msg, rx: Receiver<Result<T, WriteFailure>>) -> Result<T, AuditError> {
        let gone = || AuditError::WriterGone {
            path: self.path.clone(),
        };
        self.tx.send(msg).map_err(|_| gone())?;
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
        match rx.recv_timeout(WAIT) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(reason)) => Err(AuditError::Write {
                path: self.path.clone(),
                reason,
            }),
            Err(_) => Err(gone()),
        }
    }
}

/// The last entry of the log at `path` (`None`: none yet) and how many
/// bytes of an incomplete last record were cut away. A run's writer
/// (`continue_torn`) continues a log whose writer was killed in the middle
/// of a record (its daemon died): the incomplete record is cut away, and
/// the cut recorded first thing.
fn read_head(path: &Path, continue_torn: bool) -> Result<(Option<Entry>, u64), AuditError> {
    match std::fs::read(path) {
        Ok(bytes) if continue_torn && !bytes.is_empty() && !bytes.ends_with(b"\n") => {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let torn = (bytes.len() - keep) as u64;
            let head = last_entry(path, &bytes[..keep])?;
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(keep as u64))
                .map_err(|e| AuditError::io("cutting the incomplete record of", path, e))?;
            Ok((head, torn))
        }
        Ok(bytes) => Ok((last_entry(path, &bytes)?, 0)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, 0)),
        Err(e) => Err(AuditError::io("reading", path, e)),
    }
}

/// The last entry of an existing log; an error when the last line is not
/// an entry (appending would bury the damage).
fn last_entry(path: &Path, bytes: &[u8]) -> Result<Option<Entry>, AuditError> {
    let lines = crate::verify::parse_lines(bytes);
    match lines.into_iter().last() {
        None => Ok(None),
        Some((_, Ok(entry))) if bytes.ends_with(b"\n") => Ok(Some(entry)),
        Some((line, Ok(_))) => Err(AuditError::Damaged {
            path: path.to_path_buf(),
            line,
            reason: LineError::Unterminated,
        }),
        Some((line, Err(reason))) => Err(AuditError::Damaged {
            path: path.to_path_buf(),
            line,
            reason,
        }),
    }
}

/// The writer thread. Each batch is written whole or not at all: a
/// write cut short (a full disk) is truncated away, its events are counted
/// as lost, and the count is recorded as an `audit{action:"dropped"}`
/// entry as soon as writing works again, so the log never holds a torn
/// record and its chain stays whole.
struct Thread {
    /// Past this length events are dropped (see
    /// [`AuditWriter::open_for_run_capped`]).
    max_bytes: u64,
    /// The `capped` entry is written.
    capped: bool,
    file: File,
    /// The batch being built: serialized entries not yet written.
    pending: Vec<u8>,
    /// Events in `pending`.
    pending_events: u64,
    /// Events counted by a `dropped` entry in `pending`.
    carry: u64,
    /// The length of the file and its last entry, as last synced.
    durable_len: u64,
    durable_head: Option<Entry>,
    /// The last entry (in `pending` or written).
    head: Option<Entry>,
    /// Events lost to failed writes and not yet recorded, and why.
    lost: u64,
    lost_reason: Option<String>,
    dropped: Arc<AtomicU64>,
    path: PathBuf,
    failed: Option<WriteFailure>,
    run_id: Option<String>,
}

impl Thread {
    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            // A batch: what arrives within COMMIT_INTERVAL of its first
            // event (or until someone waits for it), written, then synced
            // once. One fdatasync per request would wake this thread and
            // the disk for every proxied request.
            let deadline = std::time::Instant::now() + COMMIT_INTERVAL;
            let mut next = Some(msg);
            let mut pending: Vec<Msg> = Vec::new();
            loop {
                while let Some(msg) = next {
                    match msg {
                        Msg::Event { ts, kind, data } => {
                            if self.over_cap(&kind) {
                                next = rx.try_recv().ok();
                                continue;
                            }
                            self.record_drops();
                            self.write(ts, &kind, data);
                            self.pending_events += 1;
                        }
                        other => pending.push(other),
                    }
                    next = rx.try_recv().ok();
                }
                let now = std::time::Instant::now();
                if !pending.is_empty() || now >= deadline {
                    break;
                }
                // Parked, not blocked on the channel: a sender only wakes a
                // thread blocked in `recv`, so events arriving in the window
                // cost no wake-up (one per event was a context switch per
                // proxied request); flush and seal unpark us.
                std::thread::park_timeout(deadline - now);
                next = rx.try_recv().ok();
            }
            self.record_drops();
            self.sync();
            for msg in pending {
                match msg {
                    Msg::Event { .. } => {}
                    Msg::Flush(reply) => {
                        let _ = reply.send(self.status());
                    }
                    Msg::Seal(key, reply) => {
                        let _ = reply.send(self.seal(&key));
                    }
                }
            }
        }
        self.record_drops();
        self.sync();
    }

    /// Whether an event of `kind` is dropped for the size cap; the first
    /// one dropped queues the `capped` entry. The run's own entries are
    /// never dropped: there are two of them.
    fn over_cap(&mut self, kind: &str) -> bool {
        if kind == "run" {
            return false;
        }
        if self.capped {
            return true;
        }
        if self.durable_len + (self.pending.len() as u64) < self.max_bytes {
            return false;
        }
        self.capped = true;
        self.write(
            crate::now_ts(),
            "audit",
            json!({
                "action": "capped",
                "max_bytes": self.max_bytes,
                "reason": "the run's audit log reached its cap (MOAT_MAX_TRACE_BYTES); later \
                           events other than the run's end are not recorded",
            }),
        );
        true
    }

    /// Queues an `audit{action:"dropped"}` entry for the events the queue
    /// or failed writes lost.
    fn record_drops(&mut self) {
        let queued = self.dropped.swap(0, Ordering::Relaxed);
        let lost = std::mem::take(&mut self.lost);
        let n = queued + lost;
        if n == 0 {
            return;
        }
        let mut data = json!({"action": "dropped", "count": n});
        if let (Some(reason), Some(map)) = (self.lost_reason.take(), data.as_object_mut()) {
            map.insert("reason".into(), Value::String(reason));
        }
        self.carry += n;
        self.write(crate::now_ts(), "audit", data);
    }

    fn write(&mut self, ts: String, kind: &str, data: Value) {
        let mut data = crate::entry::as_object(data);
        if let (Some(run_id), Some(map)) = (&self.run_id, data.as_object_mut()) {
            map.insert(RUN_ID_FIELD.into(), Value::String(run_id.clone()));
        }
        let entry = Entry::next(self.head.as_ref(), ts, kind, data);
        match serde_json::to_vec(&entry) {
            Ok(line) => {
                self.pending.extend_from_slice(&line);
                self.pending.push(b'\n');
                self.head = Some(entry);
            }
            Err(e) => self.fail(WriteFailure::Encode(Arc::new(e))),
        }
    }

    /// Writes and syncs the batch, or truncates it away and counts it lost.
    fn sync(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let written = self
            .file
            .write_all(&self.pending)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.durable_len += self.pending.len() as u64;
                self.durable_head = self.head.clone();
                self.failed = None;
            }
            Err(e) => {
                let _ = self.file.set_len(self.durable_len);
                self.head = self.durable_head.clone();
                self.lost += self.pending_events + self.carry;
                self.lost_reason = Some(e.to_string());
                self.fail(WriteFailure::Io(Arc::new(e)));
            }
        }
        self.pending.clear();
        self.pending_events = 0;
        self.carry = 0;
    }

    /// Records that `bytes` of an incomplete last record were cut away.
    fn record_cut(&mut self, bytes: u64) {
        self.write(
            crate::now_ts(),
            "audit",
            json!({
                "action": "truncated",
                "bytes": bytes,
                "reason": "an incomplete record, left when moat stopped while writing, was cut away",
            }),
        );
        self.sync();
    }

    fn fail(&mut self, reason: WriteFailure) {
        if self.failed.is_none() {
            tracing::warn!(
                "cannot write the audit log {}: {reason}. The events lost are counted in the \
                 log once writing works again",
                self.path.display()
            );
            self.failed = Some(reason);
        }
    }

    fn status(&self) -> Result<(), WriteFailure> {
        match &self.failed {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    fn seal(&mut self, key: &SigningKey) -> Result<Option<Attestation>, WriteFailure> {
        self.status()?;
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let att = Attestation::sign(head, key);
        let sig_path = crate::sig_path(&self.path);
        let mut file = match moat_home::read_if_exists(&sig_path) {
            Ok(Some(bytes)) => serde_json::from_slice::<SigFile>(&bytes).map_err(|e| {
                WriteFailure::DamagedSignatures {
                    path: sig_path.clone(),
                    error: Arc::new(e),
                }
            })?,
            Ok(None) => SigFile {
                version: 1,
                attestations: Vec::new(),
            },
            Err(e) => return Err(WriteFailure::Home(Arc::new(e))),
        };
        file.attestations.push(att.clone());
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| WriteFailure::Encode(Arc::new(e)))?;
        moat_home::write_private_atomic(&sig_path, &bytes)
            .map_err(|e| WriteFailure::Home(Arc::new(e)))?;
        Ok(Some(att))
    }
}
