//! Which keys differ between two versions of a config file.
//!
//! Used to show a user what changed in a `moat.yaml` before they accept
//! it. The two texts are parsed into YAML trees and compared key by key
//! (lists index by index), so reformatting is not a change and every
//! changed leaf is named by its path (`network.policy`, `mounts[1]`). No
//! schema check: a file that is valid YAML but not a valid moat.yaml still
//! has a diff worth reading.

use std::fmt;

use crate::yaml::{self, Node, Value};

/// Longer values are cut, so one huge string cannot bury the list.
const MAX_VALUE_CHARS: usize = 80;

/// One difference, by key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// Present in both, with different values.
    Changed {
        /// `network.policy`, `mounts[1]`.
        path: String,
        /// The old value, summarised.
        old: String,
        /// The new value, summarised.
        new: String,
    },
    /// Only in the new version.
    Added {
        /// Key path.
        path: String,
        /// The new value, summarised.
        value: String,
    },
    /// Only in the old version.
    Removed {
        /// Key path.
        path: String,
        /// The old value, summarised.
        value: String,
    },
}

impl fmt::Display for KeyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyChange::Changed { path, old, new } => write!(f, "changed: {path} ({old} → {new})"),
            KeyChange::Added { path, value } => write!(f, "added: {path} ({value})"),
            KeyChange::Removed { path, value } => write!(f, "removed: {path} ({value})"),
        }
    }
}

/// The keys that differ from `old` to `new`, in document order; empty when
/// only comments or formatting changed. `None` when either text is not
/// valid YAML (the caller then reports the file as changed as a whole).
pub fn diff_keys(old: &str, new: &str) -> Option<Vec<KeyChange>> {
    let old = yaml::parse(old).ok()?;
    let new = yaml::parse(new).ok()?;
    let mut out = Vec::new();
    compare("", old.as_ref(), new.as_ref(), &mut out);
    Some(out)
}

fn compare(path: &str, old: Option<&Node>, new: Option<&Node>, out: &mut Vec<KeyChange>) {
    match (old.map(|n| &n.value), new.map(|n| &n.value)) {
        (None, None) => {}
        // An empty document and an empty mapping mean the same config.
        (None, Some(Value::Map(entries))) => added_entries(path, entries, out),
        (Some(Value::Map(entries)), None) => removed_entries(path, entries, out),
        (None, Some(_)) => leaves(path, new, out, true),
        (Some(_), None) => leaves(path, old, out, false),
        (Some(Value::Map(a)), Some(Value::Map(b))) => {
            for (key, old_value) in a {
                let name = key_text(key);
                let p = join(path, &name);
                match b.iter().find(|(k, _)| key_text(k) == name) {
                    Some((_, new_value)) => compare(&p, Some(old_value), Some(new_value), out),
                    None => leaves(&p, Some(old_value), out, false),
                }
            }
            for (key, new_value) in b {
                let name = key_text(key);
                if !a.iter().any(|(k, _)| key_text(k) == name) {
                    leaves(&join(path, &name), Some(new_value), out, true);
                }
            }
        }
        (Some(Value::Seq(a)), Some(Value::Seq(b))) => {
            for i in 0..a.len().max(b.len()) {
                let p = format!("{path}[{i}]");
                compare(&p, a.get(i), b.get(i), out);
            }
        }
        (Some(a), Some(b)) => {
            if let (Some(old), Some(new)) = (old, new) {
                if !same(a, b) {
                    out.push(KeyChange::Changed {
                        path: shown(path),
                        old: summary(old),
                        new: summary(new),
                    });
                }
            }
        }
    }
}

fn added_entries(path: &str, entries: &[(Node, Node)], out: &mut Vec<KeyChange>) {
    for (k, v) in entries {
        leaves(&join(path, &key_text(k)), Some(v), out, true);
    }
}

fn removed_entries(path: &str, entries: &[(Node, Node)], out: &mut Vec<KeyChange>) {
    for (k, v) in entries {
        leaves(&join(path, &key_text(k)), Some(v), out, false);
    }
}

/// Every leaf under `node` as added (or removed): a new `network:` block
/// reads as `network.policy (permissive)`, not as "a mapping".
fn leaves(path: &str, node: Option<&Node>, out: &mut Vec<KeyChange>, added: bool) {
    let Some(node) = node else { return };
    let push = |out: &mut Vec<KeyChange>, path: String, value: String| {
        out.push(if added {
            KeyChange::Added { path, value }
        } else {
            KeyChange::Removed { path, value }
        })
    };
    match &node.value {
        Value::Map(entries) if !entries.is_empty() => {
            for (k, v) in entries {
                leaves(&join(path, &key_text(k)), Some(v), out, added);
            }
        }
        Value::Seq(items) if !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                leaves(&format!("{path}[{i}]"), Some(item), out, added);
            }
        }
        _ => push(out, shown(path), summary(node)),
    }
}

/// Values compared as YAML, ignoring positions.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Scalar { text: x, plain: px }, Value::Scalar { text: y, plain: py }) => {
            x == y && (px == py || !looks_typed(x))
        }
        (Value::Seq(x), Value::Seq(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(&a.value, &b.value))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| {
                    y.iter()
                        .any(|(k2, v2)| key_text(k) == key_text(k2) && same(&v.value, &v2.value))
                })
        }
        _ => false,
    }
}

/// Whether quoting changes what a scalar means (`8080` versus `"8080"`);
/// quoting `strict` does not.
fn looks_typed(text: &str) -> bool {
    let plain = Node {
        line: 0,
        col: 0,
        value: Value::Scalar {
            text: text.to_owned(),
            plain: true,
        },
    };
    !matches!(plain.resolve(), Some(yaml::Resolved::Str(_)))
}

fn key_text(key: &Node) -> String {
    match &key.value {
        Value::Scalar { text, .. } => text.clone(),
        _ => summary(key),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn shown(path: &str) -> String {
    if path.is_empty() {
        "the whole document".to_owned()
    } else {
        path.to_owned()
    }
}

fn summary(node: &Node) -> String {
    match &node.value {
        Value::Scalar { text, .. } if text.is_empty() => "empty".to_owned(),
        Value::Scalar { text, .. } => {
            let one_line = text.replace('\n', "\\n");
            if one_line.chars().count() > MAX_VALUE_CHARS {
                let cut: String = one_line.chars().take(MAX_VALUE_CHARS).collect();
                format!("{cut}…")
            } else {
                one_line
            }
        }
        Value::Seq(items) if items.is_empty() => "an empty list".to_owned(),
        Value::Seq(_) => "a list".to_owned(),
        Value::Map(entries) if entries.is_empty() => "an empty mapping".to_owned(),
        Value::Map(_) => "a mapping".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(old: &str, new: &str) -> Vec<String> {
        match diff_keys(old, new) {
            Some(changes) => changes.iter().map(ToString::to_string).collect(),
            None => panic!("not YAML: {old:?} / {new:?}"),
        }
    }

    #[test]
    fn nested_keys_changed_added_and_removed() {
        let old = "network:\n  policy: strict\ngrants: [github]\nenv:\n  A: one\n";
        let new = "network:\n  policy: permissive\n  rules: [api.example.com]\ngrants: [github, claude]\nmounts:\n  - /root/.moat:/stolen:ro\n";
        assert_eq!(
            lines(old, new),
            [
                "changed: network.policy (strict → permissive)",
                "added: network.rules[0] (api.example.com)",
                "added: grants[1] (claude)",
                "removed: env.A (one)",
                "added: mounts[0] (/root/.moat:/stolen:ro)",
            ]
        );
    }

    #[test]
    fn formatting_and_comments_are_not_changes() {
        let old = "grants: [github]\nnetwork: {policy: strict}\n";
        let new = "# reviewed\ngrants:\n  - \"github\"\nnetwork:\n  policy: 'strict'\n";
        assert!(lines(old, new).is_empty());
        // Quoting a number makes it a string: a change of meaning.
        assert_eq!(
            lines("env:\n  PORT: 8080\n", "env:\n  PORT: \"8080\"\n").len(),
            1
        );
    }

    #[test]
    fn empty_documents_and_type_changes() {
        assert_eq!(lines("", "name: x\n"), ["added: name (x)"]);
        assert_eq!(lines("name: x\n", "# gone\n"), ["removed: name (x)"]);
        assert_eq!(
            lines("mounts: []\n", "mounts: ./a:/a\n"),
            ["changed: mounts (an empty list → ./a:/a)"]
        );
        assert_eq!(
            lines("env:\n  A: 1\n", "env: [A]\n"),
            ["changed: env (a mapping → a list)"]
        );
        assert_eq!(
            lines("a: 1\n", "[1]\n"),
            ["changed: the whole document (a mapping → a list)"]
        );
    }

    #[test]
    fn long_values_are_cut_and_bad_yaml_is_none() {
        let long = "x".repeat(200);
        let out = lines("a: b\n", &format!("a: {long}\n"));
        assert!(out[0].ends_with("x…)"), "{}", out[0]);
        assert!(out[0].chars().count() < 120);
        assert_eq!(diff_keys("a: b\n", "a: [\n"), None);
    }
}
