//! The caller's side: [`spawn`] and the [`Sandbox`] handle.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::Arc;

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use crate::error::SandboxError;
use crate::init::INIT_MARKER;
use crate::protocol::{parse_status, write_spec, Status, GO};
use crate::spec::{SandboxSpec, StdioMode};
use crate::sys;

/// How a sandboxed command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxExit {
    /// Exit code as a shell reports it: the command's exit code, or
    /// 128 + N when it was killed by signal N.
    pub code: i32,
    /// The signal that killed the command, if one did.
    pub signal: Option<i32>,
}

impl SandboxExit {
    /// Exited normally with code 0.
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }
}

/// A cloneable, thread-safe way to signal a running sandbox (for example
/// from a Ctrl-C handler while another thread is in [`Sandbox::wait`]).
///
/// It holds a pidfd, so it can never signal an unrelated process that
/// reused the pid.
#[derive(Debug, Clone)]
pub struct Signaller {
    pidfd: Arc<OwnedFd>,
}

impl Signaller {
    /// Sends signal `sig` (e.g. `libc::SIGTERM`) to the sandbox init, which
    /// forwards it to the command. SIGKILL kills the whole sandbox at once.
    pub fn signal(&self, sig: i32) -> Result<(), SandboxError> {
        let signal = Signal::from_named_raw(sig).ok_or(SandboxError::UnknownSignal(sig))?;
        match pidfd_send_signal(&*self.pidfd, signal) {
            // ESRCH: already exited; nothing left to signal.
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(SandboxError::io(
                format!("cannot send signal {sig} to the sandbox"),
                e.into(),
            )),
        }
    }
}

/// A running sandbox.
///
/// Dropping it without [`Sandbox::wait`] kills the sandbox (all its
/// processes) and reaps it.
#[derive(Debug)]
pub struct Sandbox {
    child: Child,
    signaller: Signaller,
    /// Caller's end of the spec pipe: the init kills the sandbox when it
    /// closes.
    lifeline: Option<File>,
    status: BufReader<File>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    exit: Option<SandboxExit>,
    /// Master side of the sandbox's terminal with [`StdioMode::Pty`].
    pty: Option<OwnedFd>,
    /// The sandbox's resource limits, removed once it is gone.
    cgroup: Option<crate::cgroup::RunCgroup>,
}

/// Starts `spec` in a new sandbox and returns once the sandbox is built and
/// the command is being started.
///
/// The current executable (`/proc/self/exe`) is re-executed as the sandbox
/// init, so it must call [`crate::init::maybe_run_init`] first thing in
/// `main`. Setup failures (missing workspace, failed mount, user namespaces
/// disabled...) are returned as errors naming the path and the fix; a
/// command that is not found in the sandbox is not an error here: it exits
/// with code 127, like in a shell.
///
/// This call blocks for the few milliseconds the setup takes (from async
/// code, use `spawn_blocking`). The sandbox lives as long as the returned
/// handle: dropping it, or the caller process dying, kills every process of
/// the sandbox.
///
/// Interactive use: with [`StdioMode::Inherit`] and a terminal on the
/// caller's stdin, the command shares the caller's terminal and process
/// group, so Ctrl-C and window-size changes reach it directly.
pub fn spawn(spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
    spec.validate()?;
    if !spec.workload.workspace.is_dir() {
        return Err(SandboxError::InvalidSpec {
            message: format!(
                "workspace {} does not exist or is not a directory (create it or run from an existing project)",
                spec.workload.workspace.display()
            ),
        });
    }
    let pipe = || {
        pipe_with(PipeFlags::CLOEXEC)
            .map_err(|e| SandboxError::io("cannot create a pipe", e.into()))
    };
    let cgroup = crate::cgroup::RunCgroup::create(&spec.limits)?;
    let (spec_r, spec_w) = pipe()?;
    let (status_r, status_w) = pipe()?;

    let exec_listener = spec
        .exec_socket
        .as_deref()
        .map(crate::exec::bind)
        .transpose()?;
    let port_listener = spec
        .port_socket
        .as_deref()
        .map(crate::exec::bind)
        .transpose()?;
    let mut inherited = vec![spec_r.as_raw_fd(), status_w.as_raw_fd()];
    inherited.extend(exec_listener.as_ref().map(|l| l.as_raw_fd()));
    inherited.extend(port_listener.as_ref().map(|l| l.as_raw_fd()));
    // Arguments: the spec and status fds, then the exec socket's and the
    // port socket's, `-` for one not asked for.
    let fd_arg = |fd: Option<i32>| fd.map_or_else(|| "-".to_owned(), |fd| fd.to_string());
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(INIT_MARKER)
        .arg(spec_r.as_raw_fd().to_string())
        .arg(status_w.as_raw_fd().to_string())
        .arg(fd_arg(exec_listener.as_ref().map(|l| l.as_raw_fd())))
        .arg(fd_arg(port_listener.as_ref().map(|l| l.as_raw_fd())))
        .env_clear();
    let pty_master = wire_stdio(&mut cmd, spec)?;
    sys::keep_fds_across_exec(&mut cmd, inherited);
    let mut child = cmd
        .spawn()
        .map_err(|e| SandboxError::io("cannot start the sandbox init (/proc/self/exe)", e))?;
    drop(spec_r);
    drop(status_w);
    // Only the sandbox serves it: once it is gone, connecting fails.
    drop(exec_listener);
    drop(port_listener);

    let pidfd = match open_pidfd(&child) {
        Ok(fd) => fd,
        Err(e) => {
            reap(&mut child);
            return Err(e);
        }
    };
    let mut lifeline = File::from(spec_w);
    // The init prepares while it is moved into the cgroup, and starts no
    // process of the sandbox before the go byte: all of them are inside.
    let mut written = write_spec(&mut lifeline, spec);
    if let Some(Err(e)) = cgroup.as_ref().map(|c| c.add(child.id())) {
        reap(&mut child);
        return Err(e);
    }
    if written.is_ok() {
        written = lifeline.write_all(&[GO]);
    }
    let status = wait_ready(&mut child, status_r, written)?;

    Ok(Sandbox {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        signaller: Signaller {
            pidfd: Arc::new(pidfd),
        },
        lifeline: Some(lifeline),
        status,
        exit: None,
        pty: pty_master,
        cgroup,
    })
}

fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Gives the init the sandbox's stdio as `spec` asks; returns the
/// terminal's master side when the sandbox gets a terminal of its own.
fn wire_stdio(cmd: &mut Command, spec: &SandboxSpec) -> Result<Option<OwnedFd>, SandboxError> {
    match spec.stdio {
        StdioMode::Pty { rows, cols } => {
            let (master, slave) = open_pty(rows, cols)?;
            let dup = |fd: &OwnedFd| {
                fd.try_clone()
                    .map_err(|e| SandboxError::io("cannot duplicate the terminal", e))
            };
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            return Ok(Some(master));
        }
        StdioMode::Inherit => {
            cmd.stdin(Stdio::inherit())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
        }
        StdioMode::Piped | StdioMode::PipedOutput => {
            cmd.stdin(if spec.stdio == StdioMode::Piped {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
    }
    Ok(None)
}

/// A pidfd of the init, to signal it without racing pid reuse.
fn open_pidfd(child: &Child) -> Result<OwnedFd, SandboxError> {
    Pid::from_raw(child.id() as i32)
        .ok_or_else(|| SandboxError::Setup {
            message: "the sandbox init has an invalid pid".into(),
        })
        .and_then(|pid| {
            pidfd_open(pid, PidfdFlags::empty())
                .map_err(|e| SandboxError::io("cannot open a pidfd for the sandbox", e.into()))
        })
}

/// Reads the init's first status: `Ready`, or why the sandbox could not
/// be built (the init is reaped then). `written`: how sending the spec
/// went, which explains an init that stopped without a word.
fn wait_ready(
    child: &mut Child,
    status_r: OwnedFd,
    written: std::io::Result<()>,
) -> Result<BufReader<File>, SandboxError> {
    let mut status = BufReader::new(File::from(status_r));
    let mut line = String::new();
    let _ = status.read_line(&mut line);
    match parse_status(&line) {
        Some(Status::Ready) => Ok(status),
        Some(Status::Error { message }) => {
            reap(child);
            Err(SandboxError::Setup { message })
        }
        _ => {
            let exited = child.wait();
            let how = match (exited, written) {
                (_, Err(e)) => format!("it did not accept the spec ({e})"),
                (Ok(st), _) => format!("it exited with {st}"),
                (Err(e), _) => format!("cannot wait for it: {e}"),
            };
            Err(SandboxError::Setup {
                message: format!(
                    "the sandbox init stopped before the sandbox was ready: {how}. \
                     Does this program call moat_runtime_native::init::maybe_run_init() first in main?"
                ),
            })
        }
    }
}

/// A new pseudo-terminal of `rows` × `cols`: (master, slave).
pub(crate) fn open_pty(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), SandboxError> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let fail = |what: &str, e: rustix::io::Errno| SandboxError::io(what, e.into());
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .map_err(|e| fail("cannot open a pseudo-terminal (/dev/ptmx)", e))?;
    grantpt(&master).map_err(|e| fail("cannot grant the pseudo-terminal", e))?;
    unlockpt(&master).map_err(|e| fail("cannot unlock the pseudo-terminal", e))?;
    let name =
        ptsname(&master, Vec::new()).map_err(|e| fail("cannot name the pseudo-terminal", e))?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("cannot open the pseudo-terminal's slave side", e))?;
    let size = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&master, size)
        .map_err(|e| fail("cannot size the pseudo-terminal", e))?;
    Ok((master, slave))
}

impl Sandbox {
    /// Host pid of the sandbox init (not of the command itself, which has
    /// its own pid namespace). Signals sent to it by a process are forwarded
    /// to the command.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The master side of the sandbox's terminal, once, with
    /// [`StdioMode::Pty`]: write the user's keystrokes to it, read the
    /// command's output from it (reads fail with `EIO` once the command and
    /// everything holding the terminal are gone), and set its window size.
    pub fn take_pty(&mut self) -> Option<OwnedFd> {
        self.pty.take()
    }

    /// The command's stdout, once, when [`StdioMode::Piped`].
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// The command's stderr, once, when [`StdioMode::Piped`]. Setup messages
    /// of the sandbox itself (e.g. `moat: command not found in sandbox: x`)
    /// also come here.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// A handle to signal the sandbox from another thread.
    pub fn signaller(&self) -> Signaller {
        self.signaller.clone()
    }

    /// Sends signal `sig` to the command (through the init). SIGKILL
    /// kills the whole sandbox immediately.
    pub fn signal(&self, sig: i32) -> Result<(), SandboxError> {
        if self.exit.is_some() {
            return Err(SandboxError::AlreadyWaited);
        }
        self.signaller.signal(sig)
    }

    /// Kills the sandbox and every process in it (SIGKILL).
    pub fn kill(&self) -> Result<(), SandboxError> {
        self.signal(libc::SIGKILL)
    }

    /// Waits for the command to finish; its processes are all gone when
    /// this returns. With piped stdio, read the pipes from other threads
    /// meanwhile, or the command may block on a full pipe.
    pub fn wait(&mut self) -> Result<SandboxExit, SandboxError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let status = self
            .child
            .wait()
            .map_err(|e| SandboxError::io("cannot wait for the sandbox", e))?;
        Ok(self.finish(status))
    }

    /// Like [`Sandbox::wait`] without blocking: `None` while running.
    pub fn try_wait(&mut self) -> Result<Option<SandboxExit>, SandboxError> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        match self
            .child
            .try_wait()
            .map_err(|e| SandboxError::io("cannot wait for the sandbox", e))?
        {
            Some(status) => Ok(Some(self.finish(status))),
            None => Ok(None),
        }
    }

    fn finish(&mut self, status: std::process::ExitStatus) -> SandboxExit {
        use std::os::unix::process::ExitStatusExt;
        self.lifeline = None;
        // The init and PID 1 are gone, so this reads to end-of-file at once.
        let mut precise = None;
        let mut line = String::new();
        while matches!(self.status.read_line(&mut line), Ok(n) if n > 0) {
            if let Some(Status::Exit { code, signal }) = parse_status(&line) {
                precise = Some(SandboxExit { code, signal });
            }
            line.clear();
        }
        let exit = precise.unwrap_or_else(|| match (status.code(), status.signal()) {
            (Some(code), _) => SandboxExit { code, signal: None },
            (None, Some(sig)) => SandboxExit {
                code: 128 + sig,
                signal: Some(sig),
            },
            (None, None) => SandboxExit {
                code: 128,
                signal: None,
            },
        });
        self.exit = Some(exit);
        if let Some(cgroup) = self.cgroup.as_mut() {
            cgroup.remove();
        }
        exit
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.signaller.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}
