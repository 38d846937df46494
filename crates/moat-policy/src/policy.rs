use std::fmt;
use std::str::FromStr;

use crate::host::strip_port;
use crate::rule::{canonical_path, method_params, strip_query};
use crate::{Action, CanonicalHost, HostPattern, PolicyError, Rule};

/// What happens to traffic no entry or rule speaks about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Every host is reachable; rules only carve out exceptions.
    #[default]
    Permissive,
    /// Only listed (and granted) hosts are reachable.
    Strict,
}

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permissive" => Ok(Self::Permissive),
            "strict" => Ok(Self::Strict),
            _ => Err(PolicyError::InvalidPolicy {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Permissive => "permissive",
            Self::Strict => "strict",
        })
    }
}

/// One entry of `network.rules`: a host pattern and its ordered rules.
/// No rules means the whole host is allowed.
///
/// Serialised as `{"host": "api.github.com", "rules": ["deny * /admin/**"]}`,
/// each value in its written form and parsed again when read, so only an
/// entry that parses crosses (to the proxy daemon).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRules {
    pub host: HostPattern,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl HostRules {
    /// An entry allowing the whole host.
    pub fn allow_all(host: HostPattern) -> Self {
        Self {
            host,
            rules: Vec::new(),
        }
    }
}

/// The complete policy for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub policy: Policy,
    pub hosts: Vec<HostRules>,
    /// Hosts allowed because a credential is granted for them
    /// ([`NetworkPolicy::grant_host`]): consulted only for hosts no entry
    /// of `hosts` matches, so the user's rules for a host always win.
    pub granted: Vec<HostPattern>,
    /// Hosts denied outright for the rest of the run (`moat deny RUN
    /// HOST`): consulted before everything else, so they win over
    /// moat.yaml, grants, `--allow-host` and earlier `moat allow`s.
    pub denied: Vec<HostPattern>,
}

/// The answer at `CONNECT` time, before any TLS work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDecision {
    /// Every request to this host would be allowed: no per-request checks
    /// are needed.
    Allowed,
    /// No request to this host can be allowed.
    Denied(DenyReason),
    /// Some requests may be denied: intercept and call
    /// [`NetworkPolicy::decide`] per request.
    NeedsRequestCheck,
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(DenyReason),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow)
    }
}

/// Why a request was blocked; [`DenyReason::message`] is what the agent
/// sees in the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// Strict policy and no entry matches the host.
    HostNotAllowed { host: String },
    /// A `deny` rule matched.
    RuleDenied {
        host: String,
        method: String,
        /// The request path without its query string, which may carry
        /// secrets and does not take part in matching anyway.
        path: String,
        /// The rule, as written (whitespace normalised).
        rule: String,
    },
    /// Strict policy: the host is listed with rules, but none of them
    /// allowed this request.
    NoRuleMatched {
        host: String,
        method: String,
        path: String,
    },
    /// The host has rules and the path is spelled in a way servers read
    /// differently (see [`canonical_path`](crate::canonical_path)).
    AmbiguousPath {
        host: String,
        method: String,
        path: String,
    },
    /// The request's host names no destination unambiguously (see
    /// [`CanonicalHost`]).
    InvalidHost { host: String, reason: String },
    /// `moat deny RUN PATTERN` denied the host for the rest of the run.
    HostDenied { host: String, pattern: String },
}

impl DenyReason {
    /// A message for the agent (and the human behind it) that says what was
    /// blocked and where to change it.
    pub fn message(&self) -> String {
        // Method and path come from the request; control characters in them
        // must not be able to add lines to the message.
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        };
        match self {
            Self::HostNotAllowed { host } => format!(
                "Moat: request blocked by network policy.\n\
                 Host {host:?} is not in the allow list.\n\
                 Add it to network.rules in moat.yaml or use policy: permissive."
            ),
            Self::RuleDenied {
                host,
                method,
                path,
                rule,
            } => format!(
                "Moat: request blocked by network policy.\n\
                 {} {} on host {host:?} is denied by rule {rule:?}.\n\
                 Edit the rules for {host:?} in network.rules in moat.yaml to allow it.",
                clean(method),
                clean(path),
            ),
            Self::AmbiguousPath { host, method, path } => format!(
                "Moat: request blocked by network policy.\n\
                 {} {} on host {host:?} has an ambiguous path (a malformed or double escape, a control character, a ';' parameter, or a segment ending in a dot or space), and the host has rules.\n\
                 Request the path in its plain form (e.g. /a/b, not /a%2562, /a;x or /a.).",
                clean(method),
                clean(path),
            ),
            Self::InvalidHost { host, reason } => format!(
                "Moat: request blocked by network policy.\n\
                 Host {:?} is not a valid host name: {reason}.\n\
                 Write the host plainly (e.g. api.github.com or 93.184.216.34).",
                clean(host),
            ),
            Self::HostDenied { host, pattern } => format!(
                "Moat: request blocked by network policy.\n\
                 Host {host:?} was denied for this run with: moat deny {pattern}.\n\
                 Allow it again with moat allow, or in network.rules in moat.yaml for the next run."
            ),
            Self::NoRuleMatched { host, method, path } => format!(
                "Moat: request blocked by network policy.\n\
                 {} {} on host {host:?} matches no allow rule, and the policy is strict.\n\
                 Add an allow rule for it to network.rules in moat.yaml or use policy: permissive.",
                clean(method),
                clean(path),
            ),
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl NetworkPolicy {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            hosts: Vec::new(),
            granted: Vec::new(),
            denied: Vec::new(),
        }
    }

    /// The `moat deny` pattern denying `host` outright, if any.
    fn denial(&self, host: &CanonicalHost) -> Option<DenyReason> {
        self.denied
            .iter()
            .find(|d| d.matches_canonical(host))
            .map(|d| DenyReason::HostDenied {
                host: display_host(host),
                pattern: d.to_string(),
            })
    }

    /// Allows a host because the run holds a credential for it. Unlike
    /// [`allow_host`](Self::allow_host), this never overrides what the
    /// user wrote: when an entry of `hosts` matches the host, its rules and
    /// the policy default decide alone (so `api.github.com: [allow GET
    /// /user]` under strict still denies `POST /user` with `--grant
    /// github`).
    pub fn grant_host(&mut self, host: HostPattern) {
        if !self.granted.contains(&host) {
            self.granted.push(host);
        }
    }

    /// [`decide`](Self::decide) for a request that may also name other
    /// methods in method-override headers (`X-HTTP-Method-Override`,
    /// `X-HTTP-Method`, `X-Method-Override`); see
    /// [`decide_request_for`](Self::decide_request_for).
    pub fn decide_request(
        &self,
        host: &str,
        method: &str,
        overrides: &[&str],
        path: &str,
    ) -> Decision {
        match parse_host(host) {
            Ok(host) => self.decide_request_for(&host, method, overrides, path, &[]),
            Err(reason) => Decision::Deny(reason),
        }
    }

    /// The decision for a request that may claim other methods and
    /// paths than its own: method-override headers (`overrides`), a
    /// `_method` query parameter, and paths in `X-Original-URL` or
    /// `X-Rewrite-URL` (`claimed_paths`). Servers honouring them run what
    /// is claimed, so every method on every path, claimed or not, must be
    /// allowed; the first denial wins.
    ///
    /// Checking what is claimed, rather than refusing every request that
    /// claims anything, keeps clients working that tunnel `PATCH` or
    /// `DELETE` through `POST` this way (some Google and Microsoft APIs
    /// ask for it), while the rules decide exactly as they would had the
    /// request said it plainly.
    pub fn decide_request_for(
        &self,
        host: &CanonicalHost,
        method: &str,
        overrides: &[&str],
        path: &str,
        claimed_paths: &[&str],
    ) -> Decision {
        let claimed: Vec<String> = claimed_paths.iter().map(|p| claimed_path(p)).collect();
        let paths: Vec<&str> = std::iter::once(path)
            .chain(claimed.iter().map(String::as_str))
            .collect();
        let params: Vec<String> = paths.iter().flat_map(|p| method_params(p)).collect();
        let methods: Vec<&str> = std::iter::once(method)
            .chain(overrides.iter().copied())
            .chain(params.iter().map(String::as_str))
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        for path in &paths {
            for method in &methods {
                let decision = self.decide_for(host, method, path);
                if !decision.is_allowed() {
                    return decision;
                }
            }
        }
        Decision::Allow
    }

    /// Allows a whole host (granted hosts, `--allow-host`).
    ///
    /// The entry goes last, so rules the user wrote for the same host are
    /// still consulted first; it only changes what happens when none of
    /// them matches.
    pub fn allow_host(&mut self, host: HostPattern) {
        let already = self
            .hosts
            .iter()
            .any(|entry| entry.host == host && entry.rules.is_empty());
        if !already {
            self.hosts.push(HostRules::allow_all(host));
        }
    }

    /// The decision for a `CONNECT` to `host`, before any request is seen.
    ///
    /// `Allowed` is only returned when [`decide`](Self::decide) would allow
    /// every request to the host, and `Denied` only when it would deny
    /// every one, so a proxy may act on it without intercepting.
    /// A host that is not a valid host name is denied.
    pub fn host_decision(&self, host: &str) -> HostDecision {
        match parse_host(host) {
            Ok(host) => self.host_decision_for(&host),
            Err(reason) => HostDecision::Denied(reason),
        }
    }

    /// [`host_decision`](Self::host_decision) for a host already in
    /// canonical form.
    pub fn host_decision_for(&self, host: &CanonicalHost) -> HostDecision {
        if let Some(reason) = self.denial(host) {
            return HostDecision::Denied(reason);
        }
        let mut matched = false;
        let mut may_deny = false;
        for entry in self.hosts.iter().filter(|e| e.host.matches_canonical(host)) {
            matched = true;
            if entry.rules.is_empty() {
                // This entry allows everything that reaches it.
                return if may_deny {
                    HostDecision::NeedsRequestCheck
                } else {
                    HostDecision::Allowed
                };
            }
            may_deny |= entry.rules.iter().any(|r| r.action == Action::Deny);
        }
        if !matched && self.granted.iter().any(|g| g.matches_canonical(host)) {
            return HostDecision::Allowed;
        }
        match (matched, self.policy) {
            (false, Policy::Strict) => HostDecision::Denied(DenyReason::HostNotAllowed {
                host: display_host(host),
            }),
            (false, Policy::Permissive) => HostDecision::Allowed,
            // Requests no rule matches fall to the default deny.
            (true, Policy::Strict) => HostDecision::NeedsRequestCheck,
            (true, Policy::Permissive) if may_deny => HostDecision::NeedsRequestCheck,
            (true, Policy::Permissive) => HostDecision::Allowed,
        }
    }

    /// The decision for one request.
    ///
    /// Entries matching `host` are tried in order; an entry without rules
    /// allows, an entry with rules decides by its first rule matching
    /// `method` and `path`, and an entry whose rules all miss passes the
    /// request on to the next matching entry. When nothing decides, the
    /// policy default applies.
    ///
    /// The path is matched in its canonical form
    /// ([`canonical_path`](crate::canonical_path)); on a host whose entries
    /// have rules, an ambiguous path is denied whatever the rules say.
    /// Granted hosts ([`grant_host`](Self::grant_host)) are allowed only
    /// when no entry matches the host.
    ///
    /// A host that is not a valid host name is denied.
    pub fn decide(&self, host: &str, method: &str, path: &str) -> Decision {
        match parse_host(host) {
            Ok(host) => self.decide_for(&host, method, path),
            Err(reason) => Decision::Deny(reason),
        }
    }

    /// [`decide`](Self::decide) for a host already in canonical form.
    pub fn decide_for(&self, host: &CanonicalHost, method: &str, path: &str) -> Decision {
        if let Some(reason) = self.denial(host) {
            return Decision::Deny(reason);
        }
        let mut matched = false;
        let mut segments: Option<Option<Vec<String>>> = None;
        for entry in self.hosts.iter().filter(|e| e.host.matches_canonical(host)) {
            matched = true;
            if entry.rules.is_empty() {
                return Decision::Allow;
            }
            let Some(segments) = segments.get_or_insert_with(|| canonical_path(path)) else {
                // No rule can be trusted to see what the server will: a
                // deny rule for the method denies, nothing allows.
                if entry
                    .rules
                    .iter()
                    .any(|r| r.action == Action::Deny && r.method.matches(method))
                {
                    return Decision::Deny(ambiguous(host, method, path));
                }
                continue;
            };
            if let Some(rule) = entry
                .rules
                .iter()
                .find(|r| r.matches_canonical(method, segments))
            {
                return match rule.action {
                    Action::Allow => Decision::Allow,
                    Action::Deny => Decision::Deny(DenyReason::RuleDenied {
                        host: display_host(host),
                        method: method.to_owned(),
                        path: strip_query(path).to_owned(),
                        rule: rule.to_string(),
                    }),
                };
            }
        }
        if !matched && self.granted.iter().any(|g| g.matches_canonical(host)) {
            return Decision::Allow;
        }
        match (matched, self.policy) {
            (_, Policy::Permissive) => Decision::Allow,
            (false, Policy::Strict) => Decision::Deny(DenyReason::HostNotAllowed {
                host: display_host(host),
            }),
            (true, Policy::Strict) if matches!(segments, Some(None)) => {
                Decision::Deny(ambiguous(host, method, path))
            }
            (true, Policy::Strict) => Decision::Deny(DenyReason::NoRuleMatched {
                host: display_host(host),
                method: method.to_owned(),
                path: strip_query(path).to_owned(),
            }),
        }
    }
}

fn ambiguous(host: &CanonicalHost, method: &str, path: &str) -> DenyReason {
    DenyReason::AmbiguousPath {
        host: display_host(host),
        method: method.to_owned(),
        path: strip_query(path).to_owned(),
    }
}

/// The host as it should appear in a message: canonical, without port.
fn display_host(host: &CanonicalHost) -> String {
    host.as_str().to_owned()
}

/// A host as a request carries it (a `:port` ignored, so a port can never
/// slip past a host rule), canonical, or the denial of a host that is
/// none.
fn parse_host(host: &str) -> Result<CanonicalHost, DenyReason> {
    CanonicalHost::parse(strip_port(host)).map_err(|e| match e {
        PolicyError::InvalidRequestHost { host, reason } => {
            DenyReason::InvalidHost { host, reason }
        }
        other => DenyReason::InvalidHost {
            host: host.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// The path an `X-Original-URL` or `X-Rewrite-URL` names: its path part
/// when it is a whole URL, rooted otherwise.
fn claimed_path(value: &str) -> String {
    let value = value.trim();
    if let Some((_, rest)) = value.split_once("://") {
        return match rest.find('/') {
            Some(i) => rest.get(i..).unwrap_or("/").to_owned(),
            None => "/".to_owned(),
        };
    }
    if value.starts_with('/') {
        value.to_owned()
    } else {
        format!("/{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> HostPattern {
        match HostPattern::parse(s) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        }
    }

    fn entry(h: &str, rules: &[&str]) -> HostRules {
        HostRules {
            host: host(h),
            rules: rules
                .iter()
                .map(|r| match Rule::parse(r) {
                    Ok(r) => r,
                    Err(e) => panic!("{e}"),
                })
                .collect(),
        }
    }

    fn policy(p: Policy, entries: Vec<HostRules>) -> NetworkPolicy {
        NetworkPolicy {
            policy: p,
            hosts: entries,
            granted: Vec::new(),
            denied: Vec::new(),
        }
    }

    #[test]
    fn policy_from_str_and_default() {
        assert_eq!(Policy::default(), Policy::Permissive);
        assert_eq!("strict".parse::<Policy>(), Ok(Policy::Strict));
        assert_eq!("permissive".parse::<Policy>(), Ok(Policy::Permissive));
        assert_eq!(
            "strcit".parse::<Policy>().map_err(|e| e.to_string()),
            Err("invalid network policy \"strcit\": expected \"permissive\" or \"strict\"".into())
        );
        assert_eq!(Policy::Strict.to_string(), "strict");
    }

    #[test]
    fn permissive_without_entries_allows_everything() {
        let p = NetworkPolicy::default();
        assert_eq!(p.host_decision("example.com"), HostDecision::Allowed);
        assert_eq!(p.decide("example.com", "POST", "/x"), Decision::Allow);
    }

    #[test]
    fn strict_without_matching_entry_denies_the_host() {
        let p = policy(Policy::Strict, vec![entry("api.github.com", &[])]);
        let reason = DenyReason::HostNotAllowed {
            host: "api.example.com".into(),
        };
        assert_eq!(
            p.host_decision("api.example.com"),
            HostDecision::Denied(reason.clone())
        );
        assert_eq!(
            p.decide("api.example.com", "GET", "/"),
            Decision::Deny(reason.clone())
        );
        assert_eq!(
            reason.message(),
            "Moat: request blocked by network policy.\n\
             Host \"api.example.com\" is not in the allow list.\n\
             Add it to network.rules in moat.yaml or use policy: permissive."
        );
    }

    #[test]
    fn strict_with_an_entry_without_rules_allows_the_host() {
        let p = policy(Policy::Strict, vec![entry("*.github.com", &[])]);
        assert_eq!(p.host_decision("api.github.com"), HostDecision::Allowed);
        assert_eq!(p.decide("api.github.com", "DELETE", "/x"), Decision::Allow);
        assert!(!p.decide("github.com", "GET", "/").is_allowed());
    }

    #[test]
    fn first_matching_rule_wins() {
        let p = policy(
            Policy::Permissive,
            vec![entry(
                "api.github.com",
                &["allow GET /repos/moat/**", "deny * /repos/**"],
            )],
        );
        assert_eq!(
            p.decide("api.github.com", "GET", "/repos/moat/x"),
            Decision::Allow
        );
        assert_eq!(
            p.decide("api.github.com", "GET", "/repos/other/x?token=secret"),
            Decision::Deny(DenyReason::RuleDenied {
                host: "api.github.com".into(),
                method: "GET".into(),
                path: "/repos/other/x".into(),
                rule: "deny * /repos/**".into(),
            })
        );
        // No rule matches: permissive default.
        assert_eq!(p.decide("api.github.com", "GET", "/user"), Decision::Allow);
        assert_eq!(
            p.host_decision("api.github.com"),
            HostDecision::NeedsRequestCheck
        );
        assert_eq!(p.host_decision("example.com"), HostDecision::Allowed);
    }

    #[test]
    fn rule_denied_message() {
        let p = policy(
            Policy::Permissive,
            vec![entry("api.github.com", &["deny DELETE /**"])],
        );
        let Decision::Deny(reason) = p.decide("api.github.com", "DELETE", "/repos/a/b") else {
            panic!("expected a denial");
        };
        assert_eq!(
            reason.message(),
            "Moat: request blocked by network policy.\n\
             DELETE /repos/a/b on host \"api.github.com\" is denied by rule \"deny DELETE /**\".\n\
             Edit the rules for \"api.github.com\" in network.rules in moat.yaml to allow it."
        );
        assert_eq!(reason.to_string(), reason.message());
    }

    #[test]
    fn strict_with_rules_denies_what_no_rule_allows() {
        let p = policy(
            Policy::Strict,
            vec![entry("api.github.com", &["allow GET /repos/**"])],
        );
        assert_eq!(
            p.decide("api.github.com", "GET", "/repos/x"),
            Decision::Allow
        );
        let d = p.decide("api.github.com", "POST", "/repos/x");
        assert_eq!(
            d,
            Decision::Deny(DenyReason::NoRuleMatched {
                host: "api.github.com".into(),
                method: "POST".into(),
                path: "/repos/x".into(),
            })
        );
        if let Decision::Deny(r) = d {
            assert_eq!(r.message().lines().count(), 3);
        }
        assert_eq!(
            p.host_decision("api.github.com"),
            HostDecision::NeedsRequestCheck
        );
    }

    #[test]
    fn entry_whose_rules_miss_passes_to_the_next_matching_entry() {
        let p = policy(
            Policy::Strict,
            vec![
                entry("api.github.com", &["deny DELETE /**"]),
                entry("*.github.com", &[]),
            ],
        );
        assert_eq!(p.decide("api.github.com", "GET", "/x"), Decision::Allow);
        assert!(!p.decide("api.github.com", "DELETE", "/x").is_allowed());
        assert_eq!(
            p.host_decision("api.github.com"),
            HostDecision::NeedsRequestCheck
        );
        assert_eq!(p.host_decision("uploads.github.com"), HostDecision::Allowed);
    }

    #[test]
    fn permissive_with_only_allow_rules_needs_no_request_check() {
        let p = policy(Policy::Permissive, vec![entry("a.com", &["allow GET /x"])]);
        assert_eq!(p.host_decision("a.com"), HostDecision::Allowed);
        assert_eq!(p.decide("a.com", "POST", "/y"), Decision::Allow);
    }

    #[test]
    fn allow_host_appends_after_user_rules_and_dedupes() {
        let mut p = policy(
            Policy::Strict,
            vec![entry("api.github.com", &["deny DELETE /**"])],
        );
        p.allow_host(host("api.github.com"));
        p.allow_host(host("api.github.com"));
        assert_eq!(p.hosts.len(), 2);
        assert!(!p.decide("api.github.com", "DELETE", "/x").is_allowed());
        assert!(p.decide("api.github.com", "GET", "/x").is_allowed());
        p.allow_host(host("example.com"));
        assert_eq!(p.host_decision("example.com"), HostDecision::Allowed);
    }

    #[test]
    fn port_on_the_host_does_not_bypass_rules() {
        let p = policy(
            Policy::Permissive,
            vec![entry("api.github.com", &["deny * /**"])],
        );
        assert!(!p.decide("api.github.com:443", "GET", "/").is_allowed());
        assert!(!p.decide("API.GITHUB.COM", "GET", "/").is_allowed());
        let strict = NetworkPolicy::new(Policy::Strict);
        assert_eq!(
            strict.decide("Example.com:443", "GET", "/"),
            Decision::Deny(DenyReason::HostNotAllowed {
                host: "example.com".into()
            })
        );
    }
}

#[cfg(test)]
mod bypass_tests {
    use super::*;

    fn policy(policy: Policy, hosts: Vec<HostRules>) -> NetworkPolicy {
        NetworkPolicy {
            policy,
            hosts,
            granted: Vec::new(),
            denied: Vec::new(),
        }
    }

    fn entry(h: &str, rules: &[&str]) -> HostRules {
        HostRules {
            host: HostPattern::parse(h).unwrap_or_else(|e| panic!("{e}")),
            rules: rules
                .iter()
                .map(|r| Rule::parse(r).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        }
    }

    /// Every spelling a server may take for `/admin/...` is denied by
    /// `deny * /admin/**`, whatever the policy default.
    #[test]
    fn encoded_paths_cannot_dodge_a_deny_rule() {
        let mut p = NetworkPolicy::new(Policy::Permissive);
        p.hosts
            .push(entry("api.example.com", &["deny * /admin/**"]));
        for path in [
            "/admin",
            "/admin/x",
            "/admin%2fx",
            "/admin%2Fx",
            "/admin;x/y",
            "/admin;/y",
            "/admin%5cx",
            "/admin\\x",
            "/%61dmin/x",
            "/%2561dmin/x",
            "//admin/x",
            "/admin%00/x",
            "/admin%00",
            "/x/..;/admin/y",
            "/x/%2e%2e/admin",
            "/x%2f..%2fadmin",
            "/.%2fadmin",
            "/admin%zz",
            "/admin%",
            "/admin%2",
            "/admin%3b/x",
            "/admin%09",
            "/%c0%afadmin",
        ] {
            assert!(
                !p.decide("api.example.com", "GET", path).is_allowed(),
                "{path:?} was allowed"
            );
        }
        // Ordinary paths on the same host still pass.
        for path in [
            "/",
            "/administrator",
            "/public/admin",
            "/caf%C3%A9",
            "/a%20b",
            "/x?y=/admin/",
        ] {
            assert!(
                p.decide("api.example.com", "GET", path).is_allowed(),
                "{path:?} was denied"
            );
        }
        // Hosts without rules do not care about the path's spelling.
        assert!(p
            .decide("other.example.com", "GET", "/admin%00")
            .is_allowed());
    }

    #[test]
    fn ambiguous_paths_get_their_own_message() {
        let mut p = NetworkPolicy::new(Policy::Permissive);
        p.hosts
            .push(entry("api.example.com", &["deny * /admin/**"]));
        let Decision::Deny(reason) = p.decide("api.example.com", "GET", "/a%00b") else {
            panic!("allowed");
        };
        let message = reason.message();
        assert_eq!(message.lines().count(), 3, "{message}");
        assert!(message.contains("ambiguous"), "{message}");
    }

    #[test]
    fn method_override_headers_are_checked_against_method_rules() {
        let mut p = NetworkPolicy::new(Policy::Permissive);
        p.hosts.push(entry("api.example.com", &["deny DELETE /**"]));
        assert!(p
            .decide_request("api.example.com", "POST", &["GET"], "/x")
            .is_allowed());
        for overrides in [&["DELETE"][..], &["delete"], &["GET", " DELETE "]] {
            assert!(
                !p.decide_request("api.example.com", "POST", overrides, "/x")
                    .is_allowed(),
                "{overrides:?}"
            );
        }
        assert!(!p
            .decide_request("api.example.com", "DELETE", &[], "/x")
            .is_allowed());
    }

    #[test]
    fn user_rules_take_precedence_over_a_grants_automatic_allow() {
        let mut p = NetworkPolicy::new(Policy::Strict);
        p.hosts.push(entry("api.github.com", &["allow GET /user"]));
        p.grant_host(HostPattern::parse("api.github.com").unwrap_or_else(|e| panic!("{e}")));
        p.grant_host(HostPattern::parse("uploads.github.com").unwrap_or_else(|e| panic!("{e}")));
        assert!(p.decide("api.github.com", "GET", "/user").is_allowed());
        assert!(!p.decide("api.github.com", "POST", "/user").is_allowed());
        assert!(!p.decide("api.github.com", "GET", "/repos").is_allowed());
        assert_eq!(
            p.host_decision("api.github.com"),
            HostDecision::NeedsRequestCheck
        );
        // A granted host the user wrote nothing about is allowed whole.
        assert!(p.decide("uploads.github.com", "POST", "/x").is_allowed());
        assert_eq!(p.host_decision("uploads.github.com"), HostDecision::Allowed);
        assert!(!p.decide("example.com", "GET", "/").is_allowed());
    }

    #[test]
    fn claimed_methods_and_paths_are_decided_too() {
        let p = policy(
            Policy::Permissive,
            vec![entry(
                "api.example.com",
                &["deny * /admin/**", "deny DELETE /**"],
            )],
        );
        let d = |m: &str, o: &[&str], path: &str, claimed: &[&str]| match CanonicalHost::parse(
            "api.example.com",
        ) {
            Ok(h) => p.decide_request_for(&h, m, o, path, claimed).is_allowed(),
            Err(e) => panic!("{e}"),
        };
        assert!(d("POST", &[], "/x", &[]));
        assert!(!d("POST", &[], "/x?_method=DELETE", &[]));
        assert!(!d("POST", &[], "/x?_method=delete", &[]));
        assert!(!d("POST", &["DELETE"], "/x", &[]));
        assert!(!d("GET", &[], "/public", &["/admin/x"]));
        assert!(!d(
            "GET",
            &[],
            "/public",
            &["https://api.example.com/admin/x?y"]
        ));
        assert!(!d("GET", &[], "/public", &["admin/x"]));
        assert!(d("GET", &[], "/public?_method=GET", &["/other"]));
    }

    #[test]
    fn hosts_are_compared_canonical() {
        let p = policy(
            Policy::Strict,
            vec![
                entry("93.184.216.34", &["deny * /admin/**"]),
                entry("localhost", &[]),
            ],
        );
        for h in [
            "0x5db8d822",
            "1572395042:443",
            "[::ffff:5db8:d822]",
            "93.184.216.34.",
        ] {
            assert!(!p.decide(h, "GET", "/admin/x").is_allowed(), "{h}");
            assert!(
                !p.decide(h, "GET", "/x").is_allowed(),
                "{h}: strict, no allow rule"
            );
        }
        assert!(p.decide("LOCALHOST.", "GET", "/").is_allowed());
        let Decision::Deny(reason) = p.decide("localhost..", "GET", "/") else {
            panic!("localhost.. allowed");
        };
        assert!(
            reason.message().contains("not a valid host name"),
            "{reason}"
        );
        assert!(matches!(
            p.host_decision("a..b"),
            HostDecision::Denied(DenyReason::InvalidHost { .. })
        ));
    }

    #[test]
    fn ipv6_literal_hosts_match() {
        let mut p = NetworkPolicy::new(Policy::Strict);
        p.hosts.push(entry("[::1]", &[]));
        p.hosts
            .push(entry("[2001:db8::1]", &["deny * /admin/**", "allow * /**"]));
        for host in ["::1", "[::1]", "[::1]:8080", "0:0:0:0:0:0:0:1", "[0::1]"] {
            assert!(p.decide(host, "GET", "/").is_allowed(), "{host}");
            assert_eq!(p.host_decision(host), HostDecision::Allowed, "{host}");
        }
        assert!(p.decide("2001:DB8:0::1", "GET", "/x").is_allowed());
        assert!(!p.decide("2001:db8::1", "GET", "/admin").is_allowed());
        assert!(!p.decide("::2", "GET", "/").is_allowed());
    }
}
