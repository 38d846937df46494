//! `moat exec`: more commands in a running sandbox.
//!
//! A sandbox started with a [`SandboxSpec::exec_socket`] serves it for
//! its whole life. The caller binds the Unix socket (0600, in the run's
//! storage) before the sandbox starts and hands the listening descriptor
//! down; PID 1 forks an *exec server* once the sandbox is built and
//! before the command starts. The server is therefore inside everything
//! the command is inside: the pid, mount, network, user, IPC and UTS
//! namespaces, the cgroup, the system-call filter, no capability,
//! `no_new_privs`, the resource limits. A command it starts cannot have
//! more than the sandbox's own command has, by construction rather than
//! by repeating the setup. It is not dumpable (inherited from PID 1), so
//! the sandbox's processes cannot trace it or reach its descriptors
//! through `/proc`; they can kill it, which only ends `moat exec` for
//! that run.
//!
//! One connection is one command:
//!
//! 1. caller → server: a [`Request`] (a 4-byte little-endian length and
//!    JSON) with the command's stdio attached (`SCM_RIGHTS`): one
//!    pseudo-terminal slave, or three pipes. Never the caller's own
//!    descriptors: a sandbox process holding the user's terminal could
//!    push keystrokes into it, and one holding a host file could change
//!    its mode.
//! 2. server → caller: JSON lines of [`Reply`]: `Started` or `Failed`,
//!    then `Exit` when the command ends.
//! 3. caller → server, meanwhile: JSON lines of [`Control`] (signals).
//!
//! When the sandbox ends, the server and its commands end with it (the
//! kernel kills the pid namespace) and the caller reads end-of-file:
//! [`ExecExit::RunEnded`].

use std::fs::File;
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use rustix::pipe::{pipe_with, PipeFlags};
use serde::{Deserialize, Serialize};

use crate::error::SandboxError;
use crate::spec::{SandboxSpec, DEFAULT_PATH, WORKSPACE_IN_SANDBOX};

/// Upper bound on a request (a command line).
const MAX_REQUEST_BYTES: u32 = 1024 * 1024;

/// What the caller asks the server to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Request {
    /// Program and arguments; the program is looked up in the sandbox's
    /// `PATH` unless it contains `/`.
    command: Vec<String>,
    /// The caller's `TERM`, given to a command that has a terminal.
    term: Option<String>,
}

/// The server's answers, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Reply {
    /// The command runs.
    Started,
    /// The command could not be started; `code` is what a shell would
    /// exit with (127: not found, 126: not executable).
    Failed { message: String, code: i32 },
    /// The command ended: its exit code, or 128+N for signal N.
    Exit { code: i32, signal: Option<i32> },
}

/// What the caller may send while the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Control {
    /// Deliver this signal to the command's process group.
    Signal(i32),
}

/// How a command started with [`exec`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecExit {
    /// It exited (code, or 128+N for signal N).
    Exited(i32),
    /// The sandbox ended while it ran (the run stopped): the command was
    /// killed with it.
    RunEnded,
}

/// The command's standard streams, on the caller's side.
#[derive(Debug)]
pub enum ExecStreams {
    /// A terminal of its own: the master side, to relay the user's
    /// terminal to and to size.
    Terminal(OwnedFd),
    /// Pipes: write the command's stdin, read its stdout and stderr.
    Piped {
        /// The command's stdin (drop it for end-of-file).
        stdin: File,
        /// The command's stdout.
        stdout: File,
        /// The command's stderr.
        stderr: File,
    },
}

/// What [`exec`] gives the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStdio {
    /// A terminal of `rows` × `cols`, with the caller's `TERM`.
    Terminal {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
        /// `TERM`.
        term: Option<String>,
    },
    /// Three pipes.
    Piped,
}

/// A command running in a sandbox, started by [`exec`].
#[derive(Debug)]
pub struct ExecSession {
    replies: BufReader<UnixStream>,
    control: ExecSignaller,
}

/// Sends signals to a command started by [`exec`], from any thread.
#[derive(Debug, Clone)]
pub struct ExecSignaller {
    conn: Arc<UnixStream>,
}

impl ExecSignaller {
    /// Delivers `sig` to the command's process group in the sandbox.
    pub fn signal(&self, sig: i32) {
        if let Ok(mut line) = serde_json::to_vec(&Control::Signal(sig)) {
            line.push(b'\n');
            let _ = (&*self.conn).write_all(&line);
        }
    }
}

impl ExecSession {
    /// A handle to signal the command.
    pub fn signaller(&self) -> ExecSignaller {
        self.control.clone()
    }

    /// Waits for the command to end.
    pub fn wait(mut self) -> Result<ExecExit, SandboxError> {
        let mut line = String::new();
        loop {
            line.clear();
            match self.replies.read_line(&mut line) {
                Ok(0) => return Ok(ExecExit::RunEnded),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A connection reset is the sandbox going away too.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Ok(ExecExit::RunEnded)
                }
                Err(e) => return Err(SandboxError::io("cannot read from the sandbox", e)),
            }
            if let Ok(Reply::Exit { code, .. }) = serde_json::from_str(line.trim_end()) {
                return Ok(ExecExit::Exited(code));
            }
        }
    }
}

/// Starts `command` in the sandbox serving `socket` (its
/// [`SandboxSpec::exec_socket`]); returns the session and the command's
/// streams.
///
/// Fails with [`SandboxError::NotServing`] when nothing serves the
/// socket (the sandbox has ended), and with [`SandboxError::ExecFailed`]
/// when the command cannot start (not found: code 127).
pub fn exec(
    socket: &Path,
    command: Vec<String>,
    stdio: ExecStdio,
) -> Result<(ExecSession, ExecStreams), SandboxError> {
    if command.is_empty() {
        return Err(SandboxError::InvalidSpec {
            message: "no command to run (give one after --)".into(),
        });
    }
    let conn = UnixStream::connect(socket).map_err(|error| SandboxError::NotServing {
        socket: socket.to_path_buf(),
        error,
    })?;
    let (term, streams, theirs) = match stdio {
        ExecStdio::Terminal { rows, cols, term } => {
            let (master, slave) = crate::sandbox::open_pty(rows, cols)?;
            (term, ExecStreams::Terminal(master), vec![slave])
        }
        ExecStdio::Piped => {
            let pipe = || {
                pipe_with(PipeFlags::CLOEXEC)
                    .map_err(|e| SandboxError::io("cannot create a pipe", e.into()))
            };
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            let streams = ExecStreams::Piped {
                stdin: File::from(in_w),
                stdout: File::from(out_r),
                stderr: File::from(err_r),
            };
            (None, streams, vec![in_r, out_w, err_w])
        }
    };
    let request = Request { command, term };
    send_request(&conn, &request, &theirs)
        .map_err(|e| SandboxError::io("cannot send the command to the sandbox", e))?;
    // Only the sandbox holds its ends now: end-of-file works both ways.
    drop(theirs);
    let reader = conn
        .try_clone()
        .map_err(|e| SandboxError::io("cannot duplicate the exec connection", e))?;
    let mut replies = BufReader::new(reader);
    let mut line = String::new();
    let _ = replies.read_line(&mut line);
    match serde_json::from_str::<Reply>(line.trim_end()) {
        Ok(Reply::Started) => {}
        Ok(Reply::Failed { message, code }) => {
            return Err(SandboxError::ExecFailed { message, code })
        }
        _ => {
            return Err(SandboxError::NotServing {
                socket: socket.to_path_buf(),
                error: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the sandbox closed the connection",
                ),
            })
        }
    }
    let session = ExecSession {
        replies,
        control: ExecSignaller {
            conn: Arc::new(conn),
        },
    };
    Ok((session, streams))
}

fn send_request(conn: &UnixStream, request: &Request, fds: &[OwnedFd]) -> io::Result<()> {
    let json = serde_json::to_vec(request).map_err(io::Error::other)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|n| *n <= MAX_REQUEST_BYTES)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "command line too long"))?;
    let mut framed = len.to_le_bytes().to_vec();
    framed.extend_from_slice(&json);
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other("too many descriptors"));
    }
    // The descriptors travel with the first bytes; the rest follows.
    let sent = rustix::net::sendmsg(
        conn,
        &[IoSlice::new(&framed)],
        &mut control,
        SendFlags::empty(),
    )?;
    (&*conn).write_all(&framed[sent..])
}

/// Reads one request and the descriptors that came with it.
fn read_request(conn: &UnixStream) -> io::Result<(Request, Vec<OwnedFd>)> {
    let mut head = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        conn,
        &mut [IoSliceMut::new(&mut head)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.bytes == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    (&*conn).read_exact(&mut head[got.bytes..])?;
    let len = u32::from_le_bytes(head);
    if len > MAX_REQUEST_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "request too large",
        ));
    }
    let mut json = vec![0u8; len as usize];
    (&*conn).read_exact(&mut json)?;
    let request =
        serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((request, fds))
}

/// Binds the socket a sandbox serves: any stale file at `path` is
/// replaced, and only the caller may connect (0600).
pub(crate) fn bind(path: &Path) -> Result<UnixListener, SandboxError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fail = |e| SandboxError::io(format!("cannot listen on {}", path.display()), e);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let listener = UnixListener::bind(path).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    Ok(listener)
}

/// The exec server's life, in the sandbox (see the module
/// documentation); never returns.
pub(crate) fn serve(listener: UnixListener, spec: &SandboxSpec) -> ! {
    let _ = crate::sys::unblock_all_signals();
    let spec = Arc::new(spec.clone());
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let spec = Arc::clone(&spec);
        // A thread per command: each waits for its own child.
        let _ = std::thread::Builder::new()
            .name("moat-exec".into())
            .spawn(move || serve_one(conn, &spec));
    }
    std::process::exit(0)
}

fn reply(mut conn: &UnixStream, reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line)
}

fn serve_one(conn: UnixStream, spec: &SandboxSpec) {
    let Ok((request, fds)) = read_request(&conn) else {
        return;
    };
    let mut child = match start(&request, fds, spec) {
        Ok(child) => child,
        Err((message, code)) => {
            let _ = reply(&conn, &Reply::Failed { message, code });
            return;
        }
    };
    if reply(&conn, &Reply::Started).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    let group = child.id() as i32;
    if let Ok(control) = conn.try_clone() {
        let _ = std::thread::Builder::new()
            .name("moat-exec-ctl".into())
            .spawn(move || forward_controls(control, group));
    }
    let exit = match child.wait() {
        Ok(status) => exit_of(status),
        Err(_) => Reply::Exit {
            code: 125,
            signal: None,
        },
    };
    let _ = reply(&conn, &exit);
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

fn exit_of(status: std::process::ExitStatus) -> Reply {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Reply::Exit { code, signal: None },
        (None, Some(sig)) => Reply::Exit {
            code: 128 + sig,
            signal: Some(sig),
        },
        (None, None) => Reply::Exit {
            code: 128,
            signal: None,
        },
    }
}

/// Delivers the caller's signals to the command's process group until
/// the caller closes the connection.
fn forward_controls(conn: UnixStream, group: i32) {
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    while matches!(lines.read_line(&mut line), Ok(n) if n > 0) {
        if let Ok(Control::Signal(sig)) = serde_json::from_str(line.trim_end()) {
            if let (Some(pgid), Some(signal)) = (
                rustix::process::Pid::from_raw(group),
                rustix::process::Signal::from_named_raw(sig),
            ) {
                let _ = rustix::process::kill_process_group(pgid, signal);
            }
        }
        line.clear();
    }
}

/// Starts the requested command with the sandbox command's environment
/// and working directory; `Err((message, exit code))` when it cannot.
fn start(
    request: &Request,
    mut fds: Vec<OwnedFd>,
    spec: &SandboxSpec,
) -> Result<std::process::Child, (String, i32)> {
    let terminal = fds.len() == 1;
    let (stdin, stdout, stderr) = match fds.len() {
        1 => {
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| (e.to_string(), 125));
            (dup(&fds[0])?, dup(&fds[0])?, fds.remove(0))
        }
        3 => {
            let err = fds.remove(2);
            let out = fds.remove(1);
            (fds.remove(0), out, err)
        }
        n => return Err((format!("expected 1 or 3 descriptors, got {n}"), 125)),
    };
    let mut env = crate::init::command_env(spec);
    if let Some(term) = request.term.as_deref().filter(|t| valid_term(t)) {
        if terminal {
            env.retain(|(k, _)| k != "TERM");
            env.push(("TERM".into(), term.to_owned()));
        }
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| DEFAULT_PATH.to_owned());
    let Some(name) = request.command.first() else {
        return Err(("empty command".into(), 125));
    };
    let Some(program) = crate::init::resolve_program(name, &path_var) else {
        return Err((format!("command not found in sandbox: {name}"), 127));
    };
    let mut cmd = Command::new(&program);
    std::os::unix::process::CommandExt::arg0(&mut cmd, name);
    cmd.args(&request.command[1..])
        .env_clear()
        .envs(env)
        .current_dir(WORKSPACE_IN_SANDBOX)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    crate::sys::reset_signals_before_exec(&mut cmd);
    if terminal {
        crate::sys::controlling_terminal_before_exec(&mut cmd);
    } else {
        // A group of its own, so a signal reaches what it started too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    cmd.spawn().map_err(|e| {
        let code = if e.kind() == io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        (
            format!("cannot execute {} in sandbox: {e}", program.display()),
            code,
        )
    })
}

/// A `TERM` value worth passing on: a short terminal type name.
fn valid_term(term: &str) -> bool {
    !term.is_empty()
        && term.len() <= 64
        && term
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_travels_with_its_descriptors() {
        let (a, b) = UnixStream::pair().expect("socket pair");
        let (r, w) = pipe_with(PipeFlags::CLOEXEC).expect("pipe");
        let request = Request {
            command: vec!["echo".into(), "hé".into()],
            term: Some("xterm".into()),
        };
        send_request(&a, &request, &[r, w]).expect("send");
        let (back, fds) = read_request(&b).expect("read");
        assert_eq!(back, request);
        assert_eq!(fds.len(), 2);
    }

    #[test]
    fn an_oversized_request_is_refused_without_reading_it() {
        let (a, b) = UnixStream::pair().expect("socket pair");
        (&a).write_all(&u32::MAX.to_le_bytes()).expect("write");
        let err = read_request(&b).expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (a, b) = UnixStream::pair().expect("socket pair");
        (&a).write_all(&3u32.to_le_bytes()).expect("write");
        (&a).write_all(b"{x}").expect("write");
        assert!(read_request(&b).is_err());
    }

    #[test]
    fn only_plain_terminal_names_pass() {
        assert!(valid_term("xterm-256color"));
        assert!(!valid_term("xterm\n; rm -rf /"));
        assert!(!valid_term(""));
    }
}
