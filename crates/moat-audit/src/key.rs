//! The installation's Ed25519 signing key.

use std::fmt;
use std::path::{Path, PathBuf};

use moat_home::{mode_of, read_if_exists, write_private_atomic, FileLock};
use rand::RngCore;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use zeroize::Zeroizing;

use crate::error::KeyProblem;
use crate::AuditError;

/// The Ed25519 key that signs audit log heads. One per `MOAT_HOME`:
/// `audit/signing.key` holds the 32-byte seed (`0600`), `audit/signing.pub`
/// the public key in hex.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    path: PathBuf,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("path", &self.path)
            .field("public_key", &self.public_key_hex())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The private key file inside `dir` (`MOAT_HOME/audit`).
    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join("signing.key")
    }

    /// The public key file inside `dir`.
    pub fn pub_path(dir: &Path) -> PathBuf {
        dir.join("signing.pub")
    }

    /// Loads the key in `dir`, creating it (under a lock, so concurrent
    /// first uses agree on one key) when absent.
    pub fn load_or_create(dir: &Path) -> Result<SigningKey, AuditError> {
        if let Some(key) = Self::load(dir)? {
            return Ok(key);
        }
        let _lock = FileLock::acquire(&dir.join("signing.lock"))?;
        if let Some(key) = Self::load(dir)? {
            return Ok(key);
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(seed.as_mut());
        let path = Self::key_path(dir);
        let key = Self::from_seed(seed.as_ref(), path.clone())?;
        write_private_atomic(&path, seed.as_ref())?;
        write_private_atomic(
            &Self::pub_path(dir),
            format!("{}\n", key.public_key_hex()).as_bytes(),
        )?;
        tracing::debug!(path = %path.display(), "created audit signing key");
        Ok(key)
    }

    /// Loads the key in `dir`; `None` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<SigningKey>, AuditError> {
        let path = Self::key_path(dir);
        if !path.exists() {
            return Ok(None);
        }
        let mode = mode_of(&path)?;
        if mode & 0o077 != 0 {
            return Err(AuditError::Key {
                path: path.clone(),
                problem: KeyProblem::Permissions { mode },
            });
        }
        let Some(seed) = read_if_exists(&path)? else {
            return Ok(None);
        };
        let seed = Zeroizing::new(seed);
        Self::from_seed(&seed, path).map(Some)
    }

    fn from_seed(seed: &[u8], path: PathBuf) -> Result<SigningKey, AuditError> {
        if seed.len() != 32 {
            return Err(AuditError::Key {
                path,
                problem: KeyProblem::WrongLength { len: seed.len() },
            });
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| AuditError::Key {
            path: path.clone(),
            problem: KeyProblem::NotASeed,
        })?;
        Ok(SigningKey { pair, path })
    }

    /// The public key, 32 bytes.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key in hex.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    /// Signs `message`; the 64-byte signature.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    /// Whether `signature` is `public_key`'s signature of `message`.
    pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(message, signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn created_once_private_and_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let a = SigningKey::load_or_create(&dir).unwrap();
        let b = SigningKey::load_or_create(&dir).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(mode_of(&SigningKey::key_path(&dir)).unwrap(), 0o600);
        assert_eq!(mode_of(&dir).unwrap(), 0o700);
        let pub_hex = std::fs::read_to_string(SigningKey::pub_path(&dir)).unwrap();
        assert_eq!(pub_hex.trim(), a.public_key_hex());
        let sig = a.sign(b"head");
        assert!(SigningKey::verify(a.public_key(), b"head", &sig));
        assert!(!SigningKey::verify(a.public_key(), b"hexd", &sig));
        assert!(!SigningKey::verify(b"short", b"head", &sig));
    }

    #[test]
    fn damaged_or_loose_key_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(SigningKey::key_path(dir), b"short").unwrap();
        std::fs::set_permissions(
            SigningKey::key_path(dir),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let err = SigningKey::load(dir).unwrap_err();
        assert!(
            err.to_string().contains("is 5 bytes long (expected 32)"),
            "{err}"
        );
        let fix = moat_hint::Hint::hint(&err).unwrap();
        assert!(
            fix.as_str().starts_with("Move it away to create a new key"),
            "{fix}"
        );
        std::fs::set_permissions(
            SigningKey::key_path(dir),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = SigningKey::load(dir).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("has permissions 0644 (expected 0600)"),
            "{err}"
        );
        let fix = moat_hint::Hint::hint(&err).unwrap();
        assert_eq!(
            fix.as_str(),
            format!(
                "Restrict them with: chmod 600 {}",
                SigningKey::key_path(dir).display()
            )
        );
    }
}
