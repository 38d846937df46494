//! The system calls without a safe wrapper: `SO_ORIGINAL_DST`, and the
//! signal mask and wait that end the relay.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;

/// `SO_ORIGINAL_DST` of `<linux/netfilter_ipv4.h>`.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// Where a connection diverted by an iptables `REDIRECT` was going.
pub fn original_destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the duration of the call, and the
    // kernel writes at most `len` bytes into `addr`, updating `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(
        ip,
        u16::from_be(addr.sin_port),
    )))
}

/// The signals that end the guard's relay: `docker kill --signal TERM`
/// (or INT) returns at once, where SIGKILL makes the engine wait until the
/// container is down, network included (about 100 ms of every run).
const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// Blocks the stop signals in the calling thread, and so in every thread
/// it starts afterwards, so that [`wait_for_stop_signal`] receives them.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_signal_set();
    // SAFETY: `set` is an initialised signal set; a null old set is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Waits for one of the blocked stop signals.
pub fn wait_for_stop_signal() -> io::Result<()> {
    let set = stop_signal_set();
    let mut received: libc::c_int = 0;
    // SAFETY: both pointers are valid for the call.
    let rc = unsafe { libc::sigwait(&set, &mut received) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set; sigaddset only adds
    // valid signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in STOP_SIGNALS {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}
