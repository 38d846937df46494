//! The automatic snapshots taken during a run: `git-commit` when the
//! workspace's repository gets a new HEAD commit, `idle` when the
//! workspace changed and then stayed unchanged for
//! `snapshots.triggers.idle_threshold_seconds`. moat.yaml
//! `snapshots.retention` is applied after each.
//!
//! Everything is watched from the host, by the run's supervisor: a
//! thread polls the git HEAD (a few small reads, never following a link
//! and never blocking on a FIFO the sandbox left there) and drains an
//! inotify descriptor with a watch on every directory of the workspace.
//! The thread lives as long as [`Triggers`]; dropping it stops it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_home::MoatHome;
use moat_snapshot::{Retention, Trigger};
use rustix::fs::inotify;

/// How often the thread looks at HEAD and at the queued changes.
const TICK: Duration = Duration::from_millis(250);

/// The running trigger thread of one run.
pub(crate) struct Triggers {
    stop: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

struct Watch {
    home: MoatHome,
    workspace: PathBuf,
    run_id: String,
    exclude: Vec<String>,
    retention: Retention,
    git: bool,
    head: Option<String>,
    idle: Option<(Duration, Changes)>,
}

impl Triggers {
    /// Starts the triggers moat.yaml leaves on; `None` when none is.
    /// HEAD and the directory watches are read before this returns, so
    /// nothing the sandbox does after it is missed.
    pub(crate) fn start(
        home: &MoatHome,
        workspace: &Path,
        run_id: &str,
        cfg: &moat_config::SnapshotConfig,
    ) -> Option<Triggers> {
        let git = cfg.git_commits();
        if !git && cfg.idle().is_none() {
            return None;
        }
        let mut skip: Vec<PathBuf> = cfg.exclude.iter().map(|e| workspace.join(e)).collect();
        // Our own writes (the store, the run's logs) are not changes.
        skip.push(moat_snapshot::stores_dir(home));
        skip.push(home.runs_dir());
        let idle = cfg
            .idle()
            .and_then(|t| match Changes::watch(workspace, skip) {
                Ok(changes) => Some((t, changes)),
                Err(e) => {
                    tracing::warn!(
                        "idle snapshots are off for this run: watching the workspace: {e}"
                    );
                    None
                }
            });
        let mut watch = Watch {
            home: home.clone(),
            workspace: workspace.to_path_buf(),
            run_id: run_id.to_owned(),
            exclude: cfg.exclude.clone(),
            retention: Retention {
                max_count: usize::try_from(cfg.max_count()).unwrap_or(usize::MAX),
                delete_initial: cfg.delete_initial,
            },
            git,
            head: git.then(|| git_head(workspace)).flatten(),
            idle,
        };
        let (stop, stopped) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("moat-snapshot-triggers".into())
            .spawn(move || watch.run(&stopped))
            .map_err(|e| tracing::warn!("automatic snapshots are off for this run: {e}"))
            .ok()?;
        Some(Triggers {
            stop: Some(stop),
            handle: Some(handle),
        })
    }
}

impl Drop for Triggers {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Watch {
    fn run(&mut self, stopped: &mpsc::Receiver<()>) {
        let mut dirty: Option<Instant> = None;
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
            if let Some((_, changes)) = self.idle.as_mut() {
                if changes.drain() {
                    dirty = Some(Instant::now());
                }
            }
            if self.commit_landed() {
                dirty = None;
            }
            let threshold = self.idle.as_ref().map(|(t, _)| *t);
            if let (Some(since), Some(t)) = (dirty, threshold) {
                if since.elapsed() >= t {
                    self.take(Trigger::Idle, None);
                    dirty = None;
                }
            }
        }
        // A commit made just before the run ended is not missed.
        self.commit_landed();
    }

    /// Takes a `git-commit` snapshot if HEAD moved to a new commit.
    fn commit_landed(&mut self) -> bool {
        if !self.git {
            return false;
        }
        let head = git_head(&self.workspace);
        if head.is_none() || head == self.head {
            return false;
        }
        let short = head.as_deref().map(|h| &h[..12.min(h.len())]);
        self.take(Trigger::GitCommit, short.map(|s| format!("commit {s}")));
        self.head = head;
        true
    }

    fn take(&self, trigger: Trigger, label: Option<String>) {
        moat_snapshot::automatic(
            &self.home,
            &self.workspace,
            &self.run_id,
            trigger,
            label,
            &self.exclude,
            self.retention,
        );
    }
}

/// An inotify watch on every directory of the workspace (links not
/// followed, skipped paths left out), extended to directories made later.
struct Changes {
    fd: OwnedFd,
    dirs: HashMap<i32, PathBuf>,
    skip: Vec<PathBuf>,
    full: bool,
}

fn mask() -> inotify::WatchFlags {
    use inotify::WatchFlags as W;
    W::MODIFY
        | W::ATTRIB
        | W::CLOSE_WRITE
        | W::MOVED_FROM
        | W::MOVED_TO
        | W::CREATE
        | W::DELETE
        | W::DONT_FOLLOW
        | W::ONLYDIR
        | W::EXCL_UNLINK
}

impl Changes {
    fn watch(workspace: &Path, skip: Vec<PathBuf>) -> rustix::io::Result<Changes> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        let mut changes = Changes {
            fd,
            dirs: HashMap::new(),
            skip,
            full: false,
        };
        changes.add_tree(workspace);
        Ok(changes)
    }

    fn add_tree(&mut self, root: &Path) {
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            if self.skip.iter().any(|s| dir.starts_with(s)) {
                continue;
            }
            match inotify::add_watch(&self.fd, &dir, mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, dir.clone());
                }
                Err(rustix::io::Errno::NOSPC) if !self.full => {
                    self.full = true;
                    tracing::warn!(
                        "too many directories to watch for idle snapshots \
                         (raise fs.inotify.max_user_watches); changes under {} are not seen",
                        dir.display()
                    );
                    continue;
                }
                Err(_) => continue,
            }
            let Ok(listing) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in listing.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(entry.path());
                }
            }
        }
    }

    /// Reads what is queued; whether anything changed.
    fn drain(&mut self) -> bool {
        let mut buf = [std::mem::MaybeUninit::uninit(); 8192];
        let mut changed = false;
        let mut new_dirs = Vec::new();
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        while let Ok(event) = reader.next() {
            let flags = event.events();
            if flags.contains(inotify::ReadFlags::IGNORED) {
                self.dirs.remove(&event.wd());
                continue;
            }
            changed = true;
            let made_dir = flags.contains(inotify::ReadFlags::ISDIR)
                && flags.intersects(inotify::ReadFlags::CREATE | inotify::ReadFlags::MOVED_TO);
            if let (true, Some(dir), Some(name)) =
                (made_dir, self.dirs.get(&event.wd()), event.file_name())
            {
                new_dirs.push(dir.join(OsStr::from_bytes(name.to_bytes())));
            }
        }
        for dir in new_dirs {
            self.add_tree(&dir);
        }
        changed
    }
}

/// The commit HEAD names in the workspace's repository (a `.git`
/// directory, or a `.git` file naming one, as in a worktree).
fn git_head(workspace: &Path) -> Option<String> {
    let dot = workspace.join(".git");
    let git_dir = if fs::symlink_metadata(&dot).ok()?.is_dir() {
        dot
    } else {
        let text = read_small(&dot)?;
        let named = PathBuf::from(text.strip_prefix("gitdir:")?.trim());
        workspace.join(named)
    };
    let common = match read_small(&git_dir.join("commondir")) {
        Some(rel) => git_dir.join(rel.trim()),
        None => git_dir.clone(),
    };
    let head = read_small(&git_dir.join("HEAD"))?;
    let head = head.trim();
    let Some(name) = head.strip_prefix("ref:").map(str::trim) else {
        return is_commit(head).then(|| head.to_owned());
    };
    let safe = name.starts_with("refs/") && !name.split('/').any(|c| c.is_empty() || c == "..");
    if !safe {
        return None;
    }
    let loose = read_small(&git_dir.join(name)).or_else(|| read_small(&common.join(name)));
    let commit = match loose {
        Some(text) => text.trim().to_owned(),
        None => read_small(&common.join("packed-refs"))?
            .lines()
            .find_map(|l| l.strip_suffix(name)?.strip_suffix(' ').map(str::to_owned))?,
    };
    is_commit(&commit).then_some(commit)
}

fn is_commit(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A small regular file the sandbox may have written: not a link, never
/// blocking (a FIFO), at most 64 KB.
fn read_small(path: &Path) -> Option<String> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn head_is_read_from_loose_and_packed_refs_and_a_gitdir_file() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let git = ws.join(".git");
        fs::create_dir_all(git.join("refs/heads")).unwrap();
        assert_eq!(git_head(&ws), None);
        fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        assert_eq!(git_head(&ws), None);
        let a = "a".repeat(40);
        fs::write(git.join("packed-refs"), format!("{a} refs/heads/main\n")).unwrap();
        assert_eq!(git_head(&ws), Some(a.clone()));
        let b = "b".repeat(40);
        fs::write(git.join("refs/heads/main"), format!("{b}\n")).unwrap();
        assert_eq!(git_head(&ws), Some(b.clone()));
        fs::write(git.join("HEAD"), "ref: refs/../../../etc/passwd\n").unwrap();
        assert_eq!(git_head(&ws), None);

        // A worktree: `.git` names its git dir, refs are in the common one.
        let wt = tmp.path().join("wt");
        let wt_git = git.join("worktrees/wt");
        fs::create_dir_all(&wt_git).unwrap();
        fs::create_dir_all(&wt).unwrap();
        fs::write(wt.join(".git"), format!("gitdir: {}\n", wt_git.display())).unwrap();
        fs::write(wt_git.join("commondir"), "../..\n").unwrap();
        fs::write(wt_git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        assert_eq!(git_head(&wt), Some(b));
    }

    #[test]
    fn a_fifo_or_a_link_for_head_is_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let git = tmp.path().join(".git");
        fs::create_dir_all(&git).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, git.join("HEAD"), 0o600.into()).unwrap();
        assert_eq!(git_head(tmp.path()), None);
        fs::remove_file(git.join("HEAD")).unwrap();
        let target = tmp.path().join("elsewhere");
        fs::write(&target, "c".repeat(40)).unwrap();
        std::os::unix::fs::symlink(&target, git.join("HEAD")).unwrap();
        assert_eq!(git_head(tmp.path()), None);
    }
}
