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
        Err(crate::Rejection::NotHeaderSafe {
            grant: grant.to_owned(),
            what,
            at: i + 1,
            len: self.expose().chars().count(),
        }
        .into())
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
            let err = Secret::new(bad).check_header_safe("github").unwrap_err();
            let e = err.to_string();
            assert!(e.starts_with("the secret for github contains "), "{e}");
            assert!(!e.contains("X-Evil") && !e.contains("bell"), "{e}");
            let fix = moat_hint::Hint::hint(&err).unwrap();
            assert!(fix.as_str().ends_with("moat grant github"), "{fix}");
        }
    }
}
