//! The one secret type of moat: credentials, the run's proxy token,
//! `Proxy-Authorization` values, service passwords.
//!
//! A [`Secret`] zeroes its memory when dropped, prints `[REDACTED]` with
//! `{}` and `{:?}` (so no log line, error or `Debug` dump of a struct
//! holding one can show it), compares in constant time, and has no
//! `Serialize` or `Deserialize` of its own: a file or wire format that
//! must carry the value says so on the field, with
//! `#[serde(with = "moat_secret::exposed")]`. The value is reached only
//! through [`Secret::expose`], which makes every use visible in review.

use std::fmt;

use zeroize::Zeroizing;

/// A secret string: a token, an API key, a password.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps `value`, trimming surrounding whitespace (pasted tokens often
    /// carry a newline; no secret moat handles begins or ends with one).
    pub fn new(value: impl Into<String>) -> Self {
        let value: String = value.into();
        let trimmed = value.trim();
        if trimmed.len() == value.len() {
            Secret(Zeroizing::new(value))
        } else {
            Secret(Zeroizing::new(trimmed.to_owned()))
        }
    }

    /// The secret value. Callers must not log or display it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The last four characters, for telling two tokens apart without
    /// revealing them; empty for secrets too short to hint at safely.
    pub fn hint(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() < 16 {
            return String::new();
        }
        chars[chars.len() - 4..].iter().collect()
    }
}

impl PartialEq for Secret {
    /// In constant time for equal lengths: a comparison must not tell an
    /// attacker how much of a guessed token was right.
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// `#[serde(with = "moat_secret::exposed")]`: the field's value written
/// as a plain string, where a file or wire format must carry it (the
/// encrypted credential file, the daemon's Unix-socket protocol).
pub mod exposed {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Secret;

    /// Writes the value.
    pub fn serialize<S: Serializer>(secret: &Secret, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(secret.expose())
    }

    /// Reads the value.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        let value = zeroize::Zeroizing::new(String::deserialize(deserializer)?);
        Ok(Secret::new(value.as_str()))
    }
}

/// `#[serde(with = "moat_secret::exposed_option")]`: [`exposed`] for an
/// optional secret.
pub mod exposed_option {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Secret;

    /// Writes the value, or `null`.
    pub fn serialize<S: Serializer>(
        secret: &Option<Secret>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match secret {
            Some(s) => serializer.serialize_some(s.expose()),
            None => serializer.serialize_none(),
        }
    }

    /// Reads the value, or `null`.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Secret>, D::Error> {
        let value = Option::<String>::deserialize(deserializer)?.map(zeroize::Zeroizing::new);
        Ok(value.map(|v| Secret::new(v.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("ghp_supersecretvalue1234\n");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(format!("{s:?}"), "[REDACTED]");
        assert_eq!(s.expose(), "ghp_supersecretvalue1234");
        assert_eq!(s.hint(), "1234");
        assert_eq!(Secret::new("short").hint(), "");
        assert_eq!(Secret::new("a"), Secret::new(" a "));
        assert_ne!(Secret::new("a"), Secret::new("b"));
    }

    #[test]
    fn serialised_only_where_a_field_says_so() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Wire {
            #[serde(with = "crate::exposed")]
            token: Secret,
        }
        let json = serde_json::to_string(&Wire {
            token: Secret::new("t0k3n"),
        })
        .unwrap_or_default();
        assert_eq!(json, r#"{"token":"t0k3n"}"#);
        let back: Wire = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.token.expose(), "t0k3n");
    }
}
