use std::path::PathBuf;
use std::sync::OnceLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use moat_home::{read_if_exists, write_private_atomic, MoatHome, Profile};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::{Credential, CredentialError, DecryptError, EncryptionKey};

/// One file in the store, decrypted or not.
#[derive(Debug)]
pub struct StoredEntry {
    /// The file stem (provider name).
    pub provider: String,
    /// The credential, or why it could not be read.
    pub credential: Result<Credential, DecryptError>,
}

const MAGIC: &[u8; 4] = b"MOAT";
/// Version 1: `MAGIC ‖ 1 ‖ nonce ‖ ciphertext`; still read.
const VERSION_1: u8 = 1;
/// Version 2 adds a check value of the key, so a wrong key is told apart
/// from a damaged file: `MAGIC ‖ 2 ‖ key check ‖ nonce ‖ ciphertext`.
const VERSION: u8 = 2;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_CHECK_LEN: usize = 8;

/// The encrypted credential store of one profile.
///
/// Files are `MAGIC ‖ version ‖ key check ‖ nonce ‖ AES-256-GCM(JSON)`,
/// with the file stem as associated data: a file copied to another
/// provider's name fails authentication instead of injecting the wrong
/// secret. The key check (8 bytes of a GMAC of a constant under the key)
/// tells "wrong key" from "corrupted file"; a file that fails is tried
/// under its neighbours' and the built-in providers' names to tell "file
/// belongs to another provider". The key is loaded
/// lazily, so `remove` works even when the key is lost.
#[derive(Debug)]
pub struct CredentialStore {
    home: MoatHome,
    profile: Option<Profile>,
    key: OnceLock<EncryptionKey>,
}

impl CredentialStore {
    /// The store of `profile` (the default profile when `None`) in `home`.
    pub fn new(home: MoatHome, profile: Option<Profile>) -> Self {
        CredentialStore {
            home,
            profile,
            key: OnceLock::new(),
        }
    }

    /// A store using `key` instead of the keychain or key file.
    pub fn with_key(home: MoatHome, profile: Option<Profile>, key: EncryptionKey) -> Self {
        let store = CredentialStore::new(home, profile);
        let _ = store.key.set(key);
        store
    }

    /// The active profile.
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    /// The directory holding this profile's files.
    pub fn dir(&self) -> PathBuf {
        self.home.credentials_dir(self.profile.as_ref())
    }

    /// The path of `provider`'s file.
    pub fn path(&self, provider: &str) -> PathBuf {
        self.dir().join(format!("{provider}.enc"))
    }

    /// The encryption key, loaded (or created) on first use.
    pub fn key(&self) -> Result<&EncryptionKey, CredentialError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let key = EncryptionKey::load_or_create(&self.home)?;
        Ok(self.key.get_or_init(|| key))
    }

    /// Encrypts and writes `credential`, replacing any previous one.
    pub fn save(&self, credential: &Credential) -> Result<PathBuf, CredentialError> {
        let key = self.key()?;
        let plaintext =
            Zeroizing::new(serde_json::to_vec(credential).map_err(CredentialError::Encode)?);
        let bytes = seal(key, &credential.provider, &plaintext)?;
        let path = self.path(&credential.provider);
        write_private_atomic(&path, &bytes)?;
        Ok(path)
    }

    /// Reads and decrypts `provider`'s credential.
    pub fn load(&self, provider: &str) -> Result<Credential, CredentialError> {
        let path = self.path(provider);
        let Some(bytes) = read_if_exists(&path)? else {
            return Err(self.not_found(provider));
        };
        let key = self.key()?;
        self.open(key, provider, &bytes)
            .map_err(|source| CredentialError::Decrypt {
                provider: provider.to_string(),
                grant_command: grant_command_for(provider),
                error: source,
            })
    }

    /// Deletes `provider`'s credential. Needs no key.
    pub fn remove(&self, provider: &str) -> Result<(), CredentialError> {
        let path = self.path(provider);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.not_found(provider)),
            Err(e) => Err(CredentialError::Home(moat_home::HomeError::Io {
                action: "removing",
                path,
                error: e,
            })),
        }
    }

    /// Whether `provider` has a stored file (readable or not).
    pub fn contains(&self, provider: &str) -> bool {
        self.path(provider).exists()
    }

    /// Every stored credential of this profile, sorted by provider; files
    /// that fail to decrypt are listed with the reason.
    pub fn list(&self) -> Result<Vec<StoredEntry>, CredentialError> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(CredentialError::Home(moat_home::HomeError::Io {
                    action: "listing",
                    path: dir,
                    error: e,
                }))
            }
        };
        let mut stems: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".enc"))
                    .filter(|n| !n.starts_with('.'))
                    .map(str::to_string)
            })
            .collect();
        stems.sort();
        if stems.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.key()?;
        let mut out = Vec::with_capacity(stems.len());
        for provider in stems {
            let credential = match read_if_exists(&self.path(&provider))? {
                Some(bytes) => self.open(key, &provider, &bytes),
                None => continue,
            };
            out.push(StoredEntry {
                provider,
                credential,
            });
        }
        Ok(out)
    }

    /// Decrypts `bytes` as `provider`'s file; when authentication fails
    /// under the right key, tries the names of the other files here and
    /// of the built-in providers, to report a copied or renamed file.
    fn open(
        &self,
        key: &EncryptionKey,
        provider: &str,
        bytes: &[u8],
    ) -> Result<Credential, DecryptError> {
        let original = match open(key, provider, bytes) {
            Err(e @ (DecryptError::Corrupted | DecryptError::Authentication)) => e,
            other => return other,
        };
        let mut names: Vec<String> = crate::ProviderRegistry::default()
            .all()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        if let Ok(entries) = std::fs::read_dir(self.dir()) {
            names.extend(entries.flatten().filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".enc"))
                    .map(str::to_string)
            }));
        }
        names.sort();
        names.dedup();
        for name in names.iter().filter(|n| n.as_str() != provider) {
            if open(key, name, bytes).is_ok() {
                return Err(DecryptError::OtherProvider(name.clone()));
            }
        }
        Err(original)
    }

    fn not_found(&self, provider: &str) -> CredentialError {
        CredentialError::NotFound {
            provider: display_name(provider),
            grant_command: grant_command_for(provider),
            profile: self.profile.as_ref().map(|p| p.as_str().to_owned()),
        }
    }
}

fn display_name(stem: &str) -> String {
    stem.to_string()
}

pub(crate) fn grant_command_for(stem: &str) -> String {
    match stem.strip_prefix("mcp-") {
        Some(name) => format!("mcp {name}"),
        None => stem.to_string(),
    }
}

fn aad(provider: &str) -> Vec<u8> {
    format!("moat-credential:v1:{provider}").into_bytes()
}

/// A check value of `key`: 8 bytes of the AES-GCM tag of an empty
/// message under a fixed nonce and label. It reveals nothing usable about
/// the key and tells whether a file was written with it.
fn key_check(key: &EncryptionKey) -> Result<[u8; KEY_CHECK_LEN], CredentialError> {
    let cipher = Aes256Gcm::new(key.bytes().into());
    let tag = cipher
        .encrypt(
            Nonce::from_slice(&[0u8; NONCE_LEN]),
            Payload {
                msg: b"",
                aad: b"moat-key-check:v1",
            },
        )
        .map_err(|_| CredentialError::Encrypt("key check"))?;
    let mut out = [0u8; KEY_CHECK_LEN];
    out.copy_from_slice(&tag[..KEY_CHECK_LEN]);
    Ok(out)
}

fn seal(key: &EncryptionKey, provider: &str, plaintext: &[u8]) -> Result<Vec<u8>, CredentialError> {
    let cipher = Aes256Gcm::new(key.bytes().into());
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad(provider),
            },
        )
        .map_err(|_| CredentialError::Encrypt("encryption"))?;
    let check = key_check(key)?;
    let mut out =
        Vec::with_capacity(MAGIC.len() + 1 + KEY_CHECK_LEN + NONCE_LEN + ciphertext.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&check);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn open(key: &EncryptionKey, provider: &str, bytes: &[u8]) -> Result<Credential, DecryptError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(if MAGIC.starts_with(bytes) {
            DecryptError::Truncated(bytes.len())
        } else {
            DecryptError::Foreign
        });
    }
    let Some(&version) = bytes.get(MAGIC.len()) else {
        return Err(DecryptError::Truncated(bytes.len()));
    };
    let check_len = match version {
        VERSION_1 => 0,
        VERSION => KEY_CHECK_LEN,
        other => return Err(DecryptError::UnsupportedVersion(other)),
    };
    let header_len = MAGIC.len() + 1 + check_len + NONCE_LEN;
    if bytes.len() < header_len + TAG_LEN {
        return Err(DecryptError::Truncated(bytes.len()));
    }
    let check = &bytes[MAGIC.len() + 1..MAGIC.len() + 1 + check_len];
    let key_matches = match key_check(key) {
        Ok(expected) => version == VERSION && check == expected.as_slice(),
        Err(_) => false,
    };
    if version == VERSION && !key_matches {
        return Err(DecryptError::WrongKey);
    }
    let nonce = &bytes[header_len - NONCE_LEN..header_len];
    let cipher = Aes256Gcm::new(key.bytes().into());
    let plaintext = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: &bytes[header_len..],
                    aad: &aad(provider),
                },
            )
            .map_err(|_| {
                if key_matches {
                    DecryptError::Corrupted
                } else {
                    DecryptError::Authentication
                }
            })?,
    );
    let credential: Credential =
        serde_json::from_slice(&plaintext).map_err(|e| DecryptError::Malformed(e.to_string()))?;
    if credential.provider != provider {
        return Err(DecryptError::OtherProvider(credential.provider));
    }
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CredentialSource, KeyBackend, Secret};

    fn store(dir: &std::path::Path, key: u8) -> CredentialStore {
        CredentialStore::with_key(
            MoatHome::at(dir),
            None,
            EncryptionKey::from_bytes([key; 32], KeyBackend::File),
        )
    }

    #[test]
    fn round_trip_and_fresh_nonce_per_write() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1);
        let c = Credential::new("github", Secret::new("ghp_abc"), CredentialSource::Env);
        let path = s.save(&c).unwrap();
        let first = std::fs::read(&path).unwrap();
        s.save(&c).unwrap();
        let second = std::fs::read(&path).unwrap();
        assert_ne!(first, second, "nonce must change per write");
        assert_eq!(s.load("github").unwrap().secret.expose(), "ghp_abc");
        assert!(!String::from_utf8_lossy(&second).contains("ghp_abc"));
    }

    #[test]
    fn wrong_key_is_an_authentication_failure() {
        let tmp = tempfile::tempdir().unwrap();
        store(tmp.path(), 1)
            .save(&Credential::new(
                "github",
                Secret::new("x"),
                CredentialSource::Env,
            ))
            .unwrap();
        let err = store(tmp.path(), 2).load("github").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("decrypting credential for github: wrong key: "),
            "{text}"
        );
        let fix = moat_hint::Hint::hint(&err).unwrap().to_string();
        assert!(
            fix.starts_with("Restore the key it was written with"),
            "{fix}"
        );
        assert!(
            fix.ends_with("To re-authenticate: moat grant github"),
            "{fix}"
        );
    }

    #[test]
    fn swapped_files_fail_authentication() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1);
        s.save(&Credential::new(
            "github",
            Secret::new("x"),
            CredentialSource::Env,
        ))
        .unwrap();
        std::fs::copy(s.path("github"), s.path("openai")).unwrap();
        match s.load("openai") {
            Err(CredentialError::Decrypt {
                error: DecryptError::OtherProvider(p),
                ..
            }) => assert_eq!(p, "github"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn damage_under_the_right_key_is_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1);
        let path = s
            .save(&Credential::new(
                "github",
                Secret::new("x"),
                CredentialSource::Env,
            ))
            .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            s.load("github"),
            Err(CredentialError::Decrypt {
                error: DecryptError::Corrupted,
                ..
            })
        ));
    }

    #[test]
    fn version_1_files_are_still_read() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1);
        let c = Credential::new("github", Secret::new("ghp_old"), CredentialSource::Env);
        let v2 = seal(s.key().unwrap(), "github", &serde_json::to_vec(&c).unwrap()).unwrap();
        // The same file as moat wrote it before the key check.
        let mut v1 = b"MOAT\x01".to_vec();
        v1.extend_from_slice(&v2[5 + KEY_CHECK_LEN..]);
        std::fs::create_dir_all(s.dir()).unwrap();
        std::fs::write(s.path("github"), &v1).unwrap();
        assert_eq!(s.load("github").unwrap().secret.expose(), "ghp_old");
        // Its format cannot tell a wrong key from damage, and says so.
        let err = store(tmp.path(), 2).load("github").unwrap_err();
        assert!(
            err.to_string().contains("wrong key or corrupted file"),
            "{err}"
        );
    }

    #[test]
    fn every_corruption_is_an_error_and_leaves_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path(), 1);
        s.save(&Credential::new(
            "github",
            Secret::new("x"),
            CredentialSource::Env,
        ))
        .unwrap();
        let good = std::fs::read(s.path("github")).unwrap();
        let mut cases: Vec<Vec<u8>> = vec![Vec::new(), b"hello".to_vec(), b"MOAT".to_vec()];
        for cut in 0..good.len() {
            cases.push(good[..cut].to_vec());
        }
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x01;
            cases.push(flipped);
        }
        for bytes in cases {
            std::fs::write(s.path("github"), &bytes).unwrap();
            assert!(s.load("github").is_err());
            assert_eq!(std::fs::read(s.path("github")).unwrap(), bytes);
        }
    }

    #[test]
    fn missing_credential_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let err = store(tmp.path(), 1).load("github").unwrap_err();
        assert_eq!(err.to_string(), "credential not found: github");
        let err = store(tmp.path(), 1).remove("mcp-x").unwrap_err();
        let fix = moat_hint::Hint::hint(&err).unwrap().to_string();
        assert!(fix.starts_with("Run: moat grant mcp x\n"), "{fix}");
    }
}
