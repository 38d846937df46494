//! Taking a snapshot: one walk of the workspace, never following a link.
//!
//! A file whose (size, mtime, ctime, inode) equal the previous snapshot's
//! record keeps that record's hash without being read. What this trusts:
//! the kernel sets ctime on every change of content or metadata, and no
//! call lets a process set it back (utimensat sets only atime and mtime);
//! the inode number tells a file replaced by rename. The one gap is a
//! change within the filesystem clock's tick of the previous scan, so a
//! hash is reused only for files whose ctime is at least
//! [`RACY_MARGIN_NS`] older than the start of the scan that recorded it —
//! younger files are read again (as git does with "racily clean" entries).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::Utc;
use rand::Rng;

use crate::model::{encode_name, Entry, Kind, Record, Trigger};
use crate::store::Store;
use crate::SnapshotError;

type R<T> = Result<T, SnapshotError>;

/// How much older than the previous scan a file's ctime must be for its
/// recorded hash to be trusted.
pub const RACY_MARGIN_NS: i64 = 1_000_000_000;

/// What to snapshot and why.
#[derive(Debug, Clone)]
pub struct TakeOptions {
    /// The run the snapshot belongs to.
    pub run_id: Option<String>,
    /// A label.
    pub label: Option<String>,
    /// What took it.
    pub trigger: Trigger,
    /// Paths to leave out, relative to the workspace (a path and all
    /// under it).
    pub exclude: Vec<String>,
}

struct Walk<'a> {
    store: &'a Store,
    exclude: HashSet<PathBuf>,
    trust_before_ns: i64,
    made: HashSet<String>,
    record: Record,
}

fn nanos(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

impl Store {
    /// Takes a snapshot of the workspace and records it.
    pub fn take(&self, opts: &TakeOptions) -> R<Record> {
        let _lock = self.lock()?;
        let previous = self.list()?.into_iter().next_back();
        let started = Utc::now();
        let scan_started_ns = started.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let id = format!(
            "snap_{:012x}",
            rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff
        );
        let mut walk = Walk {
            store: self,
            exclude: opts
                .exclude
                .iter()
                .map(|p| PathBuf::from(p.trim_matches('/')))
                .collect(),
            trust_before_ns: previous.as_ref().map_or(i64::MIN, |p| {
                p.scan_started_ns.saturating_sub(RACY_MARGIN_NS)
            }),
            made: HashSet::new(),
            record: Record {
                id,
                run_id: opts.run_id.clone(),
                label: opts.label.clone(),
                trigger: opts.trigger,
                created_at: started,
                scan_started_ns,
                workspace: self.workspace.clone(),
                root: String::new(),
                exclude: opts.exclude.clone(),
                files: 0,
                dirs: 0,
                symlinks: 0,
                skipped: Vec::new(),
                skipped_count: 0,
                bytes: 0,
                new_bytes: 0,
                new_objects: 0,
                new_files: 0,
                files_read: 0,
            },
        };
        // A store inside the workspace (MOAT_HOME there) is never copied
        // into itself.
        let snapshots_root = self.dir.parent().unwrap_or(&self.dir);
        if let Ok(rel) = snapshots_root.strip_prefix(&self.workspace) {
            walk.exclude.insert(rel.to_path_buf());
        }
        let prev_root = previous.map(|p| p.root);
        let root = walk
            .dir(&self.workspace, Path::new(""), prev_root.as_deref())?
            .ok_or_else(|| {
                let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
                SnapshotError::io("listing", &self.workspace)(denied)
            })?;
        walk.record.root = root;
        walk.record.created_at = Utc::now();
        self.save_record(&walk.record)?;
        Ok(walk.record)
    }
}

impl Walk<'_> {
    /// Stores the directory `abs` (`rel` in the workspace); `prev` is its
    /// tree in the previous snapshot. `None`: the caller may not list it.
    fn dir(&mut self, abs: &Path, rel: &Path, prev: Option<&str>) -> R<Option<String>> {
        let listing = match fs::read_dir(abs) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(None),
            Err(e) => return Err(SnapshotError::io("listing", abs)(e)),
        };
        self.record.dirs += 1;
        let prev: HashMap<String, Entry> = match prev {
            Some(h) => self.store.read_tree(h).unwrap_or_default(),
            None => Vec::new(),
        }
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect();
        let mut names: Vec<_> = listing
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(SnapshotError::io("listing", abs))?;
        names.sort();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let child_rel = rel.join(&name);
            if self.exclude.contains(&child_rel) {
                continue;
            }
            let child_abs = abs.join(&name);
            if let Some(entry) = self.entry(&child_abs, &child_rel, encode_name(&name), &prev)? {
                entries.push(entry);
            }
        }
        let (hash, size, new) = self.store.put_tree(&entries, &mut self.made)?;
        if new {
            self.record.new_bytes += size;
            self.record.new_objects += 1;
        }
        Ok(Some(hash))
    }

    /// Leaves `rel` out of the snapshot, counted, with why.
    fn skip(&mut self, rel: &Path, why: &str) {
        self.record.skipped_count += 1;
        if self.record.skipped.len() < 20 {
            self.record
                .skipped
                .push(format!("{} ({why})", rel.display()));
        }
    }

    fn entry(
        &mut self,
        abs: &Path,
        rel: &Path,
        name: String,
        prev: &HashMap<String, Entry>,
    ) -> R<Option<Entry>> {
        let meta = match fs::symlink_metadata(abs) {
            Ok(m) => m,
            // Gone since the listing: it is not part of the snapshot.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SnapshotError::io("reading", abs)(e)),
        };
        let ft = meta.file_type();
        let mut entry = Entry {
            name,
            kind: Kind::File,
            mode: meta.mode() & 0o7777,
            size: 0,
            mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            uid: meta.uid(),
            gid: meta.gid(),
            hash: None,
            target: None,
        };
        let old = prev.get(&entry.name);
        if ft.is_dir() {
            entry.kind = Kind::Dir;
            let old_tree = old
                .filter(|o| o.kind == Kind::Dir)
                .and_then(|o| o.hash.clone());
            let Some(tree) = self.dir(abs, rel, old_tree.as_deref())? else {
                self.skip(rel, "unreadable");
                return Ok(None);
            };
            entry.hash = Some(tree);
        } else if ft.is_symlink() {
            entry.kind = Kind::Symlink;
            let target = fs::read_link(abs).map_err(SnapshotError::io("reading link", abs))?;
            entry.target = Some(encode_name(target.as_os_str()));
            self.record.symlinks += 1;
        } else if ft.is_file() {
            entry.size = meta.len();
            if !self.file(abs, &mut entry, old)? {
                self.skip(rel, "unreadable");
                return Ok(None);
            }
        } else {
            self.skip(rel, "special file");
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// Stores a file, or reuses its recorded hash; `false` when the caller
    /// may not read it.
    fn file(&mut self, abs: &Path, entry: &mut Entry, old: Option<&Entry>) -> R<bool> {
        let unchanged = old.filter(|o| {
            o.kind == Kind::File
                && o.size == entry.size
                && o.mtime_ns == entry.mtime_ns
                && o.ctime_ns == entry.ctime_ns
                && o.ino == entry.ino
                && o.ctime_ns < self.trust_before_ns
        });
        if let Some(old) = unchanged {
            entry.hash = old.hash.clone();
            // The recorded ctime stays, so the file stays trusted next time.
            self.record.bytes += entry.size;
            self.record.files += 1;
            return Ok(true);
        }
        let (hash, len, new) = match self.store.put_file(abs, &mut self.made) {
            Ok(stored) => stored,
            Err(SnapshotError::Io {
                action: "opening",
                error,
                ..
            }) if error.kind() == std::io::ErrorKind::PermissionDenied => return Ok(false),
            Err(e) => return Err(e),
        };
        self.record.files += 1;
        entry.size = len;
        entry.hash = Some(hash);
        self.record.bytes += len;
        self.record.files_read += 1;
        if new {
            self.record.new_files += 1;
            self.record.new_bytes += len;
            self.record.new_objects += 1;
        }
        Ok(true)
    }
}
