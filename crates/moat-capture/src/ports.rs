//! The way in to a sandbox's servers (`ports:`): the daemon's routing
//! reaches a server the command started on the sandbox's loopback through
//! a Unix socket on the host (the run's `ports.sock`).
//!
//! Whoever lives in the sandbox's network namespace but sees the host's
//! filesystem serves it: the native sandbox's helper, or a container's
//! network guard (its relay binds the socket in a directory of the run's
//! storage mounted into the guard only, never into the workload). Each
//! connection starts with the port as ASCII digits and a newline; the
//! helper answers one byte, `+` once it is connected to `127.0.0.1:<port>`
//! inside, with the connected TCP socket attached (`SCM_RIGHTS`), or `-`
//! when the port is not one of the run's endpoints or nothing listens
//! there. The caller then owns a socket of the sandbox's network stack and
//! talks to the server directly: no process copies the bytes.
//!
//! The way only leads in: the helper connects to nothing but the
//! sandbox's own loopback, and nothing inside can connect to the socket
//! (it is a path in the host's filesystem, outside the sandbox's mount
//! namespace). A connection from the sandbox cannot come out through it.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The longest header: five digits and the newline.
const MAX_HEADER: usize = 6;

/// Starts the accept loop on an already-bound listener; `ports` are the
/// run's endpoint ports, the only ones it connects to.
pub fn serve_ports(listener: UnixListener, ports: Vec<u16>) -> io::Result<()> {
    let ports = Arc::new(ports);
    thread::Builder::new()
        .name("moat-ports".into())
        .spawn(move || loop {
            match listener.accept() {
                Ok((conn, _)) => {
                    let ports = Arc::clone(&ports);
                    let _ = thread::Builder::new()
                        .name("moat-ports-conn".into())
                        .spawn(move || serve_one(conn, &ports));
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        })
        .map(drop)
}

/// Reads `PORT\n`, one byte at a time so nothing after it is consumed.
fn read_port(conn: &mut UnixStream) -> Option<u16> {
    let mut header = Vec::with_capacity(MAX_HEADER);
    let mut byte = [0u8; 1];
    while header.len() < MAX_HEADER {
        conn.read_exact(&mut byte).ok()?;
        if byte[0] == b'\n' {
            return std::str::from_utf8(&header).ok()?.parse().ok();
        }
        header.push(byte[0]);
    }
    None
}

fn serve_one(mut conn: UnixStream, ports: &[u16]) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(port) = read_port(&mut conn).filter(|p| ports.contains(p)) else {
        let _ = conn.write_all(b"-");
        return;
    };
    let Ok(tcp) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        let _ = conn.write_all(b"-");
        return;
    };
    let _ = tcp.set_nodelay(true);
    // The connected socket itself goes to the caller, with the `+`: it
    // stays in this namespace's network stack, and the caller then talks
    // to the server with nothing copying bytes in between.
    let fds = [tcp.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if control.push(SendAncillaryMessage::ScmRights(&fds)) {
        let _ = rustix::net::sendmsg(
            &conn,
            &[IoSlice::new(b"+")],
            &mut control,
            SendFlags::empty(),
        );
    }
}

/// Reads the answer to `PORT\n` from `conn`: the connected socket that
/// came with a `+`. A `-`, or a `+` without exactly one descriptor, is
/// refused. For the blocking client below and the daemon's async one (on
/// a readable socket; `WouldBlock` when it was not).
pub fn receive_port_socket(conn: impl AsFd, port: u16) -> io::Result<OwnedFd> {
    let mut answer = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut answer)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let refused = || {
        io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("nothing serves port {port} in the sandbox, or it is not an endpoint"),
        )
    };
    match (got.bytes, answer[0], fds.len()) {
        (1, b'+', 1) => fds.pop().ok_or_else(refused),
        (0, ..) => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Err(refused()),
    }
}

/// The client side, for tests and callers on the host: a stream to
/// `127.0.0.1:<port>` in the sandbox that serves `socket`.
pub fn connect_port(socket: &std::path::Path, port: u16) -> io::Result<TcpStream> {
    let mut conn = UnixStream::connect(socket)?;
    conn.write_all(format!("{port}\n").as_bytes())?;
    Ok(TcpStream::from(receive_port_socket(&conn, port)?))
}
