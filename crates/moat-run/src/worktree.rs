//! `moat wt` and `--worktree`: a run in a git worktree of its own, so
//! many agents work on one repository, each on its branch.
//!
//! The worktree lives at `MOAT_HOME/worktrees/<repo-id>/<branch>` (or
//! under `MOAT_WORKTREE_BASE`), made with the real `git worktree add`,
//! the branch created from `HEAD` when it is missing. It is the run's
//! workspace. Its `.git` is a file naming the worktree's private git
//! directory inside the repository's common one, so for git to work in
//! the sandbox the common directory is shown there at its host path
//! ([`Worktree::mounts`]): read-only as a whole, with only what a commit
//! writes made writable (`objects`, `refs`, `logs` and the worktree's own
//! directory). Its `hooks/`, `info/`, `config`, and the files of the
//! worktree's directory that point git elsewhere (`commondir`, `gitdir`,
//! `config.worktree`) stay read-only: nothing the sandbox writes there
//! runs on the host later. The workspace's `.git` file is protected too.

use std::path::{Path, PathBuf};
use std::process::Command;

use moat_home::MoatHome;
use moat_storage::{RunMetadata, RunStore};
use sha2::Digest as _;

use moat_sandbox::BindMount;

/// The directory of `MOAT_HOME` holding worktrees.
pub const WORKTREES_DIR: &str = "worktrees";

/// What went wrong with a worktree.
#[derive(Debug, thiserror::Error)]
pub enum WorktreeError {
    /// The directory is in no git repository.
    #[error("{} is not in a git repository", .0.display())]
    NotARepository(PathBuf),
    /// `git check-ref-format --branch` refused the name.
    #[error("invalid branch name {0:?}")]
    InvalidBranch(String),
    /// A run is still active in the worktree.
    #[error("run {run} is already active in the worktree of {branch}")]
    Active {
        /// The run's name.
        run: String,
        /// The branch.
        branch: String,
    },
    /// The worktree's directory exists but is not this repository's.
    #[error("{} exists and is not a worktree of this repository", .0.display())]
    NotAWorktree(PathBuf),
    /// No worktree of moat's for the branch.
    #[error("no worktree for branch {0}")]
    Unknown(String),
    /// A git command failed.
    #[error("git {what} failed: {stderr}")]
    Git {
        /// The command's arguments.
        what: String,
        /// What it printed.
        stderr: String,
    },
    /// Reading or writing failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        error: std::io::Error,
    },
    /// The run store failed.
    #[error(transparent)]
    Storage(#[from] moat_storage::StorageError),
    /// A directory under MOAT_HOME.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),
}

impl moat_hint::Hint for WorktreeError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let text = match self {
            WorktreeError::NotARepository(_) => {
                "To fix: run it inside a git repository (git init, then a first commit).".to_owned()
            }
            WorktreeError::InvalidBranch(_) => {
                "To fix: use a valid git branch name (see git check-ref-format --branch)."
                    .to_owned()
            }
            WorktreeError::Active { run, .. } => {
                format!("To fix: follow it: moat logs -f {run}\n  or stop it: moat stop {run}")
            }
            WorktreeError::NotAWorktree(path) => {
                format!("To fix: move {} away, then run again.", path.display())
            }
            WorktreeError::Unknown(_) => "To see the worktrees: moat wt list".to_owned(),
            WorktreeError::Storage(e) => return moat_hint::Hint::hint(e),
            WorktreeError::Home(e) => return moat_hint::Hint::hint(e),
            WorktreeError::Git { .. } | WorktreeError::Io { .. } => return None,
        };
        Some(moat_hint::Fix::new(text))
    }
}

/// A git repository, by its common git directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The common git directory (real path).
    pub common_dir: PathBuf,
    /// A stable id: a short hash of the common directory's real path.
    pub id: String,
}

impl Repository {
    /// The repository `dir` is in.
    pub fn discover(dir: &Path) -> Result<Repository, WorktreeError> {
        let common = git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-common-dir"],
        )
        .map_err(|_| WorktreeError::NotARepository(dir.to_owned()))?;
        let common_dir =
            std::fs::canonicalize(common.trim()).map_err(|error| WorktreeError::Io {
                context: format!("resolving {}", common.trim()),
                error,
            })?;
        let digest = sha2::Sha256::digest(common_dir.as_os_str().as_encoded_bytes());
        let id = hex::encode(&digest[..6]);
        Ok(Repository { common_dir, id })
    }

    /// Where this repository's worktrees live.
    pub fn worktrees_dir(&self, home: &MoatHome) -> PathBuf {
        worktrees_root(home).join(&self.id)
    }
}

/// `MOAT_WORKTREE_BASE`, else `MOAT_HOME/worktrees`.
pub fn worktrees_root(home: &MoatHome) -> PathBuf {
    match std::env::var_os("MOAT_WORKTREE_BASE").filter(|v| !v.is_empty()) {
        Some(base) => PathBuf::from(base),
        None => home.root().join(WORKTREES_DIR),
    }
}

/// A worktree of moat's, ready for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worktree {
    /// The branch it checks out.
    pub branch: String,
    /// Its directory: the run's workspace.
    pub path: PathBuf,
    /// The repository's id.
    pub repo_id: String,
    /// The repository's common git directory.
    pub common_dir: PathBuf,
    /// The worktree's own git directory (`<common>/worktrees/<name>`).
    pub private_dir: PathBuf,
}

/// The workspace of a run: `workspace` itself, or with `branch` the
/// worktree of the repository it is in for that branch (made or reused).
pub fn workspace(
    home: &MoatHome,
    workspace: PathBuf,
    branch: Option<&str>,
) -> Result<(PathBuf, Option<Worktree>), WorktreeError> {
    let Some(branch) = branch else {
        return Ok((workspace, None));
    };
    let repo = Repository::discover(&workspace)?;
    let worktree = open(home, &repo, branch)?;
    Ok((worktree.path.clone(), Some(worktree)))
}

/// The run name of a worktree run: `<name>-<branch>`, or `<branch>`, as a
/// valid run name (`feature/a` → `feature-a`).
pub fn run_name(name: Option<&str>, branch: &str) -> String {
    let branch: String = branch
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    let full = match name {
        Some(name) => format!("{name}-{branch}"),
        None => branch,
    };
    // A DNS label: it becomes a hostname (`web.<run>.localhost`).
    let label: String = full.trim_start_matches('-').chars().take(63).collect();
    label.trim_end_matches('-').to_owned()
}

/// Makes (or reuses) the worktree of `repo` for `branch`, refusing when a
/// run is still active in it.
pub fn open(home: &MoatHome, repo: &Repository, branch: &str) -> Result<Worktree, WorktreeError> {
    let checked = git(&repo.common_dir, &["check-ref-format", "--branch", branch])
        .map_err(|_| WorktreeError::InvalidBranch(branch.to_owned()))?;
    if checked.trim() != branch || branch.starts_with('-') {
        return Err(WorktreeError::InvalidBranch(branch.to_owned()));
    }
    let root = worktrees_root(home);
    moat_home::ensure_private_dir(&root)?;
    moat_home::ensure_private_dir(&repo.worktrees_dir(home))?;
    let path = repo.worktrees_dir(home).join(branch);
    // One `moat wt` of the repository at a time from here to the worktree
    // made: `git worktree prune` in one would remove the half-made entry
    // of another (its `gitdir` not written yet), and two could both find
    // the same worktree free.
    let _lock = moat_home::FileLock::acquire(&repo.worktrees_dir(home).join(".lock"))?;
    if let Some(run) = active_run(home, &path)? {
        return Err(WorktreeError::Active {
            run: run.name,
            branch: branch.to_owned(),
        });
    }
    if !path.exists() {
        add(repo, branch, &path)?;
    }
    let found = git(
        &path,
        &[
            "rev-parse",
            "--path-format=absolute",
            "--git-common-dir",
            "--git-dir",
        ],
    )
    .map_err(|_| WorktreeError::NotAWorktree(path.clone()))?;
    let mut lines = found.lines();
    let (Some(common), Some(private)) = (lines.next(), lines.next()) else {
        return Err(WorktreeError::NotAWorktree(path));
    };
    let real = |p: &str| std::fs::canonicalize(p).ok();
    let private_dir = match (real(common), real(private)) {
        (Some(c), Some(p)) if c == repo.common_dir && p != c && path.join(".git").is_file() => p,
        _ => return Err(WorktreeError::NotAWorktree(path)),
    };
    prepare_git_dirs(repo, &private_dir)?;
    hand_back_to_owner(&repo.common_dir, &path);
    Ok(Worktree {
        branch: branch.to_owned(),
        path: std::fs::canonicalize(&path).unwrap_or(path),
        repo_id: repo.id.clone(),
        common_dir: repo.common_dir.clone(),
        private_dir,
    })
}

/// `git worktree add`, creating the branch from `HEAD` when it is missing.
fn add(repo: &Repository, branch: &str, path: &Path) -> Result<(), WorktreeError> {
    let dir = &repo.common_dir;
    // A worktree whose directory was removed by hand is forgotten first.
    git(dir, &["worktree", "prune"])?;
    let target = path.to_string_lossy();
    let exists = git(
        dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("refs/heads/{branch}"),
        ],
    )
    .is_ok();
    if exists {
        git(dir, &["worktree", "add", "--quiet", &target, branch])?;
    } else {
        git(
            dir,
            &["worktree", "add", "--quiet", "-b", branch, &target, "HEAD"],
        )?;
    }
    Ok(())
}

/// When root runs moat in a user's repository, what root's git made in
/// it (the worktree, its branch, refs and logs) is handed to the
/// repository's owner, as git run by that user would have made it: the
/// user keeps full use of the repository, and a container runtime, which
/// runs a root caller's command as an unprivileged user, can commit.
/// Best effort: a file left root's is only less convenient.
fn hand_back_to_owner(common_dir: &Path, worktree: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(common_dir) else {
        return;
    };
    if !rustix::process::geteuid().is_root() || meta.uid() == 0 {
        return;
    }
    let owner = (meta.uid(), meta.gid());
    for top in [common_dir, worktree] {
        chown_roots_entries(top, owner);
    }
}

/// Gives `owner` every entry under `path` (links not followed) that root
/// owns.
fn chown_roots_entries(path: &Path, (uid, gid): (u32, u32)) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.uid() == 0 {
        let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            chown_roots_entries(&entry.path(), (uid, gid));
        }
    }
}

/// What must exist before the sandbox starts for every protected part
/// to be covered: `logs` (where a commit records the branch's moves) and
/// an empty `config.worktree` (only read with `extensions.worktreeConfig`,
/// which the read-only `config` decides).
fn prepare_git_dirs(repo: &Repository, private_dir: &Path) -> Result<(), WorktreeError> {
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |error| WorktreeError::Io {
            context: format!("creating {what}"),
            error,
        }
    };
    let logs = repo.common_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(io(&logs))?;
    let config = private_dir.join("config.worktree");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&config)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(&config)(e)),
    }
}

impl Worktree {
    /// What the sandbox needs beside its workspace for git to work: the
    /// common git directory at its host path, read-only, with what a commit
    /// writes writable, and what points git elsewhere read-only again
    /// (mounted in this order).
    pub(crate) fn mounts(&self) -> Vec<BindMount> {
        let mount = |source: PathBuf, read_only: bool| BindMount {
            target: source.clone(),
            source,
            read_only,
            exclude: Vec::new(),
        };
        let mut mounts = vec![mount(self.common_dir.clone(), true)];
        for name in ["objects", "refs", "logs"] {
            let dir = self.common_dir.join(name);
            if dir.is_dir() {
                mounts.push(mount(dir, false));
            }
        }
        mounts.push(mount(self.private_dir.clone(), false));
        for name in ["commondir", "gitdir", "config.worktree"] {
            let file = self.private_dir.join(name);
            if file.is_file() {
                mounts.push(mount(file, true));
            }
        }
        mounts
    }

    /// Records the worktree in the run's metadata.
    pub(crate) fn record(&self, meta: &mut RunMetadata) {
        meta.worktree_branch = Some(self.branch.clone());
        meta.worktree_path = Some(self.path.clone());
        meta.worktree_repo_id = Some(self.repo_id.clone());
    }
}

/// The run still active in the worktree at `path`, if any.
fn active_run(home: &MoatHome, path: &Path) -> Result<Option<RunMetadata>, WorktreeError> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let (runs, _) = RunStore::new(home.clone()).list()?;
    Ok(runs.into_iter().find_map(|mut run| {
        if run.worktree_path.as_deref() != Some(real.as_path()) {
            return None;
        }
        RunStore::reconcile_view(&mut run);
        run.state.is_active().then_some(run)
    }))
}

/// One worktree of moat's, as `moat wt list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The branch.
    pub branch: String,
    /// The directory.
    pub path: PathBuf,
    /// The latest run in it, if any.
    pub run: Option<String>,
    /// That run's state (`running`, `stopped`…), else `-`.
    pub state: String,
    /// Whether a run is active in it.
    pub active: bool,
}

/// The worktrees of `repo` under moat's directory, with their latest run.
pub fn list(home: &MoatHome, repo: &Repository) -> Result<Vec<Listed>, WorktreeError> {
    let base = repo.worktrees_dir(home);
    let base = std::fs::canonicalize(&base).unwrap_or(base);
    let porcelain = git(&repo.common_dir, &["worktree", "list", "--porcelain"])?;
    let (mut runs, _) = RunStore::new(home.clone()).list()?;
    runs.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    let mut listed = Vec::new();
    for block in porcelain.split("\n\n") {
        let path = block.lines().find_map(|l| l.strip_prefix("worktree "));
        let Some(path) = path.map(PathBuf::from) else {
            continue;
        };
        let Ok(branch) = path
            .strip_prefix(&base)
            .map(|b| b.to_string_lossy().into_owned())
        else {
            continue;
        };
        let mut latest = runs
            .iter()
            .find(|r| r.worktree_path.as_deref() == Some(path.as_path()))
            .cloned();
        if let Some(run) = latest.as_mut() {
            RunStore::reconcile_view(run);
        }
        listed.push(Listed {
            branch,
            active: latest.as_ref().is_some_and(|r| r.state.is_active()),
            state: latest.as_ref().map_or("-".into(), |r| r.state.to_string()),
            run: latest.map(|r| r.name),
            path,
        });
    }
    Ok(listed)
}

impl Listed {
    /// The columns of `moat wt list`.
    pub const COLUMNS: [&'static str; 4] = ["BRANCH", "RUN", "STATE", "PATH"];

    /// This worktree's row under [`Listed::COLUMNS`].
    pub fn row(&self) -> Vec<String> {
        vec![
            self.branch.clone(),
            self.run.clone().unwrap_or_else(|| "-".into()),
            self.state.clone(),
            self.path.display().to_string(),
        ]
    }
}

/// What `moat wt clean` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cleaned {
    /// Worktrees removed (their branches remain).
    pub removed: Vec<Listed>,
    /// Worktrees kept because a run is active in them.
    pub kept: Vec<Listed>,
}

/// Removes the worktrees of `repo` (only `branch`'s when given) whose runs
/// are all stopped; never deletes a branch.
pub fn clean(
    home: &MoatHome,
    repo: &Repository,
    branch: Option<&str>,
) -> Result<Cleaned, WorktreeError> {
    let all = list(home, repo)?;
    let chosen: Vec<Listed> = all
        .into_iter()
        .filter(|w| branch.is_none_or(|b| w.branch == b))
        .collect();
    if let (Some(branch), true) = (branch, chosen.is_empty()) {
        return Err(WorktreeError::Unknown(branch.to_owned()));
    }
    let mut cleaned = Cleaned::default();
    for w in chosen {
        if w.active {
            cleaned.kept.push(w);
            continue;
        }
        let target = w.path.to_string_lossy().into_owned();
        git(
            &repo.common_dir,
            &["worktree", "remove", "--force", &target],
        )?;
        remove_empty_parents(&w.path, &repo.worktrees_dir(home));
        cleaned.removed.push(w);
    }
    Ok(cleaned)
}

/// `moat clean`: the worktrees of every repository `runs` worked in
/// whose runs have all stopped, removed (branches are kept). A
/// repository that moved or a worktree git no longer knows is skipped.
pub fn clean_for_runs(home: &MoatHome, runs: &[RunMetadata]) -> Vec<Listed> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut removed = Vec::new();
    for path in runs.iter().filter_map(|r| r.worktree_path.as_deref()) {
        let Ok(repo) = Repository::discover(path) else {
            continue;
        };
        if seen.contains(&repo.common_dir) {
            continue;
        }
        seen.push(repo.common_dir.clone());
        if let Ok(cleaned) = clean(home, &repo, None) {
            removed.extend(cleaned.removed);
        }
    }
    removed
}

/// Removes the empty directories a branch with slashes left (`feature/`).
fn remove_empty_parents(path: &Path, base: &Path) {
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_owned());
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(&base) && *d != base) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Runs git in `dir` (no hook of the host's runs: moat's own git calls
/// are not the user's), returning its standard output.
fn git(dir: &Path, args: &[&str]) -> Result<String, WorktreeError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "core.hooksPath=/dev/null"])
        .args(args)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_COMMON_DIR")
        .output()
        .map_err(|error| WorktreeError::Io {
            context: "running git".into(),
            error,
        })?;
    if !output.status.success() {
        return Err(WorktreeError::Git {
            what: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn run_names_follow_the_branch() {
        assert_eq!(run_name(None, "feature/a"), "feature-a");
        assert_eq!(run_name(Some("bot"), "Fix.1"), "bot-fix-1");
        // A DNS label: no '_', no '-' at either end.
        assert_eq!(run_name(None, "_my_fix/"), "my-fix");
        assert_eq!(
            run_name(None, &format!("{}-b", "a".repeat(62))),
            "a".repeat(62)
        );
    }

    fn repo(dir: &Path) {
        let run = |args: &[&str]| {
            assert!(Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .status()
                .unwrap()
                .success());
        };
        run(&["init", "-q", "-b", "main"]);
        run(&[
            "-c",
            "user.email=t@t",
            "-c",
            "user.name=t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ]);
    }

    #[test]
    fn worktrees_are_made_reused_listed_and_cleaned_keeping_branches() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MoatHome::at(tmp.path().join("home"));
        let dir = tmp.path().join("repo");
        std::fs::create_dir(&dir).unwrap();
        repo(&dir);
        let r = Repository::discover(&dir).unwrap();
        assert!(matches!(
            open(&home, &r, "bad..name"),
            Err(WorktreeError::InvalidBranch(_))
        ));
        let wt = open(&home, &r, "feature/a").unwrap();
        assert!(wt.path.ends_with(format!("worktrees/{}/feature/a", r.id)));
        assert!(wt.path.join(".git").is_file());
        assert_eq!(open(&home, &r, "feature/a").unwrap(), wt, "reused");
        let listed = list(&home, &r).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].branch, "feature/a");
        let cleaned = clean(&home, &r, None).unwrap();
        assert_eq!(cleaned.removed.len(), 1);
        assert!(!wt.path.exists());
        assert!(!wt.path.parent().unwrap().exists(), "feature/ goes too");
        git(&dir, &["rev-parse", "--verify", "refs/heads/feature/a"]).unwrap();
        assert!(matches!(
            Repository::discover(tmp.path()),
            Err(WorktreeError::NotARepository(_))
        ));
    }
}
