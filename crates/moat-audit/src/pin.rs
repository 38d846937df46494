//! Which public key a bundle's signatures must be by: one given with
//! `--key`, this installation's (`--trusted`), or none.

use std::path::{Path, PathBuf};

use crate::SigningKey;

/// Why a key to pin could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// `--key` is neither 64 hex digits nor a readable file.
    #[error("--key {arg}: neither 64 hex digits nor a readable public key file")]
    Unreadable {
        /// As given.
        arg: String,
        /// Why the file could not be read.
        #[source]
        error: std::io::Error,
    },
    /// `--key`'s file holds something else.
    #[error("--key {arg}: the file does not hold a public key (64 hex digits)")]
    NotAKey {
        /// As given.
        arg: String,
    },
    /// `--trusted` without an installation key.
    #[error("--trusted: this installation has no audit key ({} does not exist)", path.display())]
    NoInstallationKey {
        /// Where it would be.
        path: PathBuf,
    },
    /// The installation's public key file is damaged.
    #[error("{} is damaged (expected 64 hex digits)", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
    },
    /// Reading the installation's key failed.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),
}

impl moat_hint::Hint for PinError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            PinError::NoInstallationKey { .. } => {
                Some("Pass the signer's public key with --key PUBKEY".into())
            }
            PinError::Damaged { .. } => {
                Some("Moat rewrites it from signing.key: remove it and run: moat doctor".into())
            }
            PinError::Home(e) => e.hint(),
            PinError::Unreadable { .. } | PinError::NotAKey { .. } => None,
        }
    }
}

/// The key a verification pins, and how the report names whose it is:
/// `--key` (64 hex digits or a file of them), else with `trusted` this
/// installation's, else none.
pub fn pinned_key(
    audit_dir: &Path,
    key: Option<&str>,
    trusted: bool,
) -> Result<(Option<Vec<u8>>, &'static str), PinError> {
    match (key, trusted) {
        (Some(key), _) => Ok((Some(parse_public_key(key)?), "pinned with --key")),
        (None, true) => match installation_key(audit_dir)? {
            Some(k) => Ok((Some(k), "this installation's key, pinned with --trusted")),
            None => Err(PinError::NoInstallationKey {
                path: SigningKey::pub_path(audit_dir),
            }),
        },
        (None, false) => Ok((
            None,
            "not pinned: anyone can re-sign a bundle; check it is your installation's \
             (MOAT_HOME/audit/signing.pub) or pass --key PUBKEY or --trusted",
        )),
    }
}

/// A public key given as 64 hex digits or as a file holding them.
pub fn parse_public_key(arg: &str) -> Result<Vec<u8>, PinError> {
    if let Some(key) = key_of(arg) {
        return Ok(key);
    }
    let text = std::fs::read_to_string(arg).map_err(|error| PinError::Unreadable {
        arg: arg.to_owned(),
        error,
    })?;
    key_of(&text).ok_or_else(|| PinError::NotAKey {
        arg: arg.to_owned(),
    })
}

/// This installation's public key (`audit/signing.pub`), if it has one.
pub fn installation_key(audit_dir: &Path) -> Result<Option<Vec<u8>>, PinError> {
    let path = SigningKey::pub_path(audit_dir);
    let Some(bytes) = moat_home::read_if_exists(&path)? else {
        return Ok(None);
    };
    match key_of(&String::from_utf8_lossy(&bytes)) {
        Some(key) => Ok(Some(key)),
        None => Err(PinError::Damaged { path }),
    }
}

fn key_of(text: &str) -> Option<Vec<u8>> {
    hex::decode(text.trim()).ok().filter(|k| k.len() == 32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_key_is_64_hex_digits_given_or_in_a_file() {
        let hexkey = "ab".repeat(32);
        assert_eq!(parse_public_key(&hexkey).unwrap(), vec![0xab; 32]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.pub");
        std::fs::write(&file, format!("{hexkey}\n")).unwrap();
        assert_eq!(
            parse_public_key(file.to_str().unwrap()).unwrap(),
            vec![0xab; 32]
        );
        std::fs::write(&file, "nope").unwrap();
        assert!(matches!(
            parse_public_key(file.to_str().unwrap()),
            Err(PinError::NotAKey { .. })
        ));
        assert!(matches!(
            pinned_key(dir.path(), None, true),
            Err(PinError::NoInstallationKey { .. })
        ));
    }
}
