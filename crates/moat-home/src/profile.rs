use std::fmt;

/// A credential profile name: starts with a letter or digit, then letters,
/// digits, `-` or `_`. Profiles keep separate sets of credentials (work and
/// personal GitHub accounts, say).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Profile(String);

/// A profile name that does not follow the rules.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid profile name {0:?}: use letters, digits, '-' and '_', starting with a letter or digit"
)]
pub struct ProfileError(pub String);

impl Profile {
    /// Validates `name` as a profile name.
    pub fn new(name: &str) -> Result<Self, ProfileError> {
        let mut chars = name.chars();
        let ok = match chars.next() {
            Some(c) if c.is_ascii_alphanumeric() => {
                chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }
            _ => false,
        };
        if ok && name.len() <= 64 {
            Ok(Profile(name.to_string()))
        } else {
            Err(ProfileError(name.to_string()))
        }
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names() {
        assert!(Profile::new("work").is_ok());
        assert!(Profile::new("a-b_c9").is_ok());
        assert!(Profile::new("").is_err());
        assert!(Profile::new("-x").is_err());
        assert!(Profile::new("../etc").is_err());
        assert!(Profile::new("a/b").is_err());
    }
}
