//! A registered run's policy while it runs: what it started with, where
//! each entry came from, the `moat allow` / `moat deny` changes since (see
//! `moat_policy::LiveChange` for what wins), and the view `moat policy`
//! prints. A change lives in the daemon only: moat.yaml is never touched,
//! and the next run starts from moat.yaml again.

use chrono::{DateTime, Utc};
use moat_policy::{LiveAction, LiveChange, NetworkPolicy, Policy};
use serde::{Deserialize, Serialize};

use crate::protocol::RunSpec;

/// One entry of the policy in force, in the order entries are consulted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyEntry {
    /// Host pattern.
    pub host: String,
    /// `allow` (the whole host), `deny` (the whole host) or `rules`.
    pub action: String,
    /// The rules, as written (`allow GET /repos/**`).
    #[serde(default)]
    pub rules: Vec<String>,
    /// Where it came from: `moat.yaml`, `--allow-host`, `grant github`,
    /// `moat allow at 2026-12-07T23:40:00Z`.
    pub source: String,
}

/// A run's policy in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyView {
    /// Run id.
    pub run_id: String,
    /// What a host no entry speaks about gets.
    pub policy: Policy,
    /// Entries, in the order they are consulted.
    pub entries: Vec<PolicyEntry>,
    /// Changes made while the run runs.
    pub changes: usize,
}

/// One change, with when and by whom.
struct Change {
    change: LiveChange,
    at: DateTime<Utc>,
}

/// What the daemon keeps of a run's policy.
pub(crate) struct LivePolicy {
    base: NetworkPolicy,
    sources: Vec<PolicyEntry>,
    changes: Vec<Change>,
}

fn entry(host: String, rules: &[moat_policy::Rule], source: String) -> PolicyEntry {
    PolicyEntry {
        host,
        action: if rules.is_empty() { "allow" } else { "rules" }.to_owned(),
        rules: rules.iter().map(ToString::to_string).collect(),
        source,
    }
}

impl LivePolicy {
    /// The policy `run` registered with (`base`, as translated), and where
    /// its entries came from.
    pub(crate) fn new(run: &RunSpec, base: NetworkPolicy) -> Self {
        let mut sources: Vec<PolicyEntry> = run
            .rules
            .iter()
            .map(|r| entry(r.host.to_string(), &r.rules, "moat.yaml".into()))
            .collect();
        sources.extend(
            run.allow_hosts
                .iter()
                .map(|h| entry(h.to_string(), &[], "--allow-host".into())),
        );
        for host in &base.granted {
            let grants: Vec<&str> = run
                .injections
                .iter()
                .filter(|i| &i.host == host)
                .map(|i| i.grant.as_str())
                .collect();
            let source = match grants.first() {
                Some(grant) => format!("grant {grant}"),
                None => "grant (MCP server)".to_owned(),
            };
            sources.push(entry(host.to_string(), &[], source));
        }
        LivePolicy {
            base,
            sources,
            changes: Vec::new(),
        }
    }

    /// Records a change; returns the policy now in force.
    pub(crate) fn change(&mut self, change: LiveChange) -> NetworkPolicy {
        self.changes.push(Change {
            change,
            at: Utc::now(),
        });
        self.policy()
    }

    /// What the run started with, with every change applied in order.
    pub(crate) fn policy(&self) -> NetworkPolicy {
        let mut policy = self.base.clone();
        for c in &self.changes {
            policy.apply(&c.change);
        }
        policy
    }

    /// The view `moat policy` prints.
    pub(crate) fn view(&self, run_id: &str) -> PolicyView {
        let when = |c: &Change| {
            format!(
                "moat {} at {}",
                c.change.action,
                c.at.format("%Y-%m-%dT%H:%M:%SZ")
            )
        };
        let in_force = self.policy();
        let mut entries: Vec<PolicyEntry> = Vec::new();
        for pattern in &in_force.denied {
            let latest = self.changes.iter().rev().find(|c| {
                c.change.action == LiveAction::Deny
                    && c.change.rules.is_empty()
                    && &c.change.host == pattern
            });
            entries.push(PolicyEntry {
                host: pattern.to_string(),
                action: "deny".into(),
                rules: Vec::new(),
                source: latest.map(when).unwrap_or_else(|| "moat deny".into()),
            });
        }
        for c in self.changes.iter().rev() {
            if c.change.action == LiveAction::Deny && c.change.rules.is_empty() {
                continue;
            }
            entries.push(entry(c.change.host.to_string(), &c.change.rules, when(c)));
        }
        entries.extend(self.sources.iter().cloned());
        PolicyView {
            run_id: run_id.to_owned(),
            policy: in_force.policy,
            entries,
            changes: self.changes.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        serde_json::from_str(
            r#"{"run_id":"run_0123456789ab","policy":"strict",
                "rules":[{"host":"api.github.com","rules":["allow GET /**"]}],
                "allow_hosts":["pypi.org"],
                "injections":[{"host":"api.anthropic.com","name":"x-api-key","value":"k","grant":"claude"}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn change(action: LiveAction, host: &str, rules: &[&str]) -> LiveChange {
        let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        LiveChange::parse(action, host, &rules).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_view_names_where_each_entry_came_from_newest_change_first() {
        let run = spec();
        let base = crate::translate::registration(&run)
            .unwrap_or_else(|e| panic!("{e}"))
            .policy;
        let mut live = LivePolicy::new(&run, base);
        let sources = |live: &LivePolicy| -> Vec<(String, String, String)> {
            live.view("r")
                .entries
                .into_iter()
                .map(|e| {
                    (
                        e.host,
                        e.action,
                        e.source.split(" at ").next().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        };
        let s = |h: &str, a: &str, src: &str| (h.to_owned(), a.to_owned(), src.to_owned());
        assert_eq!(
            sources(&live),
            [
                s("api.github.com", "rules", "moat.yaml"),
                s("pypi.org", "allow", "--allow-host"),
                s("api.anthropic.com", "allow", "grant claude"),
            ]
        );
        let p = live.change(change(LiveAction::Allow, "api.example.com", &[]));
        assert!(p.decide("api.example.com", "GET", "/").is_allowed());
        let p = live.change(change(LiveAction::Deny, "api.anthropic.com", &[]));
        assert!(!p.decide("api.anthropic.com", "GET", "/").is_allowed());
        live.change(change(LiveAction::Deny, "api.github.com", &["POST /**"]));
        let view = live.view("r");
        assert_eq!(view.changes, 3);
        assert_eq!(view.policy, Policy::Strict);
        assert_eq!(
            sources(&live)[..3],
            [
                s("api.anthropic.com", "deny", "moat deny"),
                s("api.github.com", "rules", "moat deny"),
                s("api.example.com", "allow", "moat allow"),
            ]
        );
        assert!(view.entries[0].source.ends_with('Z'));
        // Lifting the deny removes it from the view.
        live.change(change(LiveAction::Allow, "api.anthropic.com", &[]));
        assert_eq!(live.view("r").entries[0].host, "api.anthropic.com");
        assert_eq!(live.view("r").entries[0].action, "allow");
    }
}
