use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A secret string: a token, an API key, a password.
///
/// Its `Debug` and `Display` print `[REDACTED]`, and its memory is zeroed
/// when dropped. The only way to the value is [`Secret::expose`], which
/// makes every use visible in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps `value`, trimming surrounding whitespace (pasted tokens often
    /// carry a newline).
    pub fn new(value: impl Into<String>) -> Self {
        let value: String = value.into();
        let trimmed = value.trim();
        if trimmed.len() == value.len() {
            Secret(Zeroizing::new(value))
        } else {
            Secret(Zeroizing::new(trimmed.to_string()))
        }
    }

    /// Refuses a secret that cannot travel as an HTTP header value: moat
    /// injects secrets into headers, where a line break would split or
    /// corrupt every request of every run. Surrounding whitespace is
    /// already trimmed; what remains must be printable ASCII without
    /// spaces (no token format uses anything else). The message names the
    /// position, never the value. `grant` is what to pass to `moat grant`.
    pub fn check_header_safe(&self, grant: &str) -> Result<(), crate::CredentialError> {
        let bad = self
            .0
            .chars()
            .enumerate()
            .find(|(_, c)| !c.is_ascii_graphic());
        let Some((i, c)) = bad else {
            return Ok(());
        };
        let what = if c.is_control() || c.is_whitespace() {
            "a control character or whitespace"
        } else {
            "a non-ASCII character"
        };
        Err(crate::CredentialError::Rejected(format!(
            "the secret for {grant} contains {what} (character {} of {}); it was not stored.\n\
             Tokens are printable ASCII without spaces or line breaks, and moat sends them as HTTP header values.\n\
             Copy the token again in one piece, then run: moat grant {grant}",
            i + 1,
            self.0.chars().count()
        )))
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

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Secret(Zeroizing::new(s)))
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
    }
}

#[cfg(test)]
mod header_safe_tests {
    use super::Secret;

    #[test]
    fn secrets_that_cannot_be_header_values_are_refused() {
        assert!(Secret::new("ghp_abc123\n")
            .check_header_safe("github")
            .is_ok());
        for bad in [
            "ghp_abc\nX-Evil: 1",
            "a b",
            "tab\there",
            "bell\u{7}",
            "caf\u{e9}",
        ] {
            let e = Secret::new(bad)
                .check_header_safe("github")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("moat grant github"), "{e}");
            assert!(!e.contains("X-Evil") && !e.contains("bell"), "{e}");
        }
    }
}
