//! Turning a control-protocol [`RunSpec`] into the proxy engine's
//! registration: parse the policy, rules and host patterns, and build the
//! header injections. Anything malformed is refused with a message naming
//! it, before the run gets a token.

use moat_policy::{HostPattern, HostRules, NetworkPolicy, Policy, Rule};

use crate::protocol::RunSpec;

/// Builds the engine registration for `run`.
pub fn registration(run: &RunSpec) -> Result<moat_proxy::RunRegistration, String> {
    let policy: Policy = run.policy.parse().map_err(|_| {
        format!(
            "invalid network policy {:?}: use permissive or strict",
            run.policy
        )
    })?;
    let mut hosts = Vec::new();
    for entry in &run.rules {
        let host = HostPattern::parse(&entry.host).map_err(|e| e.to_string())?;
        let rules = entry
            .rules
            .iter()
            .map(|r| Rule::parse(r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        hosts.push(HostRules { host, rules });
    }
    let mut network = NetworkPolicy { policy, hosts };
    for host in &run.allow_hosts {
        network.allow_host(HostPattern::parse(host).map_err(|e| e.to_string())?);
    }

    // Group header injections by host pattern; granted hosts are allowed
    // under a strict policy.
    let mut injections: Vec<moat_proxy::Injection> = Vec::new();
    for spec in &run.injections {
        let pattern = HostPattern::parse(&spec.host).map_err(|e| e.to_string())?;
        let name = moat_proxy::HeaderName::from_bytes(spec.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?} for {}", spec.name, spec.host))?;
        let value = moat_proxy::SecretValue::new(spec.value.expose()).map_err(|_| {
            format!(
                "invalid header value for {} (grant {})",
                spec.host, spec.grant
            )
        })?;
        match injections
            .iter_mut()
            .find(|i| i.host.to_string() == pattern.to_string())
        {
            Some(existing) => existing.headers.push((name, value)),
            None => {
                network.allow_host(pattern.clone());
                injections.push(moat_proxy::Injection {
                    host: pattern,
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
        mcp.push(moat_proxy::McpRoute {
            name: server.name.clone(),
            url: server.url.clone(),
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
