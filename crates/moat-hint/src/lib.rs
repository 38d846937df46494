//! What a user can do about an error, kept apart from the error.
//!
//! A moat error's `Display` text says what went wrong and why, in one
//! line where it can. What to do about it — the command to run, the
//! setting to change — is its [`Hint`]. Keeping the two apart lets the
//! `moat` binary print the fix its own way (after the whole chain of
//! causes, never in the middle of it) and lets tests assert each part.
//!
//! This crate owns only the trait and the rendering both sides agree on.
//! It knows no error type: the binary keeps the list of error types whose
//! hints it looks for along an error's chain of sources.
//!
//! An error whose variant is `#[error(transparent)]` must return its inner
//! error's hint itself: a transparent variant hides the inner error from
//! the chain of sources, so nothing else can find it.

use std::fmt;

/// The fix for an error: lines to show the user after the error itself.
///
/// Write it as instructions ("Run: moat grant github"); multi-line text
/// is kept as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix(String);

impl Fix {
    /// A fix from its text.
    pub fn new(text: impl Into<String>) -> Self {
        Fix(text.into())
    }

    /// The fix's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Fix {
    fn from(text: String) -> Self {
        Fix(text)
    }
}

impl From<&str> for Fix {
    fn from(text: &str) -> Self {
        Fix(text.to_owned())
    }
}

/// An error that may know how the user fixes it.
pub trait Hint {
    /// The fix for this error, if there is one the user can apply.
    fn hint(&self) -> Option<Fix>;
}

/// An error and its fixes as the `moat` binary prints them: the error
/// line, then each fix after a blank line.
pub fn render(error_line: &str, fixes: &[Fix]) -> String {
    let mut text = String::from(error_line);
    for fix in fixes {
        text.push_str("\n\n");
        text.push_str(fix.as_str());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixes_follow_the_error_after_a_blank_line() {
        let text = render(
            "credential not found: github",
            &[Fix::new("Run: moat grant github")],
        );
        assert_eq!(
            text,
            "credential not found: github\n\nRun: moat grant github"
        );
    }

    #[test]
    fn an_error_without_a_fix_is_its_line_alone() {
        assert_eq!(render("no runs yet", &[]), "no runs yet");
    }
}
