use std::path::PathBuf;

use moat_home::{ensure_private_dir, write_private_atomic, MoatHome};

use crate::{RunId, RunMetadata, RunState};

/// A failure of run storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No run matches.
    #[error("no run matches {0:?}")]
    NotFound(String),
    /// No run exists at all.
    #[error("no runs yet")]
    NoRuns,
    /// A name matches several runs; the user must pick an id.
    #[error("{name:?} matches {} runs: {}", ids.len(), ids.join(", "))]
    Ambiguous {
        /// The name given.
        name: String,
        /// The matching ids.
        ids: Vec<String>,
    },
    /// `metadata.json` is damaged.
    #[error("{path}: damaged run metadata ({reason})")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The run id (directory name).
        id: String,
        /// Parser message.
        reason: String,
    },
    /// A file operation failed.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),
    /// A directory operation failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
}

impl moat_hint::Hint for StorageError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            StorageError::NotFound(_) => "List runs with: moat list".to_owned(),
            StorageError::NoRuns => "Start one with: moat run -- <command>".to_owned(),
            StorageError::Ambiguous { .. } => "Name the run by its id.".to_owned(),
            StorageError::Damaged { id, .. } => format!("Remove the run with: moat destroy {id}"),
            StorageError::Home(error) => return moat_hint::Hint::hint(error),
            StorageError::Io { .. } => return None,
        };
        Some(fix.into())
    }
}

/// The socket in a run's directory where its sandbox takes more commands
/// (`moat exec`, `moat join`) while it runs.
pub const EXEC_SOCKET: &str = "exec.sock";

/// The socket in a run's directory through which the daemon reaches the
/// run's endpoints (`ports:`). In a directory of its own: a container's
/// network guard, which serves it, gets that directory mounted, and
/// nothing else of the run's storage.
pub const PORT_SOCKET: &str = "endpoints/ports.sock";

/// The runs under `MOAT_HOME/runs`.
#[derive(Debug, Clone)]
pub struct RunStore {
    home: MoatHome,
}

impl RunStore {
    /// The store in `home`.
    pub fn new(home: MoatHome) -> Self {
        RunStore { home }
    }

    /// The installation it belongs to.
    pub fn home(&self) -> &MoatHome {
        &self.home
    }

    /// A run's directory.
    pub fn dir(&self, id: &RunId) -> PathBuf {
        self.home.run_dir(id.as_str())
    }

    /// Creates the run's directory (0700) and writes its metadata.
    pub fn create(&self, meta: &RunMetadata) -> Result<PathBuf, StorageError> {
        let dir = self.dir(&meta.id);
        ensure_private_dir(&dir)?;
        self.save(meta)?;
        Ok(dir)
    }

    /// Rewrites `metadata.json` atomically without waiting for the disk:
    /// for the step from starting to running, which the final state
    /// ([`RunStore::save`], durable) supersedes.
    pub fn save_progress(&self, meta: &RunMetadata) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| StorageError::Damaged {
            path: self.dir(&meta.id).join("metadata.json"),
            id: meta.id.to_string(),
            reason: e.to_string(),
        })?;
        moat_home::write_private_atomic_unsynced(
            &self.dir(&meta.id).join("metadata.json"),
            &bytes,
        )?;
        self.index_name(meta);
        Ok(())
    }

    /// Rewrites `metadata.json` atomically.
    pub fn save(&self, meta: &RunMetadata) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| StorageError::Damaged {
            path: self.dir(&meta.id).join("metadata.json"),
            id: meta.id.to_string(),
            reason: e.to_string(),
        })?;
        write_private_atomic(&self.dir(&meta.id).join("metadata.json"), &bytes)?;
        self.index_name(meta);
        Ok(())
    }

    /// The directory of active-name markers: `runs/.active/<name>` holds
    /// the id of the active run of that name, so claiming a name reads one
    /// file instead of every run's metadata.
    fn active_dir(&self) -> PathBuf {
        self.home.runs_dir().join(".active")
    }

    /// Keeps the marker of `meta`'s name in step with its state. Best
    /// effort: a marker that could not be written (a full disk) only makes
    /// [`RunStore::active_named`] miss that run, and stale markers are
    /// dropped when read.
    fn index_name(&self, meta: &RunMetadata) {
        if crate::validate_name(&meta.name).is_err() {
            return;
        }
        let marker = self.active_dir().join(&meta.name);
        if meta.state.is_active() {
            // No fsync: a marker lost in a crash only costs a scan-free
            // lookup's answer for a run that is no longer running anyway.
            if ensure_private_dir(&self.active_dir()).is_ok() {
                let _ = std::fs::write(&marker, meta.id.as_str());
            }
        } else if std::fs::read(&marker).is_ok_and(|id| id == meta.id.as_str().as_bytes()) {
            let _ = std::fs::remove_file(&marker);
        }
    }

    /// Reads a run's metadata.
    pub fn load(&self, id: &RunId) -> Result<RunMetadata, StorageError> {
        let path = self.dir(id).join("metadata.json");
        let bytes = match moat_home::read_if_exists(&path)? {
            Some(b) => b,
            None => return Err(StorageError::NotFound(id.to_string())),
        };
        serde_json::from_slice(&bytes).map_err(|e| StorageError::Damaged {
            path,
            id: id.to_string(),
            reason: e.to_string(),
        })
    }

    /// Every run, newest first; runs whose metadata is damaged are returned
    /// separately so a list can show them.
    pub fn list(&self) -> Result<(Vec<RunMetadata>, Vec<StorageError>), StorageError> {
        let dir = self.home.runs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()))
            }
            Err(source) => {
                return Err(StorageError::Io {
                    action: "listing",
                    path: dir,
                    error: source,
                })
            }
        };
        let mut runs = Vec::new();
        let mut damaged = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().and_then(RunId::parse) else {
                continue;
            };
            match self.load(&id) {
                Ok(meta) => runs.push(meta),
                Err(StorageError::NotFound(_)) => {}
                Err(e) => damaged.push(e),
            }
        }
        runs.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        Ok((runs, damaged))
    }

    /// Finds a run by exact id, then unique id prefix, then exact name
    /// (the newest active one wins over stopped ones of the same name only
    /// when it is the single active one). With no query: the newest run
    /// satisfying `filter`.
    pub fn find(
        &self,
        query: Option<&str>,
        filter: impl Fn(&RunMetadata) -> bool,
    ) -> Result<RunMetadata, StorageError> {
        let (runs, _) = self.list()?;
        let Some(query) = query else {
            return runs
                .into_iter()
                .find(|r| filter(r))
                .ok_or(StorageError::NoRuns);
        };
        if let Some(r) = runs.iter().find(|r| r.id.as_str() == query) {
            return Ok(r.clone());
        }
        if query.starts_with("run_") && query.len() > 4 {
            let matches: Vec<&RunMetadata> = runs
                .iter()
                .filter(|r| r.id.as_str().starts_with(query))
                .collect();
            if matches.len() == 1 {
                return Ok(matches[0].clone());
            }
        }
        let named: Vec<&RunMetadata> = runs.iter().filter(|r| r.name == query).collect();
        match named.len() {
            0 => Err(StorageError::NotFound(query.to_string())),
            1 => Ok(named[0].clone()),
            _ => {
                let active: Vec<&&RunMetadata> =
                    named.iter().filter(|r| r.state.is_active()).collect();
                if active.len() == 1 {
                    return Ok((*active[0]).clone());
                }
                Err(StorageError::Ambiguous {
                    name: query.to_string(),
                    ids: named.iter().map(|r| r.id.to_string()).collect(),
                })
            }
        }
    }

    /// A name no active run has, from `generate` (e.g.
    /// [`crate::generate_name`]): when its first tries are all taken, the
    /// last one gets the first free number (`brave-otter-3`). Call it
    /// under the names lock the run is recorded under, so two runs cannot
    /// pick the same name.
    pub fn free_name(&self, mut generate: impl FnMut() -> String) -> Result<String, StorageError> {
        let mut last = String::new();
        for _ in 0..20 {
            last = generate();
            if self.active_named(&last)?.is_none() {
                return Ok(last);
            }
        }
        let stem: String = last.chars().take(50).collect();
        let stem = stem.trim_end_matches('-');
        let mut n: u64 = 2;
        loop {
            let name = format!("{stem}-{n}");
            if self.active_named(&name)?.is_none() {
                return Ok(name);
            }
            n += 1;
        }
    }

    /// The active run named `name`, if any.
    pub fn active_named(&self, name: &str) -> Result<Option<RunMetadata>, StorageError> {
        if crate::validate_name(name).is_err() || !self.active_dir().is_dir() {
            // A store from before the markers, or a name no marker can
            // have: look at every run (and write the markers on the way).
            let (runs, _) = self.list()?;
            for run in runs.iter().filter(|r| r.state.is_active()) {
                self.index_name(run);
            }
            let _ = ensure_private_dir(&self.active_dir());
            return Ok(runs
                .into_iter()
                .find(|r| r.name == name && r.state.is_active()));
        }
        let marker = self.active_dir().join(name);
        let Some(id) = moat_home::read_if_exists(&marker)?
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| RunId::parse(text.trim()))
        else {
            return Ok(None);
        };
        match self.load(&id) {
            Ok(meta) if meta.name == name && meta.state.is_active() => Ok(Some(meta)),
            Ok(_) | Err(StorageError::NotFound(_)) => {
                let _ = std::fs::remove_file(&marker);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes a run's directory.
    pub fn remove(&self, id: &RunId) -> Result<(), StorageError> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::Io {
                action: "removing",
                path: dir,
                error: source,
            }),
        }
    }

    /// Marks runs whose supervising process is gone as failed, so a crash
    /// of the CLI never leaves a run "running" forever.
    pub fn reconcile(&self, meta: &mut RunMetadata) -> Result<(), StorageError> {
        if Self::reconcile_view(meta) {
            self.save(meta)?;
        }
        Ok(())
    }

    /// [`RunStore::reconcile`] in memory only, for commands that only
    /// read (`moat list`, `moat status`, `moat logs`): they must work on a
    /// full disk. Returns whether `meta` changed.
    pub fn reconcile_view(meta: &mut RunMetadata) -> bool {
        if !meta.state.is_active() || supervisor_alive(meta) || meta.container_id.is_some() {
            return false;
        }
        meta.state = RunState::Failed;
        meta.error
            .get_or_insert_with(|| "the moat process supervising this run exited".into());
        meta.stopped_at.get_or_insert_with(chrono::Utc::now);
        true
    }

    /// Sets aside a little space in the run's directory
    /// ([`RESERVE_FILE`]), so that [`RunStore::save_final`] can record how
    /// the run ended even when `MOAT_HOME` fills up during the run.
    pub fn reserve(&self, id: &RunId) -> Result<(), StorageError> {
        let path = self.dir(id).join(RESERVE_FILE);
        let io = |source| StorageError::Io {
            action: "reserving space in",
            path: path.clone(),
            error: source,
        };
        let file = std::fs::File::create(&path).map_err(io)?;
        // The blocks are what matters, not their durability: allocate
        // them (no fsync), writing zeros where the file system cannot.
        let allocated = rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::empty(),
            0,
            RESERVE_BYTES as u64,
        );
        if allocated.is_err() {
            use std::io::Write as _;
            (&file).write_all(&vec![0u8; RESERVE_BYTES]).map_err(io)?;
        }
        Ok(())
    }

    /// Saves the run's final state. When the disk is full, the reserve
    /// ([`RunStore::reserve`]) is released and the run saved as failed,
    /// with the reason; that reason is returned (`Ok(None)` otherwise).
    pub fn save_final(&self, meta: &mut RunMetadata) -> Result<Option<String>, StorageError> {
        let reserve = self.dir(&meta.id).join(RESERVE_FILE);
        let first = self.save(meta);
        let _ = std::fs::remove_file(&reserve);
        let err = match first {
            Ok(()) => return Ok(None),
            Err(StorageError::Home(e)) if is_disk_full(e.kind()) => e,
            Err(e) => return Err(e),
        };
        let reason = format!(
            "moat could not record the end of this run: {err}. Free space in {} (moat \
             status shows what runs use; moat clean removes stopped runs)",
            self.home.root().display()
        );
        meta.state = RunState::Failed;
        meta.error = Some(reason.clone());
        self.save(meta)?;
        Ok(Some(reason))
    }
}

/// The file holding the space [`RunStore::reserve`] sets aside.
pub const RESERVE_FILE: &str = ".space-reserve";
const RESERVE_BYTES: usize = 64 * 1024;

/// Whether an error kind means the file system is full.
pub fn is_disk_full(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Whether the run's supervising process is alive: the recorded pid runs,
/// and it is the same process (same start time) when the start time was
/// recorded. Runs recorded by older versions have only the pid.
pub fn supervisor_alive(meta: &RunMetadata) -> bool {
    meta.supervisor_pid
        .is_some_and(|pid| process_alive(pid, meta.supervisor_start))
}

/// Fields of `/proc/PID/stat` after the parenthesised command name.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`); `None` when there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    // Field 3 (the state) is the first after the name: field 22 is the 20th.
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether a process with `pid` exists (and is not a zombie we could see)
/// and, when `start` is given, started then: otherwise the pid was reused.
pub fn process_alive(pid: u32, start: Option<u64>) -> bool {
    let Some(fields) = stat_fields(pid) else {
        return false;
    };
    let running = fields
        .first()
        .is_some_and(|state| state != "Z" && state != "X");
    let same = match start {
        Some(start) => fields.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(start),
        None => true,
    };
    running && same
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str) -> RunMetadata {
        RunMetadata::new(
            RunId::generate(),
            name.into(),
            "/w".into(),
            vec!["true".into()],
        )
    }

    #[test]
    fn generated_names_are_unique_among_active_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RunStore::new(MoatHome::at(tmp.path()));
        for name in ["brave-otter", "brave-otter-2"] {
            let mut m = meta(name);
            m.state = RunState::Running;
            store.create(&m).unwrap();
        }
        // Every generated name is taken: the name gets a number, and a
        // number that is taken too is skipped.
        let name = store.free_name(|| "brave-otter".to_owned()).unwrap();
        assert_eq!(name, "brave-otter-3");
        assert_eq!(
            store.free_name(|| "calm-owl".to_owned()).unwrap(),
            "calm-owl"
        );
    }

    #[test]
    fn active_names_are_found_by_marker_and_stale_markers_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RunStore::new(MoatHome::at(tmp.path()));
        // A store written before the markers: found by a scan, which
        // writes the markers.
        let mut a = meta("alpha");
        store.create(&a).unwrap();
        std::fs::remove_dir_all(store.active_dir()).unwrap();
        assert_eq!(store.active_named("alpha").unwrap().unwrap().id, a.id);
        assert!(store.active_dir().join("alpha").is_file());
        assert!(store.active_named("beta").unwrap().is_none());

        // A run that stops drops its marker.
        a.state = RunState::Stopped;
        store.save(&a).unwrap();
        assert!(!store.active_dir().join("alpha").exists());
        assert!(store.active_named("alpha").unwrap().is_none());

        // A marker whose run is gone, or names another run, is dropped.
        let b = meta("beta");
        store.create(&b).unwrap();
        store.remove(&b.id).unwrap();
        assert!(store.active_named("beta").unwrap().is_none());
        assert!(!store.active_dir().join("beta").exists());
        std::fs::write(store.active_dir().join("gamma"), a.id.as_str()).unwrap();
        assert!(store.active_named("gamma").unwrap().is_none());
    }

    #[test]
    fn create_find_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RunStore::new(MoatHome::at(tmp.path()));
        let mut a = meta("alpha");
        a.state = RunState::Stopped;
        store.create(&a).unwrap();
        let b = meta("beta");
        store.create(&b).unwrap();
        assert_eq!(
            store.find(Some(a.id.as_str()), |_| true).unwrap().name,
            "alpha"
        );
        assert_eq!(store.find(Some("beta"), |_| true).unwrap().id, b.id);
        assert_eq!(
            store.find(Some(&a.id.as_str()[..10]), |_| true).unwrap().id,
            a.id
        );
        assert!(matches!(
            store.find(Some("gamma"), |_| true),
            Err(StorageError::NotFound(_))
        ));
        assert_eq!(
            store
                .find(None, |r| r.state == RunState::Stopped)
                .unwrap()
                .id,
            a.id
        );
        store.remove(&a.id).unwrap();
        assert!(store.find(Some("alpha"), |_| true).is_err());
    }

    #[test]
    fn damaged_metadata_is_reported_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RunStore::new(MoatHome::at(tmp.path()));
        let a = meta("alpha");
        store.create(&a).unwrap();
        std::fs::write(store.dir(&a.id).join("metadata.json"), b"{trunc").unwrap();
        let (runs, damaged) = store.list().unwrap();
        assert!(runs.is_empty());
        assert_eq!(damaged.len(), 1);
        let fix = moat_hint::Hint::hint(&damaged[0]).unwrap();
        assert!(fix.as_str().contains("moat destroy"), "{fix}");
    }

    #[test]
    fn reconcile_marks_orphans_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = RunStore::new(MoatHome::at(tmp.path()));
        let mut a = meta("alpha");
        a.state = RunState::Running;
        a.supervisor_pid = Some(u32::MAX - 1);
        store.create(&a).unwrap();
        store.reconcile(&mut a).unwrap();
        assert_eq!(a.state, RunState::Failed);
        let mut b = meta("beta");
        b.state = RunState::Running;
        b.supervisor_pid = Some(std::process::id());
        b.supervisor_start = process_start_time(std::process::id());
        assert!(b.supervisor_start.is_some());
        store.reconcile(&mut b).unwrap();
        assert_eq!(b.state, RunState::Running);
        // Our pid, but another start time: the pid was reused.
        let mut c = meta("gamma");
        c.state = RunState::Running;
        c.supervisor_pid = Some(std::process::id());
        c.supervisor_start = b.supervisor_start.map(|t| t + 1);
        store.create(&c).unwrap();
        store.reconcile(&mut c).unwrap();
        assert_eq!(c.state, RunState::Failed);
    }
}
