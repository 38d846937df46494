//! What the sandbox may read in the workspace but not change: the files
//! the host acts on later, on its own, as the user.
//!
//! A run writes the workspace, and the user goes on using it on the host:
//! `git status` (an editor polls it while the agent works), `git commit`,
//! opening the folder in an editor, starting an agent there, `cd` into it
//! with direnv. Each of these runs programs named in files of the
//! workspace: git hooks and the keys of `.git/config` that name a program
//! (`core.fsmonitor`, `core.hooksPath`, `core.pager`, `!` aliases,
//! filters…), `.git/info/attributes` (which selects filters),
//! `.gitmodules`, editor tasks (`.vscode/`, `.idea/`), agent settings and
//! hooks (`.claude/`, `.mcp.json`), `.envrc`, `.ripgreprc`, `.gitconfig`
//! and shell start-up files. A sandbox that could write them would run
//! code on the host later, outside every wall moat builds.
//!
//! So these paths, at the workspace root and in every repository nested
//! in it (found by a bounded walk), are shown read-only in the sandbox,
//! whatever the runtime ([`ProtectedPath`]). A path that does not exist
//! yet cannot be covered by a mount, so moat creates a placeholder, an
//! empty directory with mode 0555, for the run's life and removes it
//! afterwards (unless another run of the workspace still uses it). A
//! missing `.git/hooks` or `.git/info` is created as the plain directory
//! git itself would make, and kept.
//!
//! `.git/config` is the exception that git needs to write (`remote add`,
//! `push -u`, `branch --set-upstream-to`): the sandbox gets a private copy
//! ([`ProtectedView::SandboxCopy`]) that git changes freely and that goes
//! with the sandbox; the host's file never changes, so no key written
//! inside, whatever it names, can be read by a git on the host, during
//! the run or after. This is stronger than filtering the keys that run
//! programs (a list that grows with every git release), at the price that
//! a remote added inside is not kept.
//!
//! `--allow-write PATH` (one run) and `allow_write:` in moat.yaml (the
//! workspace, once trusted) take a path and everything under it out of
//! the protection.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use moat_sandbox::{ProtectedPath, ProtectedView};

use crate::RunError;

/// Entries of a repository's (or the workspace's) top directory that the
/// host acts on.
pub const REPOSITORY_ENTRIES: &[&str] = &[
    ".gitmodules",
    ".vscode",
    ".idea",
    ".claude",
    ".mcp.json",
    ".envrc",
    ".ripgreprc",
    ".gitconfig",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".zlogout",
];

/// Directories of a git directory that run programs (`hooks`) or choose
/// them (`info/attributes`); created when missing, as git would.
const GIT_DIRS: &[&str] = &["hooks", "info"];

/// Directories the walk for nested repositories never enters: build
/// outputs and dependency trees, large and never the user's repositories.
const NOT_WALKED: &[&str] = &[
    ".git",
    "node_modules",
    "target",
    "dist",
    "build",
    ".venv",
    "venv",
    "__pycache__",
    ".tox",
    ".cache",
    ".next",
    ".terraform",
];

/// How deep nested repositories are looked for, and how many directories
/// at most: the walk runs before every sandbox starts.
const MAX_DEPTH: usize = 4;
const MAX_DIRECTORIES: usize = 5_000;

/// The mode that marks moat's placeholders: an empty directory nobody
/// can write.
const PLACEHOLDER_MODE: u32 = 0o555;

/// The workspace's protected paths for one run.
#[derive(Debug, Clone, Default)]
pub struct Protection {
    workspace: PathBuf,
    /// For the sandbox.
    pub paths: Vec<ProtectedPath>,
    /// Created by this run, removed when it ends.
    placeholders: Vec<PathBuf>,
    /// The git directories there were when the run started.
    git_dirs: Vec<PathBuf>,
}

impl Protection {
    /// Finds what to protect in `workspace` (leaving out `allowed` and what
    /// lies under it) and creates what must exist for it to be covered.
    pub fn prepare(workspace: &Path, allowed: &[PathBuf]) -> Result<Protection, RunError> {
        let (repositories, git_dirs) = find_repositories(workspace);
        let wanted = wanted(&repositories, &git_dirs, allowed)?;
        let mut protection = Protection {
            workspace: workspace.to_owned(),
            git_dirs,
            ..Protection::default()
        };
        for (path, view, missing) in wanted {
            let full = workspace.join(&path);
            let exists = match std::fs::symlink_metadata(&full) {
                Ok(_) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(io_error(&full, "looking at", e)),
            };
            if !exists {
                match missing {
                    Missing::Skip => continue,
                    Missing::GitDir => {
                        create_dir(workspace, &path, 0o755)?;
                    }
                    Missing::Placeholder => {
                        if !create_dir(workspace, &path, PLACEHOLDER_MODE)? {
                            continue;
                        }
                        protection.placeholders.push(path.clone());
                    }
                }
            }
            protection.paths.push(ProtectedPath { path, view });
        }
        Ok(protection)
    }

    /// Disarms the git repositories the run created (their hooks and the
    /// configuration keys that run programs, see `gitsweep`); returns what
    /// to tell the user.
    pub fn disarm_created_repositories(&self) -> Vec<String> {
        let (_, now) = find_repositories(&self.workspace);
        let created: Vec<PathBuf> = now
            .into_iter()
            .filter(|g| !self.git_dirs.contains(g))
            .collect();
        crate::gitsweep::disarm_created(&self.workspace, &created)
    }

    /// Removes the placeholders this run created, each only while it is
    /// still moat's (an empty directory with the placeholder's mode), and
    /// only when `others_active` is false: another run of the workspace
    /// may cover the same names.
    pub fn release(&self, others_active: bool) {
        if others_active {
            return;
        }
        for rel in &self.placeholders {
            remove_placeholder(&self.workspace.join(rel));
        }
    }
}

/// Notices in a run's output a write refused on a protected path (the
/// tool's own words: `cannot create .git/hooks/pre-commit: Read-only file
/// system`) and says, once per path, why and how to allow it: the kernel's
/// refusal happens inside the sandbox, where moat cannot see it, but the
/// tool that met it usually prints the path.
#[derive(Debug, Default)]
pub struct RefusedWriteHint {
    /// `(shown, tail)`: the path as the run knows it, and the part from
    /// the protected entry on (`.git/hooks`), which is what a tool in a
    /// nested repository prints.
    paths: Vec<(String, String)>,
    said: std::sync::Mutex<BTreeSet<String>>,
}

/// What tools print when a protected path refused a write (EROFS, EISDIR
/// for a placeholder, EACCES, EBUSY for a rename over it).
const REFUSALS: &[&str] = &[
    "Read-only file system",
    "Is a directory",
    "Permission denied",
    "Device or resource busy",
];

impl RefusedWriteHint {
    /// For the protected paths of a run.
    pub fn new(protected: &[ProtectedPath]) -> Self {
        let paths = protected
            .iter()
            .map(|p| {
                let shown = p.path.to_string_lossy().into_owned();
                let comps: Vec<String> = p
                    .path
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                // `.git/hooks` of `libs/a/.git/hooks`; `.vscode` of `libs/a/.vscode`.
                let start = comps
                    .iter()
                    .position(|c| c == ".git" || REPOSITORY_ENTRIES.contains(&c.as_str()))
                    .unwrap_or(0);
                (shown, comps[start..].join("/"))
            })
            .collect();
        RefusedWriteHint {
            paths,
            said: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    /// The hint for one line of the run's output, the first time it names
    /// a refused write on a protected path.
    pub fn scan(&self, line: &str) -> Option<String> {
        if self.paths.is_empty() || !REFUSALS.iter().any(|r| line.contains(r)) {
            return None;
        }
        let shown = self
            .paths
            .iter()
            .find(|(shown, _)| names(line, shown))
            .or_else(|| self.paths.iter().find(|(_, tail)| names(line, tail)))
            .map(|(shown, _)| shown.clone())?;
        let mut said = self.said.lock().ok()?;
        if !said.insert(shown.clone()) {
            return None;
        }
        Some(format!(
            "{shown} is protected (the host acts on what is there), so the sandbox sees it \
             read-only; to let this run write it: --allow-write {shown} (for the workspace: \
             allow_write: [{shown}] in moat.yaml)"
        ))
    }
}

/// Whether `line` names `path` as a whole path (not `.envrc2`, not
/// `x.envrc`).
fn names(line: &str, path: &str) -> bool {
    let boundary = |c: Option<char>| {
        c.is_none_or(|c| {
            c.is_whitespace() || matches!(c, '/' | '\'' | '"' | ':' | '`' | '(' | ')' | ',')
        })
    };
    line.match_indices(path).any(|(at, _)| {
        boundary(line[..at].chars().next_back()) && boundary(line[at + path.len()..].chars().next())
    })
}

/// What runs of `workspace` see read-only, and how to let one write, as
/// `moat trust` tells it: the protected paths that exist now (`allowed`
/// left out), then the names protected wherever they are missing.
pub fn protected_summary(workspace: &Path, allowed: &[PathBuf]) -> Result<String, RunError> {
    let shown: Vec<String> = protected_now(workspace, allowed)?
        .iter()
        .map(|p| {
            let git_config = p.file_name().is_some_and(|n| n == "config")
                && p.parent()
                    .is_some_and(|d| d.ends_with(".git") || d.starts_with(".git"));
            if git_config {
                format!("{} (git inside changes a private copy)", p.display())
            } else {
                p.display().to_string()
            }
        })
        .collect();
    let existing = if shown.is_empty() {
        String::new()
    } else {
        format!("{}; and ", shown.join(", "))
    };
    Ok(format!(
        "Runs see read-only what the host acts on: {existing}wherever missing, {}.\n\
         To let a run write one: moat run --allow-write PATH, or allow_write: [PATH] in moat.yaml.",
        REPOSITORY_ENTRIES.join(" ")
    ))
}

/// The protected paths of `workspace` that exist now (what `moat trust`
/// shows), `allowed` left out.
pub fn protected_now(workspace: &Path, allowed: &[PathBuf]) -> Result<Vec<PathBuf>, RunError> {
    let (repositories, git_dirs) = find_repositories(workspace);
    Ok(wanted(&repositories, &git_dirs, allowed)?
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| {
            std::fs::symlink_metadata(workspace.join(p))
                .is_ok_and(|m| !(m.is_dir() && m.permissions().mode() & 0o7777 == PLACEHOLDER_MODE))
        })
        .collect())
}

/// What to protect in `workspace`, `allowed` and what lies under it left
/// out, with what to do when it is missing.
fn wanted(
    repositories: &[PathBuf],
    git_dirs: &[PathBuf],
    allowed: &[PathBuf],
) -> Result<Vec<(PathBuf, ProtectedView, Missing)>, RunError> {
    let mut wanted: Vec<(PathBuf, ProtectedView, Missing)> = Vec::new();
    for repo in repositories {
        for name in REPOSITORY_ENTRIES {
            wanted.push((
                repo.join(name),
                ProtectedView::ReadOnly,
                Missing::Placeholder,
            ));
        }
    }
    for git_dir in git_dirs {
        for name in GIT_DIRS {
            wanted.push((git_dir.join(name), ProtectedView::ReadOnly, Missing::GitDir));
        }
        wanted.push((
            git_dir.join("config"),
            ProtectedView::SandboxCopy,
            Missing::Skip,
        ));
    }
    for allow in allowed {
        if let Some((inside, _, _)) = wanted
            .iter()
            .find(|(p, _, _)| allow.starts_with(p) && allow != p)
        {
            return Err(RunError::AllowWrite {
                allow: allow.clone(),
                inside: inside.clone(),
            });
        }
    }
    wanted.retain(|(p, _, _)| !allowed.iter().any(|a| p.starts_with(a)));
    Ok(wanted)
}

/// The git directories of the repositories in `workspace` (relative), as
/// the protection finds them.
pub(crate) fn git_dirs(workspace: &Path) -> Vec<PathBuf> {
    find_repositories(workspace).1
}

/// Removes `path` if it is one of moat's placeholders.
fn remove_placeholder(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() && meta.permissions().mode() & 0o7777 == PLACEHOLDER_MODE {
        // Fails, harmlessly, when something was put in it.
        let _ = std::fs::remove_dir(path);
    }
}

/// What to do when a protected path does not exist.
#[derive(Debug, Clone, Copy)]
enum Missing {
    /// Nothing: there is nothing to protect (`.git/config` of a broken
    /// repository).
    Skip,
    /// Create the directory git would (`hooks`, `info`), and keep it.
    GitDir,
    /// Create a placeholder for the run.
    Placeholder,
}

/// Creates `rel` in `workspace` with `mode`, resolving its parent beneath
/// the workspace without following any link (a run may have swapped a
/// directory for one). `Ok(false)` when it cannot be created there (a
/// parent that is a file or a link, a read-only file system, a directory
/// not ours): the sandbox cannot write it either.
fn create_dir(workspace: &Path, rel: &Path, mode: u32) -> Result<bool, RunError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let full = workspace.join(rel);
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Ok(false);
    };
    let root = rustix::fs::open(
        workspace,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(workspace, "opening", e.into()))?;
    let parent = if parent.as_os_str().is_empty() {
        root
    } else {
        match rustix::fs::openat2(
            &root,
            parent,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(_) => return Ok(false),
        }
    };
    match rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(mode)) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => return Ok(true),
        Err(rustix::io::Errno::ROFS | rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => {
            return Ok(false)
        }
        Err(e) => return Err(io_error(&full, "creating", e.into())),
    }
    // The umask may have taken bits away, and the mode is the marker: set
    // it on what was created, never through a link put in its place.
    let dir = rustix::fs::openat(
        &parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(&full, "opening", e.into()))?;
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode))
        .map_err(|e| io_error(&full, "setting the mode of", e.into()))?;
    Ok(true)
}

fn io_error(path: &Path, what: &str, error: std::io::Error) -> RunError {
    RunError::Io {
        context: format!("{what} {} (protecting the workspace)", path.display()),
        error,
    }
}

/// The repositories in `workspace` (relative; the workspace itself
/// first, repository or not) and their git directories inside it.
fn find_repositories(workspace: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut repositories = vec![PathBuf::new()];
    let mut git_dirs = BTreeSet::new();
    let mut queue = std::collections::VecDeque::from([(PathBuf::new(), 0usize)]);
    let mut seen = 0usize;
    while let Some((dir, depth)) = queue.pop_front() {
        seen += 1;
        if seen > MAX_DIRECTORIES {
            break;
        }
        let Ok(entries) = std::fs::read_dir(workspace.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let rel = dir.join(&name);
            if name == ".git" {
                if !dir.as_os_str().is_empty() {
                    repositories.push(dir.clone());
                }
                if kind.is_dir() {
                    git_dirs.insert(rel);
                } else if kind.is_file() {
                    if let Some(git_dir) = linked_git_dir(workspace, &dir) {
                        git_dirs.insert(git_dir);
                    }
                } else if kind.is_symlink() {
                    // git follows the link: what it leads to, when it is
                    // in the workspace, is this repository's git directory.
                    if let Some(git_dir) = beneath(workspace, &workspace.join(&rel)) {
                        git_dirs.insert(git_dir);
                    }
                }
                continue;
            }
            if kind.is_dir()
                && depth < MAX_DEPTH
                && !NOT_WALKED.iter().any(|n| name == std::ffi::OsStr::new(n))
            {
                queue.push_back((rel, depth + 1));
            }
        }
    }
    // Submodules' git directories live in their superproject's
    // `.git/modules/<name>/`, nested for nested submodules.
    let mut modules: Vec<PathBuf> = Vec::new();
    for git_dir in &git_dirs {
        find_module_git_dirs(workspace, &git_dir.join("modules"), 0, &mut modules);
    }
    git_dirs.extend(modules);
    (repositories, git_dirs.into_iter().collect())
}

fn find_module_git_dirs(workspace: &Path, dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > MAX_DEPTH || out.len() > MAX_DIRECTORIES {
        return;
    }
    let Ok(entries) = std::fs::read_dir(workspace.join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|k| k.is_dir()) {
            continue;
        }
        let rel = dir.join(entry.file_name());
        let full = workspace.join(&rel);
        if full.join("HEAD").is_file() && full.join("config").is_file() {
            out.push(rel.clone());
            find_module_git_dirs(workspace, &rel.join("modules"), depth + 1, out);
        } else {
            // A submodule named `a/b` has its git directory at `modules/a/b`.
            find_module_git_dirs(workspace, &rel, depth + 1, out);
        }
    }
}

/// The git directory a `.git` file in `repo` points to (`gitdir: …`),
/// relative to the workspace, when it lies inside it.
fn linked_git_dir(workspace: &Path, repo: &Path) -> Option<PathBuf> {
    // A regular file of a few bytes, read without following links.
    let bytes = moat_home::read_bounded(workspace, &repo.join(".git"), 4096)
        .ok()
        .flatten()?;
    let text = String::from_utf8(bytes).ok()?;
    let target = text.lines().next()?.strip_prefix("gitdir:")?.trim();
    beneath(workspace, &workspace.join(repo).join(target))
}

/// Where `path` leads, relative to `workspace`, when that is a directory
/// inside it (other than the workspace itself).
fn beneath(workspace: &Path, path: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(path).ok()?;
    if !real.is_dir() {
        return None;
    }
    let real_workspace = std::fs::canonicalize(workspace).ok()?;
    let rel = real.strip_prefix(&real_workspace).ok()?;
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| rel.to_owned())
        .filter(|r| !r.as_os_str().is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn paths(p: &Protection) -> Vec<String> {
        p.paths
            .iter()
            .map(|x| {
                format!(
                    "{}{}",
                    x.path.display(),
                    match x.view {
                        ProtectedView::ReadOnly => "",
                        ProtectedView::SandboxCopy => " (copy)",
                    }
                )
            })
            .collect()
    }

    #[test]
    fn repositories_nested_and_linked_are_found_and_walks_stay_out_of_dependencies() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path();
        std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
        std::fs::write(ws.join(".git/config"), "").unwrap();
        std::fs::create_dir_all(ws.join("libs/a/.git")).unwrap();
        std::fs::write(ws.join("libs/a/.git/config"), "").unwrap();
        std::fs::create_dir_all(ws.join("node_modules/x/.git")).unwrap();
        std::fs::create_dir_all(ws.join(".git/modules/sub")).unwrap();
        std::fs::write(ws.join(".git/modules/sub/HEAD"), "").unwrap();
        std::fs::write(ws.join(".git/modules/sub/config"), "").unwrap();
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/.git"), "gitdir: ../.git/modules/sub\n").unwrap();
        let (repos, git_dirs) = find_repositories(ws);
        let mut repos: Vec<_> = repos.iter().map(|p| p.display().to_string()).collect();
        repos.sort();
        assert_eq!(repos, ["", "libs/a", "sub"]);
        let git_dirs: Vec<_> = git_dirs.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(git_dirs, [".git", ".git/modules/sub", "libs/a/.git"]);
    }

    #[test]
    fn placeholders_cover_what_is_missing_and_go_with_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path();
        std::fs::create_dir_all(ws.join(".git")).unwrap();
        std::fs::write(ws.join(".git/config"), "").unwrap();
        std::fs::write(ws.join(".envrc"), "x").unwrap();
        let p = Protection::prepare(ws, &[PathBuf::from(".vscode")]).unwrap();
        let listed = paths(&p);
        assert!(listed.contains(&".envrc".to_owned()), "{listed:?}");
        assert!(listed.contains(&".git/config (copy)".to_owned()));
        assert!(listed.contains(&".git/hooks".to_owned()));
        assert!(!listed.iter().any(|l| l.starts_with(".vscode")));
        assert!(ws.join(".claude").is_dir());
        assert!(ws.join(".git/hooks").is_dir());
        assert!(!ws.join(".vscode").exists());
        p.release(true);
        assert!(ws.join(".claude").is_dir());
        p.release(false);
        assert!(!ws.join(".claude").exists());
        assert!(ws.join(".envrc").is_file());
        assert!(ws.join(".git/hooks").is_dir(), "git's own directories stay");
    }

    #[test]
    fn a_refused_write_on_a_protected_path_is_explained_once() {
        let protected: Vec<ProtectedPath> = [".git/hooks", ".envrc", "libs/a/.vscode"]
            .iter()
            .map(|p| ProtectedPath {
                path: PathBuf::from(p),
                view: ProtectedView::ReadOnly,
            })
            .collect();
        let hint = RefusedWriteHint::new(&protected);
        assert!(hint
            .scan("sh: 1: cannot create .git/hooks/pre-commit: Read-only file system")
            .unwrap()
            .starts_with(".git/hooks is protected"));
        assert_eq!(
            hint.scan("sh: 1: cannot create .git/hooks/post-commit: Read-only file system"),
            None,
            "once per path"
        );
        assert!(hint
            .scan("touch: cannot touch '.envrc': Read-only file system")
            .is_some());
        assert!(hint
            .scan("cannot create .vscode/tasks.json: Read-only file system")
            .unwrap()
            .contains("--allow-write libs/a/.vscode"));
        assert_eq!(
            hint.scan("cannot create x.envrc2: Read-only file system"),
            None
        );
        assert_eq!(hint.scan("all good in .envrc"), None);
    }

    #[test]
    fn allowing_part_of_a_protected_directory_names_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Protection::prepare(tmp.path(), &[PathBuf::from(".claude/commands")])
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot allow writes to .claude/commands: it is inside .claude, which is protected as a whole."
        );
        assert_eq!(
            moat_hint::Hint::hint(&err)
                .map(|f| f.to_string())
                .as_deref(),
            Some("To fix: allow .claude (everything in it becomes writable for the run).")
        );
        assert!(!tmp.path().join(".claude").exists());
    }
}
