//! `moat list`: one row per run.

use chrono::{DateTime, Utc};
use moat_storage::RunMetadata;

/// The columns of `moat list`.
pub const RUN_COLUMNS: [&str; 6] = ["NAME", "RUN ID", "RUNTIME", "STATE", "AGE", "EXIT"];

/// A run's row under [`RUN_COLUMNS`], its age counted to `now`.
pub fn run_row(r: &RunMetadata, now: DateTime<Utc>) -> Vec<String> {
    vec![
        r.name.clone(),
        r.id.to_string(),
        r.runtime.clone(),
        r.state.to_string(),
        age((now - r.created_at).num_seconds()),
        r.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
    ]
}

/// The columns and rows of `moat list`: [`RUN_COLUMNS`], with a
/// WORKTREE column (the branch, after AGE) only when some run has one,
/// and an ENDPOINTS column (last; see `moat open`) only when some active
/// run serves one.
pub fn run_table(
    runs: &[RunMetadata],
    now: DateTime<Utc>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let worktrees = runs.iter().any(|r| r.worktree_branch.is_some());
    let endpoints = runs
        .iter()
        .any(|r| r.state.is_active() && !r.ports.is_empty());
    let mut columns = RUN_COLUMNS.to_vec();
    if worktrees {
        columns.insert(5, "WORKTREE");
    }
    if endpoints {
        columns.push("ENDPOINTS");
    }
    let rows = runs
        .iter()
        .map(|r| {
            let mut row = run_row(r, now);
            if worktrees {
                row.insert(5, r.worktree_branch.clone().unwrap_or_else(|| "-".into()));
            }
            if endpoints {
                let names: Vec<&str> = r.ports.keys().map(String::as_str).collect();
                row.push(if r.state.is_active() && !names.is_empty() {
                    names.join(",")
                } else {
                    "-".into()
                });
            }
            row
        })
        .collect();
    (columns, rows)
}

/// `42s`, `5m`, `3h`, `2d`: the largest whole unit.
fn age(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoints_column_shows_only_when_an_active_run_serves_one() {
        let now = Utc::now();
        let mut run = RunMetadata::new(
            moat_storage::RunId::generate(),
            "a".into(),
            "/w".into(),
            vec![],
        );
        run.ports.insert("web".into(), 3000);
        run.ports.insert("api".into(), 4000);
        run.state = moat_storage::RunState::Stopped;
        let (columns, _) = run_table(std::slice::from_ref(&run), now);
        assert!(!columns.contains(&"ENDPOINTS"));
        run.state = moat_storage::RunState::Running;
        let (columns, rows) = run_table(&[run], now);
        assert_eq!(columns.last(), Some(&"ENDPOINTS"));
        assert_eq!(rows[0].last().map(String::as_str), Some("api,web"));
    }

    #[test]
    fn the_worktree_column_shows_only_when_a_run_has_one() {
        let now = Utc::now();
        let mut run = RunMetadata::new(
            moat_storage::RunId::generate(),
            "a".into(),
            "/w".into(),
            vec![],
        );
        let (columns, _) = run_table(std::slice::from_ref(&run), now);
        assert!(!columns.contains(&"WORKTREE"));
        run.worktree_branch = Some("feature/a".into());
        let (columns, rows) = run_table(&[run], now);
        assert_eq!(columns[5], "WORKTREE");
        assert_eq!(rows[0][5], "feature/a");
        assert_eq!(rows[0].len(), columns.len());
    }

    #[test]
    fn ages_use_the_largest_whole_unit() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(125), "2m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(200_000), "2d");
    }
}
