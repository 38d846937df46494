//! Reading and verifying a log and its attestations.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::LineError;
use crate::{AuditError, Entry, SigningKey};

/// A signature by the installation key over the hash of entry `seq` (the
/// log's head when it was sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// The signed entry.
    pub seq: u64,
    /// Its hash (hex); the signature covers the 32 bytes it encodes.
    pub root_hash: String,
    /// When it was signed (RFC 3339 UTC).
    pub timestamp: String,
    /// Ed25519 signature (hex, 64 bytes).
    pub signature: String,
    /// Ed25519 public key (hex, 32 bytes).
    pub public_key: String,
}

impl Attestation {
    /// Signs the head `entry` with `key`.
    pub fn sign(entry: &Entry, key: &SigningKey) -> Attestation {
        let message = hex::decode(&entry.hash).unwrap_or_else(|_| entry.hash.as_bytes().to_vec());
        Attestation {
            seq: entry.seq,
            root_hash: entry.hash.clone(),
            timestamp: crate::now_ts(),
            signature: hex::encode(key.sign(&message)),
            public_key: key.public_key_hex(),
        }
    }

    /// Whether the signature is valid for `root_hash` under `public_key`.
    pub fn signature_is_valid(&self) -> bool {
        let (Ok(message), Ok(sig), Ok(pk)) = (
            hex::decode(&self.root_hash),
            hex::decode(&self.signature),
            hex::decode(&self.public_key),
        ) else {
            return false;
        };
        SigningKey::verify(&pk, &message, &sig)
    }
}

/// The sidecar file holding a log's attestations.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct SigFile {
    pub(crate) version: u32,
    pub(crate) attestations: Vec<Attestation>,
}

/// The first problem in the chain of entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A line is not a valid entry (truncated, edited into invalid JSON, an
    /// unknown field...).
    #[error("unreadable record at line {line}: {reason}")]
    Unreadable {
        /// 1-based line number.
        line: usize,
        /// Why it is no entry.
        reason: LineError,
    },
    /// `seq` does not follow the previous entry's.
    #[error("sequence gap: expected {expected}, got {got}")]
    SequenceGap {
        /// The seq that should be there.
        expected: u64,
        /// The seq found.
        got: u64,
    },
    /// `prev` is not the previous entry's hash.
    #[error("broken chain at seq {seq}")]
    BrokenChain {
        /// The entry.
        seq: u64,
    },
    /// `hash` does not match the entry's contents.
    #[error("invalid hash at seq {seq}")]
    InvalidHash {
        /// The entry.
        seq: u64,
    },
    /// The last line is cut short and has no newline: the writer stopped
    /// (crash, kill, full disk) in the middle of it. Not tampering: the
    /// records before it are checked as usual.
    #[error("record at line {line} is incomplete (moat stopped while writing)")]
    Incomplete {
        /// 1-based line number.
        line: usize,
    },
    /// A record names another run than the one the log belongs to: the
    /// log was copied from another run.
    #[error(
        "record seq {seq} belongs to run {run}, not to this one (a log copied from another run)"
    )]
    ForeignRun {
        /// The entry.
        seq: u64,
        /// The run it names (`(none)` when it names none).
        run: String,
    },
    /// The bundle's `last_hash` is not the hash of its last entry.
    #[error("last_hash does not match the last entry (seq {seq})")]
    LastHashMismatch {
        /// The last entry's seq (0 when there is none).
        seq: u64,
    },
}

/// The first problem with the attestations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The attestations file is not readable.
    #[error("attestations unreadable: {0}")]
    Unreadable(SharedError),
    /// The signature does not verify.
    #[error("attestation {index}: invalid signature over seq {seq}")]
    InvalidSignature {
        /// 1-based attestation number.
        index: usize,
        /// The signed seq.
        seq: u64,
    },
    /// The signed entry is not in the log: records were removed from the end.
    #[error(
        "attestation {index}: signs seq {seq}, but the log ends at seq {last} \
         (records were removed from the end)"
    )]
    MissingEntry {
        /// 1-based attestation number.
        index: usize,
        /// The signed seq.
        seq: u64,
        /// The last seq in the log.
        last: u64,
    },
    /// The signed hash is not the hash the entry has now.
    #[error("attestation {index}: signed hash of seq {seq} differs from the log's")]
    RootMismatch {
        /// 1-based attestation number.
        index: usize,
        /// The signed seq.
        seq: u64,
    },
    /// Signed by a key that is not this installation's.
    #[error("attestation {index}: signed by an unknown key {key}")]
    UnknownKey {
        /// 1-based attestation number.
        index: usize,
        /// The key (hex).
        key: String,
    },
    /// The run has ended, or the log is exported, but nothing signs it:
    /// the seal was deleted, or the daemon died before sealing.
    #[error(
        "no seal: the run has ended but no attestation signs its log (audit.sig.json is \
         missing or empty), so records may have been removed and the chain rebuilt"
    )]
    Unsealed,
    /// Records follow the last attestation although the run has ended.
    #[error(
        "{count} record(s) after the seal at seq {seq} are not signed, though the run has \
         ended: they were added afterwards"
    )]
    UnsignedTail {
        /// How many records follow the seal.
        count: u64,
        /// The last signed seq.
        seq: u64,
    },
}

/// What a log is checked against ([`verify_run_log`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// The installation's public key: attestations by any other key fail.
    pub expected_key: Option<&'a [u8]>,
    /// The run the log belongs to: records naming another run fail.
    pub run_id: Option<&'a str>,
    /// The run has ended: its log must be sealed up to its last record.
    pub finished: bool,
}

/// What verification found.
#[derive(Debug, Clone, Default)]
pub struct LogReport {
    /// Records in the log (readable or not).
    pub entries: u64,
    /// The last entry's hash.
    pub last_hash: Option<String>,
    /// The first broken record, if any.
    pub chain: Option<ChainError>,
    /// Attestations found.
    pub attestations: usize,
    /// The first bad attestation, if any.
    pub signature: Option<SignatureError>,
    /// Entries after the last attested one (appended after sealing, or the
    /// run is still going).
    pub unsigned_after: u64,
    /// The public keys (hex) of the valid attestations, in order, once each.
    pub signers: Vec<String>,
    /// The run the records name, if they name one.
    pub run_id: Option<String>,
    /// No record names its run (a log written before records carried
    /// their run id): it cannot be tied to a run.
    pub unbound: bool,
}

impl LogReport {
    /// No broken record and no bad signature.
    pub fn intact(&self) -> bool {
        self.chain.is_none() && self.signature.is_none()
    }

    /// The only problem is a last record cut short by a crash (and, as a
    /// consequence, a missing seal): damage, not tampering.
    pub fn incomplete(&self) -> bool {
        matches!(self.chain, Some(ChainError::Incomplete { .. }))
            && matches!(self.signature, None | Some(SignatureError::Unsealed))
    }
}

/// One line of the log: its 1-based number and the entry, or why it is
/// not one.
pub type LogLine = (usize, Result<Entry, LineError>);

/// An [`AuditError`] inside a report, which is cloned and compared: two
/// are equal when they are the same error.
#[derive(Debug, Clone)]
pub struct SharedError(std::sync::Arc<AuditError>);

impl SharedError {
    /// The error.
    pub fn error(&self) -> &AuditError {
        &self.0
    }
}

impl PartialEq for SharedError {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedError {}

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Reads every line of the log at `path`.
pub fn read_log(path: &Path) -> Result<Vec<LogLine>, AuditError> {
    let bytes = std::fs::read(path).map_err(|e| AuditError::io("reading", path, e))?;
    Ok(parse_lines(&bytes))
}

pub(crate) fn parse_lines(bytes: &[u8]) -> Vec<LogLine> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            let parsed = if line.is_empty() {
                Err(LineError::Empty)
            } else {
                serde_json::from_slice::<Entry>(line).map_err(|e| LineError::NotAnEntry {
                    message: e.to_string(),
                })
            };
            (i + 1, parsed)
        })
        .collect()
}

/// Reads the attestations beside the log at `log` (none when the file is
/// absent).
pub fn read_attestations(log: &Path) -> Result<Vec<Attestation>, AuditError> {
    let path = crate::sig_path(log);
    let Some(bytes) = moat_home::read_if_exists(&path)? else {
        return Ok(Vec::new());
    };
    let file: SigFile = serde_json::from_slice(&bytes).map_err(|e| AuditError::Format {
        path: path.clone(),
        what: "attestations file",
        reason: e.to_string(),
    })?;
    Ok(file.attestations)
}

/// Verifies the log at `path` and its attestations. With `expected_key`
/// (the installation's public key), attestations by any other key fail.
/// Errors only when the log cannot be read at all.
pub fn verify_log(path: &Path, expected_key: Option<&[u8]>) -> Result<LogReport, AuditError> {
    verify_run_log(
        path,
        &VerifyOptions {
            expected_key,
            ..VerifyOptions::default()
        },
    )
}

/// Verifies the log at `path` against `opts`: the chain, that every
/// record names `opts.run_id`, the attestations (by `opts.expected_key`),
/// and, for a finished run, a seal over the last record. A last line cut
/// short by a crash is [`ChainError::Incomplete`]. Errors only when the
/// log cannot be read at all.
pub fn verify_run_log(path: &Path, opts: &VerifyOptions<'_>) -> Result<LogReport, AuditError> {
    let bytes = std::fs::read(path).map_err(|e| AuditError::io("reading", path, e))?;
    let lines = parse_lines(&bytes);
    let mut report = check_chain_of(&lines, bytes.is_empty() || bytes.ends_with(b"\n"));
    check_run(&mut report, &lines, opts.run_id);
    match read_attestations(path) {
        Ok(atts) => {
            check_attestations(&mut report, &lines, &atts, opts.expected_key);
            if opts.finished {
                require_seal(&mut report, &lines, &atts);
            }
        }
        Err(e) => {
            report.signature = Some(SignatureError::Unreadable(SharedError(
                std::sync::Arc::new(e),
            )))
        }
    }
    Ok(report)
}

/// Checks seq, prev and hash of every line, in order, stopping at the
/// first broken one.
pub(crate) fn check_chain(lines: &[LogLine]) -> LogReport {
    check_chain_of(lines, true)
}

/// [`check_chain`]; `complete`: whether the file ends with a newline, so
/// that an unreadable last line is a record cut short.
fn check_chain_of(lines: &[LogLine], complete: bool) -> LogReport {
    let mut report = LogReport {
        entries: lines.len() as u64,
        ..Default::default()
    };
    let mut prev: Option<&Entry> = None;
    for (line, parsed) in lines {
        let entry = match parsed {
            Ok(e) => e,
            Err(reason) => {
                report.chain = Some(if !complete && *line == lines.len() {
                    ChainError::Incomplete { line: *line }
                } else {
                    ChainError::Unreadable {
                        line: *line,
                        reason: reason.clone(),
                    }
                });
                break;
            }
        };
        let expected = prev.map_or(1, |p| p.seq + 1);
        if entry.seq != expected {
            report.chain = Some(ChainError::SequenceGap {
                expected,
                got: entry.seq,
            });
            break;
        }
        if entry.prev != prev.map_or("", |p| p.hash.as_str()) {
            report.chain = Some(ChainError::BrokenChain { seq: entry.seq });
            break;
        }
        if !entry.hash_is_valid() {
            report.chain = Some(ChainError::InvalidHash { seq: entry.seq });
            break;
        }
        prev = Some(entry);
    }
    report.last_hash = lines
        .last()
        .and_then(|(_, e)| e.as_ref().ok())
        .map(|e| e.hash.clone());
    report
}

/// Checks that every record names the same run, `run_id` when given.
/// A log where no record names a run is only marked `unbound`.
pub(crate) fn check_run(report: &mut LogReport, lines: &[LogLine], run_id: Option<&str>) {
    let entries: Vec<&Entry> = lines.iter().filter_map(|(_, e)| e.as_ref().ok()).collect();
    let named = |e: &Entry| {
        e.data
            .get(crate::entry::RUN_ID_FIELD)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    report.run_id = entries.iter().find_map(|e| named(e));
    if report.run_id.is_none() {
        report.unbound = !entries.is_empty();
        return;
    }
    let Some(expected) = run_id.map(str::to_owned).or_else(|| report.run_id.clone()) else {
        return;
    };
    let foreign = entries.iter().find_map(|e| match named(e) {
        Some(run) if run == expected => None,
        other => Some((e.seq, other.unwrap_or_else(|| "(none)".into()))),
    });
    if let (Some((seq, run)), None) = (foreign, &report.chain) {
        report.chain = Some(ChainError::ForeignRun { seq, run });
    }
}

/// A finished run's log must be signed up to its last record.
pub(crate) fn require_seal(report: &mut LogReport, lines: &[LogLine], atts: &[Attestation]) {
    if report.signature.is_some() {
        return;
    }
    let last = lines
        .iter()
        .filter_map(|(_, e)| e.as_ref().ok())
        .map(|e| e.seq)
        .max()
        .unwrap_or(0);
    if last == 0 {
        return;
    }
    if atts.is_empty() {
        report.signature = Some(SignatureError::Unsealed);
    } else if report.unsigned_after > 0 {
        report.signature = Some(SignatureError::UnsignedTail {
            count: report.unsigned_after,
            seq: last - report.unsigned_after,
        });
    }
}

pub(crate) fn check_attestations(
    report: &mut LogReport,
    lines: &[LogLine],
    atts: &[Attestation],
    expected_key: Option<&[u8]>,
) {
    report.attestations = atts.len();
    let entries: Vec<&Entry> = lines.iter().filter_map(|(_, e)| e.as_ref().ok()).collect();
    let last = entries.last().map_or(0, |e| e.seq);
    let mut signed_up_to = 0;
    for (i, att) in atts.iter().enumerate() {
        let index = i + 1;
        let problem = if let Some(expected) = expected_key {
            (hex::decode(&att.public_key).ok().as_deref() != Some(expected)).then(|| {
                SignatureError::UnknownKey {
                    index,
                    key: att.public_key.clone(),
                }
            })
        } else {
            None
        };
        let problem = problem.or_else(|| {
            if !att.signature_is_valid() {
                return Some(SignatureError::InvalidSignature {
                    index,
                    seq: att.seq,
                });
            }
            match entries.iter().find(|e| e.seq == att.seq) {
                None => Some(SignatureError::MissingEntry {
                    index,
                    seq: att.seq,
                    last,
                }),
                Some(e) if e.hash != att.root_hash => Some(SignatureError::RootMismatch {
                    index,
                    seq: att.seq,
                }),
                Some(_) => None,
            }
        });
        if let Some(p) = problem {
            report.signature = Some(p);
            break;
        }
        if !report.signers.contains(&att.public_key) {
            report.signers.push(att.public_key.clone());
        }
        signed_up_to = signed_up_to.max(att.seq);
    }
    report.unsigned_after = if atts.is_empty() {
        0
    } else {
        last.saturating_sub(signed_up_to)
    };
}
