use std::fmt;
use std::str::FromStr;

use crate::PolicyError;

/// A host name to match requests against: exact (`api.github.com`) or a
/// wildcard over subdomains (`*.example.com`).
///
/// Matching ignores ASCII case and one trailing dot. `*.example.com`
/// matches `a.example.com` and `a.b.example.com` but not `example.com`: an
/// apex is often a different service than its subdomains, so it has to be
/// listed on its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    /// Lower-cased host name, without a trailing dot.
    Exact(String),
    /// The part after `*.`, lower-cased, without a trailing dot.
    Subdomains(String),
}

const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

impl HostPattern {
    /// Parses `api.github.com`, `*.example.com`, `127.0.0.1` or `[::1]`.
    ///
    /// Ports, schemes and paths are rejected rather than stripped: a rule
    /// that silently meant something else than it says is worse than an
    /// error.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let err = |reason: &str| PolicyError::InvalidHost {
            pattern: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(err(
                "expected a host name such as api.github.com or a wildcard such as *.example.com",
            ));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(err("host names cannot contain spaces"));
        }
        if s.contains("://") {
            return Err(err(
                "write the host name only, without a scheme (e.g. api.github.com)",
            ));
        }
        if s.contains('/') {
            return Err(err(
                "write the host name only, without a path (path rules go in the host's rule list)",
            ));
        }
        if let Some(inner) = s.strip_prefix('[') {
            return match inner.strip_suffix(']') {
                Some(addr) if is_ipv6_literal(addr) => match canonical_ip(s) {
                    Some(canonical) => Ok(Self {
                        kind: Kind::Exact(canonical),
                    }),
                    None => Err(err("expected an IPv6 address in brackets, such as [::1]")),
                },
                _ if inner.contains("]:") => Err(err(
                    "ports are not supported; write the host name only (e.g. [::1])",
                )),
                _ => Err(err("expected an IPv6 address in brackets, such as [::1]")),
            };
        }
        if s.contains(':') {
            return Err(err(
                "ports are not supported; write the host name only (e.g. api.github.com)",
            ));
        }
        if s == "*" {
            return Err(err(
                "a bare * is not supported; use policy: permissive to allow every host",
            ));
        }
        let lowered = s.to_ascii_lowercase();
        let (wildcard, name) = match lowered.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lowered.as_str()),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.contains('*') {
            return Err(err(
                "* is only allowed as the whole first label, as in *.example.com",
            ));
        }
        validate_host_name(name).map_err(|reason| err(&reason))?;
        let kind = if wildcard {
            Kind::Subdomains(name.to_owned())
        } else {
            Kind::Exact(name.to_owned())
        };
        Ok(Self { kind })
    }

    /// Whether `host` is covered by this pattern.
    ///
    /// `host` may carry a `:port` suffix (as a `Host` header does); it is
    /// ignored, so a port can never be used to slip past a host rule.
    ///
    /// IPv6 literals match in any spelling, bracketed or bare (`::1`,
    /// `[0:0::1]:443`).
    pub fn matches(&self, host: &str) -> bool {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        match &self.kind {
            Kind::Exact(name) if name.starts_with('[') => {
                canonical_ip(host).is_some_and(|h| h == *name)
            }
            Kind::Exact(name) => host.eq_ignore_ascii_case(name),
            Kind::Subdomains(suffix) => {
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                // Needs at least one byte of subdomain plus the dot.
                h.len() > s.len() + 1
                    && h[h.len() - s.len() - 1] == b'.'
                    && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    /// True for `*.example.com` patterns.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.kind, Kind::Subdomains(_))
    }
}

impl FromStr for HostPattern {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Exact(name) => f.write_str(name),
            Kind::Subdomains(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

fn is_ipv6_literal(addr: &str) -> bool {
    addr.contains(':')
        && addr
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
}

/// `[canonical]` for an IPv6 literal, bracketed or bare; `None` otherwise.
pub(crate) fn canonical_ip(host: &str) -> Option<String> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let addr: std::net::Ipv6Addr = inner.parse().ok()?;
    Some(format!("[{addr}]"))
}

/// Drops a trailing `:digits` from `host`, unless what remains is a bare
/// IPv6 address (whose colons are not a port separator).
pub(crate) fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            // `[::1]:443` -> `[::1]`; indices are on ASCII bytes.
            return host.get(..end + 2).unwrap_or(host);
        }
        return host;
    }
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => host,
    }
}

fn validate_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("expected a domain after *., as in *.example.com".to_owned());
    }
    if !name.is_ascii() {
        return Err(
            "non-ASCII host names must be written in their punycode form (xn--...)".to_owned(),
        );
    }
    if name.len() > MAX_HOST_LEN {
        return Err(format!("host names are at most {MAX_HOST_LEN} characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a leading dot)".to_owned());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "label {label:?} is longer than {MAX_LABEL_LEN} characters"
            ));
        }
        // Underscores are not valid in host names but appear in real ones
        // (e.g. some internal services); accepting them costs nothing.
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "invalid character {c:?}; host names use letters, digits, '-' and '.'"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        match HostPattern::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn reason(s: &str) -> String {
        match HostPattern::parse(s) {
            Ok(p) => panic!("{s} parsed as {p}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn exact_host_matches_case_insensitively() {
        let pat = p("API.GitHub.com");
        assert_eq!(pat.to_string(), "api.github.com");
        assert!(pat.matches("api.github.com"));
        assert!(pat.matches("API.GITHUB.COM"));
        assert!(pat.matches("api.github.com."));
        assert!(!pat.matches("github.com"));
        assert!(!pat.matches("xapi.github.com"));
        assert!(!pat.matches("api.github.com.evil.com"));
        assert!(!pat.is_wildcard());
    }

    #[test]
    fn wildcard_matches_any_depth_but_not_apex() {
        let pat = p("*.Example.com");
        assert_eq!(pat.to_string(), "*.example.com");
        assert!(pat.is_wildcard());
        assert!(pat.matches("a.example.com"));
        assert!(pat.matches("A.B.C.EXAMPLE.COM"));
        assert!(!pat.matches("example.com"));
        assert!(!pat.matches(".example.com"));
        assert!(!pat.matches("badexample.com"));
        assert!(!pat.matches("example.com.evil"));
        assert!(!pat.matches(""));
    }

    #[test]
    fn port_in_the_host_being_matched_is_ignored() {
        assert!(p("api.github.com").matches("api.github.com:443"));
        assert!(p("*.github.com").matches("api.github.com:8443"));
        assert!(p("[::1]").matches("[::1]:8080"));
        assert!(p("[::1]").matches("[::1]"));
        assert!(!p("api.github.com").matches("api.github.com:x"));
    }

    #[test]
    fn ip_addresses() {
        assert!(p("127.0.0.1").matches("127.0.0.1"));
        assert!(p("[::1]").matches("[::1]"));
        assert!(reason("[::1]:443").contains("ports are not supported"));
        assert!(reason("[zz]").contains("IPv6"));
        assert!(reason("::1").contains("ports are not supported"));
    }

    #[test]
    fn trailing_dot_in_pattern_is_normalised() {
        assert_eq!(p("example.com.").to_string(), "example.com");
    }

    #[test]
    fn rejects_ports_schemes_paths_and_stray_stars() {
        assert_eq!(
            reason("api.github.com:443"),
            "invalid host pattern \"api.github.com:443\": ports are not supported; \
             write the host name only (e.g. api.github.com)"
        );
        assert!(reason("https://api.github.com").contains("without a scheme"));
        assert!(reason("api.github.com/repos").contains("without a path"));
        assert!(reason("*").contains("bare *"));
        assert!(reason("api.*.com").contains("whole first label"));
        assert!(reason("*api.com").contains("whole first label"));
        assert!(reason("**.com").contains("whole first label"));
        assert!(reason("*.").contains("expected a domain"));
        assert!(reason("").contains("expected a host name"));
        assert!(reason("a b").contains("spaces"));
        assert!(reason("a..b").contains("empty label"));
        assert!(reason(".a").contains("empty label"));
        assert!(reason("a!b").contains("invalid character '!'"));
        assert!(reason("bücher.de").contains("punycode"));
        assert!(reason(&"a".repeat(64)).contains("longer than 63"));
        assert!(reason(&["a"; 130].join(".")).contains("at most 253"));
    }

    #[test]
    fn from_str_and_display_round_trip() {
        for s in ["api.github.com", "*.example.com", "[::1]", "10.0.0.1"] {
            let pat: HostPattern = match s.parse() {
                Ok(p) => p,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(pat.to_string(), s);
            assert_eq!(p(&pat.to_string()), pat);
        }
    }
}
