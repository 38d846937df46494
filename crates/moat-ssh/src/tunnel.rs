//! The SSH `ProxyCommand` that runs inside a sandbox (`moat __ssh-connect
//! HOST PORT`): it asks moat's proxy for an HTTP `CONNECT HOST:PORT` tunnel,
//! with the run's token from `HTTPS_PROXY`, and then copies bytes between
//! the tunnel and its standard input and output, as `ssh` expects of a
//! ProxyCommand.
//!
//! This module owns the CONNECT exchange and the byte pump. It does not
//! decide which hosts are reachable: the proxy answers 200 only for hosts
//! the run was granted, and anything else is reported as a refusal.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

/// The environment variables that name moat's proxy, in the order they
/// are tried (the lower-case ones for tools that only set those).
const PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];

/// A proxy answer's head larger than this is not moat's proxy talking.
const MAX_HEAD: usize = 16 * 1024;

/// Why the tunnel to a host could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Not inside a moat sandbox: no proxy to tunnel through.
    #[error("no proxy in HTTPS_PROXY: moat __ssh-connect runs inside a moat sandbox")]
    NoProxy,
    /// The proxy URL is not the `http://` URL moat sets.
    #[error("HTTPS_PROXY must be an http:// URL")]
    NotHttpProxy,
    /// The proxy's address does not answer.
    #[error("connecting to moat's proxy at {authority}")]
    ProxyUnreachable {
        /// `host:port` of the proxy.
        authority: String,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// Reading or writing the CONNECT exchange failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The proxy's answer head did not end within [`MAX_HEAD`] bytes.
    #[error("moat's proxy sent an oversized answer to CONNECT {host}:{port}")]
    OversizedAnswer {
        /// Host asked for.
        host: String,
        /// Port asked for.
        port: u16,
    },
    /// The proxy closed before its answer's head was complete.
    #[error("moat's proxy closed the connection to {host}:{port}")]
    Closed {
        /// Host asked for.
        host: String,
        /// Port asked for.
        port: u16,
    },
    /// The proxy answered with something other than 200: the host is not
    /// granted, the token is wrong, or the answer is not HTTP at all.
    #[error(
        "moat's proxy refused the SSH connection to {host}:{port} ({status}){}\n\
         Only hosts granted with `moat grant ssh --host HOST` and passed with --grant ssh:HOST are reachable.",
        if body.is_empty() { String::new() } else { format!(": {body}") }
    )]
    Refused {
        /// Host asked for.
        host: String,
        /// Port asked for.
        port: u16,
        /// The answer's first line, e.g. `HTTP/1.1 403 Forbidden`.
        status: String,
        /// The start of the answer's body, trimmed; may be empty.
        body: String,
    },
}

/// The proxy URL from the environment (`HTTPS_PROXY` and its variants):
/// the one moat sets in every sandbox, with the run's token in it.
pub fn proxy_from_env() -> Result<String, TunnelError> {
    PROXY_VARS
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .ok_or(TunnelError::NoProxy)
}

/// Opens a tunnel to `host:port` through the proxy at `proxy_url`
/// (`http://[user:token@]host:port[/]`) and returns it once the proxy
/// answered 200. Nothing after the answer's head is read, so every byte
/// the server sends is left for the caller.
pub fn open_tunnel(proxy_url: &str, host: &str, port: u16) -> Result<TcpStream, TunnelError> {
    let rest = proxy_url
        .strip_prefix("http://")
        .ok_or(TunnelError::NotHttpProxy)?;
    let rest = rest.split('/').next().unwrap_or(rest);
    let (auth, authority) = match rest.rsplit_once('@') {
        Some((auth, authority)) => (Some(auth), authority),
        None => (None, rest),
    };
    let mut stream =
        TcpStream::connect(authority).map_err(|error| TunnelError::ProxyUnreachable {
            authority: authority.to_string(),
            error,
        })?;
    // SSH is interactive: small packets must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    if let Some(auth) = auth {
        request.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64_encode(auth.as_bytes())
        ));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;

    // Read the answer's head byte by byte: anything after it belongs to ssh.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(TunnelError::OversizedAnswer {
                host: host.to_string(),
                port,
            });
        }
        match stream.read(&mut byte)? {
            0 => {
                return Err(TunnelError::Closed {
                    host: host.to_string(),
                    port,
                })
            }
            _ => head.push(byte[0]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.lines().next().unwrap_or_default().to_string();
    if status.split_whitespace().nth(1) != Some("200") {
        // The proxy explains a refusal in the body; wait for it briefly so
        // the user sees why, but never hang on a proxy that sends none.
        let mut body = String::new();
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = (&stream).take(4096).read_to_string(&mut body);
        return Err(TunnelError::Refused {
            host: host.to_string(),
            port,
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(stream)
}

/// Copies bytes both ways until the server side closes: `input` to the
/// tunnel (on a thread of its own) and the tunnel to `output`, flushing
/// every chunk. When `input` ends, the tunnel's write side is shut down so
/// the server sees end of file.
pub fn pump<R, W>(tunnel: TcpStream, mut input: R, mut output: W) -> std::io::Result<()>
where
    R: Read + Send + 'static,
    W: Write,
{
    let mut upstream_reader = tunnel.try_clone()?;
    let mut upstream_writer = tunnel;
    // Plain read/write loops, not io::copy: its splice(2) fast path fails
    // under gVisor on ssh's ProxyCommand pipes.
    let uploader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if upstream_writer.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = upstream_writer.shutdown(Shutdown::Write);
    });
    // Standard output is line-buffered; SSH packets are binary, so every
    // chunk is flushed as it arrives or the peer would wait forever.
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match upstream_reader.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if output
                    .write_all(&buf[..n])
                    .and_then(|()| output.flush())
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    // ssh closes our stdin when it is done; the uploader ends with it, and
    // does not need to be waited for once the server side has closed.
    drop(uploader);
    Ok(())
}

/// The whole ProxyCommand: a tunnel to `host:port` through the proxy in
/// the environment, pumped to and from this process's standard input and
/// output.
pub fn proxy_command(host: &str, port: u16) -> Result<(), TunnelError> {
    let proxy = proxy_from_env()?;
    let tunnel = open_tunnel(&proxy, host, port)?;
    pump(tunnel, std::io::stdin(), std::io::stdout().lock())?;
    Ok(())
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead as _;
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    /// A one-connection proxy on 127.0.0.1 that reads the request head,
    /// hands it back through the join handle, writes `answer`, and then
    /// echoes what it receives until the client shuts its write side.
    fn fake_proxy(answer: &'static [u8], echo: bool) -> (String, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("read") == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut writer = stream;
            // The client may hang up mid-answer (the oversized test): fine.
            let _ = writer.write_all(answer);
            if echo {
                let mut rest = Vec::new();
                reader.read_to_end(&mut rest).expect("read rest");
                writer.write_all(&rest).expect("echo");
            }
            head
        });
        (format!("http://moat:tok@{addr}"), handle)
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"moat:abc"), "bW9hdDphYmM=");
    }

    #[test]
    fn status_200_pumps_bytes_both_ways() {
        // "SSH-2.0-server" right after the head must reach the caller.
        let (url, proxy) = fake_proxy(b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-server\r\n", true);
        let tunnel = open_tunnel(&url, "github.com", 22).expect("tunnel");
        let mut out = Vec::new();
        pump(tunnel, std::io::Cursor::new(b"hello".to_vec()), &mut out).expect("pump");
        assert_eq!(out, b"SSH-2.0-server\r\nhello");
        let head = proxy.join().expect("proxy");
        assert!(
            head.starts_with("CONNECT github.com:22 HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("Host: github.com:22\r\n"), "{head}");
        // "moat:tok" in base64.
        assert!(
            head.contains("Proxy-Authorization: Basic bW9hdDp0b2s=\r\n"),
            "{head}"
        );
    }

    #[test]
    fn refusal_names_the_status_line_and_body() {
        for (answer, status) in [
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\nbad token"[..],
                "HTTP/1.1 407 Proxy Authentication Required",
            ),
            (
                &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"[..],
                "HTTP/1.1 403 Forbidden",
            ),
        ] {
            let (url, proxy) = fake_proxy(answer, false);
            let err = open_tunnel(&url, "elsewhere.test", 22).expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, TunnelError::Refused { .. }), "{err:?}");
            assert!(
                text.starts_with(&format!(
                    "moat's proxy refused the SSH connection to elsewhere.test:22 ({status})"
                )),
                "{text}"
            );
            if status.contains("407") {
                assert!(text.contains("): bad token\n"), "{text}");
            }
            proxy.join().expect("proxy");
        }
    }

    #[test]
    fn malformed_answers_are_errors() {
        // Not HTTP: refused, with the line shown.
        let (url, proxy) = fake_proxy(b"garbage\r\n\r\n", false);
        let err = open_tunnel(&url, "h", 22).expect_err("malformed");
        assert!(err.to_string().contains("(garbage)"), "{err}");
        proxy.join().expect("proxy");

        // A head cut off by the proxy closing.
        let (url, proxy) = fake_proxy(b"HTTP/1.1 200 OK\r\n", false);
        let err = open_tunnel(&url, "h", 22).expect_err("truncated");
        assert!(matches!(err, TunnelError::Closed { .. }), "{err:?}");
        proxy.join().expect("proxy");

        // A head that never ends.
        let endless: &'static [u8] = Box::leak(vec![b'x'; MAX_HEAD + 2].into_boxed_slice());
        let (url, proxy) = fake_proxy(endless, false);
        let err = open_tunnel(&url, "h", 22).expect_err("oversized");
        assert!(
            matches!(err, TunnelError::OversizedAnswer { .. }),
            "{err:?}"
        );
        proxy.join().expect("proxy");
    }

    #[test]
    fn proxy_url_must_be_http() {
        assert!(matches!(
            open_tunnel("https://127.0.0.1:1", "h", 22),
            Err(TunnelError::NotHttpProxy)
        ));
    }
}
