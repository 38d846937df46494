//! Tamper-evident audit logs, one per run: `MOAT_HOME/runs/<run-id>/audit.jsonl`.
//!
//! - [`Entry`]: one JSON line `{seq, ts, type, prev, data, hash}`; `seq`
//!   counts from 1, `prev` is the previous entry's hash (`""` for the
//!   first) and `hash = hex(SHA-256(seq as u64 BE ‖ ts ‖ type ‖ prev ‖
//!   canonical JSON(data)))` ([`entry_hash`]). Canonical JSON sorts object
//!   keys and has no whitespace.
//! - [`AuditWriter`]: appends from a background thread. The caller never
//!   blocks: events go through a bounded queue, and events that do not fit
//!   are counted and recorded later as an `audit{action:"dropped",count}`
//!   entry. Each batch is written then `fdatasync`ed; the file is `0600`.
//! - [`SigningKey`]: the installation's Ed25519 key,
//!   `MOAT_HOME/audit/signing.key` (32-byte seed, `0600`, created on first
//!   use) and `signing.pub` (hex). [`AuditWriter::close`] seals the log: it
//!   signs the 32 raw bytes of the head hash and appends an [`Attestation`]
//!   `{seq, root_hash, timestamp, signature, public_key}` (hex) to the
//!   sidecar file `audit.sig.json` beside the log ([`sig_path`]), so the
//!   log itself stays a pure chain of entries.
//! - [`verify_log`] / [`verify_bundle`]: contiguous `seq`, matching `prev`,
//!   recomputed hashes, valid signatures over an existing entry; the first
//!   broken record is reported precisely ([`ChainError`],
//!   [`SignatureError`]). Removing records from the end of a sealed log is
//!   caught by its attestation pointing past the end.
//! - [`Bundle`]: `{version: 1, created_at, last_hash, entries, attestations}`,
//!   verifiable with nothing but the public key inside it.
//!
//! This crate only reads and writes audit files. It must not decide what is
//! audited (the daemon and the CLI do), and it must not touch other run
//! files, credentials or the network.

mod bundle;
mod entry;
mod error;
mod key;
mod pin;
mod verify;
mod writer;

pub use crate::bundle::{verify_bundle, verify_bundle_pinned, Bundle, BUNDLE_VERSION};
pub use crate::entry::RUN_ID_FIELD;
pub use crate::entry::{canonical_json, entry_hash, now_ts, Entry};
pub use crate::error::{AuditError, KeyProblem, LineError, WriteFailure};
pub use crate::key::SigningKey;
pub use crate::pin::{installation_key, parse_public_key, pinned_key, PinError};
pub use crate::verify::{
    read_attestations, read_log, verify_log, verify_run_log, Attestation, ChainError, LogLine,
    LogReport, SharedError, SignatureError, VerifyOptions,
};
pub use crate::writer::AuditWriter;

use std::path::{Path, PathBuf};

/// The audit log's file name inside a run directory.
pub const LOG_FILE: &str = "audit.jsonl";

/// The attestations file beside `log` (`audit.jsonl` → `audit.sig.json`).
pub fn sig_path(log: &Path) -> PathBuf {
    let stem = log
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "audit".into());
    log.with_file_name(format!("{stem}.sig.json"))
}
