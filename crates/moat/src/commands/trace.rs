//! `moat trace [RUN]`: a run's timeline; with `--network`, its requests
//! from `network.jsonl` (one line each, `-v` for headers and bodies,
//! `--json` for the records, `--har FILE` for browser devtools).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use moat_storage::{read_trace, Har, RunMetadata, RunStore, TraceRecord};

use super::Context;
use crate::cli::TraceArgs;

pub fn trace(ctx: &Context, args: TraceArgs) -> Result<ExitCode> {
    let store = RunStore::new(ctx.home.clone());
    let run = store.find(args.run.as_deref(), |_| true)?;
    let dir = store.dir(&run.id);
    if !dir.is_dir() {
        return Err(crate::hints::failure(
            format!(
                "the directory of run {} is missing ({})",
                run.id,
                dir.display()
            ),
            format!("Remove the run with: moat destroy {}", run.id),
        ));
    }
    if !args.network && args.har.is_none() {
        return timeline(ctx, &run, &dir);
    }
    let path = dir.join("network.jsonl");
    let records = read_records(&path)?;
    if let Some(file) = &args.har {
        let har = Har::from_records(records.iter().map(|(_, r)| r));
        write_user_file(file, &serde_json::to_vec_pretty(&har)?)
            .with_context(|| format!("writing {}", file.display()))?;
        errln!(
            "Wrote {} request(s) of run {} to {} (HTTP Archive 1.2)",
            records.len(),
            run.id,
            file.display()
        );
        if !args.network {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if ctx.json {
        for (raw, _) in &records {
            outln!("{raw}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        outln!("No network requests recorded for run {}.", run.id);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for (_, r) in &records {
        out.push_str(&moat_report::request_line(r));
        if ctx.verbose {
            out.push_str(&moat_report::request_details(r));
        }
    }
    out!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The valid records (with their original text), warning about each line
/// that is not one. A missing file is no requests.
fn read_records(path: &Path) -> Result<Vec<(String, TraceRecord)>> {
    let trace = read_trace(path)?;
    for (line, note) in &trace.notes {
        errln!("Note: line {line} of {}: {note}", path.display());
    }
    for (line, why) in &trace.damaged {
        errln!(
            "Warning: skipping line {line} of {}: not a complete request record ({why})",
            path.display()
        );
    }
    Ok(trace.records)
}

/// Writes a file the user named: `0600` when new, directory untouched.
fn write_user_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// The run's timeline from its metadata and audit log.
fn timeline(ctx: &Context, run: &RunMetadata, dir: &Path) -> Result<ExitCode> {
    let timeline = moat_report::Timeline::of(run, dir)?;
    if ctx.json {
        outln!("{}", timeline.to_json(run));
    } else {
        out!("{}", timeline.render(run));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn damaged_lines_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("network.jsonl");
        std::fs::write(
            &path,
            "{\"ts\":\"2025-01-02T03:04:05Z\",\"method\":\"GET\",\"url\":\"u\"}\ngarbage\n{\"ts\":\"2025-01-02",
        )
        .unwrap();
        assert_eq!(read_records(&path).unwrap().len(), 1);
        assert!(read_records(&tmp.path().join("none")).unwrap().is_empty());
    }
}
