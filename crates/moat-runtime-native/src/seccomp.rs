//! The system-call filter every sandboxed process runs under.
//!
//! Two seccomp programs, both built with `seccompiler` and installed by the
//! sandbox's PID 1 after it dropped its capabilities (so the command and
//! every process it starts inherit them, and PID 1 itself cannot be used to
//! get around them):
//!
//! 1. An allow-list of the ordinary system calls of this architecture, in
//!    the spirit of Docker's default profile. Anything else fails with
//!    `ENOSYS`, the answer a C library expects for a call it may fall back
//!    from (`clone3` → `clone`, `io_uring` → threads). An allow-list also
//!    closes the x32 numbers on x86_64, which a deny-list would miss.
//! 2. A deny-list answering `EPERM` for what a sandbox must never do, even
//!    where (1) is wider than intended: namespaces (`unshare`, `setns`,
//!    `clone` with a namespace flag), mounts old and new, kernel keyrings,
//!    BPF, perf events, kernel modules and `kexec`, clock and swap changes,
//!    `userfaultfd`, handle-based opens, `vsock`, and pushing input into a
//!    terminal (`TIOCSTI`, `TIOCLINUX`). And, shared with the container
//!    runtimes ([`moat_sandbox::setid`]), every call that would give a file
//!    the setuid or setgid bit: the workspace is the caller's directory on
//!    the host, where such a file would run as the caller. When both
//!    programs refuse a call, the kernel reports the later one's `EPERM`.
//!
//! `openat2` is left out of (1), hence `ENOSYS`, for the same rule: its
//! mode is out of a filter's sight, and C libraries fall back to `openat`.
//!
//! `ptrace` stays allowed: the sandbox's pid namespace only shows the
//! sandbox's own processes, and debuggers and `strace` are part of an
//! agent's work. PID 1, which the command must not stop, makes itself
//! non-dumpable instead (see `init.rs`).

use std::collections::BTreeMap;

use crate::error::SetupError;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The compiled programs, built before the fork that needs them.
#[derive(Debug)]
pub(crate) struct Filters {
    allow: BpfProgram,
    deny: BpfProgram,
}

/// Namespace flags that `clone` may not carry.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// `AF_VSOCK`: talks to the hypervisor, not to the network moat polices.
const AF_VSOCK: u64 = 40;

#[rustfmt::skip]
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_accept, libc::SYS_accept4, libc::SYS_bind, libc::SYS_brk,
    libc::SYS_capget, libc::SYS_capset, libc::SYS_chdir, libc::SYS_fchdir,
    libc::SYS_clock_getres, libc::SYS_clock_gettime, libc::SYS_clock_nanosleep,
    libc::SYS_clone, libc::SYS_close, libc::SYS_close_range, libc::SYS_connect,
    libc::SYS_copy_file_range, libc::SYS_dup, libc::SYS_dup3,
    libc::SYS_epoll_create1, libc::SYS_epoll_ctl, libc::SYS_epoll_pwait, libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2, libc::SYS_execve, libc::SYS_execveat, libc::SYS_exit, libc::SYS_exit_group,
    libc::SYS_faccessat, libc::SYS_faccessat2, libc::SYS_fadvise64, libc::SYS_fallocate,
    libc::SYS_fanotify_mark, libc::SYS_fchmod, libc::SYS_fchmodat, libc::SYS_fchmodat2,
    libc::SYS_fchown, libc::SYS_fchownat, libc::SYS_fcntl, libc::SYS_fdatasync,
    libc::SYS_fgetxattr, libc::SYS_flistxattr, libc::SYS_flock, libc::SYS_fremovexattr,
    libc::SYS_fsetxattr, libc::SYS_fstat, libc::SYS_fstatfs, libc::SYS_fsync,
    libc::SYS_ftruncate, libc::SYS_futex, libc::SYS_futex_waitv, libc::SYS_get_robust_list,
    libc::SYS_getcpu, libc::SYS_getcwd, libc::SYS_getdents64, libc::SYS_getegid,
    libc::SYS_geteuid, libc::SYS_getgid, libc::SYS_getgroups, libc::SYS_getitimer,
    libc::SYS_getpeername, libc::SYS_getpgid, libc::SYS_getpid, libc::SYS_getppid,
    libc::SYS_getpriority, libc::SYS_getrandom, libc::SYS_getresgid, libc::SYS_getresuid,
    libc::SYS_getrlimit, libc::SYS_getrusage, libc::SYS_getsid, libc::SYS_getsockname,
    libc::SYS_getsockopt, libc::SYS_gettid, libc::SYS_gettimeofday, libc::SYS_getuid,
    libc::SYS_getxattr, libc::SYS_inotify_add_watch, libc::SYS_inotify_init1,
    libc::SYS_inotify_rm_watch, libc::SYS_io_cancel, libc::SYS_io_destroy,
    libc::SYS_io_getevents, libc::SYS_io_setup, libc::SYS_io_submit,
    libc::SYS_ioctl, libc::SYS_ioprio_get, libc::SYS_ioprio_set, libc::SYS_kcmp, libc::SYS_kill,
    libc::SYS_landlock_add_rule, libc::SYS_landlock_create_ruleset,
    libc::SYS_landlock_restrict_self, libc::SYS_lgetxattr, libc::SYS_linkat, libc::SYS_listen,
    libc::SYS_listxattr, libc::SYS_llistxattr, libc::SYS_lremovexattr, libc::SYS_lseek,
    libc::SYS_lsetxattr, libc::SYS_madvise, libc::SYS_membarrier, libc::SYS_memfd_create,
    libc::SYS_mincore, libc::SYS_mkdirat, libc::SYS_mknodat, libc::SYS_mlock, libc::SYS_mlock2,
    libc::SYS_mlockall, libc::SYS_mmap, libc::SYS_mprotect, libc::SYS_mq_getsetattr,
    libc::SYS_mq_notify, libc::SYS_mq_open, libc::SYS_mq_timedreceive, libc::SYS_mq_timedsend,
    libc::SYS_mq_unlink, libc::SYS_mremap, libc::SYS_msgctl, libc::SYS_msgget, libc::SYS_msgrcv,
    libc::SYS_msgsnd, libc::SYS_msync, libc::SYS_munlock, libc::SYS_munlockall, libc::SYS_munmap,
    libc::SYS_name_to_handle_at, libc::SYS_nanosleep, libc::SYS_newfstatat, libc::SYS_openat,
    libc::SYS_openat2, libc::SYS_personality, libc::SYS_pidfd_getfd, libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal, libc::SYS_pipe2, libc::SYS_pkey_alloc, libc::SYS_pkey_free,
    libc::SYS_pkey_mprotect, libc::SYS_ppoll, libc::SYS_prctl, libc::SYS_pread64,
    libc::SYS_preadv, libc::SYS_preadv2, libc::SYS_prlimit64, libc::SYS_process_madvise,
    libc::SYS_process_mrelease, libc::SYS_process_vm_readv, libc::SYS_process_vm_writev,
    libc::SYS_pselect6, libc::SYS_ptrace, libc::SYS_pwrite64, libc::SYS_pwritev,
    libc::SYS_pwritev2, libc::SYS_read, libc::SYS_readahead, libc::SYS_readlinkat,
    libc::SYS_readv, libc::SYS_recvfrom, libc::SYS_recvmmsg, libc::SYS_recvmsg,
    libc::SYS_remap_file_pages, libc::SYS_removexattr, libc::SYS_renameat, libc::SYS_renameat2,
    libc::SYS_restart_syscall, libc::SYS_rseq, libc::SYS_rt_sigaction, libc::SYS_rt_sigpending,
    libc::SYS_rt_sigprocmask, libc::SYS_rt_sigqueueinfo, libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigsuspend, libc::SYS_rt_sigtimedwait, libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_sched_get_priority_max, libc::SYS_sched_get_priority_min,
    libc::SYS_sched_getaffinity, libc::SYS_sched_getattr, libc::SYS_sched_getparam,
    libc::SYS_sched_getscheduler, libc::SYS_sched_rr_get_interval, libc::SYS_sched_setaffinity,
    libc::SYS_sched_setattr, libc::SYS_sched_setparam, libc::SYS_sched_setscheduler,
    libc::SYS_sched_yield, libc::SYS_seccomp, libc::SYS_semctl, libc::SYS_semget,
    libc::SYS_semop, libc::SYS_semtimedop, libc::SYS_sendfile, libc::SYS_sendmmsg,
    libc::SYS_sendmsg, libc::SYS_sendto, libc::SYS_set_robust_list, libc::SYS_set_tid_address,
    libc::SYS_setfsgid, libc::SYS_setfsuid, libc::SYS_setgid, libc::SYS_setgroups,
    libc::SYS_setitimer, libc::SYS_setpgid, libc::SYS_setpriority, libc::SYS_setregid,
    libc::SYS_setresgid, libc::SYS_setresuid, libc::SYS_setreuid, libc::SYS_setrlimit,
    libc::SYS_setsid, libc::SYS_setsockopt, libc::SYS_setuid, libc::SYS_setxattr,
    libc::SYS_shmat, libc::SYS_shmctl, libc::SYS_shmdt, libc::SYS_shmget, libc::SYS_shutdown,
    libc::SYS_sigaltstack, libc::SYS_signalfd4, libc::SYS_socket, libc::SYS_socketpair,
    libc::SYS_splice, libc::SYS_statfs, libc::SYS_statx, libc::SYS_symlinkat, libc::SYS_sync,
    libc::SYS_sync_file_range, libc::SYS_syncfs, libc::SYS_sysinfo, libc::SYS_tee,
    libc::SYS_tgkill, libc::SYS_timer_create, libc::SYS_timer_delete, libc::SYS_timer_getoverrun,
    libc::SYS_timer_gettime, libc::SYS_timer_settime, libc::SYS_timerfd_create,
    libc::SYS_timerfd_gettime, libc::SYS_timerfd_settime, libc::SYS_times, libc::SYS_tkill,
    libc::SYS_truncate, libc::SYS_umask, libc::SYS_uname, libc::SYS_unlinkat,
    libc::SYS_utimensat, libc::SYS_vmsplice, libc::SYS_wait4, libc::SYS_waitid, libc::SYS_write,
    libc::SYS_writev,
];

/// The legacy calls x86_64 still has and newer architectures dropped.
#[cfg(target_arch = "x86_64")]
#[rustfmt::skip]
const ALLOWED_LEGACY: &[libc::c_long] = &[
    libc::SYS_access, libc::SYS_alarm, libc::SYS_arch_prctl, libc::SYS_chmod, libc::SYS_chown,
    libc::SYS_creat, libc::SYS_dup2, libc::SYS_epoll_create, libc::SYS_epoll_wait,
    libc::SYS_eventfd, libc::SYS_fork, libc::SYS_futimesat, libc::SYS_getdents,
    libc::SYS_getpgrp, libc::SYS_inotify_init, libc::SYS_lchown, libc::SYS_link,
    libc::SYS_lstat, libc::SYS_mkdir, libc::SYS_mknod, libc::SYS_modify_ldt, libc::SYS_open,
    libc::SYS_pause, libc::SYS_pipe, libc::SYS_poll, libc::SYS_readlink, libc::SYS_rename,
    libc::SYS_rmdir, libc::SYS_select, libc::SYS_signalfd, libc::SYS_stat, libc::SYS_symlink,
    libc::SYS_time, libc::SYS_unlink, libc::SYS_utime, libc::SYS_utimes, libc::SYS_vfork,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_LEGACY: &[libc::c_long] = &[];

/// Refused with `EPERM` whatever their arguments.
#[rustfmt::skip]
const DENIED: &[libc::c_long] = &[
    libc::SYS_unshare, libc::SYS_setns, libc::SYS_mount, libc::SYS_umount2,
    libc::SYS_pivot_root, libc::SYS_chroot, libc::SYS_open_tree, libc::SYS_move_mount,
    libc::SYS_fsopen, libc::SYS_fsconfig, libc::SYS_fsmount, libc::SYS_fspick,
    libc::SYS_mount_setattr, libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_request_key,
    libc::SYS_bpf, libc::SYS_perf_event_open, libc::SYS_kexec_load, libc::SYS_kexec_file_load,
    libc::SYS_init_module, libc::SYS_finit_module, libc::SYS_delete_module, libc::SYS_acct,
    libc::SYS_swapon, libc::SYS_swapoff, libc::SYS_reboot, libc::SYS_syslog,
    libc::SYS_settimeofday, libc::SYS_clock_settime, libc::SYS_clock_adjtime,
    libc::SYS_adjtimex, libc::SYS_quotactl, libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at, libc::SYS_fanotify_init, libc::SYS_lookup_dcookie,
    libc::SYS_sethostname, libc::SYS_setdomainname, libc::SYS_vhangup,
    libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register,
];

/// `personality(2)` values a program may set (Docker's set, plus turning
/// address randomisation off, which debuggers do).
const PERSONALITIES: &[u64] = &[0, 0x0008, 0x20000, 0x20008, 0x40000, 0xffff_ffff];

impl Filters {
    /// Compiles both programs for the running architecture.
    pub(crate) fn build() -> Result<Filters, SetupError> {
        let arch =
            TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SetupError::Filter {
                what: "no system-call filter for this architecture",
                error: Box::new(e),
            })?;
        let compile = |filter: Result<SeccompFilter, seccompiler::BackendError>| {
            filter
                .and_then(BpfProgram::try_from)
                .map_err(|e| SetupError::Filter {
                    what: "cannot build the system-call filter",
                    error: Box::new(e),
                })
        };
        Ok(Filters {
            allow: compile(allow_filter(arch))?,
            deny: compile(deny_filter(arch))?,
        })
    }

    /// Installs both programs on the calling thread (and what it starts
    /// afterwards). Sets `no_new_privs`, which the kernel requires.
    pub(crate) fn install(&self) -> Result<(), SetupError> {
        for program in [&self.allow, &self.deny] {
            seccompiler::apply_filter(program).map_err(|e| SetupError::Filter {
                what: "cannot install the system-call filter",
                error: Box::new(e),
            })?;
        }
        Ok(())
    }
}

/// One rule per value: argument `arg` (of width `len`) compared with `op`
/// built from the value; the rules are ORed by the filter.
fn one_of(
    arg: u8,
    len: SeccompCmpArgLen,
    op: impl Fn(u64) -> SeccompCmpOp,
    values: &[u64],
) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .iter()
        .map(|v| SeccompRule::new(vec![SeccompCondition::new(arg, len.clone(), op(*v), *v)?]))
        .collect()
}

fn allow_filter(arch: TargetArch) -> Result<SeccompFilter, seccompiler::BackendError> {
    let unsupported = moat_sandbox::setid::unsupported();
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(ALLOWED_LEGACY)
        .filter(|nr| **nr != libc::SYS_personality && !unsupported.contains(nr))
        .map(|nr| (*nr, Vec::new()))
        .collect();
    rules.insert(
        libc::SYS_personality,
        one_of(
            0,
            SeccompCmpArgLen::Dword,
            |_| SeccompCmpOp::Eq,
            PERSONALITIES,
        )?,
    );
    SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::ENOSYS as u32),
        SeccompAction::Allow,
        arch,
    )
}

fn deny_filter(arch: TargetArch) -> Result<SeccompFilter, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    // Any namespace flag in clone's flags (first argument on x86_64 and
    // aarch64) is refused; each rule matches one flag.
    rules.insert(
        libc::SYS_clone,
        one_of(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq,
            NAMESPACE_FLAGS,
        )?,
    );
    rules.insert(
        libc::SYS_ioctl,
        one_of(
            1,
            SeccompCmpArgLen::Dword,
            |_| SeccompCmpOp::Eq,
            &[libc::TIOCSTI, libc::TIOCLINUX],
        )?,
    );
    rules.insert(
        libc::SYS_socket,
        one_of(
            0,
            SeccompCmpArgLen::Dword,
            |_| SeccompCmpOp::Eq,
            &[AF_VSOCK],
        )?,
    );
    for (nr, setid_rules) in moat_sandbox::setid::refused()? {
        match rules.get_mut(&nr) {
            // Refused whatever the arguments already: conditions added to
            // an empty list would narrow it to them.
            Some(existing) if existing.is_empty() => {}
            Some(existing) if setid_rules.is_empty() => existing.clear(),
            Some(existing) => existing.extend(setid_rules),
            None => {
                rules.insert(nr, setid_rules);
            }
        }
    }
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_programs_compile_for_this_machine() {
        let filters = Filters::build().unwrap_or_else(|e| panic!("{e}"));
        assert!(!filters.allow.is_empty());
        assert!(!filters.deny.is_empty());
    }

    #[test]
    fn nothing_is_both_allowed_and_denied() {
        for nr in DENIED {
            assert!(
                !ALLOWED.contains(nr) && !ALLOWED_LEGACY.contains(nr),
                "syscall {nr} is in both lists"
            );
        }
    }
}
