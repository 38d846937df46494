//! What a snapshot stores: tree entries and the snapshot record.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What kind of thing a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file; `hash` names its content blob.
    File,
    /// A directory; `hash` names its tree (the list of its entries).
    Dir,
    /// A symbolic link, never followed; `target` is what it points at.
    Symlink,
}

/// One name in a directory, as it was when the snapshot was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The name (see [`encode_name`]).
    pub name: String,
    /// File, directory or link.
    pub kind: Kind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Bytes (files only).
    #[serde(default)]
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    #[serde(default)]
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch (not restorable;
    /// kept to tell an unchanged file).
    #[serde(default)]
    pub ctime_ns: i64,
    /// Inode number (kept to tell an unchanged file).
    #[serde(default)]
    pub ino: u64,
    /// Owner.
    #[serde(default)]
    pub uid: u32,
    /// Group.
    #[serde(default)]
    pub gid: u32,
    /// Content blob (files) or tree (directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Link target (symlinks; see [`encode_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What started a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// Before the sandbox started.
    PreRun,
    /// `moat snapshot <run>`.
    Manual,
    /// Before an in-place restore.
    Safety,
    /// After a git commit in the workspace.
    GitCommit,
    /// After the workspace was idle.
    Idle,
}

impl Trigger {
    /// The name shown in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::PreRun => "pre-run",
            Trigger::Manual => "manual",
            Trigger::Safety => "safety",
            Trigger::GitCommit => "git-commit",
            Trigger::Idle => "idle",
        }
    }
}

/// A snapshot: its root tree and what it cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// `snap_<12 hex>`.
    pub id: String,
    /// The run it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The user's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What took it.
    pub trigger: Trigger,
    /// When it was finished.
    pub created_at: DateTime<Utc>,
    /// When its scan started, nanoseconds since the epoch: a later
    /// snapshot trusts a recorded hash only for files whose ctime is
    /// older than this (less a margin).
    pub scan_started_ns: i64,
    /// The workspace it is of.
    pub workspace: PathBuf,
    /// The root directory's tree.
    pub root: String,
    /// Paths left out, relative to the workspace.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Regular files.
    pub files: u64,
    /// Directories (the root included).
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Special files left out (FIFOs, sockets, devices), first few.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// How many special files were left out.
    #[serde(default)]
    pub skipped_count: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Bytes this snapshot added to the store (new blobs and trees).
    pub new_bytes: u64,
    /// Blobs and trees this snapshot added.
    pub new_objects: u64,
    /// File blobs this snapshot added.
    #[serde(default)]
    pub new_files: u64,
    /// Files read (the others kept the previous snapshot's hash).
    #[serde(default)]
    pub files_read: u64,
}

/// A name or link target as stored: itself when it is UTF-8 and does not
/// start with NUL, else NUL followed by the hex of its bytes.
pub fn encode_name(name: &OsStr) -> String {
    match name.to_str() {
        Some(s) if !s.starts_with('\0') => s.to_owned(),
        _ => format!("\0{}", hex::encode(name.as_bytes())),
    }
}

/// The inverse of [`encode_name`]; `None` when damaged.
pub fn decode_name(name: &str) -> Option<OsString> {
    match name.strip_prefix('\0') {
        Some(h) => hex::decode(h).ok().map(OsString::from_vec),
        None => Some(OsString::from(name)),
    }
}
