use std::fmt;
use std::str::FromStr;

use crate::host::strip_port;
use crate::rule::strip_query;
use crate::{Action, HostPattern, PolicyError, Rule};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRules {
    pub host: HostPattern,
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
        }
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
    pub fn host_decision(&self, host: &str) -> HostDecision {
        let mut matched = false;
        let mut may_deny = false;
        for entry in self.hosts.iter().filter(|e| e.host.matches(host)) {
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
    pub fn decide(&self, host: &str, method: &str, path: &str) -> Decision {
        let mut matched = false;
        for entry in self.hosts.iter().filter(|e| e.host.matches(host)) {
            matched = true;
            if entry.rules.is_empty() {
                return Decision::Allow;
            }
            if let Some(rule) = entry.rules.iter().find(|r| r.matches(method, path)) {
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
        match (matched, self.policy) {
            (_, Policy::Permissive) => Decision::Allow,
            (false, Policy::Strict) => Decision::Deny(DenyReason::HostNotAllowed {
                host: display_host(host),
            }),
            (true, Policy::Strict) => Decision::Deny(DenyReason::NoRuleMatched {
                host: display_host(host),
                method: method.to_owned(),
                path: strip_query(path).to_owned(),
            }),
        }
    }
}

/// The host as it should appear in a message: lower case, without port.
fn display_host(host: &str) -> String {
    strip_port(host).to_ascii_lowercase()
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
