//! What a run costs the host in memory (`moat status`): the resident
//! memory of moat's own processes that exist because of the run, its
//! supervisor and, on the native runtime, the sandbox's init and helper.
//! The command's processes (the agent, its tools) are the run's work, not
//! moat's overhead, and are left out; so are a container engine's own
//! processes (shims, conmon), which moat does not own.
//!
//! Read from `/proc` once per call: resident set size (VmRSS), which
//! counts pages shared with other moat processes (the binary's text) in
//! each of them, as the figures in issue #29 do.

use std::collections::HashMap;

/// Resident memory of the moat processes in `supervisor`'s process tree,
/// in bytes, for each supervisor pid asked for (absent when it does not
/// run).
pub fn host_overhead(supervisors: &[u32]) -> HashMap<u32, u64> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            if let Some(ppid) = parent_of(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = HashMap::new();
    for &supervisor in supervisors {
        let Some(own) = moat_rss(supervisor) else {
            continue;
        };
        let mut total = own;
        let mut todo: Vec<u32> = children.get(&supervisor).cloned().unwrap_or_default();
        while let Some(pid) = todo.pop() {
            // The daemon a run happened to start is every run's: counted
            // apart (`moat proxy status`).
            if is_daemon(pid) {
                continue;
            }
            total += moat_rss(pid).unwrap_or(0);
            todo.extend(children.get(&pid).into_iter().flatten());
        }
        found.insert(supervisor, total);
    }
    found
}

/// Whether `pid` is a proxy daemon (`moat __daemon`).
fn is_daemon(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"__daemon".as_slice()))
}

/// The parent of `pid` (field 4 of `/proc/PID/stat`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The resident memory of `pid` in bytes, when it is one of moat's own
/// processes: the binary (`moat`) or the native sandbox's init and helper
/// (`/proc/self/exe __moat-sandbox-init`).
fn moat_rss(pid: u32) -> Option<u64> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|b| *b == 0);
    let program = args.next()?;
    let is_moat = program.ends_with(b"/moat")
        || program == b"moat"
        || args.next().is_some_and(|a| a.starts_with(b"__moat-"));
    if !is_moat {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_not_moat_costs_nothing_and_a_missing_one_is_absent() {
        // The test binary is not moat.
        assert_eq!(moat_rss(std::process::id()), None);
        assert!(host_overhead(&[std::process::id()]).is_empty());
        assert!(host_overhead(&[u32::MAX]).is_empty());
    }
}
