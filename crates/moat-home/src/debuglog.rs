//! `MOAT_HOME/debug/`: one JSON-lines file a day, kept 14 days and
//! bounded, so that debugging a failure never needs a second try and the
//! logs never fill the disk.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use crate::MoatHome;

/// Days a debug log is kept.
const RETENTION_DAYS: i64 = 14;
/// A day's debug log stops growing at this size.
const MAX_DAILY: u64 = 64 << 20;
/// The directory is pruned, oldest day first, down to this size.
const MAX_TOTAL: u64 = 256 << 20;

/// Today's debug log, opened for appending (0600), after removing the
/// days past retention and the oldest ones over the total bound. `None`
/// when the directory cannot be written or today's file is full: a
/// debug log never stops a command.
pub fn open_debug_log(home: &MoatHome) -> Option<File> {
    let dir = home.debug_dir();
    crate::ensure_private_dir(&dir).ok()?;
    let today = chrono::Utc::now().date_naive();
    let days = prune(&dir, today);
    if days
        .iter()
        .any(|(date, _, size)| *date == today && *size >= MAX_DAILY)
    {
        return None;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join(format!("{today}.jsonl")))
        .ok()
}

/// Removes the logs past retention, then the oldest until the rest fit
/// in the total bound (today's is never removed). Returns the days kept.
fn prune(
    dir: &std::path::Path,
    today: chrono::NaiveDate,
) -> Vec<(chrono::NaiveDate, PathBuf, u64)> {
    let mut days = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(date) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            else {
                continue;
            };
            if (today - date).num_days() > RETENTION_DAYS {
                let _ = std::fs::remove_file(entry.path());
            } else {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                days.push((date, entry.path(), size));
            }
        }
    }
    days.sort();
    let mut total: u64 = days.iter().map(|d| d.2).sum();
    let mut kept = Vec::new();
    for (date, path, size) in days {
        if total > MAX_TOTAL && date != today && std::fs::remove_file(&path).is_ok() {
            total -= size;
        } else {
            kept.push((date, path, size));
        }
    }
    kept
}

/// The bytes of the regular files under `path`, not following links.
pub fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn old_days_go_and_today_is_appended_privately() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let home = MoatHome::at(tmp.path());
        let dir = home.debug_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("2000-01-01.jsonl"), "old").unwrap();
        std::fs::write(dir.join("notes.txt"), "kept").unwrap();
        let file = open_debug_log(&home).unwrap();
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.join("2000-01-01.jsonl").exists());
        assert!(dir.join("notes.txt").exists());
        assert_eq!(dir_size(&dir), 4);
    }
}
