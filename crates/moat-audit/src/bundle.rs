//! Export bundles: a log and its attestations in one self-contained file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::verify::{
    check_attestations, check_chain, check_run, ChainError, LogReport, SignatureError,
};
use crate::{Attestation, AuditError, Entry};

/// The bundle format version.
pub const BUNDLE_VERSION: u32 = 1;

/// `{version, created_at, last_hash, entries, attestations}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    /// [`BUNDLE_VERSION`].
    pub version: u32,
    /// When the bundle was made (RFC 3339 UTC).
    pub created_at: String,
    /// The last entry's hash (`""` for an empty log).
    pub last_hash: String,
    /// Every entry, in order.
    pub entries: Vec<Entry>,
    /// The log's attestations.
    #[serde(default)]
    pub attestations: Vec<Attestation>,
}

impl Bundle {
    /// Bundles `entries` and `attestations`.
    pub fn new(entries: Vec<Entry>, attestations: Vec<Attestation>) -> Bundle {
        Bundle {
            version: BUNDLE_VERSION,
            created_at: crate::now_ts(),
            last_hash: entries.last().map(|e| e.hash.clone()).unwrap_or_default(),
            entries,
            attestations,
        }
    }

    /// Reads a bundle file.
    pub fn read(path: &Path) -> Result<Bundle, AuditError> {
        let bytes = std::fs::read(path).map_err(|e| AuditError::io("reading", path, e))?;
        let bundle: Bundle = serde_json::from_slice(&bytes).map_err(|e| AuditError::Format {
            path: path.to_path_buf(),
            what: "moat audit bundle",
            reason: e.to_string(),
        })?;
        if bundle.version != BUNDLE_VERSION {
            return Err(AuditError::Format {
                path: path.to_path_buf(),
                what: "moat audit bundle",
                reason: format!(
                    "version {} is not supported (this moat reads version {BUNDLE_VERSION}); \
                     verify it with the moat that exported it",
                    bundle.version
                ),
            });
        }
        Ok(bundle)
    }

    /// Writes the bundle (pretty JSON; a new file is `0600`). The
    /// directory is the user's: its permissions are left alone.
    pub fn write(&self, path: &Path) -> Result<(), AuditError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| AuditError::Format {
            path: path.to_path_buf(),
            what: "moat audit bundle",
            reason: e.to_string(),
        })?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .map_err(|e| AuditError::io("writing", path, e))
    }
}

/// Verifies a bundle with nothing but what is inside it: the chain, that
/// `last_hash` is the last entry's hash, that every record names the same
/// run, and each attestation's signature under its own public key. This
/// proves the log unchanged since a key signed it, not whose key that is:
/// see [`verify_bundle_pinned`].
pub fn verify_bundle(bundle: &Bundle) -> LogReport {
    verify_bundle_pinned(bundle, None)
}

/// [`verify_bundle`], requiring every attestation to be made by `pinned`
/// (the installation's public key) when given. A bundle of records that
/// no attestation signs fails ([`SignatureError::Unsealed`]).
pub fn verify_bundle_pinned(bundle: &Bundle, pinned: Option<&[u8]>) -> LogReport {
    let lines: Vec<_> = bundle
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (i + 1, Ok(e.clone())))
        .collect();
    let mut report = check_chain(&lines);
    let last = bundle.entries.last();
    if report.chain.is_none() && last.map_or("", |e| e.hash.as_str()) != bundle.last_hash {
        report.chain = Some(ChainError::LastHashMismatch {
            seq: last.map_or(0, |e| e.seq),
        });
    }
    check_run(&mut report, &lines, None);
    check_attestations(&mut report, &lines, &bundle.attestations, pinned);
    if bundle.attestations.is_empty() && !bundle.entries.is_empty() && report.signature.is_none() {
        report.signature = Some(SignatureError::Unsealed);
    }
    report
}
