//! Which configuration a run may apply.
//!
//! A run mounts its workspace read-write at `/workspace`, and the
//! workspace holds `moat.yaml`: what the sandbox may mount, reach and be
//! granted. An agent that edits it (or `agent.yaml`, or a file under
//! `.moat/`, or swaps a mounted directory for a symlink to `~/.moat`)
//! would otherwise widen its own next sandbox. This crate owns the rule
//! that prevents it: **configuration the user wrote is trusted;
//! configuration that changed while a run had the workspace mounted is
//! not, until the user accepts it** (`moat trust`).
//!
//! # The record
//!
//! One JSON file per workspace, `MOAT_HOME/trust/<sha256 of the canonical
//! path>.json` (0600, written atomically under a lock beside it), holds
//! the accepted [snapshot](snapshot::Snapshot) — the text of the config
//! files (so a diff can be shown), the digest of every `.moat/` entry, and
//! where each mount source of the config resolves — the runs open on the
//! workspace (id and supervisor pid), and an optional taint naming the run
//! that left a change behind. It lives in `MOAT_HOME`, which no sandbox
//! can see (`moat-run` refuses to mount it), so a run cannot forge it.
//!
//! # The rule
//!
//! At a run's start ([`check`], and again atomically when the run is
//! recorded as open, [`open_run`]):
//! - no record: first use, what is there is accepted;
//! - the current state equals the accepted one: trusted (a taint left by
//!   a run whose change was reverted is cleared);
//! - it differs, no run is open and no taint is set: the change happened
//!   outside any run, so it is the user's: accepted silently;
//! - otherwise refused, naming the run and listing what changed.
//!
//! A run has its whole workspace mounted, so it can write a moat.yaml into
//! any subdirectory too. The record keeps the last run that ended
//! (`last_run`), and a workspace inside one moat ran in is judged against
//! that enclosing run as well: its first use with a config present is
//! refused (the empty state is the accepted one), and a change to it is
//! not "the user's" if an enclosing run is open or ended after it was
//! accepted. A directory nobody ran moat in, nor in any parent, is first
//! use as before.
//!
//! At a run's end ([`close_run`], on every path out of the run) the run
//! leaves the open set and, if the workspace now differs from the accepted
//! state, taints it. A run that never records its end (killed, crashed)
//! stays open; once its supervisor process is gone it is treated as ended
//! and blamed for any difference. Until then its entry alone makes every
//! change suspect, which is the safe side.
//!
//! # Why not simply compare against the last run's state
//!
//! Because the user edits moat.yaml too: a digest check alone would make
//! every intentional edit a prompt. Tracking open runs tells the two
//! apart without asking: an edit made while no sandbox could write the
//! workspace cannot be the agent's. An edit made while a run is open is
//! refused even if the user made it — moat cannot tell who did.
//!
//! # Limits
//!
//! A run open at the same time as the check could change the files
//! between the check and the moment the config is read; [`open_run`]
//! re-checks under the lock right before the sandbox starts, which
//! narrows that window to the time it takes to build the plan. The
//! snapshot records mount sources as named by the config the caller read
//! and parsed once ([`ConfigUsed`]; the snapshot fingerprints the files
//! but never parses them): an unparseable config has none (its text
//! change is shown instead).
//!
//! Not here: what may be mounted at all (`moat-run`'s floors, which no
//! accepted config can lower) and the prompt (the binary).

mod error;
mod review;
mod snapshot;
mod state;

use std::path::{Path, PathBuf};

use moat_home::{FileLock, MoatHome};
use sha2::{Digest as _, Sha256};

pub use crate::error::TrustError;
pub use crate::review::{changes_text, Change, Culprit, FileChange, Review, RunEnd};
pub use crate::state::Trusted;

/// The config files in the order a run loads them (the first present wins).
const CONFIG_NAMES_IN_ORDER: [&str; 2] = moat_config::CONFIG_FILE_NAMES;

use crate::snapshot::Snapshot;
use crate::state::{Accepted, OpenRun, TrustRecord, Verdict};

/// What [`accept`] recorded.
#[derive(Debug, Clone)]
pub struct Acceptance {
    /// The workspace.
    pub workspace: PathBuf,
    /// What differed from the previously accepted state (empty: nothing).
    pub changes: Vec<Change>,
    /// There was no record before.
    pub first_use: bool,
}

/// Checks the workspace's configuration before a run uses it. `Ok` says
/// why it may be used; [`TrustError::Untrusted`] carries what to review.
/// `config` is the config file as the run read it (`None`: none, or one
/// that does not parse).
pub fn check(
    home: &MoatHome,
    workspace: &Path,
    config: Option<&ConfigUsed>,
) -> Result<Trusted, TrustError> {
    let workspace = canonical(workspace)?;
    let _lock = lock(home, &workspace)?;
    let current = Snapshot::capture(&workspace, mount_sources(config))?;
    let enclosing =
        enclosing_run(home, &workspace).filter(|run| could_have_written(run, &workspace));
    let Some(mut record) = load(home, &workspace)? else {
        let (record, verdict) = state::first_use(workspace, &current, enclosing.as_ref());
        save(home, &record)?;
        return verdict_result(&record, verdict, &current);
    };
    let before = serde_json::to_vec(&record).unwrap_or_default();
    let verdict = state::at_start(&mut record, &current, &supervisor_alive, enclosing.as_ref());
    // Most runs change nothing: no write, no fsync.
    if serde_json::to_vec(&record).unwrap_or_default() != before {
        save(home, &record)?;
    }
    verdict_result(&record, verdict, &current)
}

/// Accepts the workspace as it is now (`moat trust`): the snapshot
/// becomes the accepted one and any taint is cleared. With `expected`,
/// only if the current digest is still the one the user reviewed.
/// `config` is the config file as read for the review (see [`check`]).
pub fn accept(
    home: &MoatHome,
    workspace: &Path,
    config: Option<&ConfigUsed>,
    expected: Option<&str>,
) -> Result<Acceptance, TrustError> {
    let workspace = canonical(workspace)?;
    let _lock = lock(home, &workspace)?;
    let current = Snapshot::capture(&workspace, mount_sources(config))?;
    if expected.is_some_and(|d| d != current.digest()) {
        return Err(TrustError::ChangedDuringReview { workspace });
    }
    // A damaged record is what `moat trust` is for: start over.
    let previous = load(home, &workspace).ok().flatten();
    let (record, acceptance) = match previous {
        None => (
            first_record(&workspace, current),
            Acceptance {
                workspace: workspace.clone(),
                changes: Vec::new(),
                first_use: true,
            },
        ),
        Some(mut record) => {
            let changes = snapshot::diff(&record.accepted.snapshot, &current);
            // Runs whose supervisor is gone are settled by this review;
            // live ones stay open and are judged when they end.
            record.open_runs.retain(|r| supervisor_alive(r.pid));
            record.accepted = Accepted::now(current);
            record.taint = None;
            (
                record,
                Acceptance {
                    workspace: workspace.clone(),
                    changes,
                    first_use: false,
                },
            )
        }
    };
    save(home, &record)?;
    Ok(acceptance)
}

/// The config file a run was planned from, as the run read and parsed
/// it once: its fingerprint, which [`open_run`] checks the workspace
/// still holds (so a file swapped between the run's reading it and its
/// opening, and swapped back before the trust check sees it, cannot be
/// what the run applies), and the mount sources it names, which the
/// snapshot resolves without parsing the file again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigUsed {
    name: String,
    sha256: String,
    mount_sources: Vec<PathBuf>,
}

impl ConfigUsed {
    /// For the config file as loaded.
    pub fn new(loaded: &moat_config::LoadedConfig) -> Self {
        ConfigUsed {
            name: loaded.name.to_owned(),
            sha256: hex::encode(Sha256::digest(&loaded.bytes)),
            mount_sources: loaded
                .config
                .mounts
                .iter()
                .map(|mount| mount.source.clone())
                .collect(),
        }
    }
}

/// The mount sources the snapshot resolves: those of the config as read,
/// none without one.
fn mount_sources(config: Option<&ConfigUsed>) -> &[PathBuf] {
    config.map_or(&[], |c| c.mount_sources.as_slice())
}

/// Records that run `run_id` (supervised by this process) has the
/// workspace mounted from now on, after checking again under the lock
/// that the configuration is trusted and, when `used` is given, that it
/// is the one the run was planned from.
pub fn open_run(
    home: &MoatHome,
    workspace: &Path,
    run_id: &str,
    run_name: &str,
    used: Option<&ConfigUsed>,
) -> Result<(), TrustError> {
    let workspace = canonical(workspace)?;
    let _lock = lock(home, &workspace)?;
    let current = Snapshot::capture(&workspace, mount_sources(used))?;
    if let Some(used) = used {
        let now = CONFIG_NAMES_IN_ORDER
            .iter()
            .find_map(|name| current.config_files.get(*name).map(|f| (*name, &f.sha256)));
        if now != Some((used.name.as_str(), &used.sha256)) {
            return Err(TrustError::ChangedWhileStarting {
                workspace,
                file: used.name.clone(),
            });
        }
    }
    let enclosing =
        enclosing_run(home, &workspace).filter(|run| could_have_written(run, &workspace));
    let (mut record, verdict) = match load(home, &workspace)? {
        Some(mut record) => {
            let verdict =
                state::at_start(&mut record, &current, &supervisor_alive, enclosing.as_ref());
            (record, verdict)
        }
        None => state::first_use(workspace.clone(), &current, enclosing.as_ref()),
    };
    if let Err(e) = verdict_result(&record, verdict, &current) {
        save(home, &record)?;
        return Err(e);
    }
    record.open_runs.push(OpenRun {
        run_id: run_id.to_owned(),
        run_name: run_name.to_owned(),
        pid: std::process::id(),
        digest_at_start: current.digest(),
        started_at: chrono::Utc::now(),
    });
    save(home, &record)
}

/// Records that run `run_id` no longer has the workspace mounted; a
/// difference from the accepted state is blamed on it. `used` is the
/// config the run was planned from (as given to [`open_run`]): its mount
/// sources are the ones the run had mounted, whatever the run left in the
/// file.
pub fn close_run(
    home: &MoatHome,
    workspace: &Path,
    run_id: &str,
    used: Option<&ConfigUsed>,
) -> Result<(), TrustError> {
    let workspace = canonical(workspace)?;
    let _lock = lock(home, &workspace)?;
    let Some(mut record) = load(home, &workspace)? else {
        return Ok(());
    };
    let current = Snapshot::capture(&workspace, mount_sources(used))?;
    state::at_close(&mut record, run_id, &current);
    save(home, &record)
}

/// How many runs have `workspace` mounted now, as far as the trust record
/// knows (runs opened and not closed, killed ones included).
pub fn open_runs(home: &MoatHome, workspace: &Path) -> Result<usize, TrustError> {
    let workspace = canonical(workspace)?;
    Ok(load(home, &workspace)?.map_or(0, |r| r.open_runs.len()))
}

fn verdict_result(
    record: &TrustRecord,
    verdict: Verdict,
    current: &Snapshot,
) -> Result<Trusted, TrustError> {
    match verdict {
        Verdict::Trusted(why) => Ok(why),
        Verdict::Refused(culprit) => Err(TrustError::Untrusted(Box::new(Review {
            workspace: record.workspace.clone(),
            culprit,
            changes: snapshot::diff(&record.accepted.snapshot, current),
            digest: current.digest(),
        }))),
    }
}

fn first_record(workspace: &Path, current: Snapshot) -> TrustRecord {
    TrustRecord {
        workspace: workspace.to_owned(),
        accepted: Accepted::now(current),
        open_runs: Vec::new(),
        taint: None,
        last_run: None,
    }
}

/// The run of a workspace enclosing `workspace` (a parent directory moat
/// ran in) that could have written into it most recently: one still
/// recorded as open, else the one that ended last. A run has its whole
/// workspace mounted, so a moat.yaml it writes in a subdirectory is as
/// much its doing as the one at the top. Damaged records are skipped:
/// `moat trust` in that directory repairs them.
fn enclosing_run(home: &MoatHome, workspace: &Path) -> Option<Culprit> {
    let mut latest: Option<Culprit> = None;
    for dir in workspace.ancestors().skip(1) {
        let Ok(Some(record)) = load(home, dir) else {
            continue;
        };
        if let Some(run) = record.open_runs.first() {
            let how = if supervisor_alive(run.pid) {
                RunEnd::Open
            } else {
                RunEnd::Crashed
            };
            return Some(Culprit {
                run_id: run.run_id.clone(),
                run_name: run.run_name.clone(),
                how,
                at: run.started_at,
                workspace: Some(dir.to_owned()),
            });
        }
        if let Some(mut run) = record.last_run {
            if latest.as_ref().is_none_or(|l| run.at > l.at) {
                run.workspace = Some(dir.to_owned());
                latest = Some(run);
            }
        }
    }
    latest
}

/// Whether `run`, of a workspace enclosing `workspace`, could have
/// written the configuration there now, judged by when each piece last
/// changed: its ctime, which the kernel sets and no process can set back
/// (`utimensat` moves only mtime and atime). What changed only (10 ms)
/// before an open run started, or after an ended run's end, was not its doing;
/// a crashed run's span is unknown, so it stays suspect.
fn could_have_written(run: &Culprit, workspace: &Path) -> bool {
    let Some(newest) = newest_change(workspace) else {
        return true;
    };
    // File times come from a coarse clock that may lag the one runs are
    // stamped with by up to a clock tick (10 ms at 100 Hz): that margin
    // either way.
    let margin = chrono::TimeDelta::milliseconds(10);
    match run.how {
        RunEnd::Open => newest >= run.at - margin,
        RunEnd::Ended => newest <= run.at + margin,
        RunEnd::Crashed => true,
    }
}

/// The latest ctime among `workspace`'s moat.yaml, agent.yaml and
/// `.moat/` (a bounded walk that follows no link); `None` when unknown.
fn newest_change(workspace: &Path) -> Option<chrono::DateTime<chrono::Utc>> {
    use std::os::unix::fs::MetadataExt as _;
    let ctime = |meta: &std::fs::Metadata| {
        chrono::DateTime::<chrono::Utc>::from_timestamp(
            meta.ctime(),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        )
    };
    let mut newest = None;
    let mut note = |meta: &std::fs::Metadata| -> Option<()> {
        let at = ctime(meta)?;
        if newest.is_none_or(|n| at > n) {
            newest = Some(at);
        }
        Some(())
    };
    for name in moat_config::CONFIG_FILE_NAMES {
        if let Ok(meta) = std::fs::symlink_metadata(workspace.join(name)) {
            note(&meta)?;
        }
    }
    let mut dirs = vec![workspace.join(snapshot::MOAT_DIR)];
    let mut seen = 0usize;
    while let Some(dir) = dirs.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        note(&meta)?;
        if !meta.is_dir() {
            continue;
        }
        let entries = std::fs::read_dir(&dir).ok()?;
        for entry in entries {
            seen += 1;
            if seen > 10_000 {
                return None;
            }
            let path = entry.ok()?.path();
            let meta = std::fs::symlink_metadata(&path).ok()?;
            note(&meta)?;
            if meta.is_dir() {
                dirs.push(path);
            }
        }
    }
    newest
}

fn canonical(workspace: &Path) -> Result<PathBuf, TrustError> {
    std::fs::canonicalize(workspace).map_err(|e| TrustError::read(workspace, e))
}

fn record_stem(home: &MoatHome, workspace: &Path) -> PathBuf {
    let hash = hex::encode(Sha256::digest(workspace.as_os_str().as_encoded_bytes()));
    home.trust_dir().join(hash)
}

fn lock(home: &MoatHome, workspace: &Path) -> Result<FileLock, TrustError> {
    Ok(FileLock::acquire(
        &record_stem(home, workspace).with_extension("lock"),
    )?)
}

fn load(home: &MoatHome, workspace: &Path) -> Result<Option<TrustRecord>, TrustError> {
    let path = record_stem(home, workspace).with_extension("json");
    let Some(bytes) = moat_home::read_if_exists(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| TrustError::DamagedRecord {
            path,
            workspace: workspace.to_owned(),
            message: e.to_string(),
        })
}

fn save(home: &MoatHome, record: &TrustRecord) -> Result<(), TrustError> {
    let path = record_stem(home, &record.workspace).with_extension("json");
    let json = serde_json::to_vec_pretty(record).unwrap_or_default();
    Ok(moat_home::write_private_atomic(&path, &json)?)
}

/// Whether a supervisor pid still runs. A reused pid reads as alive: the
/// run then stays open, the safe side.
fn supervisor_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn setup() -> (tempfile::TempDir, MoatHome, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let home = MoatHome::at(dir.path().join("moat"));
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        (dir, home, ws)
    }

    /// The config `name` with `text` as a run would have loaded it.
    fn used(ws: &Path, name: &'static str, text: &str) -> ConfigUsed {
        ConfigUsed::new(&moat_config::LoadedConfig {
            name,
            bytes: text.as_bytes().to_vec(),
            config: moat_config::parse(text, &ws.join(name), ws).unwrap(),
        })
    }

    #[test]
    fn mount_sources_come_from_the_config_as_the_run_parsed_it() {
        let (_dir, home, ws) = setup();
        let ws = ws.canonicalize().unwrap();
        std::fs::create_dir(ws.join("data")).unwrap();
        let text = "mounts: [\"./data:/data:ro\"]\n";
        std::fs::write(ws.join("moat.yaml"), text).unwrap();
        let config = used(&ws, "moat.yaml", text);
        assert_eq!(config.mount_sources, [ws.join("data")]);
        open_run(&home, &ws, "run_000000000001", "a", Some(&config)).unwrap();
        // The run swaps the mounted directory for a link; moat.yaml is
        // untouched, and close_run resolves the sources the run mounted.
        std::fs::rename(ws.join("data"), ws.join("data.old")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("data")).unwrap();
        close_run(&home, &ws, "run_000000000001", Some(&config)).unwrap();
        let Err(TrustError::Untrusted(review)) = check(&home, &ws, Some(&config)) else {
            panic!("expected a refusal");
        };
        assert_eq!(
            review.change_lines(),
            format!(
                "  changed: mount source {data} (now resolves to /etc; was {data})\n",
                data = ws.join("data").display()
            )
        );
    }

    #[test]
    fn a_run_opens_only_on_the_config_it_was_planned_from() {
        let (_dir, home, ws) = setup();
        std::fs::write(ws.join("moat.yaml"), "name: a\n").unwrap();
        let planned = used(&ws, "moat.yaml", "name: a\n");
        // Swapped after the plan read it (and swapped back or not): the
        // workspace no longer holds what the plan was made from.
        std::fs::write(ws.join("moat.yaml"), "name: b\n").unwrap();
        let err = open_run(&home, &ws, "run_000000000001", "a", Some(&planned)).unwrap_err();
        assert!(
            matches!(&err, TrustError::ChangedWhileStarting { file, .. } if file == "moat.yaml"),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("changed while the run was starting"));
        // agent.yaml planned, moat.yaml now present (it wins): refused too.
        std::fs::write(ws.join("agent.yaml"), "name: b\n").unwrap();
        let agent = used(&ws, "agent.yaml", "name: b\n");
        assert!(open_run(&home, &ws, "run_000000000001", "a", Some(&agent)).is_err());
        // The same file: opens.
        let same = used(&ws, "moat.yaml", "name: b\n");
        open_run(&home, &ws, "run_000000000001", "a", Some(&same)).unwrap();
    }

    #[test]
    fn a_run_that_edits_its_config_is_refused_until_accepted() {
        let (_dir, home, ws) = setup();
        std::fs::write(ws.join("moat.yaml"), "network:\n  policy: strict\n").unwrap();
        assert_eq!(check(&home, &ws, None).unwrap(), Trusted::FirstUse);
        open_run(&home, &ws, "run_000000000001", "agent", None).unwrap();
        std::fs::write(ws.join("moat.yaml"), "network:\n  policy: permissive\n").unwrap();
        close_run(&home, &ws, "run_000000000001", None).unwrap();

        let Err(TrustError::Untrusted(review)) = check(&home, &ws, None) else {
            panic!("expected a refusal");
        };
        let ws_text = ws.canonicalize().unwrap().display().to_string();
        assert_eq!(
            review.to_string(),
            format!(
                "moat.yaml in {ws_text} changed while run run_000000000001 (agent) had the \
                 workspace mounted, so moat will not apply it without your review.\n  \
                 changed: network.policy (strict → permissive)"
            )
        );
        let error = TrustError::Untrusted(review.clone());
        assert_eq!(
            moat_hint::Hint::hint(&error).unwrap().as_str(),
            format!(
                "To fix: review the changes, then run\n  moat trust {ws_text}\nor restore the \
                 version you accepted."
            )
        );
        // The runtime's own open re-check refuses too.
        assert!(open_run(&home, &ws, "run_000000000002", "x", None).is_err());

        let accepted = accept(&home, &ws, None, Some(&review.digest)).unwrap();
        assert_eq!(accepted.changes.len(), 1);
        assert_eq!(check(&home, &ws, None).unwrap(), Trusted::Unchanged);
        assert_eq!(
            moat_home::mode_of(
                &record_stem(&home, &ws.canonicalize().unwrap()).with_extension("json")
            )
            .unwrap(),
            0o600
        );
    }

    #[test]
    fn accept_refuses_a_version_other_than_the_one_reviewed() {
        let (_dir, home, ws) = setup();
        std::fs::write(ws.join("moat.yaml"), "name: a\n").unwrap();
        check(&home, &ws, None).unwrap();
        assert!(matches!(
            accept(&home, &ws, None, Some("not-the-digest")),
            Err(TrustError::ChangedDuringReview { .. })
        ));
        let again = accept(&home, &ws, None, None).unwrap();
        assert!(again.changes.is_empty());
        assert!(!again.first_use);
    }

    #[test]
    fn user_edits_between_runs_are_accepted() {
        let (_dir, home, ws) = setup();
        open_run(&home, &ws, "run_000000000001", "a", None).unwrap();
        close_run(&home, &ws, "run_000000000001", None).unwrap();
        std::fs::write(ws.join("moat.yaml"), "name: mine\n").unwrap();
        assert_eq!(
            check(&home, &ws, None).unwrap(),
            Trusted::ChangedOutsideRuns
        );
    }

    #[test]
    fn a_damaged_record_is_an_error_that_moat_trust_repairs() {
        let (_dir, home, ws) = setup();
        check(&home, &ws, None).unwrap();
        let path = record_stem(&home, &ws.canonicalize().unwrap()).with_extension("json");
        std::fs::write(&path, "{").unwrap();
        let err = check(&home, &ws, None).unwrap_err();
        assert!(err.to_string().contains("is damaged"), "{err}");
        let fix = moat_hint::Hint::hint(&err).unwrap();
        assert!(fix.as_str().contains("then run moat trust"), "{fix}");
        accept(&home, &ws, None, None).unwrap();
        assert_eq!(check(&home, &ws, None).unwrap(), Trusted::Unchanged);
    }
}
