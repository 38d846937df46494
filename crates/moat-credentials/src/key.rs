use std::fmt;
use std::path::Path;

use base64::Engine as _;
use moat_home::{mode_of, read_if_exists, write_private_atomic, FileLock, MoatHome};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::CredentialError;

/// Length of the AES-256 key in bytes.
pub const KEY_LEN: usize = 32;

/// Where the encryption key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBackend {
    /// The OS keychain: Secret Service on Linux, Keychain on macOS.
    Keychain,
    /// A 32-byte file, `MOAT_HOME/key`, mode `0600`.
    File,
}

impl fmt::Display for KeyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyBackend::Keychain => "OS keychain",
            KeyBackend::File => "key file",
        })
    }
}

/// The 256-bit key that encrypts every stored credential.
pub struct EncryptionKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    backend: KeyBackend,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

const KEYRING_USER: &str = "encryption-key";

impl EncryptionKey {
    /// Wraps raw key bytes (tests, and keys read by the caller).
    pub fn from_bytes(bytes: [u8; KEY_LEN], backend: KeyBackend) -> Self {
        EncryptionKey {
            bytes: Zeroizing::new(bytes),
            backend,
        }
    }

    /// The key bytes.
    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Where the key came from.
    pub fn backend(&self) -> KeyBackend {
        self.backend
    }

    /// Loads the key, creating it on first use.
    ///
    /// Order: `MOAT_KEYRING_BACKEND=file`, or an existing key file, means
    /// the file; otherwise the OS keychain when one is reachable; otherwise
    /// a new key file. Creation happens under `MOAT_HOME/key.lock`, so two
    /// concurrent first grants agree on one key. Never prompts.
    ///
    /// A key is only ever created while no credential file exists: when
    /// the key is gone but credentials remain, this is
    /// [`CredentialError::KeyMissing`], naming the key file to restore. A
    /// new key could never read them.
    pub fn load_or_create(home: &MoatHome) -> Result<Self, CredentialError> {
        let force_file = std::env::var("MOAT_KEYRING_BACKEND")
            .map(|v| v.eq_ignore_ascii_case("file"))
            .unwrap_or(false);
        let key_file = home.key_file();
        if force_file || key_file.exists() {
            return Self::load_or_create_file(home, false);
        }
        let may_create = || refuse_if_credentials_exist(home, true);
        if let Some(key) = keychain::load_or_create(&may_create)? {
            return Ok(key);
        }
        Self::load_or_create_file(home, true)
    }

    /// Loads the key from the file only, if it exists; never creates one.
    /// Used by diagnostics.
    pub fn load_file_if_present(home: &MoatHome) -> Result<Option<Self>, CredentialError> {
        read_key_file(&home.key_file())
    }

    /// `keychain`: whether the OS keychain was looked in first (for the
    /// message when the key is missing).
    fn load_or_create_file(home: &MoatHome, keychain: bool) -> Result<Self, CredentialError> {
        let path = home.key_file();
        if let Some(key) = read_key_file(&path)? {
            return Ok(key);
        }
        let _lock = FileLock::acquire(&home.key_lock())?;
        // Another process may have created it while we waited for the lock.
        if let Some(key) = read_key_file(&path)? {
            return Ok(key);
        }
        refuse_if_credentials_exist(home, keychain)?;
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        write_private_atomic(&path, bytes.as_ref())?;
        tracing::debug!(path = %path.display(), "created encryption key file");
        Ok(EncryptionKey {
            bytes,
            backend: KeyBackend::File,
        })
    }
}

/// Fails with [`CredentialError::KeyMissing`] when any credential file
/// (`*.enc`, any profile) exists: they were encrypted with a key that is
/// gone, and a new key would hide that until they fail to decrypt.
fn refuse_if_credentials_exist(home: &MoatHome, keychain: bool) -> Result<(), CredentialError> {
    fn count(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                match e.file_type() {
                    Ok(t) if t.is_dir() => count(&e.path()),
                    Ok(t) if t.is_file() && name.ends_with(".enc") && !name.starts_with('.') => 1,
                    _ => 0,
                }
            })
            .sum()
    }
    let dir = home.credentials_dir(None);
    match count(&dir) {
        0 => Ok(()),
        count => Err(CredentialError::KeyMissing {
            path: home.key_file(),
            dir,
            count,
            keychain,
        }),
    }
}

/// Reads and checks the key file. Refuses a file with any group or other
/// permission bit before reading a byte of it.
fn read_key_file(path: &Path) -> Result<Option<EncryptionKey>, CredentialError> {
    if !path.exists() {
        return Ok(None);
    }
    let mode = mode_of(path)?;
    if mode & 0o077 != 0 {
        return Err(CredentialError::InsecureKeyFile {
            path: path.to_path_buf(),
            mode,
        });
    }
    let Some(contents) = read_if_exists(path)? else {
        return Ok(None);
    };
    let contents = Zeroizing::new(contents);
    let bytes: [u8; KEY_LEN] =
        contents
            .as_slice()
            .try_into()
            .map_err(|_| CredentialError::KeyFileLength {
                path: path.to_path_buf(),
                len: contents.len(),
            })?;
    Ok(Some(EncryptionKey::from_bytes(bytes, KeyBackend::File)))
}

fn encode_key(bytes: &[u8; KEY_LEN]) -> Zeroizing<String> {
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn decode_key(text: &str) -> Option<[u8; KEY_LEN]> {
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .ok()?,
    );
    decoded.as_slice().try_into().ok()
}

fn keyring_service() -> String {
    std::env::var("MOAT_KEYRING_SERVICE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "moat".to_string())
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
mod keychain {
    use super::*;

    /// The keychain's key, created there if absent and `may_create`
    /// agrees. `Ok(None)` when no keychain is reachable, so the caller
    /// falls back to the key file.
    pub(super) fn load_or_create(
        may_create: &dyn Fn() -> Result<(), CredentialError>,
    ) -> Result<Option<EncryptionKey>, CredentialError> {
        if !reachable() {
            return Ok(None);
        }
        let entry = match keyring::Entry::new(&keyring_service(), KEYRING_USER) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::debug!(error = %e, "OS keychain unusable; using the key file");
                return Ok(None);
            }
        };
        match entry.get_password() {
            Ok(text) => {
                let text = Zeroizing::new(text);
                match decode_key(&text) {
                    Some(bytes) => Ok(Some(EncryptionKey::from_bytes(bytes, KeyBackend::Keychain))),
                    None => Err(CredentialError::Keychain(format!(
                        "the entry {:?}/{KEYRING_USER} is not a moat key. Remove it from your keychain, \
                         or set MOAT_KEYRING_BACKEND=file, then grant your credentials again",
                        keyring_service()
                    ))),
                }
            }
            Err(keyring::Error::NoEntry) => {
                may_create()?;
                let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
                rand::rngs::OsRng.fill_bytes(bytes.as_mut());
                match entry.set_password(&encode_key(&bytes)) {
                    Ok(()) => Ok(Some(EncryptionKey {
                        bytes,
                        backend: KeyBackend::Keychain,
                    })),
                    Err(e) => {
                        tracing::debug!(error = %e, "OS keychain refused the key; using the key file");
                        Ok(None)
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "OS keychain unreachable; using the key file");
                Ok(None)
            }
        }
    }

    /// Secret Service lives on the session bus: without one there is no
    /// keychain, and trying would only add a connection timeout.
    #[cfg(target_os = "linux")]
    fn reachable() -> bool {
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty())
    }

    #[cfg(target_os = "macos")]
    fn reachable() -> bool {
        true
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod keychain {
    use super::*;

    pub(super) fn load_or_create(
        _may_create: &dyn Fn() -> Result<(), CredentialError>,
    ) -> Result<Option<EncryptionKey>, CredentialError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_round_trips_through_base64() {
        let bytes = [7u8; KEY_LEN];
        assert_eq!(decode_key(&encode_key(&bytes)), Some(bytes));
        assert_eq!(decode_key("not base64!"), None);
        assert_eq!(decode_key("AAAA"), None);
    }

    #[test]
    fn file_key_is_created_once_with_mode_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MoatHome::at(tmp.path());
        let a = EncryptionKey::load_or_create_file(&home, false).unwrap();
        let b = EncryptionKey::load_or_create_file(&home, false).unwrap();
        assert_eq!(a.bytes(), b.bytes());
        assert_eq!(mode_of(&home.key_file()).unwrap(), 0o600);
    }

    #[test]
    fn insecure_key_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MoatHome::at(tmp.path());
        EncryptionKey::load_or_create_file(&home, false).unwrap();
        std::fs::set_permissions(home.key_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = EncryptionKey::load_or_create_file(&home, false).unwrap_err();
        assert!(err
            .to_string()
            .contains("has permissions 0644 (expected 0600)"));
    }

    #[test]
    fn wrong_length_key_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MoatHome::at(tmp.path());
        write_private_atomic(&home.key_file(), b"short").unwrap();
        let err = EncryptionKey::load_or_create_file(&home, false).unwrap_err();
        assert!(matches!(err, CredentialError::KeyFileLength { len: 5, .. }));
    }

    #[test]
    fn no_key_is_created_while_credentials_exist() {
        let tmp = tempfile::tempdir().unwrap();
        let home = MoatHome::at(tmp.path());
        let profile_dir = home.credentials_dir(None).join("profiles/work");
        std::fs::create_dir_all(&profile_dir).unwrap();
        std::fs::write(profile_dir.join("github.enc"), b"MOAT").unwrap();
        let err = EncryptionKey::load_or_create_file(&home, false).unwrap_err();
        assert!(
            matches!(err, CredentialError::KeyMissing { count: 1, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&home.key_file().display().to_string()),
            "{text}"
        );
        let fix = moat_hint::Hint::hint(&err).unwrap().to_string();
        assert!(fix.contains("restore the key"), "{fix}");
        assert!(!home.key_file().exists());
        // Once the credentials are gone, a key is created as usual.
        std::fs::remove_dir_all(home.credentials_dir(None)).unwrap();
        EncryptionKey::load_or_create_file(&home, false).unwrap();
        assert!(home.key_file().exists());
    }
}
