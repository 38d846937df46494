use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::PolicyError;

/// A request's host in the one form every check and the dialler use.
///
/// Resolvers accept many spellings of one destination: `localhost.`
/// (the trailing dot of a fully qualified name), `0x7f000001`, `127.1`,
/// `0177.0.0.1` (inet_aton's hex, octal and 1-to-4-part forms),
/// `[::ffff:127.0.0.1]` (IPv4-mapped IPv6). A check that compared the
/// text as sent would see a different host than the one connected to, so
/// a request's host is parsed once, into this, and everything after —
/// policy, the host-address check, the connect-to mapping, the
/// connection itself — sees this form only:
///
/// - names lower-cased, without the trailing dot; names with an empty
///   label (`localhost..`, `.a`) or a character no host name has are
///   refused;
/// - IPv4 in any inet_aton spelling as a dotted quad; a name whose last
///   label is a number is an address or refused (as URL parsers do);
/// - IPv6 compressed and in brackets, IPv4-mapped and IPv4-compatible
///   IPv6 as the IPv4 dotted quad.
///
/// ```
/// use moat_policy::CanonicalHost;
///
/// let h = CanonicalHost::parse("0x7F000001")?;
/// assert_eq!(h.as_str(), "127.0.0.1");
/// assert_eq!(CanonicalHost::parse("[::ffff:7f00:1]")?, h);
/// assert_eq!(CanonicalHost::parse("LocalHost.")?.as_str(), "localhost");
/// assert!(CanonicalHost::parse("localhost..").is_err());
/// # Ok::<(), moat_policy::PolicyError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalHost {
    /// As in a URI: the name, the dotted quad, or `[ipv6]`.
    text: String,
    ip: Option<IpAddr>,
}

impl CanonicalHost {
    /// Parses a host as a request names it (no port; IPv6 in brackets or
    /// bare).
    pub fn parse(host: &str) -> Result<Self, PolicyError> {
        let err = |reason: &str| PolicyError::InvalidRequestHost {
            host: host.to_owned(),
            reason: reason.to_owned(),
        };
        if host.is_empty() {
            return Err(err("the host is empty"));
        }
        let bracketed = host.strip_prefix('[').map(|h| h.strip_suffix(']'));
        let v6 = match bracketed {
            Some(Some(inner)) => Some(inner),
            Some(None) => return Err(err("an IPv6 address in brackets is missing its ]")),
            None if host.contains(':') => Some(host),
            None => None,
        };
        if let Some(v6) = v6 {
            let addr: Ipv6Addr = v6
                .parse()
                .map_err(|_| err("expected an IPv6 address, such as [::1]"))?;
            return Ok(Self::from_ip(IpAddr::V6(addr)));
        }
        let lowered = host.to_ascii_lowercase();
        let name = lowered.strip_suffix('.').unwrap_or(&lowered);
        if name.is_empty() || name.split('.').any(str::is_empty) {
            return Err(err(
                "empty label (two dots in a row, a leading dot or only a dot); write the host name without them",
            ));
        }
        if name.len() > MAX_HOST_LEN {
            return Err(err("host names are at most 253 characters"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.'))
        {
            return Err(err(&format!(
                "invalid character {c:?}; host names use letters, digits, '-' and '.'"
            )));
        }
        let last = name.rsplit('.').next().unwrap_or(name);
        if is_number(last) {
            return match parse_ipv4(name) {
                Some(v4) => Ok(Self::from_ip(IpAddr::V4(v4))),
                None => Err(err(
                    "it ends in a number but is not an IPv4 address (each part at most 255, in decimal, 0x hex or 0 octal)",
                )),
            };
        }
        Ok(Self {
            text: name.to_owned(),
            ip: None,
        })
    }

    /// The host of an IP address: IPv4-mapped and IPv4-compatible IPv6
    /// as IPv4.
    pub fn from_ip(ip: IpAddr) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                // `::a.b.c.d`, not `::` or `::1`, which are IPv6's own.
                None if v6.segments()[..6] == [0; 6] && v6.segments()[6] != 0 => {
                    let [.., a, b, c, d] = v6.octets();
                    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
                }
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        let text = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        };
        Self { text, ip: Some(ip) }
    }

    /// As in a URI: `api.github.com`, `127.0.0.1`, `[::1]`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Without IPv6's brackets, as a resolver or TLS server name wants.
    pub fn bare(&self) -> &str {
        self.text
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.text)
    }

    /// The address, for an IP host.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// `localhost` or a name under it, which resolvers answer with
    /// loopback without asking DNS (RFC 6761).
    pub fn is_localhost(&self) -> bool {
        self.ip.is_none() && (self.text == "localhost" || self.text.ends_with(".localhost"))
    }
}

impl fmt::Display for CanonicalHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for CanonicalHost {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Whether a label is a number as inet_aton reads one (decimal, `0x`
/// hex, `0` octal): then the name is meant as an address (WHATWG URL's
/// "ends in a number").
fn is_number(label: &str) -> bool {
    match label.strip_prefix("0x") {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// inet_aton: one to four parts, each decimal, `0x` hex or `0` octal; the
/// last part fills the bytes the others leave (`127.1` is 127.0.0.1).
fn parse_ipv4(name: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) = match part.strip_prefix("0x") {
            Some(hex) => (hex, 16),
            None if part.len() > 1 && part.starts_with('0') => (&part[1..], 8),
            None => (*part, 10),
        };
        let n = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        numbers.push(n);
    }
    let (last, first) = numbers.split_last()?;
    if first.iter().any(|n| *n > 255) {
        return None;
    }
    // The last part fills 4, 3, 2 or 1 bytes.
    let room: u32 = match first.len() {
        0 => 32,
        1 => 24,
        2 => 16,
        _ => 8,
    };
    if *last >= 1u64 << room {
        return None;
    }
    let mut value = *last;
    let mut shift = 24;
    for n in first {
        value |= n << shift;
        shift -= 8;
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

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
                Some(addr) if is_ipv6_literal(addr) => match CanonicalHost::parse(s) {
                    Ok(canonical) => Ok(Self {
                        kind: Kind::Exact(canonical.text),
                    }),
                    Err(_) => Err(err("expected an IPv6 address in brackets, such as [::1]")),
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
        validate_host_name(name).map_err(|reason| err(&reason.to_string()))?;
        let kind = if wildcard {
            Kind::Subdomains(name.to_owned())
        } else {
            // An address in any spelling is stored as requests are
            // compared: `0x7f000001` is 127.0.0.1.
            let canonical = CanonicalHost::parse(name).map_err(|e| match e {
                PolicyError::InvalidRequestHost { reason, .. } => err(&reason),
                other => other,
            })?;
            Kind::Exact(canonical.text)
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
    /// A host that is no valid host name ([`CanonicalHost::parse`])
    /// matches nothing.
    pub fn matches(&self, host: &str) -> bool {
        CanonicalHost::parse(strip_port(host)).is_ok_and(|h| self.matches_canonical(&h))
    }

    /// [`matches`](Self::matches) for a host already in canonical form.
    pub fn matches_canonical(&self, host: &CanonicalHost) -> bool {
        match &self.kind {
            Kind::Exact(name) => host.text == *name,
            // Addresses have no subdomains.
            Kind::Subdomains(_) if host.ip.is_some() => false,
            Kind::Subdomains(suffix) => {
                let (h, s) = (host.text.as_bytes(), suffix.as_bytes());
                // Needs at least one byte of subdomain plus the dot.
                h.len() > s.len() + 1 && h[h.len() - s.len() - 1] == b'.' && h.ends_with(s)
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

/// What is wrong with the name part of a host pattern.
#[derive(Debug, thiserror::Error)]
enum HostNameProblem {
    #[error("expected a domain after *., as in *.example.com")]
    Empty,
    #[error("non-ASCII host names must be written in their punycode form (xn--...)")]
    NotAscii,
    #[error("host names are at most {MAX_HOST_LEN} characters")]
    TooLong,
    #[error("empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("label {0:?} is longer than {MAX_LABEL_LEN} characters")]
    LongLabel(String),
    #[error("invalid character {0:?}; host names use letters, digits, '-' and '.'")]
    BadCharacter(char),
}

fn validate_host_name(name: &str) -> Result<(), HostNameProblem> {
    if name.is_empty() {
        return Err(HostNameProblem::Empty);
    }
    if !name.is_ascii() {
        return Err(HostNameProblem::NotAscii);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostNameProblem::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostNameProblem::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostNameProblem::LongLabel(label.to_owned()));
        }
        // Underscores are not valid in host names but appear in real ones
        // (e.g. some internal services); accepting them costs nothing.
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(HostNameProblem::BadCharacter(c));
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

    fn canon(s: &str) -> String {
        match CanonicalHost::parse(s) {
            Ok(h) => h.to_string(),
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn every_spelling_of_an_address_is_one_host() {
        for s in [
            "127.0.0.1",
            "127.0.0.1.",
            "0x7f000001",
            "0X7F000001",
            "2130706433",
            "127.1",
            "127.0.1",
            "0177.0.0.1",
            "0177.0.0.01",
            "0x7f.0.0.1",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "::ffff:7f00:1",
            "[::127.0.0.1]",
        ] {
            assert_eq!(canon(s), "127.0.0.1", "{s}");
        }
        for s in [
            "93.184.216.34",
            "0x5db8d822",
            "1572395042",
            "93.184.55330",
            "0135.0270.0330.042",
            "93.12113954",
        ] {
            assert_eq!(canon(s), "93.184.216.34", "{s}");
        }
        assert_eq!(canon("169.254.169.254."), "169.254.169.254");
        assert_eq!(canon("0"), "0.0.0.0");
        assert_eq!(canon("[0:0::1]"), "[::1]");
        assert_eq!(canon("[::]"), "[::]");
        assert_eq!(canon("[FE80::1]"), "[fe80::1]");
    }

    #[test]
    fn names_lose_case_and_the_trailing_dot_and_nothing_else() {
        assert_eq!(canon("LocalHost."), "localhost");
        assert_eq!(canon("API.github.com"), "api.github.com");
        assert_eq!(canon("1.2.3.com"), "1.2.3.com");
        assert_eq!(canon("0x.com"), "0x.com");
        assert_eq!(canon("0x1g"), "0x1g");
        assert!(CanonicalHost::parse("a.localhost.").is_ok_and(|h| h.is_localhost()));
        assert!(!CanonicalHost::parse("localhost.com").is_ok_and(|h| h.is_localhost()));
        for bad in [
            "",
            ".",
            "..",
            "localhost..",
            ".localhost",
            "a..b",
            "a b",
            "a/b",
            "a%2e",
            "[::1",
            "[zz]",
        ] {
            assert!(CanonicalHost::parse(bad).is_err(), "{bad:?}");
        }
        // Ends in a number, so an address, but not a valid one.
        for bad in [
            "256.0.0.1",
            "1.2.3.4.5",
            "1.2.3.256",
            "4294967296",
            "08.0.0.1",
            "example.123",
        ] {
            let e = CanonicalHost::parse(bad).map(|h| h.to_string());
            assert!(
                e.as_ref()
                    .is_err_and(|e| e.to_string().contains("ends in a number")),
                "{bad:?}: {e:?}"
            );
        }
        assert!(CanonicalHost::parse("localhost..")
            .is_err_and(|e| e.to_string().contains("empty label")));
    }

    #[test]
    fn address_patterns_match_every_spelling() {
        let pat = p("127.0.0.1");
        for s in [
            "0x7f000001",
            "127.1:8080",
            "[::ffff:127.0.0.1]:80",
            "127.0.0.1.",
        ] {
            assert!(pat.matches(s), "{s}");
        }
        assert_eq!(p("0x7f000001"), pat);
        assert_eq!(p("[::ffff:127.0.0.1]").to_string(), "127.0.0.1");
        assert!(!pat.matches("127.0.0.2"));
        assert!(!p("*.0.0.1").matches("127.0.0.1"));
        assert!(!pat.matches("localhost.."));
        assert!(reason("1.2.3.4.5").contains("ends in a number"));
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
