//! One audit record and its hash.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The field of every entry's data naming its run
/// ([`crate::AuditWriter::open_for_run`]).
pub const RUN_ID_FIELD: &str = "run_id";

/// One line of `audit.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the event happened: RFC 3339 UTC with nanoseconds.
    pub ts: String,
    /// What kind of event: `run`, `network`, `ssh`, `audit`...
    #[serde(rename = "type")]
    pub kind: String,
    /// The previous entry's hash; `""` for the first.
    pub prev: String,
    /// The event's fields (a JSON object).
    pub data: Value,
    /// [`entry_hash`] of the fields above.
    pub hash: String,
}

impl Entry {
    /// Builds the entry that follows `prev` (`None` for the first).
    pub fn next(prev: Option<&Entry>, ts: String, kind: &str, data: Value) -> Entry {
        let (seq, prev_hash) = match prev {
            Some(p) => (p.seq + 1, p.hash.clone()),
            None => (1, String::new()),
        };
        Entry::new(seq, ts, kind, prev_hash, data)
    }

    /// Builds an entry with `seq` and `prev` given, hashing it.
    pub fn new(seq: u64, ts: String, kind: &str, prev: String, data: Value) -> Entry {
        let data = as_object(data);
        let hash = entry_hash(seq, &ts, kind, &prev, &data);
        Entry {
            seq,
            ts,
            kind: kind.to_owned(),
            prev,
            data,
            hash,
        }
    }

    /// Whether `hash` is the hash of the other fields.
    pub fn hash_is_valid(&self) -> bool {
        entry_hash(self.seq, &self.ts, &self.kind, &self.prev, &self.data) == self.hash
    }
}

/// `data` must be an object; anything else is wrapped as `{"value": ...}`.
pub(crate) fn as_object(data: Value) -> Value {
    match data {
        Value::Object(_) => data,
        Value::Null => Value::Object(Default::default()),
        other => {
            let mut map = serde_json::Map::new();
            map.insert("value".into(), other);
            Value::Object(map)
        }
    }
}

/// `hex(SHA-256(seq as u64 BE ‖ ts ‖ type ‖ prev ‖ canonical JSON(data)))`.
pub fn entry_hash(seq: u64, ts: &str, kind: &str, prev: &str, data: &Value) -> String {
    let mut h = Sha256::new();
    h.update(seq.to_be_bytes());
    h.update(ts.as_bytes());
    h.update(kind.as_bytes());
    h.update(prev.as_bytes());
    let mut canonical = Vec::with_capacity(256);
    write_canonical(data, &mut canonical);
    h.update(&canonical);
    hex::encode(h.finalize())
}

/// JSON with object keys sorted (by their UTF-8 bytes) and no whitespace,
/// so the same data always hashes the same whatever order it was built in.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out);
    // Only JSON was written, and JSON is UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `value` as JSON; writing to a Vec cannot fail.
fn push_json<T: serde::Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, value);
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            // A map that iterates in key order already (serde_json's
            // default) needs no sorting, and most do.
            let mut keys: Vec<&String> = map.keys().collect();
            if !keys.is_sorted() {
                keys.sort();
            }
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_json(key.as_str(), out);
                out.push(b':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => push_json(scalar, out),
    }
}

/// Now, as RFC 3339 UTC with nanoseconds (`2025-01-02T03:04:05.123456789Z`).
pub fn now_ts() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let a = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": "s"}], "c": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":null,"z":[1,{"x":"s","y":2}]},"b":1}"#
        );
    }

    #[test]
    fn hash_covers_every_field() {
        let e = Entry::new(
            1,
            "2025-01-01T00:00:00.000000000Z".into(),
            "run",
            String::new(),
            json!({"action": "started"}),
        );
        assert!(e.hash_is_valid());
        assert_eq!(e.hash.len(), 64);
        let mut f = e.clone();
        f.seq = 2;
        assert!(!f.hash_is_valid());
        let mut f = e.clone();
        f.ts.push('x');
        assert!(!f.hash_is_valid());
        let mut f = e.clone();
        f.kind = "ssh".into();
        assert!(!f.hash_is_valid());
        let mut f = e.clone();
        f.prev = "00".into();
        assert!(!f.hash_is_valid());
        let mut f = e;
        f.data = json!({"action": "stopped"});
        assert!(!f.hash_is_valid());
    }

    #[test]
    fn hash_matches_the_documented_construction() {
        let data = json!({"k": "v"});
        let mut h = Sha256::new();
        h.update(7u64.to_be_bytes());
        h.update(b"T");
        h.update(b"x");
        h.update(b"p");
        h.update(br#"{"k":"v"}"#);
        assert_eq!(
            entry_hash(7, "T", "x", "p", &data),
            hex::encode(h.finalize())
        );
    }

    #[test]
    fn floats_hash_the_same_after_a_round_trip_through_the_file() {
        let mut x = 0.1f64;
        for i in 0..2000 {
            x = x * 1.37 + f64::from(i) / 7.0;
            let e = Entry::next(
                None,
                now_ts(),
                "network",
                json!({"duration_ms": x, "y": 1.0 / x}),
            );
            let back: Entry = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
            assert!(back.hash_is_valid(), "{x}");
        }
    }

    #[test]
    fn non_object_data_is_wrapped() {
        let e = Entry::next(None, now_ts(), "x", json!(3));
        assert_eq!(e.data, json!({"value": 3}));
        assert_eq!(e.seq, 1);
        assert_eq!(e.prev, "");
        let f = Entry::next(Some(&e), now_ts(), "x", Value::Null);
        assert_eq!((f.seq, f.prev.as_str()), (2, e.hash.as_str()));
    }
}
