//! A cgroup per sandbox: memory, CPU and process limits for all of the
//! sandbox's processes together.
//!
//! The caller creates it, puts the sandbox init in it before the init
//! starts any process of the sandbox (so everything the sandbox starts
//! inherits it, and the sandbox's own cgroup namespace is rooted there),
//! and removes it when the sandbox is gone. Cgroup v1 controllers are used where they are mounted
//! (`/sys/fs/cgroup/{memory,pids,cpu}`), cgroup v2 otherwise; both live
//! under a `moat` directory. A cgroup left by a caller that died is removed
//! by the next sandbox once it is empty and a minute old.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::SandboxError;
use crate::spec::ResourceLimits;

const ROOT: &str = "/sys/fs/cgroup";
const CFS_PERIOD_US: u64 = 100_000;

/// The cgroup directories of one sandbox (one per v1 controller, or one
/// v2 directory).
#[derive(Debug)]
pub(crate) struct RunCgroup {
    dirs: Vec<PathBuf>,
    /// The file a pid is written to, in each directory.
    procs_file: &'static str,
}

/// Which cgroup hierarchy this machine offers the caller, if any.
fn layout() -> Option<(Vec<&'static str>, &'static str)> {
    let writable = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    let v1 = ["memory", "pids", "cpu"];
    if v1
        .iter()
        .all(|c| Path::new(ROOT).join(c).join("tasks").exists())
    {
        return v1
            .iter()
            .all(|c| writable(&Path::new(ROOT).join(c)))
            .then(|| (v1.to_vec(), "cgroup.procs"));
    }
    let v2 = Path::new(ROOT).join("cgroup.controllers");
    (v2.exists() && writable(Path::new(ROOT))).then(|| (vec![""], "cgroup.procs"))
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value)
        .map_err(|e| SandboxError::io(format!("cannot write {value:?} to {}", path.display()), e))
}

/// The cgroup hierarchy sandboxes of this user get, for diagnostics.
pub(crate) fn hierarchy() -> Option<&'static str> {
    layout().map(
        |(controllers, _)| {
            if controllers == [""] {
                "v2"
            } else {
                "v1"
            }
        },
    )
}

/// Total memory of the machine, from `/proc/meminfo`.
pub(crate) fn total_memory() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl RunCgroup {
    /// Creates the sandbox's cgroup with `limits`. `Ok(None)` when no
    /// cgroup can be made here and none of the limits needs one; an error
    /// naming the limit when one does.
    pub(crate) fn create(limits: &ResourceLimits) -> Result<Option<RunCgroup>, SandboxError> {
        // Only for the limits rlimits cannot express: moving a process into
        // a cgroup v1 hierarchy waits for an RCU grace period (several
        // milliseconds, most of a sandbox's start-up), and process and file
        // counts are held by rlimits already.
        if limits.memory_bytes.is_none() && limits.millicpus.is_none() {
            return Ok(None);
        }
        let Some((controllers, procs_file)) = layout() else {
            let needs = match (limits.memory_bytes, limits.millicpus) {
                (Some(_), _) => Some("a memory limit (container.memory)"),
                (_, Some(_)) => Some("a CPU limit (container.cpus)"),
                _ => None,
            };
            return match needs {
                None => Ok(None),
                Some(what) => Err(SandboxError::LimitUnavailable {
                    message: format!(
                        "{what} needs a cgroup of the sandbox's own, and this user cannot create one \
                         (cgroups under {ROOT} are not writable). Remove the limit from moat.yaml, \
                         run moat as root, or use --runtime docker"
                    ),
                }),
            };
        };
        let name = format!(
            "{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let mut cgroup = RunCgroup {
            dirs: Vec::new(),
            procs_file,
        };
        for controller in &controllers {
            let parent = Path::new(ROOT).join(controller).join("moat");
            fs::create_dir_all(&parent).map_err(|e| {
                SandboxError::io(format!("cannot create cgroup {}", parent.display()), e)
            })?;
            remove_stale(&parent);
            if controller.is_empty() {
                // v2: the controllers must be enabled on the way down.
                let _ = fs::write(
                    Path::new(ROOT).join("cgroup.subtree_control"),
                    "+memory +pids +cpu",
                );
                let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
            }
            let dir = parent.join(&name);
            fs::create_dir(&dir).map_err(|e| {
                SandboxError::io(format!("cannot create cgroup {}", dir.display()), e)
            })?;
            cgroup.dirs.push(dir.clone());
            cgroup.apply(controller, &dir, limits)?;
        }
        Ok(Some(cgroup))
    }

    fn apply(
        &self,
        controller: &str,
        dir: &Path,
        limits: &ResourceLimits,
    ) -> Result<(), SandboxError> {
        let memory = limits.memory_bytes;
        let cpu_quota = limits
            .millicpus
            .map(|m| u64::from(m) * CFS_PERIOD_US / 1000);
        match controller {
            "memory" => {
                if let Some(bytes) = memory {
                    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    // Without swap accounting this file is absent.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &bytes.to_string())?;
                    }
                }
            }
            "pids" => write(&dir.join("pids.max"), &limits.pids.to_string())?,
            "cpu" => {
                if let Some(quota) = cpu_quota {
                    write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
            _ => {
                if let Some(bytes) = memory {
                    write(&dir.join("memory.max"), &bytes.to_string())?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                }
                write(&dir.join("pids.max"), &limits.pids.to_string())?;
                if let Some(quota) = cpu_quota {
                    write(&dir.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
                }
            }
        }
        Ok(())
    }

    /// Moves process `pid` (and so what it starts afterwards) into the
    /// cgroup.
    pub(crate) fn add(&self, pid: u32) -> Result<(), SandboxError> {
        for dir in &self.dirs {
            write(&dir.join(self.procs_file), &pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the cgroup once its last process is gone (waits up to a
    /// second for processes that die asynchronously, like the sandbox's
    /// helper after its init).
    pub(crate) fn remove(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        self.dirs.retain(|dir| loop {
            match fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    if std::time::Instant::now() >= deadline {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => return false,
            }
        });
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes cgroups of sandboxes whose caller died, once empty (`rmdir`
/// refuses a cgroup with processes) and a minute old (a new sandbox's
/// cgroup is empty for a moment before its init is moved in).
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let old = |p: &Path| -> io::Result<bool> {
        let modified = fs::metadata(p)?.modified()?;
        Ok(modified.elapsed().unwrap_or_default() > Duration::from_secs(60))
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) && old(&path).unwrap_or(false) {
            let _ = fs::remove_dir(&path);
        }
    }
}
