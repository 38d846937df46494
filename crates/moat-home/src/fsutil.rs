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

/// Why a file moat reads from a place a sandbox can write (the
/// workspace, an agent's kept state) was not read.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    /// The file, or a directory on the way to it, is a symbolic link.
    #[error(
        "{} is a symbolic link (or lies behind one); moat does not follow links in a directory \
         a sandbox can write, since a run could point them anywhere on the host",
        path.display()
    )]
    Link {
        /// The path as asked for.
        path: PathBuf,
    },
    /// A FIFO, a device, a socket or a directory.
    #[error(
        "{} is {kind}, not a regular file; moat reads only regular files there, so a run \
         cannot make it wait for ever or read without end",
        path.display()
    )]
    NotRegular {
        /// The path as asked for.
        path: PathBuf,
        /// "a FIFO", "a character device", ...
        kind: &'static str,
    },
    /// Larger than the caller reads.
    #[error(
        "{} is {}; moat reads at most {} of it",
        path.display(),
        human_bytes(*size),
        human_bytes(*limit)
    )]
    TooLarge {
        /// The path as asked for.
        path: PathBuf,
        /// Its size (at least `limit + 1` when it grew while read).
        size: u64,
        /// The most read.
        limit: u64,
    },
    /// Any other failure to open, inspect or read it.
    #[error("reading {}: {error}", path.display())]
    Io {
        /// The path as asked for.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },
}

impl moat_hint::Hint for BoundedReadError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            BoundedReadError::Link { .. } => {
                "To fix: replace the link with a regular file, or remove it.".to_owned()
            }
            BoundedReadError::NotRegular { .. } => {
                "To fix: remove it, or replace it with a regular file.".to_owned()
            }
            BoundedReadError::TooLarge { limit, .. } => format!(
                "To fix: shrink it below {}, or remove it if you did not write it (a run may have).",
                human_bytes(*limit)
            ),
            BoundedReadError::Io { .. } => return None,
        };
        Some(fix.into())
    }
}

impl moat_hint::Hint for HomeError {
    /// An I/O failure under `MOAT_HOME` has no fix moat can name: its
    /// message already says which file and why.
    fn hint(&self) -> Option<moat_hint::Fix> {
        None
    }
}

/// `1 MiB`, `8.0 GiB`, `512 bytes`: binary units, as the limits are set.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    // Whole numbers (limits, as they are set) without a decimal.
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Opens `base/relative` for reading the way a file a sandbox may have
/// written must be opened: no symbolic link followed at any component of
/// `relative` (`base` itself is the caller's, trusted, and may be one),
/// never blocking (a FIFO opens non-blocking and is then refused), only a
/// regular file accepted, and only one of at most `limit` bytes. `Ok(None)`
/// when it does not exist. Returns the file and its size.
pub fn open_bounded(
    base: &Path,
    relative: &Path,
    limit: u64,
) -> Result<Option<(File, u64)>, BoundedReadError> {
    use rustix::fs::{Mode, OFlags, CWD};
    use std::path::Component;

    let path = base.join(relative);
    let io_error = |error: io::Error| BoundedReadError::Io {
        path: path.clone(),
        error,
    };
    let names: Vec<_> = relative
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            // `..` or an absolute part would leave `base`.
            _ => Err(io_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the path leaves the directory it is read from",
            ))),
        })
        .collect::<Result<_, _>>()?;
    let Some((file_name, dirs)) = names.split_last() else {
        return Err(io_error(io::ErrorKind::InvalidInput.into()));
    };
    // One component at a time, each opened with O_NOFOLLOW: the portable
    // form of openat2's RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH, and no race
    // with a run swapping a directory for a link between checks.
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir =
        rustix::fs::openat(CWD, base, dir_flags, Mode::empty()).map_err(|e| io_error(e.into()))?;
    let refused = |dir: &rustix::fd::OwnedFd, name: &std::ffi::OsStr, errno| {
        refused_open(dir, name, errno, &path)
    };
    for name in dirs {
        dir = match rustix::fs::openat(&dir, *name, dir_flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return refused(&dir, name, e).map(|()| None),
        };
    }
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&dir, *file_name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return refused(&dir, file_name, e).map(|()| None),
    };
    let file = File::from(fd);
    let meta = file.metadata().map_err(io_error)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(BoundedReadError::NotRegular {
            path,
            kind: kind_name(kind),
        });
    }
    if meta.len() > limit {
        return Err(BoundedReadError::TooLarge {
            path,
            size: meta.len(),
            limit,
        });
    }
    Ok(Some((file, meta.len())))
}

/// Why opening `name` in `dir` failed: absent is `Ok`, a link or a
/// non-directory on the way is refused by name. ELOOP and ENOTDIR both say
/// "not what was expected here"; which one a link gives depends on the
/// flags, so the entry is looked at.
fn refused_open(
    dir: &rustix::fd::OwnedFd,
    name: &std::ffi::OsStr,
    errno: rustix::io::Errno,
    path: &Path,
) -> Result<(), BoundedReadError> {
    match errno {
        rustix::io::Errno::NOENT => Ok(()),
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            let link = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| {
                    rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink
                });
            Err(if link {
                BoundedReadError::Link {
                    path: path.to_path_buf(),
                }
            } else {
                BoundedReadError::NotRegular {
                    path: path.to_path_buf(),
                    kind: "behind something that is not a directory",
                }
            })
        }
        e => Err(BoundedReadError::Io {
            path: path.to_path_buf(),
            error: e.into(),
        }),
    }
}

/// "a FIFO", "a directory": what a file that is not regular is.
fn kind_name(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "something else"
    }
}

/// The bytes of `base/relative`, opened as [`open_bounded`] does; a file
/// that grows past `limit` while read is refused too. `Ok(None)` when it
/// does not exist.
pub fn read_bounded(
    base: &Path,
    relative: &Path,
    limit: u64,
) -> Result<Option<Vec<u8>>, BoundedReadError> {
    use std::io::Read as _;
    let Some((file, size)) = open_bounded(base, relative, limit)? else {
        return Ok(None);
    };
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|error| BoundedReadError::Io {
            path: base.join(relative),
            error,
        })?;
    if bytes.len() as u64 > limit {
        return Err(BoundedReadError::TooLarge {
            path: base.join(relative),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(Some(bytes))
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
    fn bounded_reads_refuse_links_fifos_and_large_files() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        fs::create_dir(base.join("d")).unwrap();
        fs::write(base.join("d/ok"), "hi").unwrap();
        assert_eq!(
            read_bounded(base, Path::new("d/ok"), 2).unwrap().unwrap(),
            b"hi"
        );
        assert!(read_bounded(base, Path::new("d/none"), 2)
            .unwrap()
            .is_none());
        let err = read_bounded(base, Path::new("d/ok"), 1).unwrap_err();
        assert_eq!(
            err.to_string().lines().next().unwrap(),
            format!(
                "{}/d/ok is 2 bytes; moat reads at most 1 bytes of it",
                base.display()
            )
        );
        std::os::unix::fs::symlink("ok", base.join("d/link")).unwrap();
        std::os::unix::fs::symlink("d", base.join("dlink")).unwrap();
        for link in ["d/link", "dlink/ok"] {
            assert!(matches!(
                read_bounded(base, Path::new(link), 10),
                Err(BoundedReadError::Link { .. })
            ));
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            base.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            read_bounded(base, Path::new("fifo"), 10),
            Err(BoundedReadError::NotRegular { kind: "a FIFO", .. })
        ));
        assert!(read_bounded(base, Path::new("../x"), 10).is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(1 << 20), "1 MiB");
        assert_eq!(human_bytes(8 << 30), "8 GiB");
        assert_eq!(human_bytes((8 << 30) + (1 << 29)), "8.5 GiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10), "10 bytes");
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
