//! The trust record of one workspace and how it moves: pure functions of
//! the record and the current snapshot, so every transition is testable
//! without a filesystem.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::review::{Culprit, RunEnd};
use crate::snapshot::Snapshot;

/// What moat remembers about one workspace (`MOAT_HOME/trust/<hash>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TrustRecord {
    /// The workspace, canonical.
    pub workspace: PathBuf,
    /// The state the user accepted (by writing it outside any run, by
    /// first use, or with `moat trust`).
    pub accepted: Accepted,
    /// Runs that have the workspace mounted now, as far as anyone knows: a
    /// run that crashed stays here until its supervisor is seen gone.
    #[serde(default)]
    pub open_runs: Vec<OpenRun>,
    /// Set when a run ended (or was found dead) with the workspace
    /// differing from `accepted`; cleared by `moat trust` or by restoring.
    #[serde(default)]
    pub taint: Option<Culprit>,
    /// The last run that had the workspace mounted and ended (or was found
    /// dead): a workspace inside this one changed since then may be that
    /// run's doing. Records written before this field have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Culprit>,
}

/// The accepted snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Accepted {
    /// [`Snapshot::digest`] of `snapshot`.
    pub digest: String,
    /// What was accepted, kept for the diff.
    pub snapshot: Snapshot,
    /// When.
    pub at: DateTime<Utc>,
}

impl Accepted {
    pub(crate) fn now(snapshot: Snapshot) -> Accepted {
        Accepted {
            digest: snapshot.digest(),
            snapshot,
            at: Utc::now(),
        }
    }
}

/// A run with the workspace mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpenRun {
    /// Run id.
    pub run_id: String,
    /// Run name.
    pub run_name: String,
    /// The supervising `moat` process; when it is gone without closing the
    /// run, the run crashed.
    pub pid: u32,
    /// Digest of the workspace when the run started.
    pub digest_at_start: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// Why a run may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trusted {
    /// No record: what is there now is recorded as accepted.
    FirstUse,
    /// Nothing changed since it was accepted.
    Unchanged,
    /// It changed while no run had the workspace mounted: the user's own
    /// edit, accepted.
    ChangedOutsideRuns,
    /// A run changed it, but it is back to the accepted state.
    Restored,
}

/// The verdict at a run's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Trusted(Trusted),
    Refused(Culprit),
}

/// Decides whether the current state may be used, updating `record`
/// (which the caller saves whatever the verdict: dead runs are reaped).
/// `alive` says whether a supervisor pid still runs. `enclosing` is the
/// latest run of a workspace that contains this one ([`enclosing_run`]):
/// it could write here too, so a change made since it started is not
/// taken as the user's.
pub(crate) fn at_start(
    record: &mut TrustRecord,
    current: &Snapshot,
    alive: &dyn Fn(u32) -> bool,
    enclosing: Option<&Culprit>,
) -> Verdict {
    let digest = current.digest();
    let changed = digest != record.accepted.digest;
    // A run whose supervisor is gone never recorded its end: treat it as
    // ended now, blaming it for any difference.
    let (dead, live): (Vec<OpenRun>, Vec<OpenRun>) =
        record.open_runs.drain(..).partition(|r| !alive(r.pid));
    record.open_runs = live;
    let dead: Vec<Culprit> = dead
        .into_iter()
        .map(|run| Culprit {
            run_id: run.run_id,
            run_name: run.run_name,
            how: RunEnd::Crashed,
            at: Utc::now(),
            workspace: None,
        })
        .collect();
    if changed && record.taint.is_none() {
        record.taint = dead.first().cloned();
    }
    // It may have written into subdirectories too (see `first_use`).
    if let Some(run) = dead.into_iter().next() {
        record.last_run = Some(run);
    }
    if !changed {
        // Seen as accepted after the enclosing run ended: a later edit is
        // not that run's (saves the user a `moat trust` for their own edit).
        if enclosing.is_some_and(|run| run.how == RunEnd::Ended && run.at > record.accepted.at) {
            record.accepted.at = Utc::now();
        }
        return if record.taint.take().is_some() {
            Verdict::Trusted(Trusted::Restored)
        } else {
            Verdict::Trusted(Trusted::Unchanged)
        };
    }
    if let Some(culprit) = &record.taint {
        return Verdict::Refused(culprit.clone());
    }
    if let Some(run) = record.open_runs.first() {
        return Verdict::Refused(Culprit {
            run_id: run.run_id.clone(),
            run_name: run.run_name.clone(),
            how: RunEnd::Open,
            at: run.started_at,
            workspace: None,
        });
    }
    if let Some(run) = enclosing.filter(|run| suspect(run, record.accepted.at)) {
        // Tainted only once the enclosing run is over: while it is open,
        // the blame could still move to a later one.
        if run.how != RunEnd::Open {
            record.taint = Some(run.clone());
        }
        return Verdict::Refused(run.clone());
    }
    record.accepted = Accepted::now(current.clone());
    Verdict::Trusted(Trusted::ChangedOutsideRuns)
}

/// Records that `run_id` no longer has the workspace mounted; blames it
/// if the workspace differs from the accepted state (unless an earlier
/// run already is).
pub(crate) fn at_close(record: &mut TrustRecord, run_id: &str, current: &Snapshot) {
    let Some(index) = record.open_runs.iter().position(|r| r.run_id == run_id) else {
        return;
    };
    let run = record.open_runs.remove(index);
    let ended = Culprit {
        run_id: run.run_id,
        run_name: run.run_name,
        how: RunEnd::Ended,
        at: Utc::now(),
        workspace: None,
    };
    if current.digest() != record.accepted.digest && record.taint.is_none() {
        record.taint = Some(ended.clone());
    }
    record.last_run = Some(ended);
}

/// Whether a run of an enclosing workspace could have made a change
/// found now in a workspace whose state was accepted at `accepted_at`:
/// it is open (or died without a trace of when), or it ended after.
pub(crate) fn suspect(run: &Culprit, accepted_at: DateTime<Utc>) -> bool {
    run.how != RunEnd::Ended || run.at > accepted_at
}

/// A first use of a workspace: trusted as it is, unless a run of an
/// enclosing workspace could have written what is there (`enclosing`,
/// see [`at_start`]) and there is something: then the accepted state is
/// the empty one and the run is blamed, so `moat trust` must accept it.
pub(crate) fn first_use(
    workspace: PathBuf,
    current: &Snapshot,
    enclosing: Option<&Culprit>,
) -> (TrustRecord, Verdict) {
    let mut record = TrustRecord {
        workspace,
        accepted: Accepted::now(current.clone()),
        open_runs: Vec::new(),
        taint: None,
        last_run: None,
    };
    match enclosing {
        Some(run) if *current != Snapshot::default() => {
            record.accepted = Accepted::now(Snapshot::default());
            if run.how != RunEnd::Open {
                record.taint = Some(run.clone());
            }
            (record, Verdict::Refused(run.clone()))
        }
        _ => (record, Verdict::Trusted(Trusted::FirstUse)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ConfigFile;

    fn snapshot(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.config_files.insert(
            "moat.yaml".into(),
            ConfigFile {
                text: text.into(),
                sha256: text.into(),
                symlink: None,
            },
        );
        s
    }

    fn record(text: &str) -> TrustRecord {
        TrustRecord {
            workspace: "/ws".into(),
            accepted: Accepted::now(snapshot(text)),
            open_runs: Vec::new(),
            taint: None,
            last_run: None,
        }
    }

    fn open(record: &mut TrustRecord, id: &str, pid: u32) {
        record.open_runs.push(OpenRun {
            run_id: id.into(),
            run_name: format!("name-{id}"),
            pid,
            digest_at_start: record.accepted.digest.clone(),
            started_at: Utc::now(),
        });
    }

    const ALIVE: &dyn Fn(u32) -> bool = &|_| true;
    const DEAD: &dyn Fn(u32) -> bool = &|_| false;

    fn refused_by(verdict: Verdict) -> (String, RunEnd) {
        match verdict {
            Verdict::Refused(c) => (c.run_id, c.how),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn unchanged_and_user_edits_are_trusted() {
        let mut r = record("a");
        assert_eq!(
            at_start(&mut r, &snapshot("a"), ALIVE, None),
            Verdict::Trusted(Trusted::Unchanged)
        );
        // Edited with no run open and no taint: the user's edit.
        assert_eq!(
            at_start(&mut r, &snapshot("b"), ALIVE, None),
            Verdict::Trusted(Trusted::ChangedOutsideRuns)
        );
        assert_eq!(r.accepted.digest, snapshot("b").digest());
    }

    #[test]
    fn a_change_made_during_a_run_is_refused_until_restored() {
        let mut r = record("a");
        open(&mut r, "run_1", 10);
        // While the run is open, a change is refused (its author unknown).
        assert_eq!(
            refused_by(at_start(&mut r, &snapshot("b"), ALIVE, None)),
            ("run_1".into(), RunEnd::Open)
        );
        // The run ends with the change in place: it is blamed.
        at_close(&mut r, "run_1", &snapshot("b"));
        assert!(r.open_runs.is_empty());
        assert_eq!(
            refused_by(at_start(&mut r, &snapshot("b"), ALIVE, None)),
            ("run_1".into(), RunEnd::Ended)
        );
        // Still refused for a further edit, and the acceptance is kept.
        assert!(matches!(
            at_start(&mut r, &snapshot("c"), ALIVE, None),
            Verdict::Refused(_)
        ));
        assert_eq!(r.accepted.digest, snapshot("a").digest());
        // Restoring the accepted version clears the taint.
        assert_eq!(
            at_start(&mut r, &snapshot("a"), ALIVE, None),
            Verdict::Trusted(Trusted::Restored)
        );
        assert_eq!(r.taint, None);
    }

    #[test]
    fn a_run_that_ends_without_changes_leaves_no_taint() {
        let mut r = record("a");
        open(&mut r, "run_1", 10);
        at_close(&mut r, "run_1", &snapshot("a"));
        assert_eq!(r.taint, None);
        assert_eq!(
            at_start(&mut r, &snapshot("b"), ALIVE, None),
            Verdict::Trusted(Trusted::ChangedOutsideRuns)
        );
        // Closing a run that is not open changes nothing.
        at_close(&mut r, "run_9", &snapshot("z"));
        assert_eq!(r.taint, None);
    }

    #[test]
    fn a_crashed_run_is_blamed_when_found_dead() {
        let mut r = record("a");
        open(&mut r, "run_1", 10);
        assert_eq!(
            refused_by(at_start(&mut r, &snapshot("b"), DEAD, None)),
            ("run_1".into(), RunEnd::Crashed)
        );
        assert!(r.open_runs.is_empty());
        // Found dead with nothing changed: simply forgotten.
        let mut r = record("a");
        open(&mut r, "run_1", 10);
        assert_eq!(
            at_start(&mut r, &snapshot("a"), DEAD, None),
            Verdict::Trusted(Trusted::Unchanged)
        );
        assert!(r.open_runs.is_empty());
        assert_eq!(r.taint, None);
    }

    #[test]
    fn the_first_culprit_stays_blamed() {
        let mut r = record("a");
        open(&mut r, "run_1", 10);
        open(&mut r, "run_2", 11);
        at_close(&mut r, "run_1", &snapshot("b"));
        at_close(&mut r, "run_2", &snapshot("c"));
        assert_eq!(
            refused_by(at_start(&mut r, &snapshot("c"), ALIVE, None)),
            ("run_1".into(), RunEnd::Ended)
        );
    }

    #[test]
    fn runs_of_an_enclosing_workspace_make_changes_here_suspect() {
        let outer = |how: RunEnd, at: DateTime<Utc>| Culprit {
            run_id: "run_outer".into(),
            run_name: "outer".into(),
            how,
            at,
            workspace: Some("/".into()),
        };
        // First use with something there: refused, the empty state accepted.
        let ended = outer(RunEnd::Ended, Utc::now());
        let (mut r, verdict) = first_use("/ws/sub".into(), &snapshot("a"), Some(&ended));
        assert_eq!(refused_by(verdict), ("run_outer".into(), RunEnd::Ended));
        assert_eq!(r.accepted.snapshot, Snapshot::default());
        // Removing what the run wrote restores the accepted (empty) state.
        assert_eq!(
            at_start(&mut r, &Snapshot::default(), ALIVE, Some(&ended)),
            Verdict::Trusted(Trusted::Restored)
        );
        // Nothing there, or no enclosing run: first use as ever.
        let (_, verdict) = first_use("/ws/sub".into(), &Snapshot::default(), Some(&ended));
        assert_eq!(verdict, Verdict::Trusted(Trusted::FirstUse));
        let (_, verdict) = first_use("/ws/sub".into(), &snapshot("a"), None);
        assert_eq!(verdict, Verdict::Trusted(Trusted::FirstUse));

        // A change after an enclosing run ended after the acceptance: refused.
        let mut r = record("a");
        let later = outer(RunEnd::Ended, r.accepted.at + chrono::Duration::seconds(1));
        assert!(matches!(
            at_start(&mut r, &snapshot("b"), ALIVE, Some(&later)),
            Verdict::Refused(_)
        ));
        // One that ended before it was accepted: the user's edit.
        let mut r = record("a");
        let earlier = outer(RunEnd::Ended, r.accepted.at - chrono::Duration::seconds(1));
        assert_eq!(
            at_start(&mut r, &snapshot("b"), ALIVE, Some(&earlier)),
            Verdict::Trusted(Trusted::ChangedOutsideRuns)
        );
        // An enclosing run still open: refused, not yet tainted.
        let mut r = record("a");
        let open = outer(RunEnd::Open, r.accepted.at - chrono::Duration::seconds(1));
        assert!(matches!(
            at_start(&mut r, &snapshot("b"), ALIVE, Some(&open)),
            Verdict::Refused(_)
        ));
        assert_eq!(r.taint, None);
    }
}
