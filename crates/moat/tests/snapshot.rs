//! `moat snapshot`: the pre-run snapshot, exact restores, and the refusal
//! to restore in place under an active run; the git-commit and idle
//! triggers, moat.yaml `snapshots.retention`, `--json`, and `moat destroy`
//! / `moat clean` removing a run's snapshots and freeing their blobs.
//! Native runtime (root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::ProxiedEnv;

/// Every path under `root`: kind, mode, link target, content — what an
/// exact restore must give back.
fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut paths: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for p in paths {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{rel} link -> {}",
                    fs::read_link(&p).unwrap().display()
                ));
            } else if m.is_dir() {
                out.push(format!("{rel} dir {mode:o}"));
                walk(root, &p, out);
            } else {
                let content = fs::read(&p).unwrap();
                out.push(format!(
                    "{rel} file {mode:o} {}",
                    String::from_utf8_lossy(&content)
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn workspace(t: &ProxiedEnv) -> std::path::PathBuf {
    let ws = t.project();
    fs::create_dir_all(ws.join("empty")).unwrap();
    fs::create_dir_all(ws.join("src")).unwrap();
    fs::write(ws.join("a"), "alpha").unwrap();
    fs::write(ws.join("b"), "bravo").unwrap();
    fs::write(ws.join("c"), "#!/bin/sh\necho c\n").unwrap();
    fs::set_permissions(ws.join("c"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ws.join("src/main.rs"), "fn main() {}").unwrap();
    symlink("src/main.rs", ws.join("l")).unwrap();
    ws
}

fn snapshot_ids(t: &ProxiedEnv, run: &str) -> Vec<String> {
    let out = t.run(&["snapshot", "list", run]);
    out.success();
    out.stdout
        .lines()
        .skip(1)
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_pre_run_snapshot_restores_the_exact_tree() {
    let t = ProxiedEnv::new(&[]);
    let ws = workspace(&t);
    let before = listing(&ws);
    let run = t.run(&[
        "run",
        "--name",
        "edits",
        "--",
        "sh",
        "-c",
        "rm a; echo x > b; chmod 600 c; ln -sf other l",
    ]);
    run.success();
    assert_ne!(listing(&ws), before);

    let ids = snapshot_ids(&t, "edits");
    assert_eq!(ids.len(), 1);
    // `moat status` counts the store.
    let status = t.run(&["status"]);
    assert!(
        status.stdout.lines().any(|l| l.starts_with("Snapshots: ")
            && l.ends_with(&format!(
                "MB under {}",
                t.env.moat_home().join("snapshots").display()
            ))),
        "{}",
        status.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&t.run(&["status", "--json"]).stdout).unwrap();
    assert!(json["snapshots_bytes"].as_u64().unwrap() > 0, "{json}");
    let table = t.run(&["snapshot", "list", "edits"]).stdout;
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"snap_[0-9a-f]{12}", "snap_[ID]      ");
    settings.add_filter(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "[CREATED]          ");
    // New bytes include the gzipped trees, whose size varies with inode
    // numbers and times.
    settings.add_filter(r"(?m)\d+ bytes *$", "[NEW]");
    settings.bind(|| insta::assert_snapshot!(table));

    let dest = t.env.dir.path().join("restored");
    let out = t.run(&[
        "snapshot",
        "restore",
        "edits",
        &ids[0],
        "--to",
        dest.to_str().unwrap(),
    ]);
    out.success();
    assert_eq!(listing(&dest), before);
    // Into a directory that is not empty: refused, nothing touched.
    let out = t.run(&[
        "snapshot",
        "restore",
        "edits",
        &ids[0],
        "--to",
        dest.to_str().unwrap(),
    ]);
    out.failure();
    assert!(
        out.stderr.contains("is not an empty directory"),
        "{}",
        out.stderr
    );

    // In place: the workspace is the pre-run tree again, and what it was
    // is a safety snapshot.
    let out = t.run(&["snapshot", "restore", "edits", &ids[0]]);
    out.success();
    assert_eq!(listing(&ws), before);
    assert!(
        out.stdout.contains("undo with: moat snapshot restore"),
        "{}",
        out.stdout
    );
    assert_eq!(snapshot_ids(&t, "edits").len(), 2);
}

#[test]
fn in_place_restore_under_an_active_run_is_refused_with_the_fix() {
    let t = ProxiedEnv::new(&[]);
    let ws = workspace(&t);
    let before = listing(&ws);
    let out = t.run(&["run", "-d", "--name", "bg", "--", "sleep", "30"]);
    out.success();
    let id = out.stdout.trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ids = loop {
        let ids = snapshot_ids(&t, "bg");
        if !ids.is_empty() {
            break ids;
        }
        assert!(Instant::now() < deadline, "no pre-run snapshot");
        std::thread::sleep(Duration::from_millis(100));
    };
    fs::write(ws.join("a"), "changed on the host").unwrap();

    let out = t.run(&["snapshot", "restore", "bg", &ids[0]]);
    out.failure();
    assert!(
        out.stderr
            .contains(&format!("is mounted by active run {id}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("moat stop {id}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--to DIR"), "{}", out.stderr);
    assert_eq!(
        fs::read_to_string(ws.join("a")).unwrap(),
        "changed on the host"
    );

    // Beside it is fine.
    let dest = t.env.dir.path().join("beside");
    t.run(&["snapshot", "restore", "bg", "--to", dest.to_str().unwrap()])
        .success();
    assert_eq!(listing(&dest), before);
    t.run(&["stop", "bg"]).success();
}

/// `moat snapshot list <run> --json`: (trigger, label) of each, oldest first.
fn snapshots(t: &ProxiedEnv, run: &str) -> Vec<(String, String)> {
    let out = t.run(&["snapshot", "list", run, "--json"]);
    out.success();
    let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    list.iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
            (s("trigger"), s("label"))
        })
        .collect()
}

/// Polls `moat snapshot list` until `done` holds (generous bound: the
/// machine may be slow; what is asserted is the outcome, not its time).
fn wait_for(t: &ProxiedEnv, run: &str, done: impl Fn(&[(String, String)]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = snapshots(t, run);
        if done(&now) {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting; have {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.email=t@t", "-c", "user.name=t"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn repository(t: &ProxiedEnv, moat_yaml: &str) -> std::path::PathBuf {
    let ws = workspace(t);
    fs::write(ws.join("moat.yaml"), moat_yaml).unwrap();
    git(&ws, &["init", "-q", "-b", "main"]);
    git(&ws, &["add", "-A"]);
    git(&ws, &["commit", "-qm", "first"]);
    ws
}

/// Every directory under the store is 0700 and every file 0600.
fn assert_private(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m.mode() & 0o777, want, "{}", p.display());
        if m.is_dir() {
            assert_private(&p);
        }
    }
}

#[test]
fn a_commit_during_the_run_gets_a_git_commit_snapshot() {
    let t = ProxiedEnv::new(&[]);
    let ws = repository(&t, "snapshots:\n  triggers:\n    disable_idle: true\n");
    let out = t.run(&[
        "run",
        "--name",
        "committer",
        "--",
        "sh",
        "-c",
        "echo change > a && git -c user.email=t@t -c user.name=t commit -qam second",
    ]);
    out.success();
    let head = git(&ws, &["rev-parse", "HEAD"]);
    assert_eq!(git(&ws, &["log", "-1", "--format=%s"]), "second");
    assert_eq!(
        snapshots(&t, "committer"),
        [
            ("pre-run".to_owned(), String::new()),
            ("git-commit".to_owned(), format!("commit {}", &head[..12])),
        ]
    );
    // The snapshot holds the committed tree.
    let list = t.run(&["snapshot", "list", "committer", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    let id = list[1]["id"].as_str().unwrap();
    let dest = t.env.dir.path().join("at-commit");
    t.run(&[
        "snapshot",
        "restore",
        "committer",
        id,
        "--to",
        dest.to_str().unwrap(),
    ])
    .success();
    assert_eq!(fs::read_to_string(dest.join("a")).unwrap(), "change\n");
    assert_private(&t.env.moat_home().join("snapshots"));

    let table = t.run(&["snapshot", "list", "committer"]).stdout;
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"snap_[0-9a-f]{12}", "snap_[ID]      ");
    settings.add_filter(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "[CREATED]          ");
    settings.add_filter(r"commit [0-9a-f]{12}", "commit [HEAD]");
    // Counts and sizes depend on the git version's files in `.git`.
    settings.add_filter(
        r" +\d+ +\d+(\.\d+)? (bytes|KiB|MiB) +\d+(\.\d+)? (bytes|KiB|MiB)  ",
        " [FILES] [SIZE] [NEW]  ",
    );
    settings.bind(|| insta::assert_snapshot!(table));
}

#[test]
fn writes_then_quiet_get_an_idle_snapshot() {
    let t = ProxiedEnv::new(&[]);
    let ws = workspace(&t);
    fs::write(
        ws.join("moat.yaml"),
        "snapshots:\n  triggers:\n    idle_threshold_seconds: 1\n",
    )
    .unwrap();
    let out = t.run(&[
        "run",
        "-d",
        "--name",
        "idler",
        "--",
        "sh",
        "-c",
        "echo new > new; sleep 120",
    ]);
    out.success();
    wait_for(&t, "idler", |s| {
        s.iter().any(|(trigger, _)| trigger == "idle")
    });
    t.run(&["stop", "idler"]).success();
    let list = t.run(&["snapshot", "list", "idler", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).unwrap();
    let idle = list.iter().find(|r| r["trigger"] == "idle").unwrap();
    let dest = t.env.dir.path().join("idle");
    let id = idle["id"].as_str().unwrap();
    t.run(&[
        "snapshot",
        "restore",
        "idler",
        id,
        "--to",
        dest.to_str().unwrap(),
    ])
    .success();
    assert_eq!(fs::read_to_string(dest.join("new")).unwrap(), "new\n");
    assert_private(&t.env.moat_home().join("snapshots"));
}

#[test]
fn retention_keeps_max_count_and_the_pre_run_snapshot() {
    let t = ProxiedEnv::new(&[]);
    let ws = repository(
        &t,
        "snapshots:\n  triggers:\n    disable_idle: true\n  retention:\n    max_count: 2\n",
    );
    t.run(&["run", "-d", "--name", "kept", "--", "sleep", "120"])
        .success();
    wait_for(&t, "kept", |s| !s.is_empty());
    for _ in 0..3 {
        let out = t.run(&["snapshot", "kept", "--json"]);
        out.success();
        let record: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(
            record["id"].as_str().unwrap().starts_with("snap_"),
            "{record}"
        );
        assert_eq!(record["trigger"], "manual");
    }
    assert_eq!(snapshots(&t, "kept").len(), 4);
    // A commit lands in the workspace (here from the host): the
    // git-commit snapshot, then retention.
    fs::write(ws.join("b"), "from the host").unwrap();
    git(&ws, &["commit", "-qam", "host"]);
    wait_for(&t, "kept", |s| {
        s.iter().any(|(trigger, _)| trigger == "git-commit")
    });
    let left: Vec<String> = snapshots(&t, "kept").into_iter().map(|s| s.0).collect();
    assert_eq!(left, ["pre-run", "git-commit"]);
    t.run(&["stop", "kept"]).success();
}

fn blobs(t: &ProxiedEnv) -> usize {
    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).map_or(0, |l| {
            l.map(|e| e.unwrap().path())
                .map(|p| if p.is_dir() { count(&p) } else { 1 })
                .sum()
        })
    }
    let stores = t.env.moat_home().join("snapshots");
    fs::read_dir(&stores)
        .unwrap()
        .map(|s| count(&s.unwrap().path().join("blobs")))
        .sum()
}

#[test]
fn destroy_and_clean_remove_the_runs_snapshots_and_free_their_blobs() {
    let t = ProxiedEnv::new(&[]);
    let ws = workspace(&t);
    t.run(&[
        "run",
        "--name",
        "first",
        "--",
        "sh",
        "-c",
        "echo only-first > f1",
    ])
    .success();
    t.run(&["snapshot", "first"]).success();
    t.run(&["run", "--name", "second", "--", "rm", "f1"])
        .success();
    let before_second = listing(&ws);
    let with_both = blobs(&t);

    let out = t.run(&["destroy", "first"]);
    out.success();
    assert!(
        out.stdout.contains("Removed 2 snapshots ("),
        "{}",
        out.stdout
    );
    // The blob of f1 and first's trees went; second's snapshot is whole.
    assert!(blobs(&t) < with_both, "{} !< {with_both}", blobs(&t));
    assert_eq!(snapshots(&t, "second").len(), 1);
    let dest = t.env.dir.path().join("second");
    t.run(&[
        "snapshot",
        "restore",
        "second",
        "--to",
        dest.to_str().unwrap(),
    ])
    .success();
    assert_ne!(listing(&dest), before_second); // f1 was there before second ran
    assert!(dest.join("f1").exists());

    let out = t.run(&["clean", "--force"]);
    out.success();
    assert!(
        out.stdout.contains("Removed 1 snapshots ("),
        "{}",
        out.stdout
    );
    assert_eq!(blobs(&t), 0);
    assert_private(&t.env.moat_home().join("snapshots"));
}
