//! `moat snapshot`: the pre-run snapshot, exact restores, and the refusal
//! to restore in place under an active run. Native runtime (root).
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
