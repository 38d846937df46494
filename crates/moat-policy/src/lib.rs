//! Moat's network policy: the grammar of host patterns and request rules,
//! and the allow/deny decision the proxy makes for every connection and
//! request.
//!
//! - [`CanonicalHost`]: a request's host in the one form every check
//!   compares and the proxy dials (`localhost.`, `0x7f000001` and
//!   `[::ffff:127.0.0.1]` are `localhost`, `127.0.0.1`, `127.0.0.1`).
//! - [`HostPattern`]: `api.github.com` or `*.example.com` (any depth of
//!   subdomain, never the apex itself).
//! - [`Rule`]: `allow GET /repos/*/issues`, `deny * /admin/**`.
//! - [`McpServerName`]: `linear`, the `<name>` of the MCP relay's
//!   `/mcp/<name>` and of the grant `mcp:<name>`.
//! - [`NetworkPolicy`]: a [`Policy`] default plus ordered [`HostRules`];
//!   [`NetworkPolicy::host_decision`] answers at `CONNECT` time,
//!   [`NetworkPolicy::decide`] per request.
//! - [`LiveChange`]: a running run's `moat allow` / `moat deny`,
//!   [`NetworkPolicy::apply`]'d on top of what the run started with.
//!
//! ```
//! use moat_policy::{Decision, HostPattern, HostRules, NetworkPolicy, Policy, Rule};
//!
//! let mut policy = NetworkPolicy::new(Policy::Strict);
//! policy.hosts.push(HostRules {
//!     host: HostPattern::parse("api.github.com")?,
//!     rules: vec![Rule::parse("deny DELETE /**")?],
//! });
//! policy.allow_host(HostPattern::parse("api.github.com")?);
//!
//! assert_eq!(policy.decide("api.github.com", "GET", "/user"), Decision::Allow);
//! assert!(!policy.decide("api.github.com", "DELETE", "/repos/a/b").is_allowed());
//! assert!(!policy.decide("example.com", "GET", "/").is_allowed());
//! # Ok::<(), moat_policy::PolicyError>(())
//! ```
//!
//! This crate is pure: no I/O, no async, no configuration file format. It
//! must not know about YAML, credentials or sockets; `moat-config` turns
//! `moat.yaml` into these types and the proxy asks them for decisions.
//! Every parser returns a [`PolicyError`] instead of panicking, whatever the
//! input.

mod error;
mod host;
mod live;
mod mcp;
mod policy;
mod rule;

pub use crate::error::{PolicyError, RuleProblem};
pub use crate::host::{CanonicalHost, HostPattern};
pub use crate::live::{LiveAction, LiveChange, LiveChangeError};
pub use crate::mcp::McpServerName;
pub use crate::policy::{Decision, DenyReason, HostDecision, HostRules, NetworkPolicy, Policy};
pub use crate::rule::{canonical_path, Action, MethodPattern, PathPattern, Rule};

/// Policy values travel (to the proxy daemon) in their written form, so a
/// value that crosses is one that parses.
mod wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::{HostPattern, McpServerName, Policy, Rule};

    macro_rules! as_written {
        ($ty:ty, $parse:expr) => {
            impl Serialize for $ty {
                fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.collect_str(self)
                }
            }

            impl<'de> Deserialize<'de> for $ty {
                fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    let text = String::deserialize(d)?;
                    $parse(&text).map_err(serde::de::Error::custom)
                }
            }
        };
    }

    as_written!(HostPattern, HostPattern::parse);
    as_written!(Rule, Rule::parse);
    as_written!(McpServerName, McpServerName::parse);
    as_written!(Policy, |t: &str| t.parse::<Policy>().map_err(|_| format!(
        "invalid network policy {t:?}: use permissive or strict"
    )));

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::HostRules;

        #[test]
        fn values_cross_as_written_and_garbage_does_not() {
            let rule = Rule::parse("allow GET /repos/**").unwrap_or_else(|e| panic!("{e}"));
            let json = serde_json::to_string(&rule).unwrap_or_default();
            assert_eq!(json, "\"allow GET /repos/**\"");
            let back: Rule = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back.to_string(), rule.to_string());
            assert!(serde_json::from_str::<Rule>("\"permit GET /\"").is_err());
            assert!(serde_json::from_str::<HostPattern>("\"a b\"").is_err());
            let p: Policy = serde_json::from_str("\"strict\"").unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p, Policy::Strict);
            assert!(serde_json::from_str::<Policy>("\"lax\"").is_err());
        }

        #[test]
        fn host_rules_round_trip_and_tampered_entries_are_refused() {
            let entry = HostRules {
                host: HostPattern::parse("*.github.com").unwrap_or_else(|e| panic!("{e}")),
                rules: vec![
                    Rule::parse("deny DELETE /**").unwrap_or_else(|e| panic!("{e}")),
                    Rule::parse("allow GET /repos/*/issues").unwrap_or_else(|e| panic!("{e}")),
                ],
            };
            let json = serde_json::to_string(&entry).unwrap_or_default();
            assert_eq!(
                json,
                r#"{"host":"*.github.com","rules":["deny DELETE /**","allow GET /repos/*/issues"]}"#
            );
            let back: HostRules = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, entry);
            let bare: HostRules = serde_json::from_str(r#"{"host":"api.github.com"}"#)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(bare.rules.is_empty());

            let refused = |json: &str| match serde_json::from_str::<HostRules>(json) {
                Ok(h) => panic!("{json} was accepted as {h:?}"),
                Err(e) => e.to_string(),
            };
            // A rule that was never written by a parser: refused, not trusted.
            assert!(
                refused(r#"{"host":"api.github.com","rules":["allow GET /a/../admin"]}"#)
                    .contains("is not allowed")
            );
            assert!(refused(r#"{"host":"*","rules":[]}"#).contains("invalid host pattern"));
            assert!(refused(r#"{"host":"a.test","rules":[{"action":"allow"}]}"#)
                .contains("expected a string"));
            assert!(refused(r#"{"host":"a.test","extra":1}"#).contains("unknown field"));
        }
    }
}
