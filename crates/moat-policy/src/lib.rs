//! Moat's network policy: the grammar of host patterns and request rules,
//! and the allow/deny decision the proxy makes for every connection and
//! request.
//!
//! - [`HostPattern`]: `api.github.com` or `*.example.com` (any depth of
//!   subdomain, never the apex itself).
//! - [`Rule`]: `allow GET /repos/*/issues`, `deny * /admin/**`.
//! - [`NetworkPolicy`]: a [`Policy`] default plus ordered [`HostRules`];
//!   [`NetworkPolicy::host_decision`] answers at `CONNECT` time,
//!   [`NetworkPolicy::decide`] per request.
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
mod policy;
mod rule;

pub use crate::error::PolicyError;
pub use crate::host::HostPattern;
pub use crate::policy::{Decision, DenyReason, HostDecision, HostRules, NetworkPolicy, Policy};
pub use crate::rule::{canonical_path, Action, MethodPattern, PathPattern, Rule};
