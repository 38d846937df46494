//! Changes to a running run's policy (`moat allow` / `moat deny`), and
//! the command a blocked request's message names.
//!
//! The newest change wins for what it speaks about:
//!
//! - `allow HOST`: the whole host is allowed (an earlier `deny HOST` of
//!   the same pattern is lifted), before any rule moat.yaml has for it.
//! - `allow HOST RULE…` / `deny HOST RULE…`: the rules are consulted
//!   before every earlier entry for the host; a request none of them
//!   matches falls through to the earlier ones (moat.yaml, grants,
//!   `--allow-host`) and then to the policy default.
//! - `deny HOST`: the host is denied outright for the rest of the run,
//!   whatever moat.yaml, a grant, `--allow-host` or an earlier
//!   `moat allow` said, until a `moat allow` of the same pattern.
//!
//! RULE is written as in moat.yaml's `network.rules` (`GET /repos/**`,
//! with or without the leading `allow`/`deny`, which must then agree with
//! the command) and parsed by [`Rule::parse`], never by a parser of its
//! own.

use crate::policy::DenyReason;
use crate::{Action, HostPattern, HostRules, NetworkPolicy, PolicyError, Rule};

/// What a live change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveAction {
    /// `moat allow`.
    Allow,
    /// `moat deny`.
    Deny,
}

impl LiveAction {
    /// The rule action of the same name.
    pub fn action(self) -> Action {
        match self {
            LiveAction::Allow => Action::Allow,
            LiveAction::Deny => Action::Deny,
        }
    }
}

impl std::fmt::Display for LiveAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.action().fmt(f)
    }
}

/// One `moat allow` or `moat deny`. Crosses to the daemon with every value
/// in its written form, parsed again when read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveChange {
    pub action: LiveAction,
    pub host: HostPattern,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A `moat allow`/`moat deny` argument that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveChangeError {
    /// HOST or a RULE does not parse.
    #[error(transparent)]
    Invalid(#[from] PolicyError),
    /// `moat allow HOST 'deny GET /x'`.
    #[error("rule {rule:?} says {said}, but this is moat {action}: write the rule without {said:?}, or use moat {said}")]
    Mismatch {
        rule: String,
        said: Action,
        action: LiveAction,
    },
}

impl LiveChange {
    /// Parses `HOST [RULE…]` as `moat allow`/`moat deny` take them.
    pub fn parse(
        action: LiveAction,
        host: &str,
        rules: &[String],
    ) -> Result<Self, LiveChangeError> {
        let host = HostPattern::parse(host.trim())?;
        let rules = rules
            .iter()
            .map(|text| {
                let first = text.split_whitespace().next().unwrap_or_default();
                let written =
                    first.eq_ignore_ascii_case("allow") || first.eq_ignore_ascii_case("deny");
                let rule = if written {
                    Rule::parse(text)?
                } else {
                    Rule::parse(&format!("{action} {text}"))?
                };
                if rule.action != action.action() {
                    return Err(LiveChangeError::Mismatch {
                        rule: text.clone(),
                        said: rule.action,
                        action,
                    });
                }
                Ok(rule)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LiveChange {
            action,
            host,
            rules,
        })
    }
}

impl NetworkPolicy {
    /// Applies a live change (see the module documentation for what wins).
    pub fn apply(&mut self, change: &LiveChange) {
        match (change.action, change.rules.is_empty()) {
            (LiveAction::Deny, true) => {
                if !self.denied.contains(&change.host) {
                    self.denied.push(change.host.clone());
                }
            }
            (LiveAction::Allow, true) => {
                self.denied.retain(|d| d != &change.host);
                self.hosts
                    .insert(0, HostRules::allow_all(change.host.clone()));
            }
            (action, false) => {
                if action == LiveAction::Allow {
                    self.denied.retain(|d| d != &change.host);
                }
                self.hosts.insert(
                    0,
                    HostRules {
                        host: change.host.clone(),
                        rules: change.rules.clone(),
                    },
                );
            }
        }
    }
}

impl DenyReason {
    /// The `moat allow` command that would let this request through in
    /// run `run` (its name or id), or `None` when no policy allows it (an
    /// ambiguous path, an invalid host). A `moat deny`'d pattern is lifted
    /// by allowing the same pattern.
    pub fn allow_command(&self, run: &str) -> Option<String> {
        let (host, rule) = match self {
            DenyReason::HostNotAllowed { host } => (host.as_str(), None),
            DenyReason::HostDenied { pattern, .. } => (pattern.as_str(), None),
            DenyReason::RuleDenied {
                host, method, path, ..
            }
            | DenyReason::NoRuleMatched { host, method, path } => {
                (host.as_str(), Some(format!("{method} {path}")))
            }
            DenyReason::AmbiguousPath { .. } | DenyReason::InvalidHost { .. } => return None,
        };
        // A rule only when it parses as one and needs no shell quoting
        // beyond single quotes; the host alone otherwise.
        let rule = rule.filter(|r| !r.contains('\'') && Rule::parse(&format!("allow {r}")).is_ok());
        Some(match rule {
            Some(rule) => format!("moat allow {run} {host} '{rule}'"),
            None => format!("moat allow {run} {host}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, HostDecision, Policy};

    fn change(action: LiveAction, host: &str, rules: &[&str]) -> LiveChange {
        let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        LiveChange::parse(action, host, &rules).unwrap_or_else(|e| panic!("{e}"))
    }

    fn yaml_policy() -> NetworkPolicy {
        let mut p = NetworkPolicy::new(Policy::Strict);
        p.hosts.push(HostRules {
            host: HostPattern::parse("api.github.com").unwrap_or_else(|e| panic!("{e}")),
            rules: vec![Rule::parse("allow GET /**").unwrap_or_else(|e| panic!("{e}"))],
        });
        p.grant_host(HostPattern::parse("granted.test").unwrap_or_else(|e| panic!("{e}")));
        p
    }

    #[test]
    fn rules_use_the_moat_yaml_grammar_with_or_without_the_action() {
        let c = change(
            LiveAction::Allow,
            "api.example.com",
            &["GET /v1/**", "allow POST /x"],
        );
        let written: Vec<String> = c.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(written, ["allow GET /v1/**", "allow POST /x"]);
        let bad = |host: &str, rule: &str| {
            LiveChange::parse(LiveAction::Allow, host, &[rule.to_string()])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(bad("api.example.com", "GET /a/../b").contains("invalid network rule"));
        assert!(bad("api.example.com", "deny GET /x").contains("says deny, but this is moat allow"));
        assert!(bad("api.example.com:443", "GET /").contains("ports are not supported"));
        assert!(bad("*", "GET /").contains("invalid host pattern"));
    }

    #[test]
    fn allow_opens_a_strict_host_and_deny_closes_it_again() {
        let mut p = yaml_policy();
        assert!(!p.decide("api.example.com", "GET", "/").is_allowed());
        p.apply(&change(LiveAction::Allow, "api.example.com", &[]));
        assert_eq!(p.host_decision("api.example.com"), HostDecision::Allowed);
        assert!(p.decide("api.example.com", "POST", "/x").is_allowed());
        p.apply(&change(LiveAction::Deny, "api.example.com", &[]));
        assert!(matches!(
            p.decide("api.example.com", "GET", "/"),
            Decision::Deny(DenyReason::HostDenied { .. })
        ));
        assert!(matches!(
            p.host_decision("api.example.com"),
            HostDecision::Denied(_)
        ));
        p.apply(&change(LiveAction::Allow, "api.example.com", &[]));
        assert!(p.decide("api.example.com", "GET", "/").is_allowed());
    }

    #[test]
    fn an_explicit_deny_wins_over_moat_yaml_grants_and_wildcards() {
        let mut p = yaml_policy();
        assert!(p.decide("api.github.com", "GET", "/user").is_allowed());
        assert!(p.decide("granted.test", "GET", "/").is_allowed());
        p.apply(&change(LiveAction::Deny, "api.github.com", &[]));
        p.apply(&change(LiveAction::Deny, "granted.test", &[]));
        assert!(!p.decide("api.github.com", "GET", "/user").is_allowed());
        assert!(!p.decide("granted.test", "GET", "/").is_allowed());
        p.apply(&change(LiveAction::Deny, "*.example.com", &[]));
        p.apply(&change(LiveAction::Allow, "a.example.com", &[]));
        // Lifting needs the same pattern: a wildcard deny still covers it.
        assert!(!p.decide("a.example.com", "GET", "/").is_allowed());
    }

    #[test]
    fn rules_go_first_and_the_rest_falls_through() {
        let mut p = yaml_policy();
        p.apply(&change(
            LiveAction::Deny,
            "api.github.com",
            &["GET /admin/**"],
        ));
        assert!(!p.decide("api.github.com", "GET", "/admin/x").is_allowed());
        assert!(p.decide("api.github.com", "GET", "/user").is_allowed());
        p.apply(&change(
            LiveAction::Allow,
            "api.github.com",
            &["POST /issues"],
        ));
        assert!(p.decide("api.github.com", "POST", "/issues").is_allowed());
        assert!(!p.decide("api.github.com", "POST", "/other").is_allowed());
    }

    #[test]
    fn the_allow_command_of_each_denial() {
        let mut p = yaml_policy();
        let cmd = |p: &NetworkPolicy, host: &str, method: &str, path: &str| match p
            .decide(host, method, path)
        {
            Decision::Deny(r) => r.allow_command("web-1"),
            Decision::Allow => panic!("allowed"),
        };
        assert_eq!(
            cmd(&p, "api.example.com", "GET", "/").as_deref(),
            Some("moat allow web-1 api.example.com")
        );
        assert_eq!(
            cmd(&p, "api.github.com", "POST", "/repos?x=1").as_deref(),
            Some("moat allow web-1 api.github.com 'POST /repos'")
        );
        assert_eq!(
            cmd(&p, "api.github.com", "POST", "/it's").as_deref(),
            Some("moat allow web-1 api.github.com")
        );
        assert_eq!(cmd(&p, "api.github.com", "POST", "/a;x"), None);
        p.apply(&change(LiveAction::Deny, "*.example.com", &[]));
        assert_eq!(
            cmd(&p, "a.example.com", "GET", "/").as_deref(),
            Some("moat allow web-1 *.example.com")
        );
    }

    #[test]
    fn a_change_crosses_as_written_and_garbage_does_not() {
        let c = change(LiveAction::Deny, "api.example.com", &["DELETE /**"]);
        let json = serde_json::to_string(&c).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"action":"deny","host":"api.example.com","rules":["deny DELETE /**"]}"#
        );
        let back: LiveChange = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, c);
        for bad in [
            r#"{"action":"maybe","host":"a.test"}"#,
            r#"{"action":"allow","host":"*"}"#,
            r#"{"action":"allow","host":"a.test","rules":["allow GET /a/../b"]}"#,
        ] {
            assert!(serde_json::from_str::<LiveChange>(bad).is_err(), "{bad}");
        }
    }
}
