//! The sandbox init: the code that runs when [`crate::spawn`] re-executes
//! the current program.
//!
//! # Integration
//!
//! Every binary that calls [`crate::spawn`] must call [`maybe_run_init`] as
//! the very first statement of `main`, before starting any thread (the
//! kernel only lets a single-threaded process create a user namespace) and
//! before parsing arguments:
//!
//! ```no_run
//! fn main() {
//!     moat_runtime_native::init::maybe_run_init();
//!     // ... the program's normal main ...
//! }
//! ```
//!
//! It returns immediately unless `argv[1]` is [`INIT_MARKER`]; in that case
//! it runs the sandbox and never returns.
//!
//! # Process layout
//!
//! ```text
//! caller ── init (host pid; new user/ipc/uts/cgroup[/net] namespaces, host
//!            │    mount namespace; forwards signals, exits like the command)
//!            ├── helper (same namespaces: watches the lifeline, runs the
//!            │    TCP→Unix proxy relay in Isolated mode)
//!            └── PID 1 of the sandbox (new pid and mount namespaces; builds
//!                 │    the root filesystem, drops privileges, reaps orphans,
//!                 │    forwards signals)
//!                 └── the command
//! ```
//!
//! The helper is forked before the init unshares its pid namespace, because
//! after `unshare(CLONE_NEWPID)` a process may no longer create threads.
//! The caller keeps the write end of the spec pipe open as a *lifeline*:
//! when it closes (caller exited, crashed or dropped its handle), the helper
//! kills the init. The helper and PID 1 have `PR_SET_PDEATHSIG(SIGKILL)` on
//! the init, and when PID 1 exits the kernel kills everything left in the
//! pid namespace, so no process of the sandbox outlives the run. (The init
//! itself gets no death signal tied to the caller: that signal fires when
//! the spawning *thread* exits, which would kill sandboxes started from a
//! short-lived thread, e.g. a tokio blocking-pool thread.)
//!
//! Signals *sent by a process* (`kill`, [`crate::Sandbox::signal`]) to the
//! init are forwarded to PID 1 and then to the command; signals generated
//! by a terminal (Ctrl-C, window resize) already reach the command directly
//! (same process group) and are not forwarded twice.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::OFlags;
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

use crate::error::SetupError;
use crate::protocol::{read_spec, write_status, Status};
use crate::rootfs::{self, HostPaths};
use crate::setup::Ids;
use crate::spec::{NetworkMode, SandboxSpec, DEFAULT_PATH, WORKSPACE_IN_SANDBOX};
use crate::sys::{self, CaughtSignal, Fork, SignalSet};

/// `argv[1]` that makes [`maybe_run_init`] take over the process.
pub const INIT_MARKER: &str = "__moat-sandbox-init";

/// How much more a run's processes are preferred by the kernel's OOM
/// killer than the host's (`/proc/PID/oom_score_adj`, -1000 to 1000).
pub const OOM_SCORE_ADJ: i32 = 500;

/// Exit code of the init when the sandbox could not be built.
const SETUP_FAILED: i32 = 125;

/// Signals the init and PID 1 forward to the command when sent by a process.
const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Runs the sandbox init if this process was started as one by
/// [`crate::spawn`] (`argv[1] == INIT_MARKER`), and then exits with the
/// command's exit code; otherwise returns at once.
///
/// Call it first thing in `main`: see the [module documentation](self).
pub fn maybe_run_init() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(INIT_MARKER.as_ref()) {
        return;
    }
    let code = run_init(args.collect());
    std::process::exit(code);
}

fn parse_fd(arg: Option<&OsString>) -> Option<i32> {
    arg?.to_str()?.parse().ok()
}

fn run_init(args: Vec<OsString>) -> i32 {
    let Some((lifeline, status)) = control_channels(&args) else {
        return SETUP_FAILED;
    };
    // `moat exec`'s socket, bound by the caller when the spec asks for one.
    let exec_listener = match parse_fd(args.get(2)).map(sys::adopt_inherited_fd) {
        None => None,
        Some(Ok(fd)) => Some(std::os::unix::net::UnixListener::from(fd)),
        Some(Err(e)) => {
            return report(&status, SetupError::step("cannot adopt the exec socket", e))
        }
    };
    // The way in to the sandbox's servers (`crate::ports`), likewise.
    let port_listener = match parse_fd(args.get(3)).map(sys::adopt_inherited_fd) {
        None => None,
        Some(Ok(fd)) => Some(std::os::unix::net::UnixListener::from(fd)),
        Some(Err(e)) => {
            return report(&status, SetupError::step("cannot adopt the port socket", e))
        }
    };
    let fail = |error: SetupError| report(&status, error);
    let spec = match read_spec(&lifeline) {
        Ok(spec) => spec,
        Err(e) => return fail(SetupError::step("cannot read the sandbox spec", e)),
    };
    if let Err(e) = spec.validate() {
        return fail(SetupError::Spec(e));
    }
    // Inherited by everything the run starts: when the host runs out of
    // memory, the kernel picks a run's process, the largest first, before
    // the daemon, other runs' supervisors or the user's own programs.
    // Raising it needs no privilege; best effort.
    let _ = std::fs::write("/proc/self/oom_score_adj", OOM_SCORE_ADJ.to_string());

    let signals = match block_signals() {
        Ok(s) => s,
        Err(e) => return fail(SetupError::step("cannot block signals", e)),
    };

    let outer_uid = rustix::process::getuid().as_raw();
    let outer_gid = rustix::process::getgid().as_raw();
    let root_caller = outer_uid == 0;
    let ids = match sandbox_ids(outer_uid, outer_gid) {
        Ok(ids) => ids,
        Err(error) => return fail(error),
    };
    let mut paths = match HostPaths::resolve(&spec) {
        Ok(p) => p,
        Err(error) => return fail(error),
    };
    if let Err(error) = enter_namespaces(&spec, ids, (outer_uid, outer_gid), &mut paths) {
        return fail(error);
    }
    let tmpfs_size = tmpfs_size(&spec);
    let listener = match helper_network(&spec) {
        Ok(listener) => listener,
        Err(error) => return fail(error),
    };

    // From here on processes of the sandbox start: they must be born in
    // its cgroup, which the caller confirms.
    if let Err(e) = crate::protocol::read_go(&lifeline) {
        return fail(SetupError::step(
            "the caller did not let the sandbox start",
            e,
        ));
    }
    // Rooted at the sandbox's own cgroup, now that the init is in it.
    if let Err(e) = sys::unshare_namespaces(UnshareFlags::NEWCGROUP) {
        return fail(explain_unshare_error(e));
    }

    // The helper: watches the lifeline and runs the relay. It is listening
    // already (the socket is bound), so it is ready before the command runs.
    let init_pid = rustix::process::getpid();
    match sys::fork_single_threaded() {
        Err(e) => return fail(SetupError::step("cannot fork the sandbox helper", e)),
        Ok(Fork::Child) => {
            drop(status);
            drop(exec_listener);
            let ports = port_listener.map(|l| (l, spec.ports.clone()));
            std::process::exit(run_helper(init_pid, lifeline, listener, ports));
        }
        Ok(Fork::Parent(_)) => {
            drop(listener);
            drop(port_listener);
            drop(lifeline);
        }
    }

    if let Err(e) = sys::unshare_namespaces(UnshareFlags::NEWPID) {
        return fail(explain_unshare_error(e));
    }
    let setup = Pid1Setup {
        ids,
        paths,
        tmpfs_size,
        exec_listener,
    };
    fork_pid1(&spec, setup, root_caller, &status, &signals)
}

/// Blocks the signals the init forwards, and SIGCHLD, to wait for them.
fn block_signals() -> io::Result<SignalSet> {
    let mut blocked: Vec<i32> = FORWARDED.to_vec();
    blocked.push(libc::SIGCHLD);
    SignalSet::block(&blocked)
}

/// The size of each writable tmpfs: as asked, else a quarter of memory.
fn tmpfs_size(spec: &SandboxSpec) -> u64 {
    spec.limits.tmpfs_bytes.unwrap_or_else(|| {
        crate::cgroup::total_memory()
            .map(|m| m / 4)
            .unwrap_or(1 << 30)
    })
}

/// The spec channel (the lifeline) and the status channel, inherited at
/// the descriptors named by the arguments.
fn control_channels(args: &[OsString]) -> Option<(File, File)> {
    let (Some(spec_fd), Some(status_fd)) = (parse_fd(args.first()), parse_fd(args.get(1))) else {
        eprintln!("moat: {INIT_MARKER} is internal to moat and not meant to be run by hand");
        return None;
    };
    match (
        sys::adopt_inherited_fd(spec_fd),
        sys::adopt_inherited_fd(status_fd),
    ) {
        (Ok(l), Ok(s)) => Some((File::from(l), File::from(s))),
        _ => {
            eprintln!("moat: sandbox init started without its control descriptors");
            None
        }
    }
}

/// Tells the caller why the sandbox could not be built; returns the
/// init's exit code for it.
fn report(status: &File, error: SetupError) -> i32 {
    let message = error.to_string();
    let _ = write_status(status, &Status::Error { message });
    SETUP_FAILED
}

/// The sandbox user's ids. The command never runs as root: a root
/// caller's sandbox user is uid 1000 inside, mapped onto an unprivileged
/// host id (see identity.rs).
fn sandbox_ids(outer_uid: u32, outer_gid: u32) -> Result<Ids, SetupError> {
    let root_caller = outer_uid == 0;
    if !root_caller && outer_gid == 0 {
        return Err(SetupError::RootGroup);
    }
    Ok(Ids {
        uid: if root_caller { 1000 } else { outer_uid },
        gid: if root_caller { 1000 } else { outer_gid },
    })
}

/// The sandbox's user, IPC, UTS (and, isolated, network) namespaces; not
/// CLONE_NEWPID yet: after it, this process could no longer create
/// threads (the kernel refuses CLONE_THREAD), and the helper needs some.
fn enter_namespaces(
    spec: &SandboxSpec,
    ids: Ids,
    (outer_uid, outer_gid): (u32, u32),
    paths: &mut HostPaths,
) -> Result<(), SetupError> {
    let root_caller = outer_uid == 0;
    let mut flags = UnshareFlags::NEWIPC | UnshareFlags::NEWUTS;
    if matches!(spec.network, NetworkMode::Isolated { .. }) {
        flags |= UnshareFlags::NEWNET;
    }
    if root_caller {
        enter_unprivileged_userns(ids, paths)?;
    } else {
        flags |= UnshareFlags::NEWUSER;
    }
    sys::unshare_namespaces(flags).map_err(explain_unshare_error)?;
    if !root_caller {
        write_id_maps(ids, outer_uid, outer_gid)?;
    }
    Ok(())
}

/// In an isolated network: loopback up, and the sockets the helper serves
/// (the relay, the captured ports), bound now so they are ready before
/// the command runs.
fn helper_network(spec: &SandboxSpec) -> Result<Option<HelperNetwork>, SetupError> {
    let NetworkMode::Isolated {
        relay_port,
        proxy_socket,
        capture,
    } = &spec.network
    else {
        return Ok(None);
    };
    sys::loopback_up()
        .map_err(|e| SetupError::step("cannot bring up loopback in the sandbox", e))?;
    let relay =
        TcpListener::bind(("127.0.0.1", *relay_port)).map_err(|error| SetupError::Listen {
            what: "cannot listen on 127.0.0.1:",
            port: *relay_port,
            error,
        })?;
    let captured = match capture {
        None => None,
        Some(c) => Some((
            crate::capture::CaptureSockets::bind(&c.ports, &c.host_ports)?,
            c.proxy_authorization.clone(),
        )),
    };
    Ok(Some(HelperNetwork {
        relay,
        proxy_socket: proxy_socket.clone(),
        captured,
    }))
}

/// Forks the sandbox's PID 1 (in the new pid namespace) and, in the init,
/// supervises it until it exits; returns the init's exit code.
fn fork_pid1(
    spec: &SandboxSpec,
    setup: Pid1Setup,
    root_caller: bool,
    status: &File,
    signals: &SignalSet,
) -> i32 {
    let (alive_r, alive_w) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(p) => p,
        Err(e) => return report(status, SetupError::step("cannot create a pipe", e)),
    };
    match sys::fork_single_threaded() {
        Err(e) => report(
            status,
            SetupError::step("cannot fork the sandbox's PID 1", e),
        ),
        Ok(Fork::Child) => {
            drop(alive_w);
            // First: what PID 1 creates must belong to a user the namespace
            // maps (the kernel refuses to create files for an unmapped one).
            // The capabilities it holds in the namespace stay: the uid it
            // leaves is not the namespace's root, so no "setuid fix-up"
            // clears them. Before the death signal, which a change of
            // credentials resets.
            if root_caller {
                if let Err(e) = become_sandbox_user(setup.ids) {
                    std::process::exit(report(
                        status,
                        SetupError::step("cannot switch to the sandbox user", e),
                    ));
                }
            }
            if rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).is_err()
                || init_is_gone(&alive_r)
            {
                std::process::exit(SETUP_FAILED);
            }
            drop(alive_r);
            std::process::exit(run_pid1(spec, setup, status, signals))
        }
        Ok(Fork::Parent(pid)) => {
            drop(alive_r);
            let Some(pid1) = Pid::from_raw(pid) else {
                return SETUP_FAILED;
            };
            let code = supervise_pid1(pid1, status, signals);
            drop(alive_w);
            code
        }
    }
}

/// The helper process (child of the init, outside the sandbox's pid
/// namespace, inside its network namespace): runs the relay and, when the
/// caller's lifeline closes, kills the init, hence PID 1 (its death signal)
/// and the whole sandbox. Dies with the init.
/// What the helper serves in an isolated network.
struct HelperNetwork {
    relay: TcpListener,
    proxy_socket: PathBuf,
    captured: Option<(
        crate::capture::CaptureSockets,
        moat_capture::ProxyAuthorization,
    )>,
}

fn run_helper(
    init_pid: Pid,
    mut lifeline: File,
    network: Option<HelperNetwork>,
    ports: Option<(std::os::unix::net::UnixListener, Vec<u16>)>,
) -> i32 {
    if rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).is_err()
        || rustix::process::getppid() != Some(init_pid)
    {
        let _ = rustix::process::kill_process(init_pid, Signal::KILL);
        return SETUP_FAILED;
    }
    // The relay faces the sandbox: it keeps no capability.
    if drop_privileges().is_err() {
        let _ = rustix::process::kill_process(init_pid, Signal::KILL);
        return SETUP_FAILED;
    }
    if let Some(network) = network {
        let started = match network.captured {
            Some((sockets, auth)) => sockets.start(network.proxy_socket.clone(), auth),
            None => Ok(()),
        }
        .and_then(|()| crate::relay::start(network.relay, network.proxy_socket));
        if started.is_err() {
            let _ = rustix::process::kill_process(init_pid, Signal::KILL);
            return SETUP_FAILED;
        }
    }
    if let Some((listener, ports)) = ports {
        if moat_capture::serve_ports(listener, ports).is_err() {
            let _ = rustix::process::kill_process(init_pid, Signal::KILL);
            return SETUP_FAILED;
        }
    }
    let mut buf = [0u8; 64];
    loop {
        match lifeline.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = rustix::process::kill_process(init_pid, Signal::KILL);
    0
}

/// After `PR_SET_PDEATHSIG`: was the init already gone before it was set?
fn init_is_gone(alive_r: &OwnedFd) -> bool {
    if rustix::fs::fcntl_setfl(alive_r, OFlags::NONBLOCK).is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    // EAGAIN: the write end is still open, so the init is alive.
    !matches!(
        rustix::io::read(alive_r.as_fd(), &mut byte),
        Err(rustix::io::Errno::AGAIN)
    )
}

fn explain_unshare_error(error: io::Error) -> SetupError {
    SetupError::Namespaces {
        what: "cannot create the sandbox namespaces",
        error,
    }
}

/// For a root caller: prepares the ID-mapped mount trees and enters a
/// user namespace whose only user is the sandbox's, mapped onto an
/// unprivileged host id. The init keeps host root's identity (unmapped
/// inside) until PID 1 switches to the sandbox user.
fn enter_unprivileged_userns(ids: Ids, paths: &mut HostPaths) -> Result<(), SetupError> {
    let (host_uid, host_gid) = crate::identity::host_ids_for_root();
    let idmap = crate::identity::prepared_userns(
        &format!("0 {host_uid} 1\n"),
        &format!("0 {host_gid} 1\n"),
    )?;
    paths.detach_idmapped(idmap.as_fd())?;
    let userns = crate::identity::prepared_userns(
        &format!("{} {host_uid} 1\n", ids.uid),
        &format!("{} {host_gid} 1\n", ids.gid),
    )?;
    rustix::thread::move_into_link_name_space(
        userns.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::User),
    )
    .map_err(|e| SetupError::step("cannot enter the sandbox's user namespace", e))
}

fn write_id_maps(ids: Ids, outer_uid: u32, outer_gid: u32) -> Result<(), SetupError> {
    let write = |path: &str, content: String| {
        fs::write(path, content).map_err(|e| SetupError::path("cannot write", Path::new(path), e))
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{} {outer_uid} 1\n", ids.uid))?;
    write("/proc/self/gid_map", format!("{} {outer_gid} 1\n", ids.gid))
}

fn exit_of(status: WaitStatus) -> Option<(i32, Option<i32>)> {
    if let Some(code) = status.exit_status() {
        Some((code, None))
    } else {
        status
            .terminating_signal()
            .map(|sig| (128 + sig, Some(sig)))
    }
}

fn forward(sig: CaughtSignal, to: Pid) {
    if sig.sent_by_process() {
        if let Some(s) = Signal::from_named_raw(sig.signo) {
            let _ = rustix::process::kill_process(to, s);
        }
    }
}

/// The init's main loop: forwards signals to PID 1 and exits like it.
fn supervise_pid1(pid1: Pid, status: &File, signals: &SignalSet) -> i32 {
    loop {
        let sig = match signals.wait() {
            Ok(sig) => sig,
            Err(_) => {
                let _ = rustix::process::kill_process(pid1, Signal::KILL);
                return SETUP_FAILED;
            }
        };
        if sig.signo != libc::SIGCHLD {
            forward(sig, pid1);
            continue;
        }
        match rustix::process::waitpid(Some(pid1), WaitOptions::NOHANG) {
            Ok(Some((_, st))) => {
                let Some((code, signal)) = exit_of(st) else {
                    continue;
                };
                if signal.is_some() {
                    // PID 1 was killed and could not report: report for it.
                    let _ = write_status(status, &Status::Exit { code, signal });
                }
                return code;
            }
            Ok(None) => {}
            Err(_) => return SETUP_FAILED,
        }
    }
}

/// What PID 1 needs from the init to build the sandbox.
struct Pid1Setup {
    ids: Ids,
    paths: HostPaths,
    tmpfs_size: u64,
    /// Served by a process of the sandbox once it is built (`crate::exec`).
    exec_listener: Option<std::os::unix::net::UnixListener>,
}

/// Everything PID 1 sets up before the command, in this order: the
/// system-call filter is compiled first and installed only after the
/// steps that make calls it may forbid (mounts, privilege changes,
/// limits).
fn build_sandbox(spec: &SandboxSpec, setup: Pid1Setup) -> Result<(), SetupError> {
    let filters = crate::seccomp::Filters::build()?;
    let ids = setup.ids;
    rootfs::set_umask();
    sys::unshare_namespaces(UnshareFlags::NEWNS)
        .map_err(|e| SetupError::step("cannot create the sandbox mount namespace", e))?;
    rootfs::build(spec, ids, setup.paths, setup.tmpfs_size)?;
    rustix::system::sethostname(spec.hostname.as_bytes()).map_err(|e| SetupError::Hostname {
        hostname: spec.hostname.clone(),
        error: e.into(),
    })?;
    drop_privileges().map_err(|e| SetupError::step("cannot drop privileges", e))?;
    apply_rlimits(&spec.limits).map_err(|e| SetupError::step("cannot set resource limits", e))?;
    filters.install()?;
    // The command runs as PID 1's own user, so it could ptrace PID 1 and
    // keep it stopped: nothing would reap the command any more and the run
    // would never end. A non-dumpable process can only be traced with
    // CAP_SYS_PTRACE over its memory's user namespace, which the command
    // never has. (A root caller's PID 1 is often non-dumpable already,
    // after its change of user, but only while fs.suid_dumpable is 0.) Set
    // last: PID 1's own files in /proc turn root's, and it has no more use
    // for them; the command's exec makes the command dumpable again.
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| SetupError::step("cannot make the sandbox's PID 1 untraceable", e))
}

/// PID 1 of the sandbox: builds the filesystem, starts the command, reaps
/// and forwards until the command exits.
fn run_pid1(spec: &SandboxSpec, mut setup: Pid1Setup, status: &File, signals: &SignalSet) -> i32 {
    let exec_listener = setup.exec_listener.take();
    if let Err(error) = build_sandbox(spec, setup) {
        return report(status, error);
    }
    // Forked once the sandbox is built: the server is inside all of it.
    if let Some(listener) = exec_listener {
        match sys::fork_single_threaded() {
            Ok(Fork::Child) => crate::exec::serve(listener, spec),
            Ok(Fork::Parent(_)) => {}
            Err(e) => return report(status, SetupError::step("cannot start the exec server", e)),
        }
    }
    if write_status(status, &Status::Ready).is_err() {
        return SETUP_FAILED;
    }

    let finish = |code: i32, signal: Option<i32>| {
        let _ = write_status(status, &Status::Exit { code, signal });
        code
    };
    let env = command_env(spec);
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let Some(name) = spec.workload.command.first() else {
        eprintln!("moat: empty command");
        return finish(SETUP_FAILED, None);
    };
    let Some(program) = resolve_program(name, path_var) else {
        eprintln!("moat: command not found in sandbox: {name}");
        return finish(127, None);
    };
    let mut cmd = Command::new(&program);
    cmd.arg0(name)
        .args(spec.workload.command.iter().skip(1))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(WORKSPACE_IN_SANDBOX);
    sys::reset_signals_before_exec(&mut cmd);
    if matches!(spec.stdio, crate::spec::StdioMode::Pty { .. }) {
        sys::controlling_terminal_before_exec(&mut cmd);
    }
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("moat: cannot execute {} in sandbox: {e}", program.display());
            return finish(code, None);
        }
    };
    let Some(cmd_pid) = Pid::from_raw(child.id() as i32) else {
        return finish(SETUP_FAILED, None);
    };
    // Reaped through waitpid below, never through `child`.
    drop(child);

    loop {
        let sig = match signals.wait() {
            Ok(sig) => sig,
            Err(_) => return finish(SETUP_FAILED, None),
        };
        if sig.signo != libc::SIGCHLD {
            forward(sig, cmd_pid);
            continue;
        }
        // Reap the command and any orphan re-parented to us.
        while let Ok(Some((pid, st))) = rustix::process::wait(WaitOptions::NOHANG) {
            if pid == cmd_pid {
                if let Some((code, signal)) = exit_of(st) {
                    return finish(code, signal);
                }
            }
        }
    }
}

/// The command's environment: the spec's, plus defaults for HOME, USER and
/// PATH when the spec does not set them.
pub(crate) fn command_env(spec: &SandboxSpec) -> Vec<(String, String)> {
    let mut env = spec.workload.env.clone();
    let home = spec.home_in_sandbox().to_string_lossy().into_owned();
    for (key, value) in [
        ("HOME", home),
        ("USER", spec.user.clone()),
        ("PATH", DEFAULT_PATH.to_owned()),
    ] {
        if !env.iter().any(|(k, _)| k == key) {
            env.push((key.to_owned(), value));
        }
    }
    env
}

/// Finds `name` like a shell would: as given if it contains `/`, else in
/// each `PATH` entry.
pub(crate) fn resolve_program(name: &str, path_var: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.exists().then_some(p);
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Leaves the init's identity (host root, unmapped here) for the sandbox
/// user, supplementary groups included.
fn become_sandbox_user(ids: Ids) -> io::Result<()> {
    use rustix::process::{Gid, Uid};
    let gid = Gid::from_raw(ids.gid);
    let uid = Uid::from_raw(ids.uid);
    rustix::thread::set_thread_groups(&[])?;
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    Ok(())
}

/// Per-process limits: processes of the sandbox user (counted per user
/// namespace, so only the sandbox's), open files, and no core dumps (a
/// core pattern may hand them to a host program).
fn apply_rlimits(limits: &crate::spec::ResourceLimits) -> io::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    for (resource, wanted) in [
        (Resource::Nproc, limits.pids),
        (Resource::Nofile, limits.open_files),
        (Resource::Core, 0),
    ] {
        // Only lowering is allowed without privileges over the host.
        let max = getrlimit(resource)
            .maximum
            .map_or(wanted, |m| m.min(wanted));
        setrlimit(
            resource,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        )?;
    }
    Ok(())
}

/// Removes every capability the setup needed before the command runs:
/// bounding set, ambient and inheritable sets emptied, and no_new_privs so
/// that neither setuid binaries nor file capabilities can bring them back.
fn drop_privileges() -> io::Result<()> {
    for bit in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1u64 << bit);
        // EINVAL: a capability this kernel does not know.
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::thread::clear_ambient_capability_set()?;
    rustix::thread::set_no_new_privs(true)?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_defaults_only_when_unset() {
        let mut spec = SandboxSpec::new("/w", vec!["true".into()]);
        spec.user = "dev".into();
        spec.workload.env = vec![("PATH".into(), "/x".into()), ("A".into(), "1".into())];
        let env = command_env(&spec);
        assert!(env.contains(&("PATH".into(), "/x".into())));
        assert!(env.contains(&("HOME".into(), "/home/dev".into())));
        assert!(env.contains(&("USER".into(), "dev".into())));
        assert_eq!(env.len(), 4);
    }

    #[test]
    fn resolves_like_a_shell() {
        assert!(resolve_program("sh", DEFAULT_PATH).is_some());
        assert!(resolve_program("definitely-not-a-command-xyz", DEFAULT_PATH).is_none());
    }
}
