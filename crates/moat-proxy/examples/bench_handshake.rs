//! Measures what a client waits for when it opens a tunnel: `CONNECT` plus
//! the TLS handshake with the proxy, for hosts never seen (a leaf is
//! minted) and for a cached host. Used by `bench/proxy/run.sh`.
//!
//! ```text
//! bench_handshake PROXY_ADDR TOKEN MOAT_CA_PEM [N]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn handshake(
    proxy: &str,
    auth: &str,
    host: &str,
    connector: &tokio_rustls::TlsConnector,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(proxy).await?;
    tcp.set_nodelay(true)?;
    tcp.write_all(
        format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 {
            return Err("proxy closed".into());
        }
        buf.push(byte[0]);
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        return Err(format!("CONNECT failed: {}", String::from_utf8_lossy(&buf)).into());
    }
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
    let _tls = connector.connect(name, tcp).await?;
    Ok(started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [proxy, token, ca_pem, rest @ ..] = args.as_slice() else {
        return Err("usage: bench_handshake PROXY_ADDR TOKEN MOAT_CA_PEM [N]".into());
    };
    let n: usize = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem)? {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("moat:{token}"))
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let salt = std::process::id();
        let mut fresh = Vec::new();
        for i in 0..n {
            let host = format!("h{i}-{salt}.bench.test");
            fresh.push(handshake(proxy, &auth, &host, &connector).await?);
        }
        let mut cached = Vec::new();
        for _ in 0..n {
            cached.push(handshake(proxy, &auth, "h0-cached.bench.test", &connector).await?);
        }
        let (f, c) = (median(fresh), median(cached));
        println!(
            "new-host CONNECT+TLS median: {:.3} ms; cached-host median: {:.3} ms; minting adds {:.3} ms ({n} handshakes each)",
            f.as_secs_f64() * 1e3,
            c.as_secs_f64() * 1e3,
            (f.saturating_sub(c)).as_secs_f64() * 1e3,
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
