//! `moat status`: what can run here, what is running, and what it costs.

use std::process::ExitCode;

use anyhow::Result;
use moat_daemon::DaemonClient;
use moat_storage::RunStore;

use super::{block_on, Context};

pub fn status(ctx: &Context) -> Result<ExitCode> {
    let runtimes = moat_run::runtime_statuses();
    let daemon = block_on(DaemonClient::connect_existing(&ctx.home))?
        .ok()
        .flatten();

    let store = RunStore::new(ctx.home.clone());
    let (mut runs, _) = store.list()?;
    // Read-only: corrected in memory, so status works on a full disk.
    for r in &mut runs {
        RunStore::reconcile_view(r);
    }
    let active: Vec<_> = runs.iter().filter(|r| r.state.is_active()).collect();
    let daemon_status = daemon
        .as_ref()
        .and_then(|d| block_on(d.status()).ok()?.ok());
    let supervisors: Vec<u32> = active.iter().filter_map(|r| r.supervisor_pid).collect();
    let overhead = moat_run::host_overhead(&supervisors);
    let host =
        |r: &moat_storage::RunMetadata| r.supervisor_pid.and_then(|p| overhead.get(&p).copied());
    let disk = moat_home::dir_size(&ctx.home.runs_dir());
    let snapshots = moat_home::dir_size(&moat_snapshot::stores_dir(&ctx.home));

    if ctx.json {
        let value = serde_json::json!({
            "runtimes": runtimes.iter().map(|r| serde_json::json!({
                "name": r.kind.to_string(),
                "status": if r.available { "ok" } else { "warning" },
                "message": r.message,
            })).collect::<Vec<_>>(),
            "daemon": daemon.as_ref().map(|d| serde_json::json!({
                "pid": d.info.pid, "port": d.info.port, "version": d.info.version,
                "rss_bytes": daemon_status.as_ref().map(|s| s.rss_bytes),
                "per_run_bytes": daemon_status.as_ref().and_then(|s| s.per_run_bytes()),
            })),
            "active_runs": active.iter().map(|r| serde_json::json!({
                "name": r.name, "id": r.id, "runtime": r.runtime, "state": r.state,
                "started_at": r.started_at,
                "disk_bytes": moat_home::dir_size(&store.dir(&r.id)),
                "host_overhead_bytes": host(r),
            })).collect::<Vec<_>>(),
            "total_runs": runs.len(),
            "total_disk_bytes": disk,
            "snapshots_bytes": snapshots,
        });
        outln!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("Runtimes");
    for r in &runtimes {
        outln!(
            "  {}: {}{}",
            r.kind,
            if r.available { "available, " } else { "" },
            r.message
        );
    }
    outln!();
    match &daemon {
        Some(d) => outln!(
            "Proxy daemon: running (pid {}, port {}, version {})",
            d.info.pid,
            d.info.port,
            d.info.version
        ),
        None => outln!("Proxy daemon: not running (it starts with the next run)"),
    }
    if let Some(s) = &daemon_status {
        outln!("  memory: {}", s.memory_line());
    }
    outln!();
    if active.is_empty() {
        outln!("Active runs: none");
    } else {
        outln!("Active runs (disk; moat's own processes' memory on the host)");
        for r in &active {
            let memory =
                host(r).map_or_else(|| "-".to_owned(), |b| format!("{:.1} MB", b as f64 / 1e6));
            outln!(
                "  {:<20} {}  {:<7} {:.1} MB  {memory}",
                r.name,
                r.id,
                r.runtime,
                moat_home::dir_size(&store.dir(&r.id)) as f64 / 1e6
            );
        }
    }
    outln!();
    outln!(
        "Summary: {} runs stored ({} active), {:.1} MB under {}",
        runs.len(),
        active.len(),
        disk as f64 / 1e6,
        ctx.home.runs_dir().display()
    );
    outln!(
        "Snapshots: {:.1} MB under {}",
        snapshots as f64 / 1e6,
        moat_snapshot::stores_dir(&ctx.home).display()
    );
    Ok(ExitCode::SUCCESS)
}
