//! Secrets are [`moat_secret::Secret`]; what credentials add to them.

pub use moat_secret::Secret;

/// What a credential's secret must be to be injected.
pub trait HeaderSafe {
    /// Refuses a secret that cannot travel as an HTTP header value: moat
    /// injects secrets into headers, where a line break would split or
    /// corrupt every request of every run. Surrounding whitespace is
    /// already trimmed; what remains must be printable ASCII without
    /// spaces (no token format uses anything else). The message names the
    /// position, never the value. `grant` is what to pass to `moat grant`.
    fn check_header_safe(&self, grant: &str) -> Result<(), crate::CredentialError>;
}

impl HeaderSafe for Secret {
    fn check_header_safe(&self, grant: &str) -> Result<(), crate::CredentialError> {
        let bad = self
            .expose()
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
            self.expose().chars().count()
        )))
    }
}

#[cfg(test)]
mod header_safe_tests {
    use super::{HeaderSafe as _, Secret};

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
