//! The few system calls that need `unsafe`: `fork`, `unshare`, the signal
//! mask, adopting inherited file descriptors, `pre_exec` hooks and the
//! loopback ioctl. Everything else goes through safe `rustix` or `std`.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::io::FdFlags;
use rustix::thread::UnshareFlags;

/// Result of [`fork_single_threaded`].
#[derive(Debug)]
pub(crate) enum Fork {
    /// We are the new child process.
    Child,
    /// We are the parent; this is the child's pid.
    Parent(i32),
}

/// `fork(2)`. Only call this from a single-threaded process.
pub(crate) fn fork_single_threaded() -> io::Result<Fork> {
    // SAFETY: the only caller is the sandbox init, which runs from
    // `maybe_run_init` before the program has started any thread, and
    // starts its own threads (relay, lifeline) only after this fork. With a
    // single thread, the child inherits no lock held by another thread and
    // may run arbitrary code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

/// `unshare(2)` for namespace flags. `CLONE_FILES` is refused: it is the one
/// flag that can break the file-descriptor invariants of other threads.
pub(crate) fn unshare_namespaces(flags: UnshareFlags) -> io::Result<()> {
    if flags.contains(UnshareFlags::FILES) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to unshare the file descriptor table",
        ));
    }
    // SAFETY: without CLONE_FILES, unsharing only detaches this process from
    // namespaces (and `fs` state when NEWNS is given); no file descriptor
    // becomes invalid for any thread. The init is single-threaded when it
    // calls this (the kernel requires it for CLONE_NEWUSER anyway).
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// Takes ownership of a file descriptor number received on the command line
/// from [`crate::spawn`], and marks it close-on-exec.
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited descriptor {fd} is a standard stream"),
        ));
    }
    // SAFETY: `spawn` cleared close-on-exec on exactly this descriptor for
    // the init and passed its number; at this point (first thing in `main`)
    // nothing else in the process has taken ownership of it. `fcntl` below
    // verifies it is open before we wrap it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
    // SAFETY: see above: the descriptor is open and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `cmd`'s child keep `fds` open across `exec` (they are created
/// close-on-exec so that no other child of the caller inherits them).
pub(crate) fn keep_fds_across_exec(cmd: &mut Command, fds: Vec<RawFd>) {
    let hook = move || -> io::Result<()> {
        for &fd in &fds {
            // SAFETY: `fd` is owned by the parent's `OwnedFd`, which outlives
            // the spawn call; in the forked child it is still open.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            rustix::io::fcntl_setfd(borrowed, FdFlags::empty())?;
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only calls `fcntl`,
    // which is async-signal-safe; it allocates nothing (the Vec was built
    // before the fork) and takes no lock.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Makes `cmd`'s child start with an empty signal mask and default signal
/// dispositions (the init and PID 1 block the signals they forward, and the
/// caller may ignore some: both survive `exec`).
pub(crate) fn reset_signals_before_exec(cmd: &mut Command) {
    let hook = || -> io::Result<()> {
        for sig in 1..32 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: installing SIG_DFL is async-signal-safe and involves
            // no Rust handler; failures (invalid numbers) are irrelevant.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given.
        if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `set` was initialised just above; null old-set is allowed.
        let rc =
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only calls signal,
    // sigemptyset and pthread_sigmask, all async-signal-safe, with no
    // allocation and no lock.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Makes `cmd`'s child a session leader whose controlling terminal is its
/// stdin (a pseudo-terminal slave), so the terminal's signals and job
/// control reach the command and nothing else.
pub(crate) fn controlling_terminal_before_exec(cmd: &mut Command) {
    let hook = || -> io::Result<()> {
        rustix::process::setsid()?;
        // SAFETY: fd 0 is open in the child (the terminal slave) for the
        // duration of this call.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        rustix::process::ioctl_tiocsctty(stdin)?;
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and makes two system
    // calls (setsid, ioctl), with no allocation and no lock.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Unblocks every signal in the calling thread (a process forked from
/// one that blocks the signals it forwards, but forwards nothing).
pub(crate) fn unblock_all_signals() -> io::Result<()> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `set` was initialised just above; null old-set is allowed.
    let rc =
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// A set of blocked signals that the init collects with [`SignalSet::wait`].
#[derive(Debug)]
pub(crate) struct SignalSet(libc::sigset_t);

/// One signal taken from the pending set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CaughtSignal {
    pub(crate) signo: i32,
    /// `si_code`: `SI_USER` for kill(2), `SI_KERNEL` for a terminal, ...
    pub(crate) code: i32,
}

impl CaughtSignal {
    /// Sent on purpose by a process (kill/sigqueue), as opposed to generated
    /// by the kernel for a whole terminal process group or a child exit.
    pub(crate) fn sent_by_process(&self) -> bool {
        self.code == libc::SI_USER || self.code == libc::SI_QUEUE
    }
}

impl SignalSet {
    /// Blocks `signals` in the calling thread (inherited by threads it
    /// spawns afterwards and by forked children).
    pub(crate) fn block(signals: &[i32]) -> io::Result<SignalSet> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given.
        if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: initialised by sigemptyset just above.
        let mut set = unsafe { set.assume_init() };
        for &sig in signals {
            // SAFETY: `set` is a valid, initialised sigset_t.
            if unsafe { libc::sigaddset(&mut set, sig) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: valid set pointer; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(SignalSet(set))
    }

    /// Waits for one of the blocked signals.
    pub(crate) fn wait(&self) -> io::Result<CaughtSignal> {
        loop {
            let mut info = MaybeUninit::<libc::siginfo_t>::zeroed();
            // SAFETY: valid set and a writable siginfo_t.
            let signo = unsafe { libc::sigwaitinfo(&self.0, info.as_mut_ptr()) };
            if signo < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            // SAFETY: sigwaitinfo succeeded, so it filled `info` (and it was
            // zero-initialised anyway).
            let info = unsafe { info.assume_init() };
            return Ok(CaughtSignal {
                signo,
                code: info.si_code,
            });
        }
    }
}

/// Brings the loopback interface of the current network namespace up.
pub(crate) fn loopback_up() -> io::Result<()> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags member of a
    // valid ifreq; the socket is open for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP as libc::c_short);
    // SAFETY: as above, with SIOCSIFFLAGS reading the flags member.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub(crate) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
pub(crate) const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr(2)` on a detached mount tree (an `open_tree` fd): sets
/// `attr_set`, with `userns` as the ID mapping when it includes
/// [`MOUNT_ATTR_IDMAP`].
pub(crate) fn mount_setattr_tree(
    tree: BorrowedFd<'_>,
    recursive: bool,
    attr_set: u64,
    userns: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: `tree` is an open descriptor for the duration of the call,
    // the path is an empty NUL-terminated string, and `attr` is a valid
    // `struct mount_attr` whose size is passed along; the kernel only
    // reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
