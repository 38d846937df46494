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
    fn ages_use_the_largest_whole_unit() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(125), "2m");
        assert_eq!(age(7200), "2h");
        assert_eq!(age(200_000), "2d");
    }
}
