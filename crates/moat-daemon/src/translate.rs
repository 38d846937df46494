//! Turning a control-protocol [`RunSpec`] into the proxy engine's
//! registration: group the header injections by host pattern and build
//! the MCP routes. The policy, rules, host patterns and MCP names were
//! parsed when the request was decoded; a malformed header name or value
//! is refused here with a message naming it, before the run gets a token.

use moat_policy::{HostPattern, NetworkPolicy};

use crate::protocol::RunSpec;

/// A header the run asked to inject that is not a valid HTTP header.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The header's name is not a token.
    #[error("invalid header name {name:?} for {target}")]
    HeaderName {
        /// The name given.
        name: String,
        /// The host pattern or MCP server it was for.
        target: String,
    },
    /// The header's value holds bytes a header may not.
    #[error("invalid header value for {target}")]
    HeaderValue {
        /// The host pattern and grant, or MCP server, it was for.
        target: String,
    },
    /// An MCP server's URL that HTTP cannot send to.
    #[error("the URL of MCP server {server} is not one HTTP can send to")]
    McpUrl {
        /// The server.
        server: String,
    },
}

/// Builds the engine registration for `run`.
pub fn registration(run: &RunSpec) -> Result<moat_proxy::RunRegistration, RegistrationError> {
    let mut network = NetworkPolicy {
        policy: run.policy,
        hosts: run.rules.clone(),
        granted: Vec::new(),
        denied: Vec::new(),
    };
    for host in &run.allow_hosts {
        network.allow_host(host.clone());
    }
    let injections = injections(run, &mut network)?;
    let mcp = mcp_routes(run, &mut network)?;
    Ok(moat_proxy::RunRegistration {
        run_id: run.run_id.clone(),
        name: run.name.clone(),
        injections,
        policy: network,
        mcp,
        trace: run.trace_path.clone(),
        tunnels: tunnels(run),
    })
}

/// One header, checked.
fn header(
    name: &str,
    value: &moat_secret::Secret,
    target: impl Fn() -> String,
) -> Result<(moat_proxy::HeaderName, moat_proxy::SecretValue), RegistrationError> {
    let header_name = moat_proxy::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        RegistrationError::HeaderName {
            name: name.to_owned(),
            target: target(),
        }
    })?;
    let header_value = moat_proxy::SecretValue::new(value.expose())
        .map_err(|_| RegistrationError::HeaderValue { target: target() })?;
    Ok((header_name, header_value))
}

/// The header injections grouped by host pattern; a granted host is
/// allowed under a strict policy where the user wrote nothing about it
/// (their rules for it take precedence).
fn injections(
    run: &RunSpec,
    network: &mut NetworkPolicy,
) -> Result<Vec<moat_proxy::Injection>, RegistrationError> {
    let mut injections: Vec<moat_proxy::Injection> = Vec::new();
    for spec in &run.injections {
        let (name, value) = header(&spec.name, &spec.value, || {
            format!("{} (grant {})", spec.host, spec.grant)
        })?;
        match injections.iter_mut().find(|i| i.host == spec.host) {
            Some(existing) => existing.headers.push((name, value)),
            None => {
                network.grant_host(spec.host.clone());
                injections.push(moat_proxy::Injection {
                    host: spec.host.clone(),
                    headers: vec![(name, value)],
                });
            }
        }
    }
    Ok(injections)
}

/// The MCP relay's routes. The relay obeys the run's policy; a server the
/// run holds a credential for is granted like any credential's host (the
/// user's rules for it still win).
fn mcp_routes(
    run: &RunSpec,
    network: &mut NetworkPolicy,
) -> Result<Vec<moat_proxy::McpRoute>, RegistrationError> {
    let mut mcp = Vec::new();
    for server in &run.mcp {
        let headers = server
            .headers
            .iter()
            .map(|h| header(&h.name, &h.value, || format!("MCP server {}", server.name)))
            .collect::<Result<Vec<_>, _>>()?;
        if !headers.is_empty() {
            if let Some(host) = url_host(&server.url) {
                if let Ok(pattern) = HostPattern::parse(&host) {
                    network.grant_host(pattern);
                }
            }
        }
        // `url::Url` (as moat.yaml was parsed) to `http::Uri` (what the
        // proxy sends with): the one conversion between the two types.
        let url =
            http::Uri::try_from(server.url.as_str()).map_err(|_| RegistrationError::McpUrl {
                server: server.name.to_string(),
            })?;
        mcp.push(moat_proxy::McpRoute {
            name: server.name.clone(),
            url,
            headers,
        });
    }
    Ok(mcp)
}

/// The TCP tunnels: each SSH host's port, and the host ports the run may
/// reach.
fn tunnels(run: &RunSpec) -> Vec<moat_proxy::TcpTunnel> {
    run.ssh_hosts
        .iter()
        .map(|h| moat_proxy::TcpTunnel {
            host: h.host.to_ascii_lowercase(),
            port: h.port,
        })
        .chain(run.host_ports.iter().map(|port| moat_proxy::TcpTunnel {
            host: "127.0.0.1".to_owned(),
            port: *port,
        }))
        .collect()
}

/// The host of `url` as a host pattern is written (IPv6 in brackets).
pub fn url_host(url: &url::Url) -> Option<String> {
    Some(match url.host()? {
        url::Host::Ipv6(ip) => format!("[{ip}]"),
        other => other.to_string().to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_hosts() {
        use super::url_host;
        let host = |u: &str| url::Url::parse(u).ok().and_then(|u| url_host(&u));
        assert_eq!(
            host("https://mcp.example.com/x").as_deref(),
            Some("mcp.example.com")
        );
        assert_eq!(host("http://u:p@H.test:8080?q").as_deref(), Some("h.test"));
        assert_eq!(host("https://[::1]:9/x").as_deref(), Some("[::1]"));
        assert_eq!(host("nourl"), None);
    }
}
