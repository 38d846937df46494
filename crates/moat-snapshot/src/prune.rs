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
        let _lock = self.lock()?;
        let mine: Vec<Record> = self
            .list()?
            .into_iter()
            .filter(|r| r.run_id.as_deref() == Some(run_id))
            .collect();
        let newest_first = mine.iter().rev();
        let mut report = PruneReport::default();
        for (i, r) in newest_first.enumerate() {
            if i < keep || r.trigger == Trigger::PreRun {
                report.kept += 1;
            } else {
                report.removed.push(r.clone());
            }
        }
        if dry_run {
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
