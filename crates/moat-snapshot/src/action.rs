//! `moat snapshot ...` as one call the binary makes with its parsed
//! arguments: the run resolved, the workspace's store opened, the text to
//! print returned.

use std::path::PathBuf;

use moat_home::MoatHome;
use moat_storage::{RunMetadata, RunStore};

use crate::format::{format_list, format_prune, format_taken};
use crate::model::{Record, Trigger};
use crate::store::Store;
use crate::take::TakeOptions;
use crate::SnapshotError;

/// What `moat snapshot` was asked to do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Take a snapshot now.
    Take {
        /// Its label.
        label: Option<String>,
        /// Print its record as JSON.
        json: bool,
    },
    /// List the run's snapshots.
    List {
        /// As a JSON array of records.
        json: bool,
    },
    /// Restore one (the run's latest when `id` is `None`), in place
    /// unless `to` is given.
    Restore {
        /// Snapshot id or unique prefix.
        id: Option<String>,
        /// A new or empty directory.
        to: Option<PathBuf>,
    },
    /// Remove all but the newest `keep` (and the pre-run snapshot).
    Prune {
        /// How many to keep.
        keep: usize,
        /// Only say what would go.
        dry_run: bool,
    },
}

/// Does `action` for the run `run` (id, id prefix or name).
pub fn perform(home: &MoatHome, run: &str, action: Action) -> Result<String, SnapshotError> {
    let runs = RunStore::new(home.clone());
    let meta: RunMetadata = runs.find(Some(run), |_| true)?;
    let store = Store::open(home, &meta.workspace)?;
    let id = meta.id.to_string();
    let mine = || -> Result<Vec<Record>, SnapshotError> {
        Ok(store
            .list()?
            .into_iter()
            .filter(|r| r.run_id.as_deref() == Some(id.as_str()))
            .collect())
    };
    match action {
        Action::Take { label, json } => {
            let exclude = mine()?
                .first()
                .map(|r| r.exclude.clone())
                .unwrap_or_default();
            let opts = TakeOptions {
                run_id: Some(id.clone()),
                label,
                trigger: Trigger::Manual,
                exclude,
            };
            let record = store.take(&opts)?;
            if json {
                return to_json(&record);
            }
            Ok(format!("{}\n", format_taken(&record)))
        }
        Action::List { json: true } => to_json(&mine()?),
        Action::List { json: false } => Ok(format_list(&mine()?)),
        Action::Restore { id: snap, to } => {
            if to.is_none() && meta.workspace_mode.as_deref() == Some("volume") {
                return Err(SnapshotError::VolumeRunInPlace { run: id });
            }
            let record = match snap {
                Some(s) => store.find(&s)?,
                None => mine()?
                    .into_iter()
                    .rfind(|r| r.trigger != Trigger::Safety)
                    .ok_or(SnapshotError::NoSnapshots { run: id.clone() })?,
            };
            restore(&store, &runs, &record, to, &id)
        }
        Action::Prune { keep, dry_run } => {
            Ok(format_prune(&store.prune(&id, keep, dry_run)?, dry_run))
        }
    }
}

fn to_json(value: &impl serde::Serialize) -> Result<String, SnapshotError> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| SnapshotError::damaged(std::path::Path::new("snapshot record"), e))
}

fn restore(
    store: &Store,
    runs: &RunStore,
    record: &Record,
    to: Option<PathBuf>,
    run: &str,
) -> Result<String, SnapshotError> {
    let Some(dest) = to else {
        let report = store.restore_in_place(record, runs)?;
        let safety = report.safety.unwrap_or_default();
        return Ok(format!(
            "restored {} into {}: {} written, {} removed\n\
             the workspace as it was is snapshot {safety} (undo with: moat snapshot restore {run} {safety})\n",
            record.id,
            store.workspace().display(),
            report.written,
            report.removed
        ));
    };
    let report = store.restore_to(record, &dest)?;
    Ok(format!(
        "restored {} into {}: {} written\n",
        record.id,
        dest.display(),
        report.written
    ))
}

/// The pre-run snapshot of `workspace` for `run_id`, taken before the
/// sandbox starts when `exclude` is given (`None`: disabled in moat.yaml).
/// A failure is logged, not fatal: the run goes on without it.
pub fn pre_run(
    home: &MoatHome,
    workspace: &std::path::Path,
    run_id: &str,
    exclude: Option<&[String]>,
) {
    let Some(exclude) = exclude else {
        return;
    };
    let opts = TakeOptions {
        run_id: Some(run_id.to_owned()),
        label: None,
        trigger: Trigger::PreRun,
        exclude: exclude.to_vec(),
    };
    let taken = Store::open(home, workspace).and_then(|store| store.take(&opts));
    match taken {
        Ok(r) => tracing::debug!(id = %r.id, new_bytes = r.new_bytes, "pre-run snapshot"),
        Err(e) => tracing::warn!(
            "the pre-run snapshot of {} failed: {e}",
            workspace.display()
        ),
    }
}

/// moat.yaml `snapshots.retention`, applied after each automatic snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many snapshots of the run.
    pub max_count: usize,
    /// The pre-run snapshot may go too.
    pub delete_initial: bool,
}

/// An automatic snapshot of `workspace` for `run_id` (`trigger`, with a
/// label), then `retention`. A failure is logged, not fatal.
pub fn automatic(
    home: &MoatHome,
    workspace: &std::path::Path,
    run_id: &str,
    trigger: Trigger,
    label: Option<String>,
    exclude: &[String],
    retention: Retention,
) -> Option<Record> {
    let opts = TakeOptions {
        run_id: Some(run_id.to_owned()),
        label,
        trigger,
        exclude: exclude.to_vec(),
    };
    let store = match Store::open(home, workspace) {
        Ok(store) => store,
        Err(e) => {
            tracing::warn!("the {} snapshot failed: {e}", trigger.as_str());
            return None;
        }
    };
    let record = match store.take(&opts) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("the {} snapshot failed: {e}", trigger.as_str());
            return None;
        }
    };
    tracing::debug!(id = %record.id, trigger = trigger.as_str(), "snapshot");
    if !home.run_dir(run_id).exists() {
        // Destroyed meanwhile (`moat destroy --force`): nothing may keep
        // its snapshots.
        let _ = store.forget_run(run_id);
        return None;
    }
    if let Err(e) = store.retain(run_id, retention.max_count, retention.delete_initial) {
        tracing::warn!("applying snapshots.retention failed: {e}");
    }
    Some(record)
}
