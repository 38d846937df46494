//! The moat certificate authority and the leaf certificates it mints for
//! intercepted hosts.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{Datelike, Duration as ChronoDuration, Utc};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{ErrorKind, ProxyError};

/// How many leaf certificates are kept in memory.
pub const LEAF_CACHE_CAPACITY: usize = 1000;

/// The subject of the CA certificate. Leaf certificates name it as their
/// issuer, and a loaded CA is rebuilt from the key with this subject, so it
/// must never change.
const CA_COMMON_NAME: &str = "moat local CA";
const CA_ORGANIZATION: &str = "moat";

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";

/// The certificate authority whose leaf certificates the sandbox trusts.
///
/// [`CertificateAuthority::load_or_create`] keeps it in `dir/ca.crt` and
/// `dir/ca.key` (the key `0600`, the directory `0700`, both written
/// atomically). Leaf certificates are minted on demand per host, signed by
/// the CA, and cached (at most [`LEAF_CACHE_CAPACITY`], least recently used
/// evicted first). All leaves share one P-256 key generated at start-up, so
/// minting is a single signature.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    cert_path: PathBuf,
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
    leaf_key: KeyPair,
    provider: Arc<rustls::crypto::CryptoProvider>,
    cache: Mutex<LeafCache>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, ProxyError> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| ProxyError::ca("building CA parameters").with_source(e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, CA_ORGANIZATION);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2049, 1, 1);
    Ok(params)
}

fn io_err(action: &str, path: &Path, e: impl Into<crate::error::BoxError>) -> ProxyError {
    ProxyError::new(ErrorKind::Ca, format!("{action} {}", path.display())).with_source(e)
}

impl CertificateAuthority {
    /// Loads the CA from `dir/ca.crt` and `dir/ca.key`, creating both (and
    /// `dir`, mode `0700`) when neither exists.
    ///
    /// A key without a certificate gets a fresh certificate for the same
    /// key; a certificate without its key, or a key that does not match the
    /// certificate, is an error: moat never silently replaces a CA someone
    /// may already trust.
    pub fn load_or_create(dir: &Path) -> Result<Self, ProxyError> {
        moat_home::ensure_private_dir(dir).map_err(|e| io_err("creating CA directory", dir, e))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert =
            moat_home::read_if_exists(&cert_path).map_err(|e| io_err("reading", &cert_path, e))?;
        let key =
            moat_home::read_if_exists(&key_path).map_err(|e| io_err("reading", &key_path, e))?;
        match (cert, key) {
            (Some(cert), Some(key)) => Self::load(cert_path, &cert, &key),
            (None, Some(key)) => {
                let key_pem = String::from_utf8(key)
                    .map_err(|e| io_err("reading CA key (not PEM)", &key_path, e))?;
                let key = KeyPair::from_pem(&key_pem)
                    .map_err(|e| io_err("parsing CA key", &key_path, e))?;
                Self::write_cert_for(cert_path, key)
            }
            (Some(_), None) => Err(ProxyError::ca(format!(
                "{} exists but its key {} is missing; remove the certificate to create a new CA \
                 (the sandbox trust stores will pick up the new one)",
                cert_path.display(),
                key_path.display()
            ))),
            (None, None) => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| ProxyError::ca("generating the CA key").with_source(e))?;
                moat_home::write_private_atomic(&key_path, key.serialize_pem().as_bytes())
                    .map_err(|e| io_err("writing", &key_path, e))?;
                Self::write_cert_for(cert_path, key)
            }
        }
    }

    fn write_cert_for(cert_path: PathBuf, key: KeyPair) -> Result<Self, ProxyError> {
        let cert = ca_params()?
            .self_signed(&key)
            .map_err(|e| ProxyError::ca("self-signing the CA certificate").with_source(e))?;
        let pem = cert.pem();
        moat_home::write_private_atomic(&cert_path, pem.as_bytes())
            .map_err(|e| io_err("writing", &cert_path, e))?;
        Self::assemble(cert_path, pem, cert.der().clone(), cert, key)
    }

    fn load(cert_path: PathBuf, cert: &[u8], key: &[u8]) -> Result<Self, ProxyError> {
        let key_pem = std::str::from_utf8(key)
            .map_err(|e| io_err("reading CA key (not PEM)", &cert_path, e))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| io_err("parsing CA key beside", &cert_path, e))?;
        let cert_pem = String::from_utf8(cert.to_vec())
            .map_err(|e| io_err("reading CA certificate (not PEM)", &cert_path, e))?;
        let der = parse_first_cert(&cert_pem).ok_or_else(|| {
            ProxyError::ca(format!("{} holds no PEM certificate", cert_path.display()))
        })?;
        // The certificate on disk must carry this key, or leaves signed by
        // the key would not chain to what the sandbox trusts.
        if !contains(der.as_ref(), &key.public_key_der()) {
            return Err(ProxyError::ca(format!(
                "{} does not match its key ca.key; remove both files to create a new CA",
                cert_path.display()
            )));
        }
        // rcgen needs the issuer as a `Certificate`: rebuild it from the key
        // and the fixed subject. Its signature differs from the file's, but
        // leaves only use its subject and key identifier, which are the same.
        let issuer = ca_params()?
            .self_signed(&key)
            .map_err(|e| ProxyError::ca("rebuilding the CA certificate").with_source(e))?;
        Self::assemble(cert_path, cert_pem, der, issuer, key)
    }

    fn assemble(
        cert_path: PathBuf,
        cert_pem: String,
        cert_der: CertificateDer<'static>,
        issuer: rcgen::Certificate,
        issuer_key: KeyPair,
    ) -> Result<Self, ProxyError> {
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ProxyError::ca("generating the leaf key").with_source(e))?;
        Ok(CertificateAuthority {
            cert_pem,
            cert_der,
            cert_path,
            issuer,
            issuer_key,
            leaf_key,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            cache: Mutex::new(LeafCache::default()),
        })
    }

    /// The CA certificate, PEM: what the sandbox must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Where the CA certificate lives (`dir/ca.crt`).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// How many leaf certificates are cached.
    pub fn cached_leaves(&self) -> usize {
        self.cache.lock().map(|c| c.map.len()).unwrap_or(0)
    }

    /// A leaf certificate for `host` (a DNS name or an IP address), signed
    /// by this CA, DER.
    pub fn mint_leaf(&self, host: &str) -> Result<CertificateDer<'static>, ProxyError> {
        let host = normalize_host(host);
        let mut params = CertificateParams::new(vec![host.clone()]).map_err(|e| {
            ProxyError::bad_request(format!("cannot make a certificate for {host:?}"))
                .with_source(e)
        })?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, host.as_str());
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = Utc::now();
        let start = now - ChronoDuration::days(1);
        let end = now + ChronoDuration::days(365);
        params.not_before =
            rcgen::date_time_ymd(start.year(), start.month() as u8, start.day() as u8);
        params.not_after = rcgen::date_time_ymd(end.year(), end.month() as u8, end.day() as u8);
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer, &self.issuer_key)
            .map_err(|e| {
                ProxyError::new(ErrorKind::Ca, format!("signing a certificate for {host:?}"))
                    .with_source(e)
            })?;
        Ok(cert.der().clone())
    }

    fn build_server_config(&self, host: &str) -> Result<Arc<ServerConfig>, ProxyError> {
        let leaf = self.mint_leaf(host)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProxyError::new(ErrorKind::Internal, "TLS versions").with_source(e))?
            .with_no_client_auth()
            .with_single_cert(vec![leaf], key)
            .map_err(|e| ProxyError::new(ErrorKind::Ca, "using a minted leaf").with_source(e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The TLS server configuration presenting a leaf for `host`, from the
    /// cache or freshly minted on the blocking pool (never on the async
    /// workers). ALPN offers `h2` and `http/1.1`.
    pub(crate) async fn server_config(
        self: &Arc<Self>,
        host: &str,
    ) -> Result<Arc<ServerConfig>, ProxyError> {
        let host = normalize_host(host);
        if let Some(config) = self.cache.lock().ok().and_then(|mut c| c.get(&host)) {
            return Ok(config);
        }
        let ca = self.clone();
        let key = host.clone();
        let config = tokio::task::spawn_blocking(move || ca.build_server_config(&key))
            .await
            .map_err(|e| {
                ProxyError::new(ErrorKind::Internal, "minting task failed").with_source(e)
            })??;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(host, config.clone());
        }
        Ok(config)
    }
}

fn normalize_host(host: &str) -> String {
    let host = host.trim_end_matches('.');
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.to_ascii_lowercase()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The first `CERTIFICATE` block of a PEM text.
pub(crate) fn parse_first_cert(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
}

/// A bounded least-recently-used cache of server configurations.
#[derive(Default)]
struct LeafCache {
    map: HashMap<String, (Arc<ServerConfig>, u64)>,
    tick: u64,
}

impl LeafCache {
    fn get(&mut self, host: &str) -> Option<Arc<ServerConfig>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(host).map(|(config, used)| {
            *used = tick;
            config.clone()
        })
    }

    fn insert(&mut self, host: String, config: Arc<ServerConfig>) {
        self.tick += 1;
        if self.map.len() >= LEAF_CACHE_CAPACITY && !self.map.contains_key(&host) {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(host, (config, self.tick));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_then_loads_the_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let ca = CertificateAuthority::load_or_create(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("ca.key")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let again = CertificateAuthority::load_or_create(&dir).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        again.mint_leaf("api.github.com").unwrap();
        again.mint_leaf("127.0.0.1").unwrap();
    }

    #[test]
    fn mismatched_or_garbage_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        CertificateAuthority::load_or_create(&a).unwrap();
        CertificateAuthority::load_or_create(&b).unwrap();
        std::fs::copy(b.join("ca.key"), a.join("ca.key")).unwrap();
        assert!(CertificateAuthority::load_or_create(&a).is_err());
        std::fs::write(a.join("ca.key"), b"garbage").unwrap();
        assert!(CertificateAuthority::load_or_create(&a).is_err());
        std::fs::remove_file(a.join("ca.key")).unwrap();
        assert!(CertificateAuthority::load_or_create(&a).is_err());
    }

    #[test]
    fn cache_is_bounded() {
        let mut cache = LeafCache::default();
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path()).unwrap();
        let config = ca.build_server_config("a.example").unwrap();
        for i in 0..LEAF_CACHE_CAPACITY + 10 {
            cache.insert(format!("h{i}"), config.clone());
            cache.get("h0");
        }
        assert_eq!(cache.map.len(), LEAF_CACHE_CAPACITY);
        assert!(cache.get("h0").is_some(), "recently used entries stay");
        assert!(cache.get("h1").is_none(), "old entries go");
    }
}
