//! Per-run storage: everything moat keeps about a run under
//! `MOAT_HOME/runs/<run-id>/`.
//!
//! - [`RunId`] (`run_<12 hex>`) and [`generate_name`] (`brave-otter`).
//! - [`RunMetadata`] in `metadata.json`, rewritten atomically at each state
//!   change, so a crash leaves the last consistent state.
//! - [`LogWriter`] appending `logs.jsonl` one line per write, so a crash
//!   loses at most the line being written; [`read_logs`] to read it back.
//! - [`RunStore`]: create, load, list, find a run by id, id prefix or name,
//!   and remove it.
//!
//! It does not start or stop anything: runtimes and the orchestrator do,
//! and record what happened here.

mod logs;
mod metadata;
mod names;
mod store;
mod trace;

pub use crate::logs::{
    read_logs, read_service_logs, LogLine, LogStream, LogWriter, DEFAULT_MAX_LOG_BYTES,
};
pub use crate::metadata::{RunMetadata, RunState};
pub use crate::names::{generate_name, validate_name, InvalidName, RunId};
pub use crate::store::{
    is_disk_full, process_alive, process_start_time, supervisor_alive, RunStore, StorageError,
    EXEC_SOCKET, PORT_SOCKET, RESERVE_FILE,
};
pub use crate::trace::{
    read_trace, Har, HarContent, HarCreator, HarEntry, HarLog, HarMoat, HarPair, HarPostData,
    HarRequest, HarResponse, HarTimings, Trace, TraceRecord,
};
