//! [`SandboxDriver::exec`](moat_sandbox::SandboxDriver::exec) for the
//! native runtime: a [`crate::exec`] session behind the driver's
//! [`RunningSandbox`] handle, its streams relayed like the run's own.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use moat_sandbox::{
    terminal, DriverError, ExecRequest, OutputSinks, RunningSandbox, SandboxControl, Stdio,
};

use crate::exec::{ExecExit, ExecSession, ExecSignaller, ExecStdio, ExecStreams};
use crate::SandboxError;

/// Starts `request` in the sandbox serving its socket.
pub(crate) fn start(
    request: &ExecRequest,
    mut output: OutputSinks,
) -> Result<Box<dyn RunningSandbox + 'static>, DriverError> {
    let stdio = match (request.stdio, terminal::size()) {
        (Stdio::Terminal, Some((rows, cols))) => ExecStdio::Terminal {
            rows,
            cols,
            term: std::env::var("TERM").ok(),
        },
        _ => ExecStdio::Piped,
    };
    let (session, streams) = match crate::exec(&request.exec_socket, request.command.clone(), stdio)
    {
        Ok(started) => started,
        // Like the run's own command: a message and a shell's exit code.
        Err(SandboxError::ExecFailed { message, code }) => {
            let _ = writeln!(output.stderr, "moat: {message}");
            return Ok(Box::new(Finished(code)));
        }
        Err(e) => return Err(DriverError::runtime(e)),
    };
    let control = Arc::new(ExecControl {
        signaller: session.signaller(),
        winch: match &streams {
            ExecStreams::Terminal(master) => master.try_clone().ok(),
            ExecStreams::Piped { .. } => None,
        },
    });
    let mut running = ExecRunning {
        session,
        control,
        relay: None,
        stdout: None,
        stderr: None,
        sinks_left: None,
    };
    match streams {
        ExecStreams::Terminal(master) => {
            running.relay = Some(
                terminal::TerminalRelay::start(master)
                    .map_err(|e| DriverError::io("relaying the terminal", e))?,
            );
            running.sinks_left = Some(output);
        }
        ExecStreams::Piped {
            stdin,
            stdout,
            stderr,
        } => {
            if request.stdio == Stdio::Detached {
                drop(stdin);
            } else {
                let mut stdin = stdin;
                terminal::forward_stdin("moat-exec-in", move |bytes| {
                    stdin.write_all(bytes).is_ok()
                })
                .map_err(|e| DriverError::io("forwarding stdin", e))?;
            }
            running.stdout = Some(crate::driver::pump(stdout, output.stdout));
            running.stderr = Some(crate::driver::pump(stderr, output.stderr));
        }
    }
    Ok(Box::new(running))
}

struct ExecControl {
    signaller: ExecSignaller,
    winch: Option<OwnedFd>,
}

impl SandboxControl for ExecControl {
    fn signal(&self, sig: i32) {
        self.signaller.signal(sig);
    }

    fn window_changed(&self) {
        if let Some(master) = &self.winch {
            terminal::copy_size(master);
        }
    }
}

struct ExecRunning {
    session: ExecSession,
    control: Arc<ExecControl>,
    relay: Option<terminal::TerminalRelay>,
    stdout: Option<JoinHandle<Box<dyn Write + Send>>>,
    stderr: Option<JoinHandle<Box<dyn Write + Send>>>,
    /// The sinks a terminal session does not use (its output is the
    /// terminal's), for the note when the run ends first.
    sinks_left: Option<OutputSinks>,
}

impl RunningSandbox for ExecRunning {
    fn runtime_id(&self) -> Option<String> {
        None
    }

    fn control(&self) -> Arc<dyn SandboxControl> {
        self.control.clone()
    }

    fn wait(mut self: Box<Self>) -> Result<i32, DriverError> {
        let exit = self.session.wait().map_err(DriverError::runtime)?;
        if let Some(out) = self.stdout.take() {
            let _ = out.join();
        }
        let mut stderr = match self.stderr.take() {
            Some(err) => err.join().ok(),
            None => self.sinks_left.take().map(|s| s.stderr),
        };
        if let Some(relay) = self.relay.take() {
            relay.finish();
        }
        match exit {
            ExecExit::Exited(code) => Ok(code),
            ExecExit::RunEnded => {
                if let Some(err) = stderr.as_mut() {
                    let _ = writeln!(err, "{}", moat_sandbox::EXEC_RUN_ENDED_NOTE);
                }
                Ok(moat_sandbox::EXEC_RUN_ENDED)
            }
        }
    }
}

/// A command that ended before it started (not found).
struct Finished(i32);

struct NoControl;

impl SandboxControl for NoControl {
    fn signal(&self, _sig: i32) {}
    fn window_changed(&self) {}
}

impl RunningSandbox for Finished {
    fn runtime_id(&self) -> Option<String> {
        None
    }

    fn control(&self) -> Arc<dyn SandboxControl> {
        Arc::new(NoControl)
    }

    fn wait(self: Box<Self>) -> Result<i32, DriverError> {
        Ok(self.0)
    }
}
