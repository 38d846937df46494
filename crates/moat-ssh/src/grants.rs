//! SSH grants: which agent key may sign for which host, and the host keys
//! pinned for that host when the grant was made.
//!
//! They hold no secret (public keys and fingerprints only) and live in
//! `ssh.json` beside the profile's encrypted credentials, written
//! atomically with mode 0600 like everything else under `MOAT_HOME`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ssh_key::{HashAlg, PublicKey};

use crate::SshError;

/// One host's grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshGrant {
    /// Host name, lower case, as the sandbox's `ssh` names it.
    pub host: String,
    /// SSH port.
    pub port: u16,
    /// The granted key, OpenSSH one-line format (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
    /// Its SHA-256 fingerprint (`SHA256:…`).
    pub fingerprint: String,
    /// The server's host keys pinned at grant time (`type base64` each).
    pub host_keys: Vec<String>,
    /// When the grant was made.
    pub granted_at: DateTime<Utc>,
}

impl SshGrant {
    /// The granted key's wire blob.
    pub fn key_blob(&self) -> Result<Vec<u8>, SshError> {
        key_blob(&self.public_key)
    }

    /// The pinned host keys' wire blobs (unparsable entries skipped: they
    /// could only fail to match).
    pub fn host_key_blobs(&self) -> Vec<Vec<u8>> {
        self.host_keys
            .iter()
            .filter_map(|k| key_blob(k).ok())
            .collect()
    }

    /// `known_hosts` lines for the sandbox.
    pub fn known_hosts_lines(&self) -> Vec<String> {
        let name = if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        };
        self.host_keys
            .iter()
            .map(|k| format!("{name} {k}"))
            .collect()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GrantsFile {
    version: u32,
    #[serde(default)]
    hosts: BTreeMap<String, SshGrant>,
}

/// The SSH grants of one profile.
#[derive(Debug, Clone)]
pub struct SshGrantStore {
    path: PathBuf,
}

impl SshGrantStore {
    /// The store in `credentials_dir` (the profile's credentials directory).
    pub fn in_dir(credentials_dir: &Path) -> Self {
        SshGrantStore {
            path: credentials_dir.join("ssh.json"),
        }
    }

    /// Where the grants are kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<GrantsFile, SshError> {
        let Some(bytes) = moat_home::read_if_exists(&self.path)? else {
            return Ok(GrantsFile {
                version: 1,
                hosts: BTreeMap::new(),
            });
        };
        serde_json::from_slice(&bytes).map_err(|e| SshError::CorruptGrants {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    fn write(&self, file: &GrantsFile) -> Result<(), SshError> {
        if let Some(dir) = self.path.parent() {
            moat_home::ensure_private_dir(dir)?;
        }
        let json = serde_json::to_vec_pretty(file).map_err(|e| SshError::CorruptGrants {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        moat_home::write_private_atomic(&self.path, &json)?;
        Ok(())
    }

    /// Every grant, by host.
    pub fn list(&self) -> Result<Vec<SshGrant>, SshError> {
        Ok(self.read()?.hosts.into_values().collect())
    }

    /// The grant for `host`, if any.
    pub fn get(&self, host: &str) -> Result<Option<SshGrant>, SshError> {
        Ok(self.read()?.hosts.remove(&host.to_ascii_lowercase()))
    }

    /// Adds or replaces the grant for its host.
    pub fn insert(&self, grant: SshGrant) -> Result<(), SshError> {
        let mut file = self.read()?;
        file.version = 1;
        file.hosts.insert(grant.host.clone(), grant);
        self.write(&file)
    }

    /// Removes the grant for `host`; `false` when there was none.
    pub fn remove(&self, host: &str) -> Result<bool, SshError> {
        let mut file = self.read()?;
        let removed = file.hosts.remove(&host.to_ascii_lowercase()).is_some();
        if removed {
            self.write(&file)?;
        }
        Ok(removed)
    }

    /// The grants for `hosts`, or the seed's error naming every host
    /// without one.
    pub fn resolve(&self, hosts: &[String]) -> Result<Vec<SshGrant>, SshError> {
        let file = self.read()?;
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for host in hosts {
            match file.hosts.get(&host.to_ascii_lowercase()) {
                Some(g) => found.push(g.clone()),
                None => missing.push(host.clone()),
            }
        }
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(SshError::NoKeysForHosts(missing))
        }
    }
}

/// Parses an OpenSSH public key line into its wire blob.
pub fn key_blob(openssh: &str) -> Result<Vec<u8>, SshError> {
    let key = PublicKey::from_openssh(openssh.trim()).map_err(|e| SshError::BadPublicKey {
        key: abbreviate(openssh),
        detail: e.to_string(),
    })?;
    key.to_bytes().map_err(|e| SshError::BadPublicKey {
        key: abbreviate(openssh),
        detail: e.to_string(),
    })
}

/// The `SHA256:…` fingerprint of a wire blob, as `ssh-add -l` prints it.
pub fn fingerprint(blob: &[u8]) -> Result<String, SshError> {
    let key = PublicKey::from_bytes(blob).map_err(|e| SshError::BadPublicKey {
        key: "(agent key)".into(),
        detail: e.to_string(),
    })?;
    Ok(key.fingerprint(HashAlg::Sha256).to_string())
}

/// The OpenSSH one-line form of a wire blob, with `comment`.
pub fn openssh_line(blob: &[u8], comment: &str) -> Result<String, SshError> {
    let mut key = PublicKey::from_bytes(blob).map_err(|e| SshError::BadPublicKey {
        key: "(agent key)".into(),
        detail: e.to_string(),
    })?;
    key.set_comment(comment);
    key.to_openssh().map_err(|e| SshError::BadPublicKey {
        key: "(agent key)".into(),
        detail: e.to_string(),
    })
}

fn abbreviate(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s.to_string()
    }
}

/// The host keys `known_hosts` files record for `host` (and port), looked up
/// with `ssh-keygen -F` so hashed entries are found too. Returns
/// `type base64` strings, deduplicated, in file order.
pub fn known_host_keys(host: &str, port: u16, files: &[PathBuf]) -> Vec<String> {
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let mut keys = Vec::new();
    for file in files.iter().filter(|f| f.is_file()) {
        let Ok(out) = Command::new("ssh-keygen")
            .arg("-F")
            .arg(&name)
            .arg("-f")
            .arg(file)
            .output()
        else {
            continue;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let [_, kind, data, ..] = fields.as_slice() {
                let key = format!("{kind} {data}");
                if key_blob(&key).is_ok() && !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILnuRaNbMTatW5PUvmarNfnIFYEP2MKgTwRVdxtXCEWY test@example";

    fn grant(host: &str) -> SshGrant {
        SshGrant {
            host: host.into(),
            port: 22,
            public_key: KEY.into(),
            fingerprint: fingerprint(&key_blob(KEY).unwrap()).unwrap(),
            host_keys: vec![KEY.split(' ').take(2).collect::<Vec<_>>().join(" ")],
            granted_at: Utc::now(),
        }
    }

    #[test]
    fn grants_are_stored_private_and_resolved_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let store = SshGrantStore::in_dir(&dir.path().join("credentials"));
        store.insert(grant("github.com")).unwrap();
        assert_eq!(
            moat_home::mode_of(store.path()).unwrap() & 0o777,
            0o600,
            "grants file must be 0600"
        );
        assert_eq!(store.resolve(&["GitHub.com".into()]).unwrap().len(), 1);
        let err = store
            .resolve(&["github.com".into(), "gitlab.com".into()])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no SSH keys configured for hosts: [gitlab.com]"
        );
        assert_eq!(
            moat_hint::Hint::hint(&err).unwrap().as_str(),
            "Grant SSH access first:\n  moat grant ssh --host gitlab.com"
        );
        assert!(store.remove("github.com").unwrap());
        assert!(!store.remove("github.com").unwrap());
    }

    #[test]
    fn fingerprints_match_openssh() {
        let fp = fingerprint(&key_blob(KEY).unwrap()).unwrap();
        assert!(fp.starts_with("SHA256:"), "{fp}");
        assert!(key_blob("ssh-ed25519 not-base64").is_err());
    }

    #[test]
    fn known_hosts_lines_bracket_non_default_ports() {
        let mut g = grant("git.test");
        g.port = 2222;
        assert!(g.known_hosts_lines()[0].starts_with("[git.test]:2222 ssh-ed25519 "));
    }

    #[test]
    fn a_corrupt_grants_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = SshGrantStore::in_dir(dir.path());
        std::fs::write(store.path(), b"{not json").unwrap();
        let err = store.list().unwrap_err().to_string();
        assert!(err.contains("ssh.json"), "{err}");
    }
}
