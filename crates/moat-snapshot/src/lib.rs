//! Workspace snapshots.
//!
//! All snapshots of a workspace share one content-addressed store under
//! `MOAT_HOME/snapshots/<workspace-id>/` (see [`store`]): a file's content
//! is stored once, named by its SHA-256, and a directory is a tree object
//! listing its entries (name, kind, mode, size, times, owner, and the hash
//! of its content or tree, or its link target). A snapshot is a small
//! record naming its root tree, so a second snapshot costs only the files
//! that changed and the trees on their paths to the root, and restore is
//! exact: modes, symlinks (never followed), empty directories and
//! deletions. Special files (FIFOs, sockets, devices) are left out and
//! counted in the record. `.git` is snapshotted like any directory: it is
//! part of what must be restorable. Everything is `0600`/`0700`.

pub mod action;
mod error;
mod format;
mod model;
mod prune;
mod restore;
pub mod store;
mod take;

pub use crate::action::{automatic, perform, pre_run, Action, Retention};
pub use crate::error::SnapshotError;
pub use crate::format::{format_list, format_prune, format_taken};
pub use crate::model::{decode_name, encode_name, Entry, Kind, Record, Trigger};
pub use crate::prune::{PruneReport, DEFAULT_KEEP};
pub use crate::restore::RestoreReport;
pub use crate::store::{forget_run, forget_runs, stores_dir, workspace_id, Store};
pub use crate::take::{TakeOptions, RACY_MARGIN_NS};

#[cfg(test)]
mod tests;
