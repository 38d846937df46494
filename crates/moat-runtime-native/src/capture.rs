//! Transparent capture in the sandbox's own network namespace: the
//! native half of `moat-capture`.
//!
//! Every IPv4 address is made local (an "AnyIP" route, `local 0.0.0.0/0
//! dev lo`), and an nftables `redirect` ([`crate::nft`]) sends every TCP
//! connection that does not stay on loopback, whatever its port, to one
//! relay listener, which reads where it was going (`SO_ORIGINAL_DST`);
//! DNS is answered on `127.0.0.1:53` (`/etc/resolv.conf` points there, and
//! DNS sent to any other server is redirected there too). A connection to
//! [`HOST_GATEWAY_ADDR`] is one to a host port given to the sandbox.
//! `moat-capture` names each connection and hands it to the proxy.
//! Everything else (UDP other than DNS, IPv6 addresses) has nowhere to
//! go: the namespace has no other interface.
//!
//! Where nftables cannot be used (a kernel built without it), the capture
//! falls back to one listener bound to `0.0.0.0:PORT` per captured port,
//! whose accepted socket's own address is where the client meant to go,
//! and one per host port on [`HOST_GATEWAY_ADDR`].

use std::io;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;

use moat_capture::{Diverted, ProxyAuthorization, ProxyEndpoint, Relay};

use crate::error::SetupError;
use crate::spec::HOST_GATEWAY_ADDR;

/// The sockets the init bound for the helper (binding port 53 and the
/// captured ports needs the namespace's privileges, which the helper
/// drops).
#[derive(Debug)]
pub(crate) struct CaptureSockets {
    dns: UdpSocket,
    listeners: Vec<(TcpListener, Diverted)>,
}

impl CaptureSockets {
    /// Routes every IPv4 address to loopback and binds the responder, one
    /// listener per captured port on every address, and one per host port
    /// on the gateway address.
    pub(crate) fn bind(ports: &[u16], host_ports: &[u16]) -> Result<CaptureSockets, SetupError> {
        route_all_ipv4_locally()
            .map_err(|e| SetupError::step("cannot route addresses to the capture relay", e))?;
        let dns = UdpSocket::bind(("127.0.0.1", 53)).map_err(|error| SetupError::Listen {
            what: "cannot listen for DNS on 127.0.0.1:",
            port: 53,
            error,
        })?;
        let relay_failed =
            |e| SetupError::step("cannot listen for captured connections in the sandbox", e);
        let relay = TcpListener::bind(("127.0.0.1", 0)).map_err(relay_failed)?;
        let relay_port = relay.local_addr().map_err(relay_failed)?.port();
        if crate::nft::redirect_to_relay(relay_port).is_ok() {
            return Ok(CaptureSockets {
                dns,
                listeners: vec![(relay, Diverted::Redirected)],
            });
        }
        drop(relay);
        let mut listeners = Vec::new();
        for port in ports {
            let listener =
                TcpListener::bind(("0.0.0.0", *port)).map_err(|error| SetupError::Listen {
                    what: "cannot capture port ",
                    port: *port,
                    error,
                })?;
            listeners.push((listener, Diverted::LocalAddress));
        }
        for port in host_ports {
            let listener = TcpListener::bind((HOST_GATEWAY_ADDR, *port)).map_err(|error| {
                SetupError::Listen {
                    what: "cannot listen for host port ",
                    port: *port,
                    error,
                }
            })?;
            listeners.push((listener, Diverted::HostPort(*port)));
        }
        Ok(CaptureSockets { dns, listeners })
    }

    /// Serves DNS and every captured port on threads of their own.
    pub(crate) fn start(
        self,
        proxy_socket: PathBuf,
        authorization: ProxyAuthorization,
    ) -> io::Result<()> {
        let relay = Relay::new(ProxyEndpoint::Unix(proxy_socket), authorization);
        relay.serve_dns(self.dns)?;
        for (listener, diverted) in self.listeners {
            relay.serve(listener, diverted)?;
        }
        Ok(())
    }
}

/// `ip route add local 0.0.0.0/0 dev lo table local`, over rtnetlink.
fn route_all_ipv4_locally() -> io::Result<()> {
    use rustix::net::{recv, send, socket, AddressFamily, RecvFlags, SendFlags, SocketType};
    const RTM_NEWROUTE: u16 = 24;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_ACK: u16 = 0x4;
    const NLM_F_EXCL: u16 = 0x200;
    const NLM_F_CREATE: u16 = 0x400;
    const NLMSG_ERROR: u16 = 2;
    const RT_TABLE_LOCAL: u8 = 255;
    const RTPROT_BOOT: u8 = 3;
    const RT_SCOPE_HOST: u8 = 254;
    const RTN_LOCAL: u8 = 2;
    const RTA_OIF: u16 = 4;
    // The loopback interface is the first of every network namespace.
    const LOOPBACK_INDEX: u32 = 1;

    let mut msg = Vec::with_capacity(36);
    msg.extend_from_slice(&36u32.to_ne_bytes());
    msg.extend_from_slice(&RTM_NEWROUTE.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
                                                // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
                                                // type, flags.
    msg.extend_from_slice(&[
        libc::AF_INET as u8,
        0,
        0,
        0,
        RT_TABLE_LOCAL,
        RTPROT_BOOT,
        RT_SCOPE_HOST,
        RTN_LOCAL,
    ]);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&RTA_OIF.to_ne_bytes());
    msg.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());

    // Protocol 0 is NETLINK_ROUTE.
    let fd = socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    send(&fd, &msg, SendFlags::empty())?;
    let mut reply = [0u8; 256];
    let (n, _) = recv(&fd, &mut reply, RecvFlags::empty())?;
    if n < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR {
        return Err(io::Error::other("unexpected answer from rtnetlink"));
    }
    match i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}
