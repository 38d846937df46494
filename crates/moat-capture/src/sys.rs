//! The one system call without a safe wrapper: `SO_ORIGINAL_DST`.
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
