//! Proxy configuration and the `MOAT_CONNECT_TO` mapping.

use std::path::PathBuf;
use std::time::Duration;

use moat_policy::CanonicalHost;

use crate::error::ProxyError;

/// Settings of a [`Proxy`](crate::Proxy), fixed at construction.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// An extra PEM file of CA certificates trusted for upstream TLS, on
    /// top of the system roots (the daemon passes `MOAT_UPSTREAM_CA_FILE`).
    pub upstream_ca_file: Option<PathBuf>,
    /// Whether the system's root certificates are trusted upstream
    /// (default `true`; tests may turn it off to trust only
    /// `upstream_ca_file`).
    pub use_system_roots: bool,
    /// Upstream address overrides (`MOAT_CONNECT_TO`), first match wins.
    pub connect_to: Vec<ConnectTo>,
    /// How long a client may take to send a complete request head, and to
    /// finish the TLS handshake of an intercepted tunnel, before the
    /// connection is closed (slowloris protection). Default 30 s.
    pub client_timeout: Duration,
    /// How long connecting to an upstream (TCP and TLS) may take. Default
    /// 30 s.
    pub connect_timeout: Duration,
    /// How long an upstream may take to start answering (its response
    /// head) once the request is sent; past it the client gets `504` with
    /// a moat message. Default 10 minutes (`MOAT_UPSTREAM_TIMEOUT`,
    /// seconds).
    pub upstream_timeout: Duration,
    /// Whether credentials may be sent over plain HTTP to loopback hosts
    /// (`127.0.0.0/8`, `::1`, `localhost`), for local test servers.
    /// Everywhere else a credential is only ever injected on a TLS leg.
    /// Default `true`.
    pub cleartext_loopback: bool,
    /// Whether upstreams may be addresses of this machine: loopback, the
    /// addresses of its interfaces, and link-local addresses (where cloud
    /// metadata services answer). Default `false`: a sandbox reaches host
    /// services only through the tunnels it was given
    /// ([`RunRegistration::tunnels`](crate::RunRegistration)). Hosts
    /// mapped by [`connect_to`](Self::connect_to) are the caller's own
    /// choice and are not checked.
    pub allow_host_addresses: bool,
    /// The largest request head a client may send, in bytes (at least
    /// 8192). Larger heads get `431` or a closed connection. Default 64 KiB.
    pub max_header_bytes: usize,
    /// How many request and response body bytes a trace line captures,
    /// each. Default 8 KiB.
    pub trace_body_bytes: usize,
    /// Trace lines queued for a run's writer before new ones are dropped
    /// (counted and logged) rather than slowing requests. Default 8192.
    pub trace_queue: usize,
    /// The most a run's `network.jsonl` grows to; past it one marker line
    /// is written and later requests are not recorded (a sandbox can send
    /// blocked requests with large headers as fast as it likes). Default
    /// [`DEFAULT_MAX_TRACE_BYTES`] (`MOAT_MAX_TRACE_BYTES`, bytes).
    pub trace_max_bytes: u64,
}

/// The default cap on one run's `network.jsonl` (`MOAT_MAX_TRACE_BYTES`).
pub const DEFAULT_MAX_TRACE_BYTES: u64 = 64 << 20;

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            upstream_ca_file: None,
            use_system_roots: true,
            connect_to: Vec::new(),
            client_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(600),
            cleartext_loopback: true,
            allow_host_addresses: false,
            max_header_bytes: 64 * 1024,
            trace_body_bytes: 8 * 1024,
            trace_queue: 8192,
            trace_max_bytes: DEFAULT_MAX_TRACE_BYTES,
        }
    }
}

impl ProxyConfig {
    /// The defaults, with `MOAT_UPSTREAM_CA_FILE` (an extra PEM CA file for
    /// upstream TLS), `MOAT_CONNECT_TO` (`HOST1:PORT1:HOST2:PORT2[,...]`)
    /// `MOAT_UPSTREAM_TIMEOUT` (seconds an upstream may take to start
    /// answering) and `MOAT_MAX_TRACE_BYTES` (the cap on each run's trace)
    /// taken from the environment when set and non-empty.
    pub fn from_env() -> Result<Self, ProxyError> {
        Self::from_vars(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// [`ProxyConfig::from_env`] with a custom variable lookup.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ProxyError> {
        let mut config = ProxyConfig::default();
        if let Some(path) = var("MOAT_UPSTREAM_CA_FILE").filter(|v| !v.trim().is_empty()) {
            config.upstream_ca_file = Some(PathBuf::from(path));
        }
        if let Some(secs) = var("MOAT_UPSTREAM_TIMEOUT").filter(|v| !v.trim().is_empty()) {
            let secs: u64 = secs.trim().parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                ProxyError::config(format!(
                    "MOAT_UPSTREAM_TIMEOUT={secs:?} is not a number of seconds above 0 (e.g. 600); fix or unset it"
                ))
            })?;
            config.upstream_timeout = Duration::from_secs(secs);
        }
        if let Some(bytes) = var("MOAT_MAX_TRACE_BYTES").filter(|v| !v.trim().is_empty()) {
            config.trace_max_bytes = bytes.trim().parse().ok().filter(|b| *b > 0).ok_or_else(|| {
                ProxyError::config(format!(
                    "MOAT_MAX_TRACE_BYTES={bytes:?} is not a number of bytes above 0 (e.g. 67108864); fix or unset it"
                ))
            })?;
        }
        if let Some(list) = var("MOAT_CONNECT_TO") {
            config.connect_to = ConnectTo::parse_list(&list)?;
        }
        Ok(config)
    }
}

/// One `--connect-to` style override: connections for `from_host:from_port`
/// go to `to_host:to_port` at the TCP level, while TLS server name and
/// certificate verification still use `from_host`.
///
/// As in curl, an empty `from_host` or a `None` `from_port` matches any,
/// and an empty `to_host` or `None` `to_port` keeps the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    /// The requested host (lower case), empty for any.
    pub from_host: String,
    /// The requested port, `None` for any.
    pub from_port: Option<u16>,
    /// The host to connect to instead, empty to keep the requested one.
    pub to_host: String,
    /// The port to connect to instead, `None` to keep the requested one.
    pub to_port: Option<u16>,
}

impl ConnectTo {
    /// Parses `HOST1:PORT1:HOST2:PORT2` (IPv6 hosts in brackets).
    pub fn parse(entry: &str) -> Result<Self, ProxyError> {
        let err = |why: &str| {
            ProxyError::config(format!(
                "invalid connect-to entry {entry:?}: {why} (expected HOST1:PORT1:HOST2:PORT2)"
            ))
        };
        let parts = split_fields(entry.trim()).ok_or_else(|| err("unbalanced brackets"))?;
        let [from_host, from_port, to_host, to_port] = parts.as_slice() else {
            return Err(err("it needs exactly four fields"));
        };
        let port = |p: &str| -> Result<Option<u16>, ProxyError> {
            if p.is_empty() {
                Ok(None)
            } else {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .map(Some)
                    .ok_or_else(|| err("a port is not a number from 1 to 65535"))
            }
        };
        let host = |h: &str| -> Result<String, ProxyError> {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            if h.chars().any(|c| c.is_whitespace() || c == '/' || c == '@') {
                return Err(err("a host contains invalid characters"));
            }
            Ok(h.trim_end_matches('.').to_ascii_lowercase())
        };
        // Requests are matched in their canonical form, so the rule's host
        // is written in it too (`0x7f000001` is 127.0.0.1).
        let from = if from_host.is_empty() {
            String::new()
        } else {
            CanonicalHost::parse(from_host)
                .map_err(|e| err(&e.to_string()))?
                .bare()
                .to_owned()
        };
        Ok(ConnectTo {
            from_host: from,
            from_port: port(from_port)?,
            to_host: host(to_host)?,
            to_port: port(to_port)?,
        })
    }

    /// Parses a comma-separated list, as in `MOAT_CONNECT_TO`. Empty
    /// entries are ignored.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, ProxyError> {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(Self::parse)
            .collect()
    }

    fn matches(&self, host: &CanonicalHost, port: u16) -> bool {
        (self.from_host.is_empty() || self.from_host == host.bare())
            && self.from_port.is_none_or(|p| p == port)
    }

    /// The first of `rules` that applies to `host:port`.
    pub fn find<'a>(
        rules: &'a [ConnectTo],
        host: &CanonicalHost,
        port: u16,
    ) -> Option<&'a ConnectTo> {
        rules.iter().find(|r| r.matches(host, port))
    }

    /// Where to connect for `host:port` given `rules`: the first matching
    /// rule's target, or `host:port` itself (canonical, see
    /// [`CanonicalHost`]; a host that is none matches no rule).
    pub fn resolve(rules: &[ConnectTo], host: &str, port: u16) -> (String, u16) {
        let Ok(canonical) = CanonicalHost::parse(host) else {
            return (host.to_owned(), port);
        };
        let host = canonical.bare();
        match Self::find(rules, &canonical, port) {
            Some(rule) => (
                if rule.to_host.is_empty() {
                    host.to_owned()
                } else {
                    rule.to_host.clone()
                },
                rule.to_port.unwrap_or(port),
            ),
            None => (host.to_owned(), port),
        }
    }
}

/// Splits on `:` outside brackets.
fn split_fields(s: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return None;
        }
    }
    if depth != 0 {
        return None;
    }
    out.push(&s[start..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_curl_style_entries() {
        let list = ConnectTo::parse_list(
            "api.github.com:443:127.0.0.1:8443, [::1]:80:[::1]:8080,::localhost:",
        )
        .unwrap();
        assert_eq!(
            list[0],
            ConnectTo {
                from_host: "api.github.com".into(),
                from_port: Some(443),
                to_host: "127.0.0.1".into(),
                to_port: Some(8443)
            }
        );
        assert_eq!(list[1].from_host, "::1");
        assert_eq!(list[1].to_port, Some(8080));
        assert_eq!(list[2].from_host, "");
        assert_eq!(list[2].to_port, None);
        assert_eq!(
            ConnectTo::resolve(&list, "API.github.com", 443),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(
            ConnectTo::resolve(&list, "example.com", 443),
            ("localhost".into(), 443)
        );
        assert_eq!(
            ConnectTo::resolve(&list[..1], "example.com", 443),
            ("example.com".into(), 443)
        );
    }

    #[test]
    fn reads_the_environment_variables() {
        let config = ProxyConfig::from_vars(|name| match name {
            "MOAT_UPSTREAM_CA_FILE" => Some("/tmp/ca.pem".into()),
            "MOAT_CONNECT_TO" => Some("api.github.com:443:127.0.0.1:9443".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.upstream_ca_file, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(config.connect_to.len(), 1);
        assert!(ProxyConfig::from_vars(|_| Some("bad".into())).is_err());
        let timeout = |v: &str| {
            let v = v.to_owned();
            ProxyConfig::from_vars(move |name| (name == "MOAT_UPSTREAM_TIMEOUT").then(|| v.clone()))
        };
        assert_eq!(
            timeout("5").unwrap().upstream_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(
            timeout("").unwrap().upstream_timeout,
            Duration::from_secs(600)
        );
        for bad in ["0", "-1", "ten"] {
            let e = timeout(bad).unwrap_err().detail();
            assert!(e.contains("MOAT_UPSTREAM_TIMEOUT"), "{e}");
        }
        assert!(ProxyConfig::from_vars(|_| None)
            .unwrap()
            .connect_to
            .is_empty());
        let cap = |v: &str| {
            let v = v.to_owned();
            ProxyConfig::from_vars(move |name| (name == "MOAT_MAX_TRACE_BYTES").then(|| v.clone()))
        };
        assert_eq!(cap("65536").unwrap().trace_max_bytes, 65536);
        assert_eq!(cap("").unwrap().trace_max_bytes, DEFAULT_MAX_TRACE_BYTES);
        for bad in ["0", "-1", "64M"] {
            let e = cap(bad).unwrap_err().detail();
            assert!(e.contains("MOAT_MAX_TRACE_BYTES"), "{e}");
        }
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            "a:1:b",
            "a:1:b:2:3",
            "a:x:b:2",
            "a:1:b:70000",
            "[::1:1:b:2",
            "a b:1:c:2",
            "a:0:b:2",
        ] {
            assert!(ConnectTo::parse(bad).is_err(), "{bad}");
        }
        assert!(ConnectTo::parse_list("").unwrap().is_empty());
    }
}
