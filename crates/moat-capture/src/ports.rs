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
//! inside, `-` when the port is not one of the run's endpoints or nothing
//! listens there, and then relays bytes both ways until either side
//! closes.
//!
//! The way only leads in: the helper connects to nothing but the
//! sandbox's own loopback, and nothing inside can connect to the socket
//! (it is a path in the host's filesystem, outside the sandbox's mount
//! namespace). A connection from the sandbox cannot come out through it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::pump;

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
    let _ = conn.set_read_timeout(None);
    let Ok(tcp) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        let _ = conn.write_all(b"-");
        return;
    };
    if conn.write_all(b"+").is_err() {
        return;
    }
    let _ = tcp.set_nodelay(true);
    let (Ok(tcp_read), Ok(conn_write)) = (tcp.try_clone(), conn.try_clone()) else {
        return;
    };
    let outward = thread::Builder::new()
        .name("moat-ports-out".into())
        .spawn(move || pump(Box::new(tcp_read), Box::new(conn_write)));
    pump(Box::new(conn), Box::new(tcp));
    if let Ok(handle) = outward {
        let _ = handle.join();
    }
}

/// The client side, for tests and callers on the host: a stream to
/// `127.0.0.1:<port>` in the sandbox that serves `socket`.
pub fn connect_port(socket: &std::path::Path, port: u16) -> io::Result<UnixStream> {
    let mut conn = UnixStream::connect(socket)?;
    conn.write_all(format!("{port}\n").as_bytes())?;
    let mut answer = [0u8; 1];
    conn.read_exact(&mut answer)?;
    if answer[0] == b'+' {
        Ok(conn)
    } else {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("nothing serves port {port} in the sandbox, or it is not an endpoint"),
        ))
    }
}
