//! `moat wt` through the real binary (native runtime): runs on their own
//! branches in worktrees of one repository, git working inside, the
//! repository's hooks and configuration out of the sandbox's reach.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

struct Repo {
    env: common::TestEnv,
    /// The runtime's variables (none: native).
    runtime: &'static [(&'static str, &'static str)],
}

/// Docker under gVisor, with an image that has git (from `dependencies:`,
/// built once and cached like the other Docker tests' images).
const DOCKER: &[(&str, &str)] = &[
    ("MOAT_RUNTIME", "docker"),
    (
        "MOAT_IMAGE_MAP",
        "debian:bookworm-slim=local/debian:bookworm",
    ),
];

fn rustix_is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

const COMMIT: &str = "git -c user.email=t@t -c user.name=t commit -qm";

impl Repo {
    fn new() -> Self {
        Repo::on(&[])
    }

    fn on(runtime: &'static [(&'static str, &'static str)]) -> Self {
        let repo = Repo {
            env: common::TestEnv::new(),
            runtime,
        };
        std::fs::create_dir_all(repo.project()).unwrap();
        repo.git(&["init", "-q", "-b", "main"]);
        std::fs::write(repo.project().join("README"), "hello\n").unwrap();
        repo.git(&["add", "README"]);
        if !runtime.is_empty() {
            std::fs::write(repo.project().join("moat.yaml"), "dependencies: [git]\n").unwrap();
            repo.git(&["add", "moat.yaml"]);
        }
        repo.git(&["commit", "-q", "-m", "first"]);
        if !runtime.is_empty() && rustix_is_root() {
            // A user's repository, which root runs moat in: the container
            // runs as that user (see common::give_to_sandbox_user).
            let status = Command::new("chown")
                .args(["-R", "1000:1000"])
                .arg(repo.project())
                .status()
                .unwrap();
            assert!(status.success());
            common::give_to_sandbox_user(&repo.project());
            // Root's git (the test's and moat's) in another user's
            // repository, as that user's root would set it up.
            std::fs::write(
                repo.env.home().join(".gitconfig"),
                "[safe]\n\tdirectory = *\n",
            )
            .unwrap();
        }
        repo
    }

    fn project(&self) -> PathBuf {
        self.env.dir.path().join("project")
    }

    fn marks(&self) -> PathBuf {
        let dir = self.env.dir.path().join("marks");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn git_out(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        std::fs::create_dir_all(self.env.home()).unwrap();
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("HOME", self.env.home())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("GIT_AUTHOR_NAME", "owner")
            .env("GIT_AUTHOR_EMAIL", "owner@example.com")
            .env("GIT_COMMITTER_NAME", "owner")
            .env("GIT_COMMITTER_EMAIL", "owner@example.com")
            .output()
            .unwrap()
    }

    fn git(&self, args: &[&str]) -> String {
        let out = self.git_out(&self.project(), args);
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn moat(&self) -> Command {
        let mut cmd = self.env.moat();
        cmd.env("MOAT_DAEMON_IDLE_TIMEOUT", "2")
            .env("MOAT_PROXY_PORT", "0")
            .envs(self.runtime.iter().copied())
            .current_dir(self.project());
        cmd
    }

    fn wt(&self, branch: &str, script: &str) -> common::Result {
        let out = self
            .moat()
            .args(["wt", branch, "--", "sh", "-c", script])
            .output()
            .unwrap();
        common::Result::from(out)
    }

    fn moat_args(&self, args: &[&str]) -> common::Result {
        common::Result::from(self.moat().args(args).output().unwrap())
    }
}

#[test]
fn runs_commit_on_their_own_branches_and_leave_the_main_checkout_alone() {
    commit_on_own_branches(Repo::new());
}

#[test]
fn runs_commit_on_their_own_branches_in_containers_too() {
    if !common::docker_available() {
        return;
    }
    commit_on_own_branches(Repo::on(DOCKER));
}

fn commit_on_own_branches(repo: Repo) {
    let head = repo.git(&["rev-parse", "HEAD"]);
    let script = |f: &str| format!("echo {f} > {f} && git add {f} && {COMMIT} {f}");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| repo.wt("feature/a", &script("a")));
        let b = s.spawn(|| repo.wt("feature/b", &script("b")));
        (a.join().unwrap(), b.join().unwrap())
    });
    a.success();
    b.success();
    for (branch, file) in [("feature/a", "a"), ("feature/b", "b")] {
        let files = repo.git(&["show", "--name-only", "--format=%s", branch]);
        assert_eq!(files, format!("{file}\n\n{file}\n"), "{branch}");
        assert_eq!(repo.git(&["rev-parse", &format!("{branch}~1")]), head);
    }
    assert_eq!(repo.git(&["rev-parse", "HEAD"]), head);
    assert_eq!(repo.git(&["symbolic-ref", "HEAD"]), "refs/heads/main\n");
    assert_eq!(repo.git(&["status", "--porcelain"]), "");
    assert!(!repo.project().join("a").exists());

    let list = repo.moat_args(&["wt", "list"]);
    list.success();
    assert!(list.stdout.starts_with("BRANCH"), "{}", list.stdout);
    assert!(list.stdout.contains("feature/a") && list.stdout.contains("feature-b"));
    let runs = repo.moat_args(&["list"]);
    assert!(runs.stdout.contains("WORKTREE"), "{}", runs.stdout);

    let cleaned = repo.moat_args(&["wt", "clean", "feature/a"]);
    cleaned.success();
    let base = repo.env.moat_home().join("worktrees");
    let id = std::fs::read_dir(&base)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(!id.join("feature/a").exists());
    assert!(id.join("feature/b").exists());
    repo.moat_args(&["wt", "clean"]).success();
    assert!(!id.join("feature").exists());
    assert!(repo.git(&["branch", "--list"]).contains("feature/a"));
    assert!(repo.git(&["branch", "--list"]).contains("feature/b"));
}

#[test]
fn hooks_and_config_of_the_repository_stay_out_of_reach() {
    hooks_and_config_out_of_reach(Repo::new());
}

#[test]
fn hooks_and_config_of_the_repository_stay_out_of_reach_in_containers() {
    if !common::docker_available() {
        return;
    }
    hooks_and_config_out_of_reach(Repo::on(DOCKER));
}

fn hooks_and_config_out_of_reach(repo: Repo) {
    let common = repo.project().join(".git");
    let marks = repo.marks();
    let hook = format!(
        "printf '#!/bin/sh\\ntouch {}/hook\\n' > {}/hooks/post-commit; chmod +x {}/hooks/post-commit",
        marks.display(),
        common.display(),
        common.display()
    );
    let script = format!(
        "{hook}; echo hook=$?; git config core.fsmonitor 'touch {}/fsmonitor'; echo config=$?; \
         echo gitfile > .git; echo gitfile=$?; \
         echo x > x && git add x && {COMMIT} x && echo committed",
        marks.display()
    );
    let out = repo.wt("evil", &script);
    out.success();
    assert!(out.stdout.contains("committed"), "{}", out.stdout);
    for attempt in ["hook", "config", "gitfile"] {
        let refused = out
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{attempt}=")) && l != format!("{attempt}=0"));
        assert!(refused, "{attempt}: {}", out.stdout);
    }
    assert!(!common.join("hooks/post-commit").exists());
    assert!(!repo.git(&["config", "--list"]).contains("fsmonitor"));
    std::fs::write(repo.project().join("f"), "f\n").unwrap();
    repo.git(&["add", "f"]);
    repo.git(&["commit", "-q", "-m", "host"]);
    repo.git(&["status"]);
    assert_eq!(std::fs::read_dir(&marks).unwrap().count(), 0, "nothing ran");
    assert!(repo.git(&["log", "--format=%s", "evil"]).starts_with("x\n"));
}

#[test]
fn a_run_still_active_in_the_worktree_is_named_with_the_fix() {
    let repo = Repo::new();
    let started = repo.moat_args(&["wt", "busy", "-d", "--", "sleep", "30"]);
    started.success();
    let again = repo.wt("busy", "true");
    again.failure();
    assert!(
        again
            .stderr
            .contains("run busy is already active in the worktree of busy"),
        "{}",
        again.stderr
    );
    assert!(
        again.stderr.contains("moat logs -f busy"),
        "{}",
        again.stderr
    );
    assert!(again.stderr.contains("moat stop busy"), "{}", again.stderr);
    repo.moat_args(&["stop", "busy"]).success();
    let bad = repo.wt("bad..name", "true");
    bad.failure();
    assert!(bad.stderr.contains("invalid branch name"), "{}", bad.stderr);
}

#[test]
fn moat_clean_removes_the_worktrees_of_stopped_runs_and_keeps_their_branches() {
    let repo = Repo::new();
    repo.wt("tidy/me", &format!("echo x > x && git add x && {COMMIT} x"))
        .success();
    let listed = repo.moat_args(&["wt", "list"]);
    listed.success();
    assert!(listed.stdout.contains("tidy/me"), "{}", listed.stdout);
    let clean = repo.moat_args(&["clean", "--force"]);
    clean.success();
    assert!(
        clean
            .stdout
            .contains("Removed the worktree of tidy/me (the branch stays)."),
        "{}",
        clean.stdout
    );
    let listed = repo.moat_args(&["wt", "list"]);
    assert!(!listed.stdout.contains("tidy/me"), "{}", listed.stdout);
    assert!(repo
        .git(&["branch", "--list", "tidy/me"])
        .contains("tidy/me"));
    assert!(repo.git(&["log", "--oneline", "tidy/me"]).contains(" x"));
}
