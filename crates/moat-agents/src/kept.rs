//! An agent's own state file kept per workspace between runs (Claude
//! Code's `~/.claude.json`): each run starts from what the last one left,
//! with moat's staged keys on top, so the agent does not redo its first
//! start (migrations, ids: about 150 ms for Claude Code) every run.
//!
//! The file is the agent's, written inside the sandbox: moat reads it
//! with a size limit, keeps it only when it is a JSON object, and takes
//! out what it owns (the MCP servers, whose headers carry the run's
//! proxy token) before keeping it, so no secret stays behind.

use serde_json::{Map, Value};

/// A state file an agent keeps per workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptState {
    /// Relative to the agent's home (`.claude.json`).
    pub file: &'static str,
    /// Top-level keys moat stages wholesale: replaced, never merged, and
    /// removed before the file is kept.
    pub owned: &'static [&'static str],
}

/// The most moat reads of a kept file; a larger one is ignored.
pub const KEPT_STATE_LIMIT: usize = 1024 * 1024;

impl KeptState {
    /// `staged` on top of `kept` (what the last run left): objects are
    /// merged key by key with the staged value winning, owned keys are
    /// the staged ones alone. Anything but a JSON object of at most
    /// [`KEPT_STATE_LIMIT`] bytes in `kept` is ignored.
    pub fn merge(&self, kept: &[u8], staged: &Value) -> Value {
        let Some(Value::Object(mut base)) = parse_object(kept) else {
            return staged.clone();
        };
        let Value::Object(top) = staged else {
            return staged.clone();
        };
        for key in self.owned {
            base.remove(*key);
        }
        for (key, value) in top {
            merge_into(&mut base, key, value);
        }
        Value::Object(base)
    }

    /// What of the agent's file is kept: a JSON object without the owned
    /// keys; `None` when it is not one.
    pub fn scrub(&self, written: &[u8]) -> Option<Value> {
        let Value::Object(mut state) = parse_object(written)? else {
            return None;
        };
        for key in self.owned {
            state.remove(*key);
        }
        Some(Value::Object(state))
    }
}

fn parse_object(bytes: &[u8]) -> Option<Value> {
    if bytes.len() > KEPT_STATE_LIMIT {
        return None;
    }
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .filter(Value::is_object)
}

fn merge_into(base: &mut Map<String, Value>, key: &str, value: &Value) {
    match (base.get_mut(key), value) {
        (Some(Value::Object(existing)), Value::Object(incoming)) => {
            for (k, v) in incoming {
                merge_into(existing, k, v);
            }
        }
        _ => {
            base.insert(key.to_owned(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CLAUDE: KeptState = KeptState {
        file: ".claude.json",
        owned: &["mcpServers"],
    };

    #[test]
    fn staged_keys_win_and_the_agents_own_stay() {
        let kept = json!({
            "migrationVersion": 13,
            "hasCompletedOnboarding": false,
            "projects": {"/workspace": {"lastCost": 1.5, "hasTrustDialogAccepted": false}},
            "mcpServers": {"old": {"url": "http://stale"}},
        });
        let staged = json!({
            "hasCompletedOnboarding": true,
            "projects": {"/workspace": {"hasTrustDialogAccepted": true}},
            "mcpServers": {"new": {"url": "http://relay"}},
        });
        let merged = CLAUDE.merge(kept.to_string().as_bytes(), &staged);
        assert_eq!(
            merged,
            json!({
                "migrationVersion": 13,
                "hasCompletedOnboarding": true,
                "projects": {"/workspace": {"lastCost": 1.5, "hasTrustDialogAccepted": true}},
                "mcpServers": {"new": {"url": "http://relay"}},
            })
        );
    }

    #[test]
    fn garbage_is_ignored() {
        let staged = json!({"a": 1});
        for kept in [&b"not json"[..], b"[1,2]", b"\"s\"", b""] {
            assert_eq!(CLAUDE.merge(kept, &staged), staged);
            assert_eq!(CLAUDE.scrub(kept), None);
        }
        let huge = format!("{{\"a\":\"{}\"}}", "x".repeat(KEPT_STATE_LIMIT));
        assert_eq!(CLAUDE.merge(huge.as_bytes(), &staged), staged);
    }

    #[test]
    fn scrub_removes_what_moat_owns() {
        let written = json!({"userID": "u", "mcpServers": {"r": {"headers": {"Proxy-Authorization": "Basic secret"}}}});
        let kept = CLAUDE.scrub(written.to_string().as_bytes()).unwrap();
        assert_eq!(kept, json!({"userID": "u"}));
        assert!(!kept.to_string().contains("secret"));
    }
}
