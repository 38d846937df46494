//! Transparent capture: how a connection from a client that ignores the
//! proxy settings still reaches moat's proxy, named as the client meant.
//!
//! This crate owns the parts that do not depend on how a connection was
//! diverted (an nftables `redirect` in the native sandbox's network
//! namespace, an iptables `REDIRECT` in a container's network guard):
//! - [`NameTable`] and [`dns_answer`]: a DNS responder that gives every
//!   name an address of its own from 198.18.0.0/15 (reserved for
//!   benchmarks, never routed) and remembers it, answers `AAAA` with no
//!   address, so names resolve even where the host cannot resolve them and
//!   a diverted connection can be named again;
//! - [`sni`]: the server name of a TLS client hello;
//! - [`Relay`]: names a diverted connection (SNI, else the responder's
//!   name for the address, else the address) and hands it to the proxy as
//!   a `CONNECT` carrying the run's [`ProxyAuthorization`]; the proxy then
//!   intercepts TLS or plain HTTP, or splices other protocols, and applies
//!   the run's injection, policy and trace. A refusal resets the
//!   connection, as a firewall would.
//!
//! It must not know about policy, credentials or runtimes: the caller
//! diverts connections and says where the proxy is.

#![cfg(target_os = "linux")]

mod ports;
mod sys;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::ports::{connect_port, receive_port_socket, serve_ports};
pub use crate::sys::original_destination;

/// A `Proxy-Authorization` header value: a credential of the run (a
/// [`moat_secret::Secret`], never printed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProxyAuthorization(#[serde(with = "moat_secret::exposed")] moat_secret::Secret);

impl ProxyAuthorization {
    /// Wraps a header value.
    pub fn new(value: impl Into<String>) -> Self {
        ProxyAuthorization(moat_secret::Secret::new(value))
    }

    /// The header value itself.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// One printable header value.
    pub fn is_valid(&self) -> bool {
        let value = self.0.expose();
        !value.is_empty() && !value.bytes().any(|b| b < 0x20 || b == 0x7f)
    }
}

impl std::fmt::Debug for ProxyAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyAuthorization([REDACTED])")
    }
}

/// Where the proxy listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyEndpoint {
    /// The daemon's Unix socket (native sandboxes, by host path).
    Unix(PathBuf),
    /// A TCP address (containers, on the bridge gateway).
    Tcp(SocketAddr),
}

/// A connection to the proxy, whichever the transport.
trait Duplex: Read + Write + Send {
    fn duplicate(&self) -> io::Result<Box<dyn Duplex>>;
    fn shut(&self, how: std::net::Shutdown);
}

impl Duplex for UnixStream {
    fn duplicate(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shut(&self, how: std::net::Shutdown) {
        let _ = self.shutdown(how);
    }
}

impl Duplex for TcpStream {
    fn duplicate(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shut(&self, how: std::net::Shutdown) {
        let _ = self.shutdown(how);
    }
}

impl ProxyEndpoint {
    fn connect(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(match self {
            ProxyEndpoint::Unix(path) => Box::new(UnixStream::connect(path)?),
            ProxyEndpoint::Tcp(addr) => {
                let tcp = TcpStream::connect_timeout(addr, Duration::from_secs(10))?;
                let _ = tcp.set_nodelay(true);
                Box::new(tcp)
            }
        })
    }
}

/// How a diverted connection's destination is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Diverted {
    /// Every address is local: the accepted socket's own address is where
    /// the client meant to go.
    LocalAddress,
    /// An iptables `REDIRECT`: the kernel remembers the original
    /// destination ([`original_destination`]).
    Redirected,
    /// Always this host port, reached as `127.0.0.1:PORT` through the
    /// proxy (a host port given to the sandbox).
    HostPort(u16),
}

/// The name under which a sandbox reaches the host ports it was given
/// (`network.host` in moat.yaml), as `$MOAT_HOST_GATEWAY`.
pub const HOST_GATEWAY_NAME: &str = "moat-host";

/// The address [`HOST_GATEWAY_NAME`] has inside a sandbox (from the
/// benchmark range the DNS responder uses, outside its pool). A diverted
/// connection to it goes to `127.0.0.1:PORT` on the host, through the
/// proxy, which allows only the ports the run was given.
pub const HOST_GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);

/// Ports whose clients speak first (HTTP and TLS): the relay reads their
/// first bytes to name the connection by its TLS server name.
const WEB_PORTS: &[u16] = &[80, 443];

/// How long a diverted web client may take to send its first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// First address the DNS responder hands out, and how many it has.
const FAKE_BASE: u32 = u32::from_be_bytes([198, 18, 0, 1]);
const FAKE_COUNT: u32 = (1 << 17) - 2;

/// The names the responder gave out, both ways.
#[derive(Debug, Default)]
pub struct NameTable {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
    next: u32,
}

impl NameTable {
    /// The address for `name`, the same one every time.
    pub fn address_of(&mut self, name: &str) -> Ipv4Addr {
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
    pub fn name_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }
}

/// Hands diverted connections to the proxy. Cheap to clone: the name
/// table is shared with the DNS responder of the same sandbox.
#[derive(Debug, Clone)]
pub struct Relay {
    names: Arc<Mutex<NameTable>>,
    proxy: Arc<ProxyEndpoint>,
    authorization: Arc<ProxyAuthorization>,
}

impl Relay {
    /// A relay to `proxy` with the run's credentials.
    pub fn new(proxy: ProxyEndpoint, authorization: ProxyAuthorization) -> Relay {
        Relay {
            names: Arc::new(Mutex::new(NameTable::default())),
            proxy: Arc::new(proxy),
            authorization: Arc::new(authorization),
        }
    }

    /// Answers DNS on `socket` on a thread of its own, for as long as the
    /// process lives.
    pub fn serve_dns(&self, socket: UdpSocket) -> io::Result<()> {
        let names = self.names.clone();
        thread::Builder::new()
            .name("moat-dns".into())
            .spawn(move || serve_dns(&socket, &names))
            .map(drop)
    }

    /// Accepts diverted connections on `listener` on a thread of its own
    /// (one more thread per connection).
    pub fn serve(&self, listener: TcpListener, diverted: Diverted) -> io::Result<()> {
        let relay = self.clone();
        thread::Builder::new()
            .name("moat-capture".into())
            .spawn(move || loop {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let relay = relay.clone();
                        let _ = thread::Builder::new()
                            .name("moat-capture-conn".into())
                            .spawn(move || {
                                let _ = relay.capture_one(tcp, diverted);
                            });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            })
            .map(drop)
    }

    /// Hands one diverted connection to the proxy as a `CONNECT`.
    fn capture_one(&self, client: TcpStream, diverted: Diverted) -> io::Result<()> {
        let _ = client.set_nodelay(true);
        let dialled = match diverted {
            // Server-first protocols (SSH, databases) are fine here:
            // nothing is read before the tunnel is up.
            Diverted::HostPort(port) => {
                return self.tunnel(client, "127.0.0.1", port, Vec::new());
            }
            Diverted::LocalAddress => client.local_addr()?,
            Diverted::Redirected => {
                let dialled = original_destination(&client)?;
                // Not redirected but dialled directly (the workload's
                // wait for the relay, see [`await_relay`]): nowhere to go.
                if dialled == client.local_addr()? {
                    return Ok(());
                }
                dialled
            }
        };
        if dialled.ip() == std::net::IpAddr::V4(HOST_GATEWAY_ADDR) {
            return self.tunnel(client, "127.0.0.1", dialled.port(), Vec::new());
        }
        let port = dialled.port();
        let by_address = || match dialled {
            SocketAddr::V4(v4) => self
                .names
                .lock()
                .ok()
                .and_then(|t| t.name_of(*v4.ip()).map(str::to_owned))
                .unwrap_or_else(|| v4.ip().to_string()),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        };
        if !WEB_PORTS.contains(&port) {
            // Elsewhere the server may be the one to speak first (SSH,
            // SMTP, MySQL): the proxy, not the relay, waits a little for
            // the client's first bytes to tell TLS, HTTP and the rest
            // apart.
            return self.tunnel(client, &by_address(), port, Vec::new());
        }
        // Web clients speak first and say where they go (SNI, Host).
        client.set_read_timeout(Some(FIRST_BYTES_TIMEOUT))?;
        let mut first = vec![0u8; 4096];
        let n = match (&client).read(&mut first) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(_) => 0,
        };
        first.truncate(n);
        client.set_read_timeout(None)?;
        let host = sni(&first).unwrap_or_else(by_address);
        self.tunnel(client, &host, port, first)
    }

    /// Opens a `CONNECT host:port` tunnel through the proxy, sends `first`
    /// (bytes the client already sent) into it and splices both ways.
    fn tunnel(&self, client: TcpStream, host: &str, port: u16, first: Vec<u8>) -> io::Result<()> {
        let authorization = &self.authorization;
        let mut proxy = self.proxy.connect()?;
        write!(
        proxy,
        "CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: {}\r\n\r\n",
        authorization.expose()
    )?;
        let mut reader = BufReader::new(proxy.duplicate()?);
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
            // The proxy traced the refusal; the client sees its connection
            // reset, as by a firewall.
            let _ = rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO));
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
        let (client_read, proxy_write) = (client.try_clone()?, proxy.duplicate()?);
        let upstream = thread::Builder::new()
            .name("moat-capture-up".into())
            .spawn(move || pump(Box::new(client_read), proxy_write))?;
        pump(proxy, Box::new(client));
        let _ = upstream.join();
        Ok(())
    }
}

/// What a container's network guard relays.
#[derive(Debug)]
pub struct GuardRelay {
    /// The proxy, `host:port` (resolved once).
    pub proxy: String,
    /// Where iptables redirects the namespace's TCP connections.
    pub relay_port: u16,
    /// Where iptables redirects its DNS.
    pub dns_port: u16,
    /// The run's proxy credential.
    pub authorization: ProxyAuthorization,
    /// The run's endpoint socket and the ports it may reach (`ports:`),
    /// served as [`serve_ports`] does.
    pub endpoints: Option<(PathBuf, Vec<u16>)>,
}

/// The relay of a container's network guard: DNS on `127.0.0.1:dns_port`,
/// connections redirected by iptables to `127.0.0.1:relay_port`, handed
/// to the proxy, and with endpoints the way in to them. Started as root
/// (the guard applies its firewall as root), it becomes `nobody` (65534)
/// once its sockets are bound, before it serves anything, and then calls
/// `ready` (the guard tells moat the workload may start). Serves until
/// SIGTERM or SIGINT (the guard's main process has no default action for
/// them, being PID 1); returns `Ok` then, an error on a setup error.
pub fn serve_redirected(guard: GuardRelay, ready: impl FnOnce()) -> io::Result<()> {
    sys::block_stop_signals()?;
    use std::net::ToSocketAddrs as _;
    let proxy = &guard.proxy;
    let proxy_addr = proxy.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("the proxy address {proxy} does not resolve"),
        )
    })?;
    let dns = UdpSocket::bind(("127.0.0.1", guard.dns_port))?;
    let listener = TcpListener::bind(("127.0.0.1", guard.relay_port))?;
    let endpoints = guard
        .endpoints
        .map(|(path, ports)| bind_endpoint_socket(&path).map(|l| (l, ports)))
        .transpose()?;
    if rustix::process::getuid().is_root() {
        // Still single-threaded: the threads started below inherit it.
        let nobody_gid = rustix::process::Gid::from_raw(65534);
        let nobody_uid = rustix::process::Uid::from_raw(65534);
        rustix::thread::set_thread_groups(&[])?;
        rustix::thread::set_thread_res_gid(nobody_gid, nobody_gid, nobody_gid)?;
        rustix::thread::set_thread_res_uid(nobody_uid, nobody_uid, nobody_uid)?;
    }
    let relay = Relay::new(ProxyEndpoint::Tcp(proxy_addr), guard.authorization);
    relay.serve_dns(dns)?;
    relay.serve(listener, Diverted::Redirected)?;
    if let Some((listener, ports)) = endpoints {
        serve_ports(listener, ports)?;
    }
    ready();
    sys::wait_for_stop_signal()
}

/// Binds the endpoint socket the host's daemon connects to. The guard's
/// root is not the caller on the host (and has no `CAP_DAC_OVERRIDE`), so
/// the socket is open to everyone: the run's storage directory around it
/// is the caller's only.
fn bind_endpoint_socket(path: &std::path::Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Waits until the relay of this network namespace accepts connections
/// on `127.0.0.1:relay_port`, which it does only once the guard's firewall
/// is in place (the guard applies it, then starts the relay), or until
/// `timeout` has passed. The workload's first step when it is started at
/// the same time as its guard.
pub fn await_relay(relay_port: u16, timeout: Duration) -> io::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, relay_port)) {
            Ok(_) => return Ok(()),
            Err(_) if started.elapsed() < timeout => thread::sleep(RELAY_POLL),
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the network guard's relay did not listen on 127.0.0.1:{relay_port} \
                         within {} s: {e}",
                        timeout.as_secs()
                    ),
                ))
            }
        }
    }
}

/// How often [`await_relay`] tries: a refused loopback connection costs
/// microseconds, and the guard is usually up within tens of milliseconds.
const RELAY_POLL: Duration = Duration::from_millis(2);

/// Copies `from` into `to` until end of stream, then half-closes `to`; on
/// error, closes both fully so the opposite direction stops as well.
fn pump(mut from: Box<dyn Duplex>, mut to: Box<dyn Duplex>) {
    match io::copy(&mut from, &mut to) {
        Ok(_) => to.shut(std::net::Shutdown::Write),
        Err(_) => {
            from.shut(std::net::Shutdown::Both);
            to.shut(std::net::Shutdown::Both);
        }
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
pub fn dns_answer(query: &[u8], names: &mut NameTable) -> Option<Vec<u8>> {
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
pub fn sni(data: &[u8]) -> Option<String> {
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
