//! Many native runs on one daemon at once (issue #29): every run makes
//! HTTPS requests through the daemon to a local upstream with the GitHub
//! grant injected. Zero failed requests, every run's trace complete, every
//! request carrying the injected token, the daemon's descriptors back to
//! where they were once the runs end, and nothing of the runs left on the
//! host (processes, mounts, cgroups).
//!
//! CI runs 50 runs x 20 requests. `bench/load/run.sh` runs the same test
//! with MOAT_LOAD_RUNS=500 and MOAT_LOAD_REQUESTS=100 and prints the
//! figures it reports on stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

const GH_TOKEN: &str = "ghp_loadTestSecret0123456789abcdefghijkl";

fn env_n(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn daemon_pid(t: &common::ProxiedEnv) -> u32 {
    let text = std::fs::read_to_string(t.env.moat_home().join("proxy/daemon.lock")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// Open descriptors and resident memory (kB) of `pid`.
fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// Processes other than the daemon whose environment names `home`: what
/// the runs would have left running.
fn processes_of(home: &std::path::Path, except: u32) -> Vec<String> {
    let needle = format!("MOAT_HOME={}", home.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == except || pid == std::process::id() {
            continue;
        }
        let mut environ = Vec::new();
        let readable = std::fs::File::open(format!("/proc/{pid}/environ"))
            .and_then(|mut f| f.read_to_end(&mut environ))
            .is_ok();
        if readable && environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            let cmdline =
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push(format!("{pid}: {}", cmdline.replace('\0', " ")));
        }
    }
    found
}

#[test]
fn many_runs_make_requests_at_once_without_a_failure_and_leave_nothing_behind() {
    let (n_runs, n_requests) = (env_n("MOAT_LOAD_RUNS", 50), env_n("MOAT_LOAD_REQUESTS", 20));
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    t.grant_github(GH_TOKEN);
    // The daemon before any run, as the runs will find it.
    t.run(&["proxy", "start"]).success();
    let daemon = daemon_pid(&t);
    let (fds_before, rss_before) = fds_and_rss(daemon);
    let script = format!(
        "for i in $(seq 1 {n_requests}); do \
         curl -s -o /dev/null -w \"req $i %{{http_code}}\\n\" https://api.github.com/load/$i; done"
    );
    let started = Instant::now();
    let mut runs = Vec::new();
    for r in 0..n_runs {
        let mut child = t
            .moat()
            .env("MOAT_DAEMON_IDLE_TIMEOUT", "300")
            .args([
                "run",
                "--name",
                &format!("load-{r}"),
                "--grant",
                "github",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = common::collect(child.stdout.take().unwrap());
        let err = common::collect(child.stderr.take().unwrap());
        runs.push((child, out, err));
    }
    let mut peak = (0, 0);
    let mut failed = Vec::new();
    for (r, (child, out, err)) in runs.iter_mut().enumerate() {
        let (fds, rss) = fds_and_rss(daemon);
        peak = (peak.0.max(fds), peak.1.max(rss));
        let status = child.wait().unwrap();
        let (out, err) = (out.lock().unwrap().clone(), err.lock().unwrap().clone());
        let ok = out.lines().filter(|l| l.ends_with(" 200")).count();
        if !status.success() || ok != n_requests {
            failed.push(format!(
                "load-{r}: {status}, {ok} of {n_requests}\n{out}{err}"
            ));
        }
    }
    let elapsed = started.elapsed();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(daemon_pid(&t), daemon, "the daemon was replaced under load");

    // Every request reached the upstream with the injected token.
    let seen = t.upstream.requests();
    let load: Vec<_> = seen
        .iter()
        .filter(|s| s.path.starts_with("/load/"))
        .collect();
    assert_eq!(load.len(), n_runs * n_requests);
    assert!(load.iter().all(|s| s
        .header("authorization")
        .is_some_and(|a| a.contains(GH_TOKEN))));

    // Every run's trace is complete.
    let list: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), n_runs);
    for run in list {
        let dir = t
            .env
            .moat_home()
            .join("runs")
            .join(run["id"].as_str().unwrap());
        let trace = std::fs::read_to_string(dir.join("network.jsonl")).unwrap();
        let ok = trace
            .lines()
            .filter(|l| l.contains("/load/") && l.contains("\"status_code\":200"))
            .count();
        assert_eq!(ok, n_requests, "{}: {trace}", run["name"]);
    }

    // The daemon holds no more than it did before the runs (give it a
    // moment to close what the last runs' ends released).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = fds_and_rss(daemon);
    while after.0 > fds_before + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = fds_and_rss(daemon);
    }
    eprintln!(
        "load: {n_runs} runs x {n_requests} requests in {elapsed:.1?}: 0 failed; daemon fds \
         {fds_before} before, {} at peak, {} after; daemon RSS {rss_before} kB before, {} kB at \
         peak, {} kB after",
        peak.0, after.0, peak.1, after.1
    );
    assert!(
        after.0 <= fds_before + 2,
        "the daemon holds {} descriptors after the runs, {fds_before} before",
        after.0
    );

    // Nothing of the runs is left on the host.
    let home = t.env.moat_home();
    let left = processes_of(&home, daemon);
    assert!(left.is_empty(), "left running: {left:#?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = t.env.dir.path().display().to_string();
    let mounted: Vec<_> = mounts.lines().filter(|l| l.contains(&root)).collect();
    assert!(mounted.is_empty(), "left mounted: {mounted:#?}");
    for run in list {
        let id = run["id"].as_str().unwrap();
        let cgroup = std::process::Command::new("find")
            .args([
                "/sys/fs/cgroup",
                "-maxdepth",
                "3",
                "-name",
                &format!("*{id}*"),
            ])
            .output()
            .unwrap();
        assert!(
            cgroup.stdout.is_empty(),
            "left a cgroup: {}",
            String::from_utf8_lossy(&cgroup.stdout)
        );
    }
}

/// The soak: MOAT_SOAK_BATCHES batches (default 40) of MOAT_SOAK_BATCH
/// runs (default 50) started together, each making one request, then
/// ended: 2,000 runs. The daemon's descriptors and memory after the last
/// batch are no higher than after the second (the first warms caches).
/// Minutes of load: `bench/load/run.sh` runs it.
#[test]
#[ignore = "soak: minutes of load; bench/load/run.sh runs it"]
fn thousands_of_runs_started_and_ended_leave_the_daemon_as_it_was() {
    let (batches, per_batch) = (env_n("MOAT_SOAK_BATCHES", 40), env_n("MOAT_SOAK_BATCH", 50));
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    t.grant_github(GH_TOKEN);
    t.run(&["proxy", "start"]).success();
    let daemon = daemon_pid(&t);
    let started = Instant::now();
    let mut after_batch = Vec::new();
    for b in 0..batches {
        let children: Vec<_> = (0..per_batch)
            .map(|_| {
                t.moat()
                    .env("MOAT_DAEMON_IDLE_TIMEOUT", "300")
                    .args([
                        "run",
                        "--grant",
                        "github",
                        "--",
                        "curl",
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "https://api.github.com/soak",
                    ])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "batch {b}");
        }
        // Old runs go, so run storage does not grow without bound.
        t.run(&["clean", "--force"]);
        std::thread::sleep(Duration::from_millis(500));
        after_batch.push(fds_and_rss(daemon));
        eprintln!(
            "soak: batch {b}: daemon fds {}, RSS {} kB, {:.0?}",
            after_batch[b].0,
            after_batch[b].1,
            started.elapsed()
        );
    }
    assert_eq!(daemon_pid(&t), daemon);
    let (second, last) = (after_batch[1.min(batches - 1)], after_batch[batches - 1]);
    assert!(last.0 <= second.0 + 2, "descriptors grew: {after_batch:?}");
    assert!(
        last.1 <= second.1 + second.1 / 4,
        "memory grew by more than a quarter: {after_batch:?}"
    );
}
