//! What a run did, as text a person reads: the timeline of `moat trace`,
//! one line per request of `moat trace --network`, the sections and the
//! verdict of `moat audit`, the rows of `moat list`.
//!
//! This crate owns the wording and layout of those reports and their JSON
//! forms. It reads what the stores already parsed (`moat-storage`'s run
//! metadata and trace records, `moat-audit`'s entries and verification
//! report) and writes nothing: the binary prints what it returns.

mod audit;
mod network;
mod runs;
mod text;
mod timeline;

pub use audit::{audit_json, audit_sections, audit_verdict, first_problem, RULE};
pub use network::{request_details, request_line};
pub use runs::{run_row, run_table, RUN_COLUMNS};
pub use text::{escape_controls, table};
pub use timeline::{Event, Timeline};

use chrono::{DateTime, Utc};

/// `HH:MM:SS.mmm`, the time column of every report.
pub fn clock(ts: &DateTime<Utc>) -> String {
    ts.format("%H:%M:%S%.3f").to_string()
}

/// `89ms`, `1.2s`.
pub fn duration(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{}ms", ms.round() as u64)
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_milliseconds_then_seconds() {
        assert_eq!(duration(89.4), "89ms");
        assert_eq!(duration(1234.0), "1.2s");
    }
}
