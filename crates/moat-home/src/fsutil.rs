use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

/// A failure to read or write a file under `MOAT_HOME`.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// An I/O operation on `path` failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What moat was doing ("creating directory", "writing", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

impl HomeError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        HomeError::Io {
            action,
            path: path.to_path_buf(),
            error: source,
        }
    }

    /// The underlying I/O error kind.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            HomeError::Io { error: source, .. } => source.kind(),
        }
    }
}

/// Creates `dir` and its missing parents with mode `0700`, and tightens the
/// mode of `dir` itself if it already existed with looser bits.
pub fn ensure_private_dir(dir: &Path) -> Result<(), HomeError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| HomeError::io("setting permissions on", dir, e))?;
            }
            Ok(())
        }
        _ => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| HomeError::io("creating directory", dir, e)),
    }
}

/// Writes `contents` to `path` with mode `0600`, atomically: the bytes go
/// to a uniquely named temporary file beside `path`, which is synced and
/// then renamed over `path`. Readers see the old file or the new one, never
/// a mix, and two writers of different files never disturb each other.
pub fn write_private_atomic(path: &Path, contents: &[u8]) -> Result<(), HomeError> {
    write_private_replace(path, contents, true)
}

/// Like [`write_private_atomic`], without waiting for the disk: readers
/// still see the old or the new contents, never a mix, but a machine crash
/// may lose the change. For state that a later write supersedes anyway.
pub fn write_private_atomic_unsynced(path: &Path, contents: &[u8]) -> Result<(), HomeError> {
    write_private_replace(path, contents, false)
}

fn write_private_replace(path: &Path, contents: &[u8], durable: bool) -> Result<(), HomeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_private_dir(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: u64 = rand::thread_rng().gen();
    let tmp = dir.join(format!(".{file_name}.{suffix:016x}.tmp"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| HomeError::io("creating", &tmp, e))?;
        file.write_all(contents)
            .map_err(|e| HomeError::io("writing", &tmp, e))?;
        if durable {
            file.sync_all()
                .map_err(|e| HomeError::io("syncing", &tmp, e))?;
        }
        fs::rename(&tmp, path).map_err(|e| HomeError::io("renaming into place", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads `path`, returning `None` when it does not exist.
pub fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, HomeError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HomeError::io("reading", path, e)),
    }
}

/// The permission bits (`0o777` mask) of `path`.
pub fn mode_of(path: &Path) -> Result<u32, HomeError> {
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .map_err(|e| HomeError::io("reading metadata of", path, e))
}

/// An exclusive advisory lock on a file, released on drop.
///
/// Used where two processes could otherwise race to create the same thing
/// (the encryption key, the daemon).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` (created `0600` if absent)
    /// is held.
    pub fn acquire(path: &Path) -> Result<Self, HomeError> {
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| HomeError::io("opening lock file", path, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| HomeError::io("locking", path, e.into()))?;
        Ok(FileLock { _file: file })
    }

    /// Takes the lock only if nobody holds it; `None` when it is held.
    pub fn try_acquire(path: &Path) -> Result<Option<Self>, HomeError> {
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| HomeError::io("opening lock file", path, e))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock { _file: file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(HomeError::io("locking", path, e.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_creates_private_file_and_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/secret.enc");
        write_private_atomic(&path, b"one").unwrap();
        write_private_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode_of(&path).unwrap(), 0o600);
        assert_eq!(mode_of(&tmp.path().join("a/b")).unwrap(), 0o700);
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join("a/b"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn ensure_private_dir_tightens_loose_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(mode_of(&dir).unwrap(), 0o700);
    }

    #[test]
    fn try_lock_reports_contention() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.lock");
        let held = FileLock::try_acquire(&path).unwrap();
        assert!(held.is_some());
        assert!(FileLock::try_acquire(&path).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_acquire(&path).unwrap().is_some());
    }
}
