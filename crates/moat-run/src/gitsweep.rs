//! Disarms, when a run ends, the git repositories it created.
//!
//! A repository that existed when the run started is protected while it
//! runs (see `protect`). One the run *created* (`git init`, a clone) could
//! not be: moat cannot cover what does not exist yet without refusing
//! `git init` itself. What such a repository can make the host run later
//! is its hooks and the keys of its configuration that name a program, so
//! when the run ends moat renames every hook that is not git's own
//! `*.sample` to `<name>.moat-disabled` and removes those keys
//! (`git config --unset-all`, git's own parser and writer: a hand-written
//! one could be fooled by syntax git accepts). The user is told what was
//! disabled and where.
//!
//! The keys are judged by name, with git's canonical spelling (section and
//! key lower-cased) from `git config --list`, which only parses: nothing
//! in the file runs, includes are not followed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether the configuration key `key` (`section[.subsection].name`, as
/// `git config --list` prints it) names a program git runs, or changes
/// which programs or transports git may run.
pub(crate) fn runs_a_program(key: &str) -> bool {
    let Some((section, rest)) = key.split_once('.') else {
        return false;
    };
    let (subsection, name) = match rest.rsplit_once('.') {
        Some((sub, name)) => (Some(sub), name),
        None => (None, rest),
    };
    match (section, subsection, name) {
        // Every alias: a `!` one runs a shell, and any other may carry
        // `-c core.pager=…` before its command.
        ("alias", _, _) => true,
        ("core", None, n) => matches!(
            n,
            "fsmonitor" | "hookspath" | "sshcommand" | "pager" | "editor" | "askpass" | "gitproxy"
        ),
        ("sequence", None, "editor")
        | ("diff", None, "external")
        | ("interactive", None, "difffilter")
        | ("web", None, "browser")
        | ("gpg", _, "program")
        | ("credential", _, "helper")
        | ("uploadpack", None, "packobjectshook")
        | ("submodule", Some(_), "update")
        | ("merge", Some(_), "driver") => true,
        ("diff", Some(_), n) => matches!(n, "textconv" | "command"),
        ("mergetool" | "difftool" | "browser" | "man", Some(_), n) => matches!(n, "cmd" | "path"),
        ("remote", Some(_), n) => matches!(n, "uploadpack" | "receivepack" | "vcs"),
        ("sendemail", _, n) => matches!(n, "smtpserver" | "sendmailcmd" | "tocmd" | "cccmd"),
        // Filters run programs; pager.<cmd> is one; includes bring in
        // another file; protocol.* may allow `ext::`, which runs commands.
        ("filter" | "pager" | "include" | "includeif" | "protocol", _, _) => true,
        _ => false,
    }
}

/// Disarms the git directory `git_dir` (a host path); returns one line
/// per thing disabled, for the user.
pub(crate) fn disarm(git_dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    // Links are disabled as they are, never followed: the host's git
    // would follow them, moat must not rename what they point to.
    for name in ["hooks", "config", "config.worktree"] {
        let path = git_dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            let to = git_dir.join(format!("{name}.moat-disabled"));
            match std::fs::rename(&path, &to) {
                Ok(()) => done.push(format!("{name} (a link) renamed {name}.moat-disabled")),
                Err(e) => done.push(format!("{name} (a link) could NOT be disabled: {e}")),
            }
        }
    }
    let hooks = git_dir.join("hooks");
    let hooks_is_dir = std::fs::symlink_metadata(&hooks).is_ok_and(|m| m.is_dir());
    if let Some(entries) = hooks_is_dir
        .then(|| std::fs::read_dir(&hooks).ok())
        .flatten()
    {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".sample") || name.ends_with(".moat-disabled") {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                continue;
            }
            let to = hooks.join(format!("{name}.moat-disabled"));
            match std::fs::rename(entry.path(), &to) {
                Ok(()) => done.push(format!("hook {name} renamed {name}.moat-disabled")),
                Err(e) => done.push(format!("hook {name} could NOT be disabled: {e}")),
            }
        }
    }
    for file in ["config", "config.worktree"] {
        let path = git_dir.join(file);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            done.extend(disarm_config(&path));
        }
    }
    done
}

/// Removes the keys of the configuration file `path` that run programs.
fn disarm_config(path: &Path) -> Vec<String> {
    let list = git(&[
        "config".as_ref(),
        "--file".as_ref(),
        path.as_os_str(),
        "--null".as_ref(),
        "--list".as_ref(),
    ]);
    let Some(list) = list else {
        // git cannot read it (malformed, or no git here): a git on the
        // host cannot either, so it runs nothing from it.
        return Vec::new();
    };
    let mut keys: Vec<String> = Vec::new();
    for entry in list.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let key = entry.split(|b| *b == b'\n').next().unwrap_or_default();
        let key = String::from_utf8_lossy(key).into_owned();
        if runs_a_program(&key.to_ascii_lowercase()) && !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut done = Vec::new();
    for key in keys {
        let unset = git(&[
            "config".as_ref(),
            "--file".as_ref(),
            path.as_os_str(),
            "--unset-all".as_ref(),
            key.as_ref(),
        ]);
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
        let file = file.unwrap_or_default();
        match unset {
            Some(_) => done.push(format!("{file}: {key} removed")),
            None => done.push(format!("{file}: {key} could NOT be removed")),
        }
    }
    done
}

/// Runs the host's git with nothing of the environment but `PATH`, and
/// no system or global configuration; its standard output on success.
fn git(args: &[&std::ffi::OsStr]) -> Option<Vec<u8>> {
    let out = Command::new("git")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

/// The lines to show for the repositories at `git_dirs` (relative to
/// `workspace`) that a run created.
pub(crate) fn disarm_created(workspace: &Path, git_dirs: &[PathBuf]) -> Vec<String> {
    let mut notices = Vec::new();
    for git_dir in git_dirs {
        let done = disarm(&workspace.join(git_dir));
        if done.is_empty() {
            continue;
        }
        notices.push(format!(
            "the run created the git repository {} in the workspace; what in it would run \
             programs on the host was disabled: {}. Review it before enabling anything again.",
            git_dir.display(),
            done.join("; ")
        ));
    }
    notices
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_that_run_programs() {
        for key in [
            "core.fsmonitor",
            "core.hookspath",
            "core.sshcommand",
            "core.pager",
            "alias.st",
            "filter.lfs.smudge",
            "diff.pdf.textconv",
            "credential.helper",
            "credential.https://x.helper",
            "include.path",
            "includeif.gitdir:/x/.path",
            "remote.origin.uploadpack",
            "submodule.a.update",
            "pager.log",
            "protocol.ext.allow",
            "mergetool.x.cmd",
            "gpg.ssh.program",
        ] {
            assert!(runs_a_program(key), "{key}");
        }
        for key in [
            "core.bare",
            "core.repositoryformatversion",
            "remote.origin.url",
            "branch.main.remote",
            "user.name",
            "submodule.a.url",
            "diff.renames",
        ] {
            assert!(!runs_a_program(key), "{key}");
        }
    }

    #[test]
    fn a_created_repository_is_disarmed_with_gits_own_parser() {
        let tmp = tempfile::tempdir().unwrap();
        let git_dir = tmp.path().join(".git");
        std::fs::create_dir_all(git_dir.join("hooks")).unwrap();
        std::fs::write(git_dir.join("hooks/post-commit"), "#!/bin/sh\n").unwrap();
        std::fs::write(git_dir.join("hooks/pre-push.sample"), "#!/bin/sh\n").unwrap();
        // Syntax git accepts: a key on the header's line, odd case.
        std::fs::write(
            git_dir.join("config"),
            "[CoRe]fsmonitor = touch /tmp/x\n[core]\n\tbare = false\n[remote \"origin\"]\n\turl = https://x/y\n\
             [alias]\n\tst = !touch /tmp/y\n",
        )
        .unwrap();
        let done = disarm(&git_dir);
        assert!(git_dir.join("hooks/post-commit.moat-disabled").exists());
        assert!(git_dir.join("hooks/pre-push.sample").exists());
        if git(&["--version".as_ref()]).is_none() {
            return; // no git: nothing on this host reads the file
        }
        let config = std::fs::read_to_string(git_dir.join("config")).unwrap();
        assert!(
            !config.to_ascii_lowercase().contains("fsmonitor"),
            "{config}"
        );
        assert!(!config.contains("touch /tmp/y"), "{config}");
        assert!(config.contains("https://x/y"), "{config}");
        assert_eq!(done.len(), 3, "{done:?}");
    }
}
