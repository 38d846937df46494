//! The content-addressed store of one workspace:
//! `MOAT_HOME/snapshots/<workspace-id>/` holds `blobs/<2 hex>/<62 hex>`
//! (file contents and gzipped trees, named by the SHA-256 of what they
//! hold, written once by rename), `snaps/<id>.json` (one record per
//! snapshot: the index is this directory), `workspace` (the path, for
//! people) and `lock` (taken by every writer and by prune).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use moat_home::{ensure_private_dir, write_private_atomic, FileLock, MoatHome};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::model::{Entry, Record};
use crate::SnapshotError;

type R<T> = Result<T, SnapshotError>;

/// The snapshots of one workspace.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) workspace: PathBuf,
}

/// A name for a workspace that is the same for every run of it.
pub fn workspace_id(workspace: &Path) -> String {
    let digest = Sha256::digest(workspace.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..8])
}

/// Where every workspace's snapshot store lives: `MOAT_HOME/snapshots`.
pub fn stores_dir(home: &MoatHome) -> std::path::PathBuf {
    home.root().join("snapshots")
}

impl Store {
    /// The store of `workspace` (made absolute and canonical) in `home`,
    /// created `0700` if absent.
    pub fn open(home: &MoatHome, workspace: &Path) -> R<Store> {
        let workspace = fs::canonicalize(workspace)
            .map_err(SnapshotError::io("resolving workspace", workspace))?;
        let dir = stores_dir(home).join(workspace_id(&workspace));
        ensure_private_dir(&stores_dir(home))?;
        for sub in ["blobs", "snaps", "tmp"] {
            ensure_private_dir(&dir.join(sub))?;
        }
        let marker = dir.join("workspace");
        if !marker.exists() {
            write_private_atomic(&marker, workspace.as_os_str().as_encoded_bytes())?;
        }
        Ok(Store { dir, workspace })
    }

    /// The workspace this store is of.
    pub fn workspace(&self) -> &Path {
        &self.workspace
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn lock(&self) -> R<FileLock> {
        Ok(FileLock::acquire(&self.dir.join("lock"))?)
    }

    pub(crate) fn blob_path(&self, hash: &str) -> PathBuf {
        let (a, b) = hash.split_at(2.min(hash.len()));
        self.dir.join("blobs").join(a).join(b)
    }

    fn tmp_path(&self) -> PathBuf {
        let n: u64 = rand::thread_rng().gen();
        self.dir.join("tmp").join(format!("{n:016x}"))
    }

    /// Moves `tmp` to the blob `hash` unless it is there already; returns
    /// whether it was new.
    fn publish(&self, tmp: &Path, hash: &str, made: &mut HashSet<String>) -> R<bool> {
        let dest = self.blob_path(hash);
        if dest.exists() {
            let _ = fs::remove_file(tmp);
            return Ok(false);
        }
        let prefix = hash[..2].to_owned();
        if !made.contains(&prefix) {
            ensure_private_dir(dest.parent().unwrap_or(&self.dir))?;
            made.insert(prefix);
        }
        fs::rename(tmp, &dest).map_err(SnapshotError::io("storing", &dest))?;
        Ok(true)
    }

    /// Copies the regular file `src` into the store; returns its hash, its
    /// length and whether its blob was new. Never follows a link: `src`
    /// must still be a regular file when opened.
    pub(crate) fn put_file(
        &self,
        src: &Path,
        made: &mut HashSet<String>,
    ) -> R<(String, u64, bool)> {
        let mut input = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(src)
            .map_err(SnapshotError::io("opening", src))?;
        let meta = input
            .metadata()
            .map_err(SnapshotError::io("reading", src))?;
        if !meta.is_file() {
            return Err(SnapshotError::damaged(
                src,
                "changed into a non-file while read",
            ));
        }
        let tmp = self.tmp_path();
        let result = self.copy_hashing(&mut input, &tmp, src);
        match result {
            Ok((hash, len)) => {
                let new = self.publish(&tmp, &hash, made)?;
                Ok((hash, len, new))
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn copy_hashing(&self, input: &mut File, tmp: &Path, src: &Path) -> R<(String, u64)> {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(SnapshotError::io("creating", tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut len = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .map_err(SnapshotError::io("reading", src))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(SnapshotError::io("writing", tmp))?;
            len += n as u64;
        }
        Ok((hex::encode(hasher.finalize()), len))
    }

    /// Stores a directory's entries; returns the tree's hash, its stored
    /// size and whether it was new.
    pub(crate) fn put_tree(
        &self,
        entries: &[Entry],
        made: &mut HashSet<String>,
    ) -> R<(String, u64, bool)> {
        let json = serde_json::to_vec(entries).map_err(|e| SnapshotError::damaged(&self.dir, e))?;
        let hash = hex::encode(Sha256::digest(&json));
        if self.blob_path(&hash).exists() {
            return Ok((hash, 0, false));
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let tmp = self.tmp_path();
        let bytes = gz
            .write_all(&json)
            .and_then(|_| gz.finish())
            .map_err(SnapshotError::io("compressing", &tmp))?;
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(SnapshotError::io("creating", &tmp))?;
        out.write_all(&bytes)
            .map_err(SnapshotError::io("writing", &tmp))?;
        let new = self.publish(&tmp, &hash, made)?;
        Ok((hash, bytes.len() as u64, new))
    }

    /// A directory's entries.
    pub fn read_tree(&self, hash: &str) -> R<Vec<Entry>> {
        let path = self.blob_path(hash);
        let file = File::open(&path).map_err(SnapshotError::io("reading", &path))?;
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut json)
            .map_err(SnapshotError::io("reading", &path))?;
        serde_json::from_slice(&json).map_err(|e| SnapshotError::damaged(&path, e))
    }

    pub(crate) fn save_record(&self, record: &Record) -> R<()> {
        let path = self.dir.join("snaps").join(format!("{}.json", record.id));
        let json =
            serde_json::to_vec_pretty(record).map_err(|e| SnapshotError::damaged(&path, e))?;
        write_private_atomic(&path, &json)?;
        Ok(())
    }

    pub(crate) fn remove_record(&self, id: &str) -> R<()> {
        let path = self.dir.join("snaps").join(format!("{id}.json"));
        fs::remove_file(&path).map_err(SnapshotError::io("removing", &path))
    }

    /// Every snapshot of the workspace, oldest first.
    pub fn list(&self) -> R<Vec<Record>> {
        let dir = self.dir.join("snaps");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(SnapshotError::io("listing", &dir))? {
            let path = entry.map_err(SnapshotError::io("listing", &dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let bytes = fs::read(&path).map_err(SnapshotError::io("reading", &path))?;
            let record: Record =
                serde_json::from_slice(&bytes).map_err(|e| SnapshotError::damaged(&path, e))?;
            out.push(record);
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The snapshot `id` (or unique id prefix).
    pub fn find(&self, id: &str) -> R<Record> {
        let all = self.list()?;
        if let Some(r) = all.iter().find(|r| r.id == id) {
            return Ok(r.clone());
        }
        let matches: Vec<&Record> = all.iter().filter(|r| r.id.starts_with(id)).collect();
        match matches.len() {
            1 => Ok(matches[0].clone()),
            0 => Err(SnapshotError::NotFound {
                id: id.to_owned(),
                workspace: self.workspace.clone(),
            }),
            count => Err(SnapshotError::Ambiguous {
                id: id.to_owned(),
                count,
            }),
        }
    }
}

/// Removes the snapshots of the run `run_id` from every workspace's store
/// (a destroyed run), and the blobs no other run's snapshot needs.
/// Returns the snapshots removed and the bytes freed.
pub fn forget_run(home: &MoatHome, run_id: &str) -> R<(usize, u64)> {
    let root = stores_dir(home);
    let listing = match fs::read_dir(&root) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(SnapshotError::io("listing", &root)(e)),
    };
    let (mut removed, mut freed) = (0, 0);
    for entry in listing {
        let dir = entry.map_err(SnapshotError::io("listing", &root))?.path();
        if !dir.join("snaps").is_dir() {
            continue;
        }
        // The workspace may be gone: the store is opened by its directory.
        let workspace = fs::read(dir.join("workspace"))
            .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
            .unwrap_or_default();
        let store = Store { dir, workspace };
        let report = store.forget_run(run_id)?;
        removed += report.removed.len();
        freed += report.bytes_freed;
    }
    Ok((removed, freed))
}

/// [`forget_run`] for each of `runs` (removed by `moat destroy` or
/// `moat clean`): the line to print, if any snapshot went. A failure is
/// logged: the runs are gone either way.
pub fn forget_runs<'a>(home: &MoatHome, runs: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let (mut count, mut freed) = (0, 0);
    for run in runs {
        match forget_run(home, run) {
            Ok((n, bytes)) => (count, freed) = (count + n, freed + bytes),
            Err(e) => tracing::warn!("removing the snapshots of {run}: {e}"),
        }
    }
    (count > 0).then(|| {
        format!(
            "Removed {count} snapshots ({} freed).",
            moat_home::human_bytes(freed)
        )
    })
}
