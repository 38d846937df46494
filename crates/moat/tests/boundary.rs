//! The native sandbox as a boundary, attacked from inside through the real
//! `moat` binary: host identity, the kernel's writable surface, seccomp,
//! capabilities and per-run resource limits. Each test performs the
//! attack and checks that it fails and that the host is unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

fn running_as_root() -> bool {
    rustix::process::getuid().is_root()
}

/// The unprivileged host user that non-root callers' tests run moat as
/// (`nobody`), when the tests run as root.
const NOBODY: u32 = 65534;

/// A fresh user with a project directory, run from inside it.
struct Boundary {
    env: common::TestEnv,
    /// The host uid (and gid) moat runs as, when not the tests' own.
    caller: Option<u32>,
}

impl Boundary {
    fn new() -> Self {
        let env = common::TestEnv::new();
        std::fs::create_dir_all(env.dir.path().join("project")).unwrap();
        Boundary { env, caller: None }
    }

    /// As [`Boundary::new`], for moat run by the unprivileged host user
    /// `uid` (whose primary group is `uid` too); the tests must run as
    /// root to switch to it.
    fn for_user(uid: u32) -> Self {
        let mut t = Boundary::new();
        std::fs::create_dir_all(t.env.home()).unwrap();
        let owner = format!("{uid}:{uid}");
        let chown = std::process::Command::new("chown")
            .args(["-R", &owner])
            .arg(t.env.dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        t.caller = Some(uid);
        t
    }

    fn project(&self) -> std::path::PathBuf {
        self.env.dir.path().join("project")
    }

    fn command(&self, script: &str) -> std::process::Command {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = self.env.moat();
        cmd.env("MOAT_DAEMON_IDLE_TIMEOUT", "2")
            .env("MOAT_PROXY_PORT", "0")
            .current_dir(self.project())
            .args(["run", "--", "sh", "-c", script]);
        if let Some(uid) = self.caller {
            cmd.uid(uid).gid(uid);
        }
        cmd
    }

    fn sh(&self, script: &str) -> common::Result {
        common::Result::from(self.command(script).output().unwrap())
    }

    /// As [`Boundary::sh`], but moat is killed after `limit`; returns how
    /// long it ran. Output goes through files, so that a process left
    /// holding the sandbox's output cannot block the test.
    fn sh_within(&self, script: &str, limit: Duration) -> (common::Result, Duration) {
        let out_path = self.env.dir.path().join("run.stdout");
        let err_path = self.env.dir.path().join("run.stderr");
        let mut cmd = self.command(script);
        cmd.stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap());
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let took = started.elapsed();
        let result = common::Result {
            code,
            stdout: std::fs::read_to_string(&out_path).unwrap(),
            stderr: std::fs::read_to_string(&err_path).unwrap(),
        };
        (result, took)
    }
}

impl Drop for Boundary {
    fn drop(&mut self) {
        let _ = self.env.run(&["proxy", "stop"]);
    }
}

/// `(inside, outside, count)` lines of an id map.
fn id_map(text: &str) -> Vec<(u64, u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3).then(|| (f[0], f[1], f[2]))
        })
        .collect()
}

#[test]
fn no_sandbox_id_maps_onto_host_root() {
    let t = Boundary::new();
    let out =
        t.sh("cat /proc/self/uid_map; echo --; cat /proc/self/gid_map; echo --; id -u; id -g");
    out.success();
    let parts: Vec<&str> = out.stdout.split("--\n").collect();
    assert_eq!(parts.len(), 3, "{}", out.stdout);
    for map in &parts[..2] {
        let lines = id_map(map);
        assert!(!lines.is_empty(), "empty id map: {map:?}");
        for (_, outside, count) in lines {
            assert!(
                outside > 0 || count == 0,
                "a sandbox id maps onto host id 0: {map:?}"
            );
        }
    }
    let ids: Vec<&str> = parts[2].lines().collect();
    assert_ne!(ids, ["0", "0"], "the command runs as root in the sandbox");
}

#[test]
fn workspace_files_belong_to_the_caller() {
    let t = Boundary::new();
    std::fs::write(t.project().join("mine.txt"), "host file\n").unwrap();
    let out = t.sh("echo more >> mine.txt && echo new > made.txt && mkdir -p d/e && echo x > d/e/f && stat -c %u mine.txt");
    out.success();
    let me = rustix::process::getuid().as_raw();
    for name in ["mine.txt", "made.txt", "d", "d/e", "d/e/f"] {
        let meta = std::fs::metadata(t.project().join(name)).unwrap();
        assert_eq!(meta.uid(), me, "{name} is owned by {}", meta.uid());
        assert_eq!(meta.gid(), rustix::process::getgid().as_raw(), "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(t.project().join("mine.txt")).unwrap(),
        "host file\nmore\n"
    );
    // Inside, the caller's files are the sandbox user's own.
    let inside_uid: u32 = out.stdout.trim().parse().unwrap();
    assert_ne!(inside_uid, 0);
    assert_ne!(
        inside_uid, 65534,
        "the workspace shows as unmapped (nobody)"
    );
}

#[test]
fn core_pattern_and_other_kernel_knobs_cannot_be_written() {
    let t = Boundary::new();
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    std::fs::write(
        t.project().join("x.sh"),
        "#!/bin/sh\ntouch /tmp/moat-pwned\n",
    )
    .unwrap();
    let out = t.sh(
        "for f in /proc/sys/kernel/core_pattern /proc/sysrq-trigger /proc/sys/vm/drop_caches /proc/irq/default_smp_affinity; do \
           if (echo '|/workspace/x.sh' > $f) 2>/dev/null; then echo \"WROTE $f\"; fi; \
         done; \
         if cat /proc/kcore 2>/dev/null | head -c1 | grep -q .; then echo READ-KCORE; fi; \
         if grep -q . /proc/keys /proc/timer_list 2>/dev/null; then echo READ-KEYS; fi; \
         grep -c . /proc/sys/kernel/hostname",
    );
    let after = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    if after != before {
        // Put the host back before failing.
        let _ = std::fs::write("/proc/sys/kernel/core_pattern", before.trim_end());
    }
    assert_eq!(after, before, "the sandbox changed the host's core_pattern");
    out.success();
    assert!(!out.stdout.contains("WROTE"), "{}", out.stdout);
    assert!(!out.stdout.contains("READ-KCORE"), "{}", out.stdout);
    assert!(!out.stdout.contains("READ-KEYS"), "{}", out.stdout);
    // /proc/sys stays readable.
    assert!(out.stdout.ends_with("1\n"), "{}", out.stdout);
}

#[test]
fn seccomp_no_new_privs_and_no_capabilities() {
    let t = Boundary::new();
    let out =
        t.sh("grep -E '^(Seccomp|NoNewPrivs|CapEff|CapPrm|CapBnd|CapAmb):' /proc/self/status");
    out.success();
    for expected in [
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "CapEff:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?} in {}",
            out.stdout
        );
    }
}

#[test]
fn nested_namespaces_mount_and_dangerous_syscalls_fail() {
    let t = Boundary::new();
    // Each line prints OK when the attempt is refused.
    let script = r#"
unshare -Ur true 2>/dev/null && echo "FAIL unshare -Ur" || echo "OK unshare"
unshare -Urn true 2>/dev/null && echo "FAIL unshare -Urn" || echo "OK unshare-net"
mkdir -p /tmp/m && (mount -t tmpfs none /tmp/m 2>/dev/null && echo "FAIL mount" || echo "OK mount")
python3 - <<'EOF'
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": {"keyctl": 250, "add_key": 248, "bpf": 321, "perf_event_open": 298,
                 "kexec_load": 246, "init_module": 175, "unshare": 272, "setns": 308,
                 "open_tree": 428, "fsopen": 430, "userfaultfd": 323, "io_uring_setup": 425},
      "aarch64": {"keyctl": 219, "add_key": 217, "bpf": 280, "perf_event_open": 241,
                  "kexec_load": 104, "init_module": 105, "unshare": 97, "setns": 268,
                  "open_tree": 428, "fsopen": 430, "userfaultfd": 282, "io_uring_setup": 425}}[platform.machine()]
for name, n in nr.items():
    args = {"keyctl": (0, 0, 0, 0), "unshare": (0x10000000,)}.get(name, (0, 0, 0, 0, 0))
    r = libc.syscall(n, *args)
    e = ctypes.get_errno()
    print(("OK " if r == -1 and e in (1, 38) else "FAIL ") + name + " " + str(r) + " " + os.strerror(e))
# clone(CLONE_NEWUSER) through the raw syscall, flags in the first argument.
r = libc.syscall(56 if platform.machine() == "x86_64" else 220, 0x10000000 | 17, 0, 0, 0, 0)
e = ctypes.get_errno()
if r == 0:
    os._exit(0)
print(("OK " if r == -1 else "FAIL ") + "clone-newuser " + str(r) + " " + os.strerror(e))
EOF
"#;
    let out = t.sh(script);
    out.success();
    let fails: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert!(fails.is_empty(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.lines().filter(|l| l.starts_with("OK")).count() >= 15,
        "{}",
        out.stdout
    );
}

#[test]
fn ordinary_programs_still_work_under_the_filter() {
    let t = Boundary::new();
    // Threads, pipes, fork/exec, sockets, a pty, ptrace of its own child.
    let out = t.sh("python3 -c 'import threading,subprocess,socket,os,pty; \
t=threading.Thread(target=lambda: None); t.start(); t.join(); \
print(subprocess.run([\"echo\",\"sub\"],capture_output=True,text=True).stdout.strip()); \
s=socket.socket(); s.bind((\"127.0.0.1\",0)); s.listen(); \
m,sl=pty.openpty(); os.write(sl,b\"t\"); print(os.read(m,1).decode())' && \
         tar -C /tmp -cf /tmp/a.tar . && sort </etc/passwd >/dev/null && echo done");
    out.success();
    assert_eq!(out.stdout, "sub\nt\ndone\n", "{}", out.stderr);
}

/// When the host runs out of memory, the kernel's OOM killer takes a
/// run's process first, not the daemon or the user's own programs.
#[test]
fn a_runs_processes_are_the_oom_killers_first_choice() {
    let t = Boundary::new();
    let out = t.sh("cat /proc/self/oom_score_adj; sh -c 'cat /proc/self/oom_score_adj'");
    assert_eq!(out.stdout, "500\n500\n", "{}", out.stderr);
}

#[test]
fn fork_bomb_and_memory_hog_do_not_stop_another_run() {
    if !moat_testkit::require::root() {
        return;
    }
    let t = Boundary::new();
    std::fs::write(t.project().join("moat.yaml"), "container:\n  memory: 256\n").unwrap();
    // The hog takes 16 MiB at a time, up to 1 GiB, saying how far it got;
    // the run's memory limit must stop it long before that.
    let hog = t.sh(
        "python3 -c 'import sys\na=[]\nfor i in range(64):\n a.append(bytearray(16<<20)); print(i, flush=True)\nprint(\"survived\")'",
    );
    assert!(
        !hog.stdout.contains("survived"),
        "memory hog not stopped: {}",
        hog.stdout
    );
    assert_eq!(hog.code, Some(137), "{}", hog.stderr);
    let reached: u64 = hog
        .stdout
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    assert!(reached * 16 <= 320, "the hog reached {} MiB", reached * 16);

    // The bomb forks until the kernel refuses (at most 10,000 processes,
    // so a missing limit fails the test without taking the machine down),
    // says how many it got, and keeps them while a second run completes.
    std::fs::remove_file(t.project().join("moat.yaml")).unwrap();
    let bomb_script = "import os, signal, sys\nn = 0\ntry:\n    while n < 10000:\n        if os.fork() == 0:\n            signal.pause()\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n, flush=True)\nsignal.pause()\n";
    std::fs::write(t.project().join("bomb.py"), bomb_script).unwrap();
    let mut bomb = t
        .env
        .moat()
        .env("MOAT_DAEMON_IDLE_TIMEOUT", "2")
        .env("MOAT_PROXY_PORT", "0")
        .current_dir(t.project())
        .args(["run", "--name", "bomb", "--", "python3", "bomb.py"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(bomb.stdout.as_mut().unwrap());
        reader.read_line(&mut first_line).unwrap();
    }
    let started = Instant::now();
    let other = t.sh("echo still-alive");
    let took = started.elapsed();
    let _ = t.env.run(&["stop", "bomb"]);
    let _ = bomb.kill();
    let _ = bomb.wait();
    let forked: u64 = first_line.trim().parse().unwrap_or(u64::MAX);
    assert!(forked < 5000, "the bomb made {forked} processes");
    other.success();
    assert_eq!(other.stdout, "still-alive\n");
    assert!(took < Duration::from_secs(30), "second run took {took:?}");
}

#[test]
fn memory_limit_is_refused_clearly_without_cgroups() {
    // Root has cgroups here; the refusal is for callers without them.
    let t = if running_as_root() {
        Boundary::for_user(NOBODY)
    } else {
        Boundary::new()
    };
    std::fs::write(t.project().join("moat.yaml"), "container:\n  memory: 256\n").unwrap();
    let out = t.sh("true");
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("container.memory"), "{}", out.stderr);
}

/// Setuid and setgid files made in the workspace by a root caller's
/// sandbox would be setuid-root on the host (the workspace is ID-mapped
/// onto the caller): every way of making one is refused.
#[test]
fn no_setuid_or_setgid_file_leaves_a_root_callers_sandbox() {
    if !moat_testkit::require::root() {
        return;
    }
    let t = Boundary::new();
    let out = t.sh(common::SETID_ATTACKS);
    out.success();
    common::assert_no_setid_left(&out, &t.project(), &[t.env.dir.path()], NOBODY);
}

/// The same for a non-root caller (files setuid to the caller).
#[test]
fn no_setuid_or_setgid_file_leaves_a_non_root_callers_sandbox() {
    if !moat_testkit::require::root() {
        return;
    }
    let t = Boundary::for_user(NOBODY);
    let out = t.sh(common::SETID_ATTACKS);
    out.success();
    // Run as `daemon` (uid 1): a setuid-nobody file would show 65534.
    common::assert_no_setid_left(&out, &t.project(), &[t.env.dir.path()], 1);
}

/// From inside, a child of the command attaches to PID 1 and keeps it
/// stopped: were that allowed, PID 1 could no longer reap the command
/// and the run would never end.
const PTRACE_PID1: &str = r#"python3 - <<'EOF'
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    res = libc.ptrace(16, 1, 0, 0)  # PTRACE_ATTACH
    os.write(w, f"{res} {ctypes.get_errno()}".encode())
    os.close(w)
    if res == 0:
        time.sleep(3600)
    os._exit(0)
os.close(w)
print("attach", os.read(r, 64).decode(), flush=True)
EOF"#;

fn assert_pid1_not_traceable(t: &Boundary) {
    let (out, took) = t.sh_within(PTRACE_PID1, Duration::from_secs(30));
    assert_eq!(
        out.stdout, "attach -1 1\n",
        "EPERM expected\n{}",
        out.stderr
    );
    out.success();
    assert!(took < Duration::from_secs(15), "the run took {took:?}");
}

#[test]
fn pid1_cannot_be_traced_from_a_root_callers_sandbox() {
    if !moat_testkit::require::root() {
        return;
    }
    assert_pid1_not_traceable(&Boundary::new());
}

#[test]
fn pid1_cannot_be_traced_from_a_non_root_callers_sandbox() {
    if !running_as_root() {
        // The tests' own user is then the non-root caller.
        assert_pid1_not_traceable(&Boundary::new());
        return;
    }
    assert_pid1_not_traceable(&Boundary::for_user(NOBODY));
}
