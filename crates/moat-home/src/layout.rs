use std::path::{Path, PathBuf};

use crate::Profile;

/// Where moat keeps its state: `$MOAT_HOME`, else `~/.moat`.
///
/// Every path moat writes is derived here, so relocating `MOAT_HOME`
/// relocates everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoatHome {
    root: PathBuf,
}

impl MoatHome {
    /// Uses `root` as the home directory.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        MoatHome { root: root.into() }
    }

    /// Resolves the home from `MOAT_HOME`, falling back to `$HOME/.moat`.
    /// Returns `None` only when neither variable is set.
    pub fn from_env() -> Option<Self> {
        if let Some(dir) = std::env::var_os("MOAT_HOME").filter(|v| !v.is_empty()) {
            return Some(MoatHome::at(PathBuf::from(dir)));
        }
        std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|home| MoatHome::at(PathBuf::from(home).join(".moat")))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The 32-byte encryption key file used when no OS keychain is reachable.
    pub fn key_file(&self) -> PathBuf {
        self.root.join("key")
    }

    /// The lock serialising creation of the encryption key.
    pub fn key_lock(&self) -> PathBuf {
        self.root.join("key.lock")
    }

    /// The directory holding encrypted credentials for `profile` (the
    /// default profile when `None`).
    pub fn credentials_dir(&self, profile: Option<&Profile>) -> PathBuf {
        let base = self.root.join("credentials");
        match profile {
            None => base,
            Some(p) => base.join("profiles").join(p.as_str()),
        }
    }

    /// User-declared providers.
    pub fn providers_file(&self) -> PathBuf {
        self.root.join("providers.json")
    }

    /// The proxy daemon's working directory.
    pub fn proxy_dir(&self) -> PathBuf {
        self.root.join("proxy")
    }

    /// The TLS-interception CA directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.proxy_dir().join("ca")
    }

    /// Per-run storage.
    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// One run's directory.
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.runs_dir().join(run_id)
    }

    /// The audit signing key (`signing.key`, `signing.pub`).
    pub fn audit_dir(&self) -> PathBuf {
        self.root.join("audit")
    }

    /// Per-workspace trust records: the configuration the user accepted.
    pub fn trust_dir(&self) -> PathBuf {
        self.root.join("trust")
    }

    /// Structured debug logs.
    pub fn debug_dir(&self) -> PathBuf {
        self.root.join("debug")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_credentials_are_nested() {
        let home = MoatHome::at("/h");
        assert_eq!(home.credentials_dir(None), PathBuf::from("/h/credentials"));
        let work = Profile::new("work").unwrap();
        assert_eq!(
            home.credentials_dir(Some(&work)),
            PathBuf::from("/h/credentials/profiles/work")
        );
    }
}
