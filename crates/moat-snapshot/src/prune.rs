//! Pruning: keep a run's newest snapshots (and its pre-run one), then
//! delete every blob no remaining snapshot of the workspace reaches.

use std::collections::HashSet;
use std::fs;

use crate::model::{Kind, Record, Trigger};
use crate::store::Store;
use crate::SnapshotError;

type R<T> = Result<T, SnapshotError>;

/// How many snapshots `moat snapshot prune` keeps by default.
pub const DEFAULT_KEEP: usize = 5;

/// Whether a removal deletes, and when it collects unreferenced blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Only say what would go.
    DryRun,
    /// Collect garbage even when no snapshot went (leftovers of a crash).
    Collect,
    /// Collect garbage only when a snapshot went.
    IfRemoved,
}

/// What a prune removed (or would remove, for a dry run).
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// Snapshots removed.
    pub removed: Vec<Record>,
    /// Snapshots kept.
    pub kept: usize,
    /// Blobs deleted (0 for a dry run: they are counted only when no
    /// snapshot is left that needs them, which a dry run does not check).
    pub blobs_deleted: u64,
    /// Bytes those blobs held.
    pub bytes_freed: u64,
}

impl Store {
    /// Keeps the `keep` newest snapshots of `run_id` and its pre-run
    /// snapshot; removes its others, then the blobs nothing references.
    pub fn prune(&self, run_id: &str, keep: usize, dry_run: bool) -> R<PruneReport> {
        let dry_run = if dry_run { Mode::DryRun } else { Mode::Collect };
        self.remove_where(run_id, dry_run, |i, r| {
            i < keep || r.trigger == Trigger::PreRun
        })
    }

    /// moat.yaml `snapshots.retention`: at most `max_count` snapshots of
    /// `run_id`, the pre-run one among them unless `delete_initial`; the
    /// newest is always kept.
    pub fn retain(&self, run_id: &str, max_count: usize, delete_initial: bool) -> R<PruneReport> {
        let has_pre_run = self
            .list()?
            .iter()
            .any(|r| r.run_id.as_deref() == Some(run_id) && r.trigger == Trigger::PreRun);
        let keep_pre_run = has_pre_run && !delete_initial;
        let newest = max_count.saturating_sub(usize::from(keep_pre_run)).max(1);
        self.remove_where(run_id, Mode::IfRemoved, |i, r| {
            i < newest || (keep_pre_run && r.trigger == Trigger::PreRun)
        })
    }

    /// Removes every snapshot of `run_id` (the run is gone), then the
    /// blobs no other run's snapshot references.
    pub fn forget_run(&self, run_id: &str) -> R<PruneReport> {
        self.remove_where(run_id, Mode::IfRemoved, |_, _| false)
    }

    /// Removes the snapshots of `run_id` for which `keep(i, record)` is
    /// false (`i`: 0 for the newest), then unreferenced blobs.
    fn remove_where(
        &self,
        run_id: &str,
        mode: Mode,
        keep: impl Fn(usize, &Record) -> bool,
    ) -> R<PruneReport> {
        let _lock = self.lock()?;
        let mine: Vec<Record> = self
            .list()?
            .into_iter()
            .filter(|r| r.run_id.as_deref() == Some(run_id))
            .collect();
        let mut report = PruneReport::default();
        for (i, r) in mine.iter().rev().enumerate() {
            if keep(i, r) {
                report.kept += 1;
            } else {
                report.removed.push(r.clone());
            }
        }
        let nothing = report.removed.is_empty() && mode == Mode::IfRemoved;
        if mode == Mode::DryRun || nothing {
            return Ok(report);
        }
        for r in &report.removed {
            self.remove_record(&r.id)?;
        }
        self.collect_garbage(&mut report)?;
        Ok(report)
    }

    /// Every blob and tree reachable from a snapshot.
    fn reachable(&self) -> R<HashSet<String>> {
        let mut seen = HashSet::new();
        let mut todo: Vec<String> = self.list()?.into_iter().map(|r| r.root).collect();
        while let Some(tree) = todo.pop() {
            if !seen.insert(tree.clone()) {
                continue;
            }
            for e in self.read_tree(&tree)? {
                match (e.kind, e.hash) {
                    (Kind::Dir, Some(h)) => todo.push(h),
                    (Kind::File, Some(h)) => {
                        seen.insert(h);
                    }
                    _ => {}
                }
            }
        }
        Ok(seen)
    }

    fn collect_garbage(&self, report: &mut PruneReport) -> R<()> {
        let keep = self.reachable()?;
        let blobs = self.dir.join("blobs");
        for prefix in fs::read_dir(&blobs).map_err(SnapshotError::io("listing", &blobs))? {
            let prefix = prefix.map_err(SnapshotError::io("listing", &blobs))?;
            let pname = prefix.file_name().to_string_lossy().into_owned();
            let pdir = prefix.path();
            for blob in fs::read_dir(&pdir).map_err(SnapshotError::io("listing", &pdir))? {
                let blob = blob.map_err(SnapshotError::io("listing", &pdir))?;
                let hash = format!("{pname}{}", blob.file_name().to_string_lossy());
                if keep.contains(&hash) {
                    continue;
                }
                let size = blob.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(blob.path())
                    .map_err(SnapshotError::io("removing", &blob.path()))?;
                report.blobs_deleted += 1;
                report.bytes_freed += size;
            }
        }
        // Left by a snapshot that died mid-way; none is in flight (lock).
        let tmp = self.dir.join("tmp");
        for t in fs::read_dir(&tmp)
            .map_err(SnapshotError::io("listing", &tmp))?
            .flatten()
        {
            let _ = fs::remove_file(t.path());
        }
        Ok(())
    }
}
