//! Transparent capture: the sandbox's only way out is the proxy, also for
//! clients that ignore `HTTP(S)_PROXY`.
//!
//! Inside the sandbox's network namespace:
//! - every IPv4 address is local (an "AnyIP" route, `local 0.0.0.0/0 dev
//!   lo`), so a connection to any address on a captured port lands on a
//!   listener of ours, and the accepted socket's local address is where the
//!   client meant to go;
//! - a DNS responder on `127.0.0.1:53` answers every `A` question with an
//!   address of its own from 198.18.0.0/15 (reserved for benchmarks, never
//!   routed), remembering which name it gave it, and `AAAA` with no
//!   address: names resolve even where the host cannot resolve them, and a
//!   captured connection can be named again;
//! - each captured connection is handed to the proxy as a `CONNECT` to the
//!   name (the TLS client hello's SNI when there is one, else the name the
//!   responder gave the address, else the address itself) with the run's
//!   proxy credentials. The proxy then intercepts TLS or plain HTTP and
//!   applies the run's injection, policy and trace exactly as for a client
//!   that was configured to use it; a refusal closes the connection.
//!
//! Everything else (UDP other than DNS, other ports, IPv6 addresses) has
//! nowhere to go: the namespace has no other interface.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::relay::pump;
use crate::spec::{ProxyAuthorization, HOST_GATEWAY_ADDR};

/// First address the DNS responder hands out, and how many it has.
const FAKE_BASE: u32 = u32::from_be_bytes([198, 18, 0, 1]);
const FAKE_COUNT: u32 = (1 << 17) - 2;

/// Where a captured connection goes.
#[derive(Debug, Clone)]
enum Destination {
    /// Named by the client's bytes or the address it dialled.
    Dialled,
    /// A host port given to the sandbox: always this `host:port`.
    HostPort(u16),
}

/// How long a captured client may take to send its first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// The names the responder gave out, both ways.
#[derive(Debug, Default)]
pub(crate) struct NameTable {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    next: u32,
}

impl NameTable {
    /// The address for `name`, the same one every time.
    pub(crate) fn address_of(&mut self, name: &str) -> Ipv4Addr {
        if let Some(addr) = self.by_name.get(name) {
            return *addr;
        }
        let addr = Ipv4Addr::from(FAKE_BASE + self.next % FAKE_COUNT);
        self.next = self.next.wrapping_add(1);
        // When the range wraps, the oldest name loses its address.
        if let Some(old) = self.by_addr.insert(addr, name.to_owned()) {
            self.by_name.remove(&old);
        }
        self.by_name.insert(name.to_owned(), addr);
        addr
    }

    /// The name behind one of our addresses.
    pub(crate) fn name_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }
}

/// The sockets the init bound for the helper (binding port 53 and the
/// captured ports needs the namespace's privileges, which the helper
/// drops).
#[derive(Debug)]
pub(crate) struct CaptureSockets {
    pub(crate) dns: UdpSocket,
    listeners: Vec<(TcpListener, Destination)>,
}

impl CaptureSockets {
    /// Routes every IPv4 address to loopback and binds the responder and
    /// one listener per port on every address.
    pub(crate) fn bind(ports: &[u16], host_ports: &[u16]) -> Result<CaptureSockets, String> {
        route_all_ipv4_locally()
            .map_err(|e| format!("cannot route addresses to the capture relay: {e}"))?;
        let dns = UdpSocket::bind(("127.0.0.1", 53))
            .map_err(|e| format!("cannot listen for DNS on 127.0.0.1:53 in the sandbox: {e}"))?;
        let mut listeners = Vec::new();
        for port in ports {
            let listener = TcpListener::bind(("0.0.0.0", *port))
                .map_err(|e| format!("cannot capture port {port} in the sandbox: {e}"))?;
            listeners.push((listener, Destination::Dialled));
        }
        for port in host_ports {
            let listener = TcpListener::bind((HOST_GATEWAY_ADDR, *port))
                .map_err(|e| format!("cannot listen for host port {port} in the sandbox: {e}"))?;
            listeners.push((listener, Destination::HostPort(*port)));
        }
        Ok(CaptureSockets { dns, listeners })
    }

    /// Serves DNS and every captured port on threads of their own.
    pub(crate) fn start(
        self,
        proxy_socket: PathBuf,
        authorization: ProxyAuthorization,
    ) -> io::Result<()> {
        let names = Arc::new(Mutex::new(NameTable::default()));
        let dns_names = names.clone();
        let dns = self.dns;
        thread::Builder::new()
            .name("moat-dns".into())
            .spawn(move || serve_dns(&dns, &dns_names))?;
        let shared = Arc::new((proxy_socket, authorization));
        for (listener, destination) in self.listeners {
            let names = names.clone();
            let shared = shared.clone();
            thread::Builder::new()
                .name("moat-capture".into())
                .spawn(move || loop {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            let names = names.clone();
                            let shared = shared.clone();
                            let destination = destination.clone();
                            let _ = thread::Builder::new()
                                .name("moat-capture-conn".into())
                                .spawn(move || {
                                    let (socket, auth) = &*shared;
                                    let _ = capture_one(tcp, &destination, &names, socket, auth);
                                });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                })?;
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

fn serve_dns(socket: &UdpSocket, names: &Mutex<NameTable>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        let answer = {
            let Ok(mut table) = names.lock() else {
                return;
            };
            dns_answer(&buf[..n], &mut table)
        };
        if let Some(answer) = answer {
            let _ = socket.send_to(&answer, from);
        }
    }
}

/// The answer to one DNS query, or `None` for a packet that is not one.
pub(crate) fn dns_answer(query: &[u8], names: &mut NameTable) -> Option<Vec<u8>> {
    const TYPE_A: u16 = 1;
    const CLASS_IN: u16 = 1;
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let questions = u16::from_be_bytes([query[4], query[5]]);
    let opcode = (query[2] >> 3) & 0x0f;
    let mut reply = Vec::with_capacity(query.len() + 16);
    reply.extend_from_slice(&query[..2]);
    // QR, the query's opcode and RD; RA.
    reply.push(0x80 | (query[2] & 0x79));
    let refuse = |rcode: u8, mut reply: Vec<u8>| {
        reply.push(0x80 | rcode);
        reply.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        Some(reply)
    };
    if opcode != 0 || questions != 1 {
        // Not implemented.
        return refuse(4, reply);
    }
    // The question: labels, then type and class.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            // Compression pointers have no place in a question.
            return refuse(1, reply);
        }
        let label = query.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*query.get(pos + 2)?, *query.get(pos + 3)?]);
    let question = &query[12..pos + 4];
    let name = labels.join(".");
    let answer = (qtype == TYPE_A && qclass == CLASS_IN && !name.is_empty())
        .then(|| names.address_of(&name));
    reply.push(0x80);
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&u16::from(answer.is_some()).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if let Some(addr) = answer {
        // A pointer to the question's name, type A, class IN, 60 s.
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&addr.octets());
    }
    Some(reply)
}

/// The server name of a TLS client hello, if `data` starts with one.
pub(crate) fn sni(data: &[u8]) -> Option<String> {
    let be16 = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *data.get(at)?,
            *data.get(at + 1)?,
        ])))
    };
    // Record header (5) and handshake header (4): a client hello.
    if data.first() != Some(&0x16) || data.get(5) != Some(&0x01) {
        return None;
    }
    // Version (2), random (32), then the session id.
    let mut pos = 9 + 2 + 32;
    pos += 1 + usize::from(*data.get(pos)?);
    pos += 2 + be16(pos)?; // cipher suites
    pos += 1 + usize::from(*data.get(pos)?); // compression methods
    let end = pos + 2 + be16(pos)?;
    pos += 2;
    while pos + 4 <= end {
        let kind = be16(pos)?;
        let len = be16(pos + 2)?;
        let body = pos + 4;
        if kind == 0 {
            // server_name: list length, then (type 0, length, name).
            if *data.get(body + 2)? != 0 {
                return None;
            }
            let name_len = be16(body + 3)?;
            let name = data.get(body + 5..body + 5 + name_len)?;
            let name = std::str::from_utf8(name).ok()?;
            return Some(name.to_ascii_lowercase());
        }
        pos = body + len;
    }
    None
}

/// Hands one captured connection to the proxy as a `CONNECT`.
fn capture_one(
    client: TcpStream,
    destination: &Destination,
    names: &Mutex<NameTable>,
    proxy_socket: &Path,
    authorization: &ProxyAuthorization,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    if let Destination::HostPort(port) = destination {
        // Server-first protocols (SSH, databases) are fine here: nothing
        // is read before the tunnel is up.
        return tunnel(
            client,
            "127.0.0.1",
            *port,
            Vec::new(),
            proxy_socket,
            authorization,
        );
    }
    let dialled = client.local_addr()?;
    // Clients that speak first (TLS, HTTP) say where they go; a client
    // waiting for the server gets no name from its bytes.
    client.set_read_timeout(Some(FIRST_BYTES_TIMEOUT))?;
    let mut first = vec![0u8; 4096];
    let n = match (&client).read(&mut first) {
        Ok(0) => return Ok(()),
        Ok(n) => n,
        Err(_) => 0,
    };
    first.truncate(n);
    client.set_read_timeout(None)?;
    let port = dialled.port();
    let host = match (sni(&first), dialled) {
        (Some(name), _) => name,
        (None, SocketAddr::V4(v4)) => names
            .lock()
            .ok()
            .and_then(|t| t.name_of(*v4.ip()).map(str::to_owned))
            .unwrap_or_else(|| v4.ip().to_string()),
        (None, SocketAddr::V6(v6)) => format!("[{}]", v6.ip()),
    };
    tunnel(client, &host, port, first, proxy_socket, authorization)
}

/// Opens a `CONNECT host:port` tunnel through the proxy, sends `first`
/// (bytes the client already sent) into it and splices both ways.
fn tunnel(
    client: TcpStream,
    host: &str,
    port: u16,
    first: Vec<u8>,
    proxy_socket: &Path,
    authorization: &ProxyAuthorization,
) -> io::Result<()> {
    let mut proxy = UnixStream::connect(proxy_socket)?;
    write!(
        proxy,
        "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: {}\r\n\r\n",
        authorization.expose()
    )?;
    let mut reader = BufReader::new(proxy.try_clone()?);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let accepted = status.split_whitespace().nth(1) == Some("200");
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    if !accepted {
        // The proxy traced the refusal; the client sees a closed
        // connection, as from a firewall.
        return Ok(());
    }
    // Anything the proxy sent past its headers belongs to the client.
    let early = reader.buffer().to_vec();
    if !early.is_empty() {
        (&client).write_all(&early)?;
    }
    if !first.is_empty() {
        proxy.write_all(&first)?;
    }
    let (client_read, proxy_write) = (client.try_clone()?, proxy.try_clone()?);
    let upstream = thread::Builder::new()
        .name("moat-capture-up".into())
        .spawn(move || pump(client_read, proxy_write))?;
    pump(proxy, client);
    let _ = upstream.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn a_questions_get_a_stable_address_of_ours() {
        let mut names = NameTable::default();
        let reply = dns_answer(&query("API.github.com", 1), &mut names).unwrap_or_default();
        assert_eq!(&reply[..2], &[0x12, 0x34]);
        assert_eq!(reply[3] & 0x0f, 0, "rcode");
        assert_eq!(&reply[6..8], &[0, 1], "one answer");
        let addr = Ipv4Addr::new(198, 18, 0, 1);
        assert_eq!(&reply[reply.len() - 4..], &addr.octets());
        assert_eq!(names.name_of(addr), Some("api.github.com"));
        // The question comes back as asked; the address is the same.
        let again = dns_answer(&query("api.github.com", 1), &mut names).unwrap_or_default();
        assert_eq!(&again[again.len() - 4..], &addr.octets());
        let other = dns_answer(&query("pypi.org", 1), &mut names).unwrap_or_default();
        assert_eq!(&other[other.len() - 4..], &[198, 18, 0, 2]);
    }

    #[test]
    fn other_questions_get_no_address_and_garbage_no_answer() {
        let mut names = NameTable::default();
        let reply = dns_answer(&query("example.com", 28), &mut names).unwrap_or_default();
        assert_eq!(&reply[6..8], &[0, 0], "AAAA: no answer");
        assert_eq!(reply[3] & 0x0f, 0);
        assert!(dns_answer(&[1, 2, 3], &mut names).is_none());
        let mut truncated = query("example.com", 1);
        truncated.truncate(truncated.len() - 3);
        assert!(dns_answer(&truncated, &mut names).is_none());
        let mut response = query("example.com", 1);
        response[2] |= 0x80;
        assert!(dns_answer(&response, &mut names).is_none());
    }

    #[test]
    fn reads_the_server_name_of_a_client_hello() {
        // A minimal TLS 1.2 client hello for "api.github.com".
        let name = b"api.github.com";
        let mut ext = vec![0, 0];
        let list_len = 3 + name.len();
        ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
        ext.extend_from_slice(&(list_len as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
        ext.extend_from_slice(name);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hello = vec![0x16, 3, 1];
        hello.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        hello.push(1);
        hello.extend_from_slice(&[0, (body.len() >> 8) as u8, body.len() as u8]);
        hello.extend_from_slice(&body);
        assert_eq!(sni(&hello).as_deref(), Some("api.github.com"));
        assert_eq!(sni(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(sni(&hello[..20]), None);
    }
}
