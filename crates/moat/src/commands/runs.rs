//! `moat list`, `logs`, `stop`, `destroy`, `clean`: the lifecycle of runs
//! as recorded in run storage.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use chrono::Utc;
use moat_storage::{read_logs, LogStream, RunMetadata, RunStore};

use super::Context;
use crate::cli::{CleanArgs, DestroyArgs, LogsArgs, RunRef};
use crate::output::table;

fn store(ctx: &Context) -> RunStore {
    RunStore::new(ctx.home.clone())
}

/// Every run, with stale "running" states corrected in memory: listing
/// never writes, so it works on a full disk.
fn runs(store: &RunStore) -> Result<Vec<RunMetadata>> {
    let (mut runs, damaged) = store.list()?;
    for d in damaged {
        match moat_hint::Hint::hint(&d) {
            Some(fix) => errln!("Warning: {d}. {fix}"),
            None => errln!("Warning: {d}"),
        }
    }
    for run in &mut runs {
        RunStore::reconcile_view(run);
    }
    Ok(runs)
}

pub fn list(ctx: &Context) -> Result<ExitCode> {
    let store = store(ctx);
    let runs = runs(&store)?;
    if ctx.json {
        outln!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        outln!("No runs. Start one with: moat run -- <command>");
        return Ok(ExitCode::SUCCESS);
    }
    let (columns, rows) = moat_report::run_table(&runs, Utc::now());
    out!("{}", table(&columns, &rows));
    Ok(ExitCode::SUCCESS)
}

pub fn logs(ctx: &Context, args: LogsArgs) -> Result<ExitCode> {
    let store = store(ctx);
    let run = store.find(args.run.as_deref(), |_| true)?;
    let path = store.dir(&run.id).join("logs.jsonl");
    let (lines, damaged) = read_logs(&path, Some(args.lines))
        .with_context(|| format!("reading {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    let print = |out: &mut std::io::StdoutLock<'_>, line: &moat_storage::LogLine| {
        let ts = line.ts.format("%H:%M:%S%.3f");
        let marker = match line.stream {
            LogStream::Stdout => "",
            LogStream::Stderr => "stderr: ",
        };
        writeln!(out, "[{ts}] {marker}{}", line.line)
    };
    for line in &lines {
        print(&mut out, line)?;
    }
    if damaged > 0 {
        errln!(
            "Warning: skipped {damaged} damaged line(s) in {}",
            path.display()
        );
    }
    if !args.follow {
        print_service_logs(&mut out, &store.dir(&run.id).join("services"), args.lines)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Follow: re-read what was appended until the run is no longer active.
    let mut seen = read_logs(&path, None)?.0.len();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let (all, _) = read_logs(&path, None)?;
        for line in all.iter().skip(seen) {
            print(&mut out, line)?;
        }
        out.flush()?;
        seen = all.len();
        let mut meta = store.load(&run.id)?;
        RunStore::reconcile_view(&mut meta);
        if !meta.state.is_active() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// The output of the run's service sidecars, the last `lines` lines of
/// each.
fn print_service_logs(out: &mut impl Write, dir: &std::path::Path, lines: usize) -> Result<()> {
    let logs = moat_storage::read_service_logs(dir, lines)
        .with_context(|| format!("reading the service logs in {}", dir.display()))?;
    for (service, tail) in logs {
        writeln!(out, "--- service {service} ---")?;
        for line in tail {
            writeln!(out, "{service} | {line}")?;
        }
    }
    Ok(())
}

pub fn stop(ctx: &Context, args: RunRef) -> Result<ExitCode> {
    let store = store(ctx);
    let mut run = match args.run.as_deref() {
        Some(q) => store.find(Some(q), |_| true)?,
        None => store
            .find(None, |r| r.state.is_active())
            .map_err(|_| crate::hints::failure("no running runs", "List runs with: moat list"))?,
    };
    store.reconcile(&mut run)?;
    if !run.state.is_active() {
        outln!("Run {} ({}) is already {}.", run.name, run.id, run.state);
        return Ok(ExitCode::SUCCESS);
    }
    moat_run::stop_run(&store, &run)?;
    let meta = store.load(&run.id)?;
    outln!(
        "Stopped {} ({}){}.",
        meta.name,
        meta.id,
        meta.exit_code
            .map(|c| format!(", exit code {c}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn destroy(ctx: &Context, args: DestroyArgs) -> Result<ExitCode> {
    let store = store(ctx);
    let mut run = match args.run.as_deref() {
        Some(q) => store.find(Some(q), |_| true)?,
        None => store.find(None, |r| !r.state.is_active()).map_err(|_| {
            crate::hints::failure("no stopped runs to destroy", "List runs with: moat list")
        })?,
    };
    store.reconcile(&mut run)?;
    if run.state.is_active() {
        if !args.force {
            bail!(
                "run {} ({}) is still running. Stop it first with: moat stop {}\n\
                 Or stop and remove it at once: moat destroy --force {}",
                run.name,
                run.id,
                run.id,
                run.id
            );
        }
        moat_run::stop_run(&store, &run)?;
    }
    let snapshots = moat_run::destroy_run(&ctx.home, &store, &run)?;
    outln!("Destroyed {} ({}).", run.name, run.id);
    if let Some(line) = snapshots {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn clean(ctx: &Context, args: CleanArgs) -> Result<ExitCode> {
    let store = store(ctx);
    let stopped: Vec<RunMetadata> = runs(&store)?
        .into_iter()
        .filter(|r| !r.state.is_active())
        .collect();
    if stopped.is_empty() {
        let containers = if args.dry_run {
            0
        } else {
            moat_run::remove_leftovers(&store)
        };
        if containers > 0 {
            outln!("Removed {containers} leftover containers.");
        } else {
            outln!("Nothing to clean.");
        }
        return Ok(ExitCode::SUCCESS);
    }
    for r in &stopped {
        outln!(
            "{}{} ({}, {})",
            if args.dry_run { "Would remove " } else { "" },
            r.name,
            r.id,
            r.state
        );
    }
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if !args.force {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to remove {} runs without confirmation: run moat clean --force",
                stopped.len()
            );
        }
        err!("Remove {} stopped runs? [y/N] ", stopped.len());
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            outln!("Nothing removed.");
            return Ok(ExitCode::SUCCESS);
        }
    }
    for line in moat_run::remove_runs(&ctx.home, &store, &stopped)? {
        outln!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn exec(ctx: &Context, args: crate::cli::ExecArgs) -> Result<ExitCode> {
    let store = store(ctx);
    let run = store.find(Some(&args.run), |_| true)?;
    let code = moat_run::exec_in_run(&store, &run, args.command, args.interactive)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

pub fn join(ctx: &Context, args: crate::cli::JoinArgs) -> Result<ExitCode> {
    let store = store(ctx);
    let run = store.find(Some(&args.run), |_| true)?;
    let agent = moat_agents::by_name(&args.agent).context("unknown agent")?;
    let opts = moat_agents::LaunchOptions {
        prompt: args.prompt,
        continue_last: args.continue_last,
        resume: args.resume,
        ..Default::default()
    };
    let code = moat_run::join_run(&store, &run, agent, &opts)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
