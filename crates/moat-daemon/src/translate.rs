//! Turning a control-protocol [`RunSpec`] into the proxy engine's
//! registration: group the header injections by host pattern and build
//! the MCP routes. The policy, rules, host patterns and MCP names were
//! parsed when the request was decoded; a malformed header name or value
//! is refused here with a message naming it, before the run gets a token.

use moat_policy::{HostPattern, NetworkPolicy};

use crate::protocol::RunSpec;

/// Builds the engine registration for `run`.
pub fn registration(run: &RunSpec) -> Result<moat_proxy::RunRegistration, String> {
    let mut network = NetworkPolicy {
        policy: run.policy,
        hosts: run.rules.clone(),
        granted: Vec::new(),
    };
    for host in &run.allow_hosts {
        network.allow_host(host.clone());
    }

    // Group header injections by host pattern; granted hosts are allowed
    // under a strict policy.
    let mut injections: Vec<moat_proxy::Injection> = Vec::new();
    for spec in &run.injections {
        let pattern = &spec.host;
        let name = moat_proxy::HeaderName::from_bytes(spec.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?} for {}", spec.name, spec.host))?;
        let value = moat_proxy::SecretValue::new(spec.value.expose()).map_err(|_| {
            format!(
                "invalid header value for {} (grant {})",
                spec.host, spec.grant
            )
        })?;
        match injections.iter_mut().find(|i| i.host == *pattern) {
            Some(existing) => existing.headers.push((name, value)),
            None => {
                // Allowed only where the user wrote nothing about the
                // host: their rules for it take precedence.
                network.grant_host(pattern.clone());
                injections.push(moat_proxy::Injection {
                    host: pattern.clone(),
                    headers: vec![(name, value)],
                });
            }
        }
    }

    let mut mcp = Vec::new();
    for server in &run.mcp {
        let mut headers = Vec::new();
        for h in &server.headers {
            let name = moat_proxy::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                format!(
                    "invalid header name {:?} for MCP server {}",
                    h.name, server.name
                )
            })?;
            let value = moat_proxy::SecretValue::new(h.value.expose())
                .map_err(|_| format!("invalid header value for MCP server {}", server.name))?;
            headers.push((name, value));
        }
        // The relay obeys the run's policy; a server the run holds a
        // credential for is granted like any credential's host (the
        // user's rules for it still win).
        if !headers.is_empty() {
            if let Some(host) = url_host(&server.url) {
                if let Ok(pattern) = HostPattern::parse(&host) {
                    network.grant_host(pattern);
                }
            }
        }
        mcp.push(moat_proxy::McpRoute {
            name: server.name.to_string(),
            url: server.url.to_string(),
            headers,
        });
    }

    Ok(moat_proxy::RunRegistration {
        run_id: run.run_id.clone(),
        injections,
        policy: network,
        mcp,
        trace: run.trace_path.clone(),
        tunnels: run
            .ssh_hosts
            .iter()
            .map(|h| moat_proxy::TcpTunnel {
                host: h.host.to_ascii_lowercase(),
                port: h.port,
            })
            .chain(run.host_ports.iter().map(|port| moat_proxy::TcpTunnel {
                host: "127.0.0.1".to_owned(),
                port: *port,
            }))
            .collect(),
    })
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
