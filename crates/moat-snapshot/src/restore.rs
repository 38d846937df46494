//! Restoring a snapshot: into a new or empty directory, or in place (the
//! workspace made equal to the snapshot: what it lacks deleted, modes,
//! times and link targets set back, empty directories made).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use moat_storage::RunStore;
use rand::Rng;

use crate::model::{decode_name, Entry, Kind, Record, Trigger};
use crate::store::Store;
use crate::take::TakeOptions;
use crate::SnapshotError;

type R<T> = Result<T, SnapshotError>;

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Files, links and directories written.
    pub written: u64,
    /// Paths deleted (a directory counts once).
    pub removed: u64,
    /// The safety snapshot taken before an in-place restore.
    pub safety: Option<String>,
}

fn child(dir: &Path, entry: &Entry) -> R<std::path::PathBuf> {
    let name = decode_name(&entry.name)
        .filter(|n| !n.is_empty() && n != "." && n != ".." && !n.as_encoded_bytes().contains(&b'/'))
        .ok_or_else(|| SnapshotError::damaged(dir, format!("bad name {:?}", entry.name)))?;
    Ok(dir.join(name))
}

fn set_attrs(path: &Path, entry: &Entry) -> R<()> {
    let io = SnapshotError::io("restoring", path);
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid)).map_err(io)?;
    }
    if entry.kind != Kind::Symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(entry.mode))
            .map_err(SnapshotError::io("restoring", path))?;
    }
    let t = rustix::fs::Timespec {
        tv_sec: entry.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: entry.mtime_ns.rem_euclid(1_000_000_000),
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| SnapshotError::io("restoring", path)(e.into()))
}

fn remove(path: &Path) -> R<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SnapshotError::io("removing", path)(e)),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(SnapshotError::io("removing", path))
}

impl Store {
    /// Writes the snapshot into `dest`, which must not exist or be an
    /// empty directory.
    pub fn restore_to(&self, record: &Record, dest: &Path) -> R<RestoreReport> {
        match fs::read_dir(dest) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return Err(SnapshotError::DestinationNotEmpty {
                        path: dest.to_path_buf(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dest).map_err(SnapshotError::io("creating", dest))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(SnapshotError::DestinationNotEmpty {
                    path: dest.to_path_buf(),
                })
            }
            Err(e) => return Err(SnapshotError::io("reading", dest)(e)),
        }
        let mut report = RestoreReport::default();
        self.write_tree(&record.root, dest, &mut report)?;
        Ok(report)
    }

    /// Makes the workspace equal to the snapshot, after taking a safety
    /// snapshot of it. Refused while an active run has the workspace (or a
    /// directory holding it, or one inside it) mounted.
    pub fn restore_in_place(&self, record: &Record, runs: &RunStore) -> R<RestoreReport> {
        let holders = self.holders(runs)?;
        if !holders.is_empty() {
            return Err(SnapshotError::WorkspaceInUse {
                workspace: self.workspace.clone(),
                runs: holders,
            });
        }
        let safety = self.take(&TakeOptions {
            run_id: record.run_id.clone(),
            label: Some(format!("before restoring {}", record.id)),
            trigger: Trigger::Safety,
            exclude: record.exclude.clone(),
        })?;
        let mut report = RestoreReport {
            safety: Some(safety.id.clone()),
            ..RestoreReport::default()
        };
        let workspace = self.workspace.clone();
        self.apply(&workspace, &record.root, &safety.root, &mut report)?;
        Ok(report)
    }

    /// The active runs whose workspace overlaps this one.
    pub fn holders(&self, runs: &RunStore) -> R<Vec<String>> {
        let (list, _) = runs.list()?;
        Ok(list
            .into_iter()
            .filter_map(|mut m| {
                RunStore::reconcile_view(&mut m);
                let ws = fs::canonicalize(&m.workspace).unwrap_or(m.workspace.clone());
                let overlaps = ws.starts_with(&self.workspace) || self.workspace.starts_with(&ws);
                (m.state.is_active() && overlaps).then(|| m.id.to_string())
            })
            .collect())
    }

    fn write_tree(&self, tree: &str, dir: &Path, report: &mut RestoreReport) -> R<()> {
        for entry in self.read_tree(tree)? {
            let path = child(dir, &entry)?;
            self.write_entry(&entry, &path, report)?;
        }
        Ok(())
    }

    /// Creates `path` (which does not exist) as `entry`.
    fn write_entry(&self, entry: &Entry, path: &Path, report: &mut RestoreReport) -> R<()> {
        report.written += 1;
        match entry.kind {
            Kind::Dir => {
                fs::create_dir(path).map_err(SnapshotError::io("creating", path))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))
                    .map_err(SnapshotError::io("creating", path))?;
                let tree = entry.hash.as_deref().unwrap_or_default();
                self.write_tree(tree, path, report)?;
            }
            Kind::File => self.write_file(entry, path)?,
            Kind::Symlink => {
                let target = entry
                    .target
                    .as_deref()
                    .and_then(decode_name)
                    .unwrap_or_default();
                symlink(&target, path).map_err(SnapshotError::io("creating link", path))?;
            }
        }
        set_attrs(path, entry)
    }

    /// Writes a file's content beside `path` and renames it over `path`
    /// (a rename replaces a link, never writes through it).
    fn write_file(&self, entry: &Entry, path: &Path) -> R<()> {
        let blob = self.blob_path(entry.hash.as_deref().unwrap_or_default());
        let n: u64 = rand::thread_rng().gen();
        let tmp = path.with_file_name(format!(".moat-restore-{n:016x}"));
        fs::copy(&blob, &tmp).map_err(SnapshotError::io("restoring", &blob))?;
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            SnapshotError::io("restoring", path)(e)
        })
    }

    /// Turns the directory `dir`, whose content is the tree `have`, into
    /// the tree `want`.
    fn apply(&self, dir: &Path, want: &str, have: &str, report: &mut RestoreReport) -> R<()> {
        if want == have {
            return Ok(());
        }
        let want = self.read_tree(want)?;
        let have: HashMap<String, Entry> = self
            .read_tree(have)?
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        let wanted: HashMap<&str, Kind> = want.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        for h in have.values() {
            if wanted.get(h.name.as_str()) != Some(&h.kind) {
                remove(&child(dir, h)?)?;
                report.removed += 1;
            }
        }
        for w in &want {
            let path = child(dir, w)?;
            let old = have.get(&w.name).filter(|h| h.kind == w.kind);
            self.apply_entry(w, old, &path, report)?;
        }
        Ok(())
    }

    fn apply_entry(
        &self,
        w: &Entry,
        old: Option<&Entry>,
        path: &Path,
        report: &mut RestoreReport,
    ) -> R<()> {
        let Some(old) = old else {
            return self.write_entry(w, path, report);
        };
        match w.kind {
            Kind::Dir => {
                let (want, have) = (w.hash.as_deref(), old.hash.as_deref());
                self.apply(
                    path,
                    want.unwrap_or_default(),
                    have.unwrap_or_default(),
                    report,
                )?;
            }
            Kind::File if w.hash != old.hash => {
                report.written += 1;
                self.write_file(w, path)?;
            }
            Kind::Symlink if w.target != old.target => {
                remove(path)?;
                return self.write_entry(w, path, report);
            }
            _ => {}
        }
        let same = (w.mode, w.mtime_ns, w.uid, w.gid) == (old.mode, old.mtime_ns, old.uid, old.gid);
        if same && w.hash == old.hash {
            return Ok(());
        }
        set_attrs(path, w)
    }
}
