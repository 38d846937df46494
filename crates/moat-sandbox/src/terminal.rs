//! `moat run -i`: the user's terminal relayed to the sandbox's own
//! pseudo-terminal. The sandbox never gets the user's terminal itself, so
//! it cannot read its settings or push keystrokes into it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;

use rustix::termios::{self, OptionalActions, Termios};

/// The size of the caller's terminal (rows, columns), when stdin is one.
pub fn size() -> Option<(u16, u16)> {
    let stdin = rustix::stdio::stdin();
    if !termios::isatty(stdin) {
        return None;
    }
    let size = termios::tcgetwinsize(stdin).ok()?;
    // A terminal that reports 0×0 (some emulators before the first
    // resize) still gets a usable default.
    Some(if size.ws_row == 0 || size.ws_col == 0 {
        (24, 80)
    } else {
        (size.ws_row, size.ws_col)
    })
}

/// Copies the caller's terminal size onto the sandbox's terminal (on
/// `SIGWINCH`); the sandbox's terminal then signals its foreground job.
pub fn copy_size(master: &OwnedFd) {
    let stdin = rustix::stdio::stdin();
    if let Ok(size) = termios::tcgetwinsize(stdin) {
        let _ = termios::tcsetwinsize(master, size);
    }
}

/// Hands what arrives on our stdin to `deliver` until end of input or
/// until `deliver` says the other side is gone, from a thread of its own:
/// it blocks in read(2) and is not joined, ending with the process.
pub fn forward_stdin(
    name: &str,
    mut deliver: impl FnMut(&[u8]) -> bool + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if !deliver(&buf[..n]) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
        .map(drop)
}

/// The caller's terminal in raw mode until dropped.
#[derive(Debug)]
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    /// Raw mode on stdin, when it is a terminal.
    pub fn enter() -> Self {
        let stdin = rustix::stdio::stdin();
        let saved = termios::tcgetattr(stdin).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.make_raw();
            let _ = termios::tcsetattr(stdin, OptionalActions::Now, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let stdin = rustix::stdio::stdin();
            let _ = termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, saved);
        }
    }
}

/// The relay between the caller's terminal (in raw mode while it runs)
/// and the sandbox's pseudo-terminal.
#[derive(Debug)]
pub struct TerminalRelay {
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
}

impl TerminalRelay {
    /// Puts the caller's terminal in raw mode (keys go to the sandbox as
    /// typed, Ctrl-C included) and starts copying both ways.
    pub fn start(master: OwnedFd) -> std::io::Result<Self> {
        let stdin = rustix::stdio::stdin();
        let saved = termios::tcgetattr(stdin).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.make_raw();
            termios::tcsetattr(stdin, OptionalActions::Now, &raw)?;
        }
        let mut to_sandbox = std::fs::File::from(master.try_clone()?);
        let mut from_sandbox = std::fs::File::from(master);
        forward_stdin("moat-tty-in", move |keys| {
            to_sandbox.write_all(keys).is_ok()
        })?;
        // Output: ends when the terminal's last user is gone (EIO).
        let output = std::thread::Builder::new()
            .name("moat-tty-out".into())
            .spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                let mut stdout = std::io::stdout().lock();
                loop {
                    match from_sandbox.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if stdout
                                .write_all(&buf[..n])
                                .and_then(|()| stdout.flush())
                                .is_err()
                            {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })?;
        Ok(TerminalRelay {
            saved,
            output: Some(output),
        })
    }

    /// Waits until the sandbox's output is all written.
    pub fn finish(mut self) {
        if let Some(t) = self.output.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TerminalRelay {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let stdin = rustix::stdio::stdin();
            let _ = termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, saved);
        }
    }
}
