//! `workspace.mode: volume` / `--workspace-mode volume` through the real
//! binary, native runtime: the run works on a copy-on-write copy, the host
//! tree (every path, mode, link target and byte) is unchanged after a run
//! that edits, adds, deletes and chmods; `moat diff` lists exactly those
//! edits; `moat diff --apply` brings them to the host. A bad
//! `workspace.mode` is a moat.yaml error with its line; a git worktree
//! (`.git` is a file) is refused before the run starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn write(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// Every path under `dir` with its type, mode, link target and contents,
/// sorted: equal strings mean equal trees.
fn tree(dir: &Path) -> String {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if m.is_dir() {
                walk(root, &path, out);
                "dir".to_owned()
            } else {
                format!("file {:?}", std::fs::read(&path).unwrap())
            };
            out.push(format!("{rel} {:o} {what}", m.mode() & 0o7777));
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out.join("\n")
}

/// A project with files to edit, delete, chmod, a symlink and a directory
/// to remove whole.
fn project(dir: &Path) {
    write(&dir.join("edit.txt"), "before\n");
    write(&dir.join("same.txt"), "same\n");
    write(&dir.join("gone.txt"), "bye\n");
    write(&dir.join("run.sh"), "echo hi\n");
    write(&dir.join("olddir/a"), "a\n");
    write(&dir.join("olddir/b"), "b\n");
    write(&dir.join("keep/deep/x"), "x\n");
    std::os::unix::fs::symlink("edit.txt", dir.join("link")).unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Edits, adds, deletes and chmods; `same.txt` is rewritten with its own
/// bytes (copied up, not a change); `keep/deep/x` is read only.
const EDITS: &str = "set -e
  echo after > edit.txt
  cat same.txt > same.tmp && cat same.tmp > same.txt && rm same.tmp
  rm gone.txt
  chmod 755 run.sh
  rm -r olddir
  mkdir -p newdir && echo n > newdir/n
  ln -sfn same.txt link
  cat keep/deep/x
  test \"$(cat edit.txt)\" = after
";

const DIFF: &str = "M edit.txt
D gone.txt
M link
A newdir
A newdir/n
D olddir
D olddir/a
D olddir/b
M run.sh
";

#[test]
fn a_volume_run_leaves_the_host_tree_untouched_and_diff_lists_exactly_its_edits() {
    let t = common::ProxiedEnv::new(&[]);
    project(&t.project());
    let before = tree(&t.project());
    let out = t.run(&[
        "run",
        "--workspace-mode",
        "volume",
        "--name",
        "vol",
        "--",
        "sh",
        "-c",
        EDITS,
    ]);
    out.success();
    assert_eq!(out.stdout, "x\n");
    assert_eq!(tree(&t.project()), before, "the host tree changed");

    let diff = t.run(&["diff", "vol"]);
    diff.success();
    assert_eq!(diff.stdout, DIFF);
    let json = t.run(&["diff", "vol", "--json"]);
    json.success();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v[0]["path"], "edit.txt");
    assert_eq!(v[0]["kind"], "modified");

    let list = t.run(&["list", "--json"]);
    assert!(
        list.stdout.contains("\"workspace_mode\": \"volume\""),
        "{}",
        list.stdout
    );

    t.run(&["diff", "vol", "--apply"]).success();
    let p = t.project();
    let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap();
    assert_eq!(read("edit.txt"), "after\n");
    assert_eq!(read("newdir/n"), "n\n");
    assert!(!p.join("gone.txt").exists() && !p.join("olddir").exists());
    let mode = std::fs::metadata(p.join("run.sh")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o755);
    assert_eq!(
        std::fs::read_link(p.join("link")).unwrap(),
        Path::new("same.txt")
    );
    // Applied, the workspace now is what the run saw: nothing left to list.
    assert_eq!(t.run(&["diff", "vol"]).stdout, "");
}

#[test]
fn diff_of_a_bind_run_is_an_error_with_the_fix() {
    let t = common::ProxiedEnv::new(&[]);
    t.run(&["run", "--name", "b", "--", "true"]).success();
    let out = t.run(&["diff", "b"]);
    out.failure();
    assert!(
        out.stderr.contains("so it has no copy to diff"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--workspace-mode volume"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_bad_workspace_mode_is_a_moat_yaml_error_with_its_line() {
    let t = common::ProxiedEnv::new(&[]);
    write(
        &t.project().join("moat.yaml"),
        "name: x\nworkspace:\n  mode: copy\n",
    );
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    insta::assert_snapshot!(out
        .stderr
        .replace(&t.project().display().to_string(), "[PROJECT]"));
}

#[test]
fn volume_mode_in_a_git_worktree_is_refused_before_the_run_starts() {
    let t = common::ProxiedEnv::new(&[]);
    write(
        &t.project().join(".git"),
        "gitdir: /elsewhere/.git/worktrees/x\n",
    );
    write(&t.project().join("f"), "f\n");
    let before = tree(&t.project());
    let out = t.run(&["run", "--workspace-mode", "volume", "--", "touch", "g"]);
    out.failure();
    assert!(out.stderr.contains(".git is a file"), "{}", out.stderr);
    assert!(
        out.stderr.contains("--workspace-mode bind"),
        "{}",
        out.stderr
    );
    assert_eq!(tree(&t.project()), before);
}

#[test]
fn apply_is_refused_while_the_run_is_running_and_in_place_restore_always() {
    let t = common::ProxiedEnv::new(&[]);
    write(&t.project().join("f"), "host\n");
    let script = "echo run > f; touch /tmp/done; sleep 300";
    t.run(&[
        "run",
        "-d",
        "--workspace-mode",
        "volume",
        "--name",
        "live",
        "--",
        "sh",
        "-c",
        script,
    ])
    .success();
    // Wait until the run has written (no deadline: the test harness has one).
    while t.run(&["diff", "live"]).stdout != "M f\n" {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = t.run(&["diff", "live", "--apply"]);
    out.failure();
    assert!(out.stderr.contains("is still running"), "{}", out.stderr);
    assert!(out.stderr.contains("moat stop"), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(t.project().join("f")).unwrap(),
        "host\n"
    );
    t.run(&["stop", "live"]).success();
    let out = t.run(&["snapshot", "restore", "live"]);
    out.failure();
    assert!(
        out.stderr.contains("workspace.mode: volume"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--to DIR"), "{}", out.stderr);
    t.run(&["diff", "live", "--apply"]).success();
    assert_eq!(
        std::fs::read_to_string(t.project().join("f")).unwrap(),
        "run\n"
    );
}

/// A non-root caller (root runs the test as uid 4242 with `setpriv`; a
/// non-root runner is that caller already in the tests above): its
/// overlay is mounted in its own user namespace, without ID-mapping.
#[test]
fn a_non_root_caller_gets_the_copy_too() {
    use std::os::unix::fs::chown;
    if !rustix::process::geteuid().is_root() {
        return; // The tests above ran as this non-root caller.
    }
    let dir = tempfile::tempdir().unwrap();
    let (ws, home) = (dir.path().join("ws"), dir.path().join("home"));
    write(&ws.join("a"), "host\n");
    write(&ws.join("d"), "gone\n");
    std::fs::create_dir_all(&home).unwrap();
    for p in [dir.path(), &ws, &ws.join("a"), &ws.join("d"), &home] {
        chown(p, Some(4242), Some(4242)).unwrap();
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = tree(&ws);
    let moat = |args: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "4242",
                "--regid",
                "4242",
                "--clear-groups",
                "env",
            ])
            .arg(format!("HOME={}", home.display()))
            .arg(format!("MOAT_HOME={}", home.display()))
            .args([
                "MOAT_RUNTIME=native",
                "MOAT_PROXY_PORT=0",
                "MOAT_DAEMON_IDLE_TIMEOUT=2",
            ])
            .arg(env!("CARGO_BIN_EXE_moat"))
            .args(args)
            .current_dir(&ws)
            .output()
            .unwrap();
        common::Result::from(out)
    };
    let script = "echo run > a && rm d && echo n > n && cat a";
    let out = moat(&[
        "run",
        "--workspace-mode",
        "volume",
        "--name",
        "nr",
        "--",
        "sh",
        "-c",
        script,
    ]);
    out.success();
    assert_eq!(out.stdout, "run\n");
    assert_eq!(tree(&ws), before, "the host tree changed");
    assert_eq!(moat(&["diff", "nr"]).stdout, "M a\nD d\nA n\n");
    // The overlay's work directory (the kernel leaves a mode-000 one in
    // it) does not keep the caller from removing the run.
    moat(&["destroy", "nr"]).success();
}

/// Volume mode on a container runtime: the named volume `moat-ws-<id>`
/// filled with the workspace, the host tree untouched, the run's tree
/// extracted when it ends (`moat diff`, `--apply`), the volume removed.
fn on_container_runtime(runtime: &str) {
    let t = common::ProxiedEnv::new(&[]);
    project(&t.project());
    let before = tree(&t.project());
    let moat = |args: &[&str]| {
        common::Result::from(
            t.moat()
                .env("MOAT_RUNTIME", runtime)
                .env("MOAT_DAEMON_IDLE_TIMEOUT", "5")
                .env(
                    "MOAT_IMAGE_MAP",
                    "debian:bookworm-slim=local/debian:bookworm",
                )
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let out = moat(&[
        "run",
        "--workspace-mode",
        "volume",
        "--name",
        "cv",
        "--",
        "sh",
        "-c",
        EDITS,
    ]);
    out.success();
    assert_eq!(out.stdout, "x\n");
    assert_eq!(tree(&t.project()), before, "the host tree changed");
    let diff = moat(&["diff", "cv"]);
    diff.success();
    assert_eq!(diff.stdout, DIFF);
    let meta = std::fs::read_dir(t.env.moat_home().join("runs"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("run_"))
        .unwrap();
    let volume = format!("moat-ws-{}", meta.file_name().to_string_lossy());
    let inspect = std::process::Command::new(runtime)
        .args(["volume", "inspect", &volume])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "{volume} was left behind");
    moat(&["diff", "cv", "--apply"]).success();
    assert_eq!(moat(&["diff", "cv"]).stdout, "");
    let p = t.project();
    assert_eq!(
        std::fs::read_to_string(p.join("edit.txt")).unwrap(),
        "after\n"
    );
    assert!(!p.join("olddir").exists());
}

#[test]
fn docker_volume_mode_leaves_the_host_untouched_and_diff_lists_the_edits() {
    if !common::docker_available() {
        return;
    }
    on_container_runtime("docker");
}

#[test]
fn podman_volume_mode_leaves_the_host_untouched_and_diff_lists_the_edits() {
    if !moat_testkit::require::podman() {
        return;
    }
    on_container_runtime("podman");
}

/// A repository the run created in its copy comes back through
/// `moat diff --apply` disarmed, as a bind run's is when it ends: its
/// hooks renamed, the configuration keys that run programs removed, and
/// nothing of it runs at the next host `git commit` there.
#[test]
fn a_repository_created_in_a_volume_run_comes_back_disarmed() {
    let t = common::ProxiedEnv::new(&[]);
    let marks = t.env.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let script = format!(
        "git init -q sub && printf '#!/bin/sh\\ntouch {m}/hook\\n' > sub/.git/hooks/post-commit \
         && chmod +x sub/.git/hooks/post-commit && git -C sub config core.fsmonitor 'touch {m}/fsmonitor'",
        m = marks.display()
    );
    let out = t.run(&[
        "run",
        "--name",
        "mk",
        "--workspace-mode",
        "volume",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    out.success();
    let applied = t.run(&["diff", "mk", "--apply"]);
    applied.success();
    assert!(applied.stdout.contains("post-commit"), "{}", applied.stdout);
    let sub = t.project().join("sub");
    assert!(!sub.join(".git/hooks/post-commit").exists());
    assert!(sub.join(".git/hooks/post-commit.moat-disabled").exists());
    let config = std::fs::read_to_string(sub.join(".git/config")).unwrap();
    assert!(!config.contains("fsmonitor"), "{config}");
    write(&sub.join("f"), "f\n");
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(&sub)
            .env("GIT_AUTHOR_NAME", "o")
            .env("GIT_AUTHOR_EMAIL", "o@o")
            .env("GIT_COMMITTER_NAME", "o")
            .env("GIT_COMMITTER_EMAIL", "o@o")
            .status()
            .unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["add", "f"]);
    git(&["commit", "-q", "-m", "host"]);
    git(&["status"]);
    assert_eq!(std::fs::read_dir(&marks).unwrap().count(), 0, "nothing ran");
}
