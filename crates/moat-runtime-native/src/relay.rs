//! The TCP → Unix-socket relay of [`crate::NetworkMode::Isolated`].
//!
//! Runs in the sandbox init, which lives in the sandbox's network namespace
//! but still in the host's mount namespace: it accepts on the sandbox's
//! loopback and connects to the proxy's socket by its host path. One thread
//! accepts; each connection gets two copying threads. An error on one
//! connection never stops the relay.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

/// Starts the accept loop on an already-bound listener.
pub(crate) fn start(listener: TcpListener, proxy_socket: PathBuf) -> io::Result<()> {
    thread::Builder::new()
        .name("moat-relay".into())
        .spawn(move || accept_loop(&listener, &proxy_socket))
        .map(drop)
}

fn accept_loop(listener: &TcpListener, proxy_socket: &Path) {
    loop {
        match listener.accept() {
            Ok((tcp, _)) => {
                let socket = proxy_socket.to_path_buf();
                // If no thread can be started, dropping `tcp` closes the
                // connection; the relay itself carries on.
                let _ = thread::Builder::new()
                    .name("moat-relay-conn".into())
                    .spawn(move || relay_one(tcp, &socket));
            }
            // Out of descriptors or memory, aborted handshakes...: back off
            // briefly and keep serving.
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn relay_one(tcp: TcpStream, proxy_socket: &Path) {
    let Ok(unix) = UnixStream::connect(proxy_socket) else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let (Ok(tcp_read), Ok(unix_write)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let upstream = thread::Builder::new()
        .name("moat-relay-up".into())
        .spawn(move || pump(tcp_read, unix_write));
    pump(unix, tcp);
    if let Ok(handle) = upstream {
        let _ = handle.join();
    }
}

/// Something we can copy from/to and half-close.
pub(crate) trait Duplex: io::Read + io::Write {
    fn shut(&self, how: Shutdown);
}

impl Duplex for TcpStream {
    fn shut(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

impl Duplex for UnixStream {
    fn shut(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

/// Copies `from` into `to` until end of stream, then half-closes `to`; on
/// error, closes both fully so the opposite direction stops as well.
pub(crate) fn pump(mut from: impl Duplex, mut to: impl Duplex) {
    match io::copy(&mut from, &mut to) {
        Ok(_) => to.shut(Shutdown::Write),
        Err(_) => {
            from.shut(Shutdown::Both);
            to.shut(Shutdown::Both);
        }
    }
}
