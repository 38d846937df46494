#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use moat_home::MoatHome;
use sha2::{Digest, Sha256};

use crate::{Store, TakeOptions, Trigger};

/// Every path under `root` with its kind, mode, link target and content
/// hash: what an exact restore must reproduce.
pub(crate) fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.push(format!("{rel} link {:?}", fs::read_link(&p).unwrap()));
            } else if m.is_dir() {
                out.push(format!("{rel} dir {mode:o}"));
                walk(root, &p, out);
            } else {
                let h = hex::encode(Sha256::digest(fs::read(&p).unwrap()));
                out.push(format!("{rel} file {mode:o} {h}"));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

fn opts(trigger: Trigger) -> TakeOptions {
    TakeOptions {
        run_id: Some("run_000000000001".into()),
        label: None,
        trigger,
        exclude: Vec::new(),
    }
}

fn fixture() -> (tempfile::TempDir, PathBuf, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    fs::create_dir_all(ws.join("src/deep")).unwrap();
    fs::create_dir_all(ws.join("empty")).unwrap();
    fs::write(ws.join("a"), "alpha\n").unwrap();
    fs::write(ws.join("b"), "bravo\n").unwrap();
    fs::write(ws.join("c"), "charlie\n").unwrap();
    fs::write(ws.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(ws.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(ws.join("src/deep/x.rs"), "fn main() {}\n").unwrap();
    fs::set_permissions(ws.join("src/deep"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("src/deep/x.rs", ws.join("l")).unwrap();
    symlink("/nowhere/at/all", ws.join("dangling")).unwrap();
    let store = Store::open(&MoatHome::at(tmp.path().join("home")), &ws).unwrap();
    (tmp, ws, store)
}

fn mutate(ws: &Path) {
    fs::remove_file(ws.join("a")).unwrap();
    fs::write(ws.join("b"), "x\n").unwrap();
    fs::set_permissions(ws.join("c"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(ws.join("l")).unwrap();
    symlink("other", ws.join("l")).unwrap();
    fs::remove_dir(ws.join("empty")).unwrap();
    fs::write(ws.join("empty"), "now a file").unwrap();
    fs::remove_dir_all(ws.join("src/deep")).unwrap();
    fs::write(ws.join("new"), "added").unwrap();
}

#[test]
fn restore_to_a_new_directory_is_exact() {
    let (tmp, ws, store) = fixture();
    let before = listing(&ws);
    let snap = store.take(&opts(Trigger::PreRun)).unwrap();
    assert_eq!((snap.files, snap.symlinks, snap.dirs), (5, 2, 4));
    mutate(&ws);
    assert_ne!(listing(&ws), before);
    let dest = tmp.path().join("out");
    store.restore_to(&snap, &dest).unwrap();
    assert_eq!(listing(&dest), before);
    let err = store.restore_to(&snap, &dest).unwrap_err();
    assert!(matches!(
        err,
        crate::SnapshotError::DestinationNotEmpty { .. }
    ));
}

#[test]
fn restore_in_place_deletes_edits_and_keeps_a_safety_snapshot() {
    let (tmp, ws, store) = fixture();
    let before = listing(&ws);
    let snap = store.take(&opts(Trigger::PreRun)).unwrap();
    mutate(&ws);
    let after = listing(&ws);
    let runs = moat_storage::RunStore::new(MoatHome::at(tmp.path().join("home")));
    let report = store.restore_in_place(&snap, &runs).unwrap();
    assert_eq!(listing(&ws), before);
    let safety = store.find(report.safety.as_deref().unwrap()).unwrap();
    assert_eq!(safety.trigger, Trigger::Safety);
    let dest = tmp.path().join("undo");
    store.restore_to(&safety, &dest).unwrap();
    assert_eq!(listing(&dest), after);
}

#[test]
fn a_second_snapshot_after_three_edits_stores_three_blobs() {
    let (_tmp, ws, store) = fixture();
    for i in 0..50 {
        fs::write(ws.join(format!("src/f{i}")), format!("file {i}\n")).unwrap();
    }
    let first = store.take(&opts(Trigger::PreRun)).unwrap();
    assert_eq!(first.files_read, 55);
    // As if the first scan were long ago: its hashes are trusted.
    let mut old = first.clone();
    old.scan_started_ns += 10 * crate::RACY_MARGIN_NS;
    store.save_record(&old).unwrap();
    fs::write(ws.join("src/f1"), "edited 1\n").unwrap();
    fs::write(ws.join("src/f2"), "edited 2\n").unwrap();
    fs::write(ws.join("b"), "edited b\n").unwrap();
    let second = store.take(&opts(Trigger::Manual)).unwrap();
    assert_eq!(second.new_files, 3);
    assert_eq!(second.files_read, 3);
    // The trees on the paths to the root: `src` and the root.
    assert_eq!(second.new_objects, 5);
}

#[test]
fn special_files_are_left_out_and_counted() {
    let (_tmp, ws, store) = fixture();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        ws.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let snap = store.take(&opts(Trigger::Manual)).unwrap();
    assert_eq!(snap.skipped_count, 1);
    assert_eq!(snap.skipped, vec!["fifo (special file)".to_owned()]);
}

#[test]
fn excluded_paths_are_left_out_and_left_alone() {
    let (tmp, ws, store) = fixture();
    let mut o = opts(Trigger::Manual);
    o.exclude = vec!["src/deep".into()];
    let snap = store.take(&o).unwrap();
    fs::write(ws.join("src/deep/later"), "kept").unwrap();
    let runs = moat_storage::RunStore::new(MoatHome::at(tmp.path().join("home")));
    store.restore_in_place(&snap, &runs).unwrap();
    assert!(ws.join("src/deep/later").exists());
}

#[test]
fn store_files_are_private_and_prune_deletes_unreferenced_blobs() {
    let (_tmp, ws, store) = fixture();
    let pre = store.take(&opts(Trigger::PreRun)).unwrap();
    for i in 0..3 {
        fs::write(ws.join("b"), format!("version {i}\n")).unwrap();
        store.take(&opts(Trigger::Manual)).unwrap();
    }
    for entry in walk_all(store.dir()) {
        let m = fs::symlink_metadata(&entry).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m.mode() & 0o777, want, "{}", entry.display());
    }
    let dry = store.prune("run_000000000001", 1, true).unwrap();
    assert_eq!((dry.removed.len(), dry.kept), (2, 2));
    assert_eq!(store.list().unwrap().len(), 4);
    let report = store.prune("run_000000000001", 1, false).unwrap();
    assert_eq!(report.removed.len(), 2);
    // "version 0" and "version 1", and the two root trees.
    assert_eq!(report.blobs_deleted, 4);
    let left: Vec<String> = store.list().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&pre.id));
}

fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_all(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_store_inside_the_workspace_is_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    fs::create_dir_all(&ws).unwrap();
    fs::write(ws.join("a"), "a").unwrap();
    let store = Store::open(&MoatHome::at(ws.join(".moat-home")), &ws).unwrap();
    let snap = store.take(&opts(Trigger::Manual)).unwrap();
    // The home's other files (the lock's directory) are there, the store not.
    let names: Vec<String> = store
        .read_tree(&snap.root)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["a", ".moat-home"]
            .iter()
            .rev()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    );
    let home = store
        .read_tree(
            &store.read_tree(&snap.root).unwrap()[0]
                .hash
                .clone()
                .unwrap(),
        )
        .unwrap();
    assert!(home.is_empty(), "{home:?}");
}

#[test]
fn files_and_directories_the_caller_cannot_read_are_left_out_and_counted() {
    if !rustix::process::geteuid().is_root() {
        return; // needs a second identity; tests run as root here
    }
    let (tmp, ws, _) = fixture();
    fs::write(ws.join("secret"), "root only").unwrap();
    fs::set_permissions(ws.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir(ws.join("locked")).unwrap();
    fs::write(ws.join("locked/x"), "x").unwrap();
    fs::set_permissions(ws.join("locked"), fs::Permissions::from_mode(0o700)).unwrap();
    for dir in [
        tmp.path(),
        ws.as_path(),
        &ws.join("src"),
        &ws.join("src/deep"),
        &ws.join("empty"),
    ] {
        let mode = fs::metadata(dir).unwrap().permissions().mode();
        fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o755)).unwrap();
    }
    let home = tmp.path().join("nobody-home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    // This thread only: an unprivileged identity (the others keep root).
    let snap = std::thread::spawn(move || {
        rustix::thread::set_thread_res_uid(
            rustix::process::Uid::from_raw_unchecked(65534),
            rustix::process::Uid::from_raw_unchecked(65534),
            rustix::process::Uid::from_raw_unchecked(0),
        )
        .unwrap();
        let store = Store::open(&MoatHome::at(&home), &ws).unwrap();
        store.take(&opts(Trigger::PreRun))
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(snap.skipped_count, 2);
    assert_eq!(snap.skipped, ["locked (unreadable)", "secret (unreadable)"]);
    assert_eq!(snap.files, 5);
}

fn run_opts(run: &str, trigger: Trigger) -> TakeOptions {
    TakeOptions {
        run_id: Some(run.into()),
        ..opts(trigger)
    }
}

#[test]
fn retention_keeps_max_count_with_the_pre_run_one_unless_delete_initial() {
    let (_tmp, ws, store) = fixture();
    let pre = store.take(&opts(Trigger::PreRun)).unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        fs::write(ws.join("b"), format!("version {i}\n")).unwrap();
        ids.push(store.take(&opts(Trigger::Idle)).unwrap().id);
    }
    let report = store.retain("run_000000000001", 3, false).unwrap();
    assert_eq!(report.removed.len(), 2);
    let left: Vec<String> = store.list().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(left, [pre.id.clone(), ids[2].clone(), ids[3].clone()]);
    // Nothing over the count: nothing removed.
    assert!(store
        .retain("run_000000000001", 3, false)
        .unwrap()
        .removed
        .is_empty());
    store.retain("run_000000000001", 2, true).unwrap();
    let left: Vec<String> = store.list().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(left, [ids[2].clone(), ids[3].clone()]);
    // The newest always stays.
    store.retain("run_000000000001", 1, false).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn forgetting_a_run_frees_only_the_blobs_no_other_run_needs() {
    let (tmp, ws, store) = fixture();
    let home = MoatHome::at(tmp.path().join("home"));
    store.take(&run_opts("run_a", Trigger::PreRun)).unwrap();
    fs::write(ws.join("only-a"), "unique to run a's snapshot").unwrap();
    store.take(&run_opts("run_a", Trigger::Manual)).unwrap();
    fs::remove_file(ws.join("only-a")).unwrap();
    let b = store.take(&run_opts("run_b", Trigger::PreRun)).unwrap();
    let (removed, freed) = crate::forget_run(&home, "run_a").unwrap();
    assert_eq!(removed, 2);
    assert!(freed > 0);
    let left: Vec<String> = store.list().unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(left, std::slice::from_ref(&b.id));
    // Run b's snapshot is whole: it restores the tree.
    let dest = tmp.path().join("dest");
    store.restore_to(&b, &dest).unwrap();
    assert_eq!(listing(&dest), listing(&ws));
    // Gone with its workspace too: the store is found by its directory.
    fs::remove_dir_all(&ws).unwrap();
    assert_eq!(crate::forget_run(&home, "run_b").unwrap().0, 1);
    let blobs: Vec<PathBuf> = walk_all(&store.dir().join("blobs"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
}

#[test]
fn an_automatic_snapshot_of_a_run_destroyed_meanwhile_is_not_kept() {
    let (tmp, ws, store) = fixture();
    let home = MoatHome::at(tmp.path().join("home"));
    let retention = crate::Retention {
        max_count: 10,
        delete_initial: false,
    };
    let auto = |run: &str| crate::automatic(&home, &ws, run, Trigger::Idle, None, &[], retention);
    fs::create_dir_all(home.run_dir("run_alive")).unwrap();
    assert!(auto("run_alive").is_some());
    assert!(auto("run_gone").is_none());
    let runs: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(runs, [Some("run_alive".to_owned())]);
}
