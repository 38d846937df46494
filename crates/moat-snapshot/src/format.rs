//! What `moat snapshot` prints.

use moat_home::human_bytes;

use crate::model::Record;
use crate::prune::PruneReport;

/// One line for a snapshot just taken.
pub fn format_taken(r: &Record) -> String {
    let mut line = format!(
        "{} ({}): {} files, {} dirs, {} links, {}; {} new",
        r.id,
        r.trigger.as_str(),
        r.files,
        r.dirs,
        r.symlinks,
        human_bytes(r.bytes),
        human_bytes(r.new_bytes)
    );
    if r.skipped_count > 0 {
        line.push_str(&format!(
            "; {} left out: {}",
            r.skipped_count,
            r.skipped.join(", ")
        ));
    }
    line
}

/// The table of `moat snapshot list`.
pub fn format_list(records: &[Record]) -> String {
    let mut out = format!(
        "{:<17} {:<10} {:<20} {:>7} {:>10} {:>10}  {}\n",
        "ID", "TRIGGER", "CREATED", "FILES", "SIZE", "NEW", "LABEL"
    );
    for r in records {
        out.push_str(&format!(
            "{:<17} {:<10} {:<20} {:>7} {:>10} {:>10}  {}\n",
            r.id,
            r.trigger.as_str(),
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            r.files,
            human_bytes(r.bytes),
            human_bytes(r.new_bytes),
            r.label.as_deref().unwrap_or("")
        ));
    }
    out
}

/// The summary of `moat snapshot prune`.
pub fn format_prune(report: &PruneReport, dry_run: bool) -> String {
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    for r in &report.removed {
        out.push_str(&format!("{verb} {} ({})\n", r.id, r.trigger.as_str()));
    }
    let (removed, kept) = (report.removed.len(), report.kept);
    out.push_str(&if dry_run {
        format!("would remove {removed} snapshot(s), keep {kept}")
    } else {
        format!("removed {removed} snapshot(s), kept {kept}")
    });
    if !dry_run {
        out.push_str(&format!(
            "; {} blobs deleted ({})",
            report.blobs_deleted,
            human_bytes(report.bytes_freed)
        ));
    }
    out.push('\n');
    out
}
