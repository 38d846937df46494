//! The proxy engine as a standalone process, for `bench/proxy/run.sh`.
//!
//! ```text
//! bench_server LISTEN CA_DIR UPSTREAM_CA_FILE TOKEN_FILE INJECT_HOST [CONNECT_TO]
//! ```
//!
//! Registers one run injecting `Authorization: Bearer bench-secret` for
//! `INJECT_HOST`, writes its token to `TOKEN_FILE` and serves until killed.
//! Authentication is exactly as in production: clients must present the
//! token.

use std::path::PathBuf;

use moat_policy::{HostPattern, NetworkPolicy, Policy};
use moat_proxy::{
    CertificateAuthority, ConnectTo, HeaderName, Injection, Proxy, ProxyConfig, RunRegistration,
    SecretValue,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, ca_dir, upstream_ca, token_file, inject_host, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: bench_server LISTEN CA_DIR UPSTREAM_CA TOKEN_FILE INJECT_HOST [CONNECT_TO]"
                .into(),
        );
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let config = ProxyConfig {
            upstream_ca_file: Some(PathBuf::from(upstream_ca)),
            connect_to: ConnectTo::parse_list(rest.first().map(String::as_str).unwrap_or(""))?,
            ..ProxyConfig::default()
        };
        let ca = CertificateAuthority::load_or_create(std::path::Path::new(ca_dir))?;
        let proxy = Proxy::new(config, ca)?;
        let token = proxy.try_register(RunRegistration {
            run_id: "bench".into(),
            name: String::new(),
            injections: vec![Injection {
                host: HostPattern::parse(inject_host)?,
                headers: vec![(
                    HeaderName::from_static("authorization"),
                    SecretValue::new("Bearer bench-secret")?,
                )],
            }],
            policy: NetworkPolicy::new(Policy::Permissive),
            mcp: vec![],
            trace: None,
            tunnels: vec![],
        })?;
        std::fs::write(token_file, token.expose())?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        proxy.serve_tcp(listener).await?;
        Ok(())
    })
}
