//! Where an agent's executable comes from on the host, for the native
//! runtime (container runtimes install the npm package into the image).
//!
//! The agent on the host's `PATH` is used when there is one; otherwise moat
//! installs the npm package into a cache of its own, one directory per
//! version (`MOAT_HOME/agents/<agent>/<version>`). Either way the sandbox
//! sees the package read-only: under `/usr`, where the native sandbox
//! shows the host's own files, or mounted at [`AGENT_DIR_IN_SANDBOX`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Agent;

/// Where a package that is not under `/usr` appears in the sandbox.
pub const AGENT_DIR_IN_SANDBOX: &str = "/opt/moat/agent";

/// An agent found or installed on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSource {
    /// Under `/usr`, which the native sandbox shows as is.
    System {
        /// The executable, as found on `PATH`.
        program: PathBuf,
    },
    /// An npm package directory, mounted read-only at
    /// [`AGENT_DIR_IN_SANDBOX`].
    Package {
        /// The package directory on the host.
        dir: PathBuf,
        /// The executable, relative to `dir`.
        program: PathBuf,
        /// The installed version, when known.
        version: Option<String>,
    },
}

impl AgentSource {
    /// The executable's path inside the sandbox.
    pub fn program_in_sandbox(&self) -> PathBuf {
        match self {
            AgentSource::System { program } => program.clone(),
            AgentSource::Package { program, .. } => Path::new(AGENT_DIR_IN_SANDBOX).join(program),
        }
    }

    /// Where it is on the host, for `moat doctor`.
    pub fn describe(&self) -> String {
        match self {
            AgentSource::System { program } => program.display().to_string(),
            AgentSource::Package {
                dir,
                program,
                version,
            } => format!(
                "{}{}",
                dir.join(program).display(),
                version
                    .as_deref()
                    .map(|v| format!(" (version {v})"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Why the agent could not be found or installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Neither on `PATH` nor installable without npm.
    #[error("{binary} is not installed and npm is not available to install {package}.")]
    NoNpm {
        /// The agent's executable.
        binary: &'static str,
        /// Its npm package.
        package: &'static str,
    },
    /// npm failed.
    #[error("installing {package} with npm failed: {output}")]
    Npm {
        /// The npm package.
        package: &'static str,
        /// npm's last lines.
        output: String,
    },
    /// The installed package does not hold the executable.
    #[error("{package} was installed in {} but has no {binary} executable", dir.display())]
    Incomplete {
        /// The npm package.
        package: &'static str,
        /// The executable looked for.
        binary: &'static str,
        /// Where it was installed.
        dir: PathBuf,
    },
    /// The cache directory could not be used.
    #[error("cannot use the agent cache {}: {error}", dir.display())]
    Cache {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
}

impl moat_hint::Hint for InstallError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            InstallError::NoNpm { package, .. } => format!(
                "Install it on the host (npm install -g {package}) or install Node.js and npm, \
                 then run again."
            ),
            InstallError::Npm { package, .. } => format!(
                "Check that the npm registry is reachable (or install it on the host: npm \
                 install -g {package})."
            ),
            _ => return None,
        };
        Some(moat_hint::Fix::new(fix))
    }
}

/// The agent on `path` (a `PATH` value), if any.
pub fn find_on_path(agent: &dyn Agent, path: &OsStr) -> Option<AgentSource> {
    std::env::split_paths(path)
        .map(|dir| dir.join(agent.binary()))
        .find(|candidate| is_executable(candidate))
        .and_then(|found| source_for(agent, &found, None))
}

/// The newest version already in moat's cache, if any.
pub fn find_in_cache(agent: &dyn Agent, cache: &Path) -> Option<AgentSource> {
    let dir = cache.join(agent.name());
    let mut versions: Vec<(Vec<u64>, String)> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|v| !v.starts_with('.'))
        .map(|v| (version_key(&v), v))
        .collect();
    versions.sort();
    versions.into_iter().rev().find_map(|(_, version)| {
        let prefix = dir.join(&version);
        let bin = prefix.join("bin").join(agent.binary());
        is_executable(&bin)
            .then(|| source_for(agent, &bin, Some(version)))
            .flatten()
    })
}

/// Installs the newest version of the agent's package into the cache
/// with `npm` and returns it.
pub fn install(agent: &dyn Agent, cache: &Path, npm: &Path) -> Result<AgentSource, InstallError> {
    let package = agent.npm_package();
    if !is_executable(npm) {
        return Err(InstallError::NoNpm {
            binary: agent.binary(),
            package,
        });
    }
    let run = |args: &[&str]| -> Result<String, InstallError> {
        let out = Command::new(npm)
            .args(args)
            .output()
            .map_err(|e| InstallError::Npm {
                package,
                output: e.to_string(),
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(5).collect();
            Err(InstallError::Npm {
                package,
                output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            })
        }
    };
    let version = run(&["view", package, "version"])?;
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+".contains(c))
    {
        return Err(InstallError::Npm {
            package,
            output: format!("the registry answered an unusable version {version:?}"),
        });
    }
    let dir = cache.join(agent.name());
    std::fs::create_dir_all(&dir).map_err(|source| InstallError::Cache {
        dir: dir.clone(),
        error: source,
    })?;
    let prefix = dir.join(&version);
    if !prefix.join("bin").join(agent.binary()).exists() {
        // Installed beside the final directory and renamed into place, so
        // an interrupted install never looks complete.
        let partial = dir.join(format!(".{version}.partial"));
        let _ = std::fs::remove_dir_all(&partial);
        let partial_str = partial.to_string_lossy().into_owned();
        let spec = format!("{package}@{version}");
        run(&[
            "install",
            "-g",
            "--no-fund",
            "--no-audit",
            "--prefix",
            &partial_str,
            &spec,
        ])?;
        std::fs::rename(&partial, &prefix).map_err(|source| InstallError::Cache {
            dir: prefix.clone(),
            error: source,
        })?;
    }
    let bin = prefix.join("bin").join(agent.binary());
    source_for(agent, &bin, Some(version)).ok_or_else(|| InstallError::Incomplete {
        package,
        binary: agent.binary(),
        dir: prefix,
    })
}

/// Turns an executable on the host into a source: as is under `/usr`,
/// else its npm package directory (the nearest ancestor of the real file
/// named like the package).
fn source_for(agent: &dyn Agent, found: &Path, version: Option<String>) -> Option<AgentSource> {
    let real = std::fs::canonicalize(found).ok()?;
    if real.starts_with("/usr") && found.starts_with("/usr") {
        return Some(AgentSource::System {
            program: found.to_owned(),
        });
    }
    let package_tail = Path::new("node_modules").join(agent.npm_package());
    let dir = real.ancestors().find(|a| a.ends_with(&package_tail))?;
    let program = real.strip_prefix(dir).ok()?.to_owned();
    Some(AgentSource::Package {
        dir: dir.to_owned(),
        program,
        version,
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `1.10.2` sorts after `1.9.0`.
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Claude;

    /// An npm-style global install: `bin/claude` linking into the package.
    fn fake_install(prefix: &Path) {
        use std::os::unix::fs::PermissionsExt as _;
        let package = prefix.join("lib/node_modules/@anthropic-ai/claude-code/bin");
        std::fs::create_dir_all(&package).unwrap();
        let exe = package.join("claude.exe");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        std::os::unix::fs::symlink(
            "../lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe",
            prefix.join("bin/claude"),
        )
        .unwrap();
    }

    #[test]
    fn an_agent_on_path_outside_usr_is_its_package_directory() {
        let tmp = tempfile::tempdir().unwrap();
        fake_install(tmp.path());
        let path =
            std::env::join_paths([Path::new("/nonexistent"), &tmp.path().join("bin")]).unwrap();
        let found = find_on_path(&Claude, &path).unwrap();
        let real = std::fs::canonicalize(tmp.path()).unwrap();
        assert_eq!(
            found,
            AgentSource::Package {
                dir: real.join("lib/node_modules/@anthropic-ai/claude-code"),
                program: PathBuf::from("bin/claude.exe"),
                version: None,
            }
        );
        assert_eq!(
            found.program_in_sandbox(),
            PathBuf::from("/opt/moat/agent/bin/claude.exe")
        );
        assert!(find_on_path(&Claude, OsStr::new("/nonexistent")).is_none());
    }

    #[test]
    fn the_newest_cached_version_wins() {
        let cache = tempfile::tempdir().unwrap();
        for v in ["1.9.0", "1.10.2", ".2.0.0.partial"] {
            fake_install(&cache.path().join("claude").join(v));
        }
        let Some(AgentSource::Package { version, .. }) = find_in_cache(&Claude, cache.path())
        else {
            panic!("nothing found in the cache");
        };
        assert_eq!(version.as_deref(), Some("1.10.2"));
    }

    #[test]
    fn without_npm_the_error_says_how_to_install() {
        let cache = tempfile::tempdir().unwrap();
        let err = install(&Claude, cache.path(), Path::new("/nonexistent/npm")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "claude is not installed and npm is not available to install \
             @anthropic-ai/claude-code."
        );
        let fix = moat_hint::Hint::hint(&err).unwrap();
        assert!(
            fix.as_str()
                .contains("npm install -g @anthropic-ai/claude-code"),
            "{fix}"
        );
    }
}
