//! The registry of known dependencies (data), checking what users write
//! in `dependencies:` against it, and the `moat deps list` / `moat deps info` queries.

use moat_sandbox::services::{self, ServiceDef};
use serde::Serialize;

use crate::error::DockerError;

/// The kind of a dependency, also the `--type` filter of `moat deps list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DepType {
    /// A language runtime (node, python, go).
    Runtime,
    /// A Debian package installed with apt-get.
    Apt,
    /// A tool with its own install recipe (gh).
    Tool,
    /// A package from a language's registry (`npm:`, `pip:`, `uv:`, `go:`).
    Dynamic,
    /// A service started beside the sandbox (postgres, mysql, redis).
    Service,
    /// A Docker daemon for the sandbox (`docker:host`, `docker:dind`).
    Docker,
}

impl DepType {
    /// Parses the `--type` value.
    pub fn parse(s: &str) -> Option<DepType> {
        match s {
            "runtime" => Some(DepType::Runtime),
            "apt" => Some(DepType::Apt),
            "tool" => Some(DepType::Tool),
            "dynamic" => Some(DepType::Dynamic),
            "service" => Some(DepType::Service),
            "docker" => Some(DepType::Docker),
            _ => None,
        }
    }

    /// The name used by `--type`.
    pub fn as_str(self) -> &'static str {
        match self {
            DepType::Runtime => "runtime",
            DepType::Apt => "apt",
            DepType::Tool => "tool",
            DepType::Dynamic => "dynamic",
            DepType::Service => "service",
            DepType::Docker => "docker",
        }
    }
}

/// One entry of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DepInfo {
    /// The name users write (`node`, `jq`, `npm:` for dynamic kinds).
    pub name: &'static str,
    /// Its kind.
    pub kind: DepType,
    /// One line for `moat deps list`.
    pub description: &'static str,
    /// The version assumed when none is written (`node` means `node@22`).
    pub default_version: Option<&'static str>,
    /// The Debian packages installed for it.
    pub apt_packages: &'static [&'static str],
    /// The runtime it needs (`npm:` needs `node`).
    pub requires: Option<&'static str>,
    /// What is actually installed, honestly: the version comes from the
    /// base image's Debian release, not from `@version`.
    pub provides: &'static str,
}

const fn apt(
    name: &'static str,
    description: &'static str,
    pkgs: &'static [&'static str],
) -> DepInfo {
    DepInfo {
        name,
        kind: DepType::Apt,
        description,
        default_version: None,
        apt_packages: pkgs,
        requires: None,
        provides: "the Debian package of the base image's release",
    }
}

/// A service of `moat-sandbox`'s catalogue: its name and default version
/// are the catalogue's.
const fn service(def: &ServiceDef, description: &'static str) -> DepInfo {
    DepInfo {
        name: def.name,
        kind: DepType::Service,
        description,
        default_version: Some(def.default_version),
        apt_packages: &[],
        requires: None,
        provides:
            "a sidecar container from the official image NAME:VERSION (or services.NAME.image), \
                   reached from the sandbox as NAME with a fresh password per run; \
                   Docker and Podman runtimes only",
    }
}

/// Every known dependency.
pub const REGISTRY: &[DepInfo] = &[
    DepInfo {
        name: "node",
        kind: DepType::Runtime,
        description: "Node.js and npm",
        default_version: Some("22"),
        apt_packages: &[],
        requires: None,
        provides: "Node.js's release binary from the npm registry (node-linux-<arch>), the newest release matching \
                   @version, checked against the registry's SHA-512, with npm; recorded in /etc/moat/versions",
    },
    DepInfo {
        name: "python",
        kind: DepType::Runtime,
        description: "Python 3 with pip and venv",
        default_version: Some("3.11"),
        apt_packages: &["python3", "python3-pip", "python3-venv"],
        requires: None,
        provides: "Debian's python3 packages (bookworm: Python 3.11); another @version is refused with the reason; \
                   the installed version is recorded in /etc/moat/versions",
    },
    DepInfo {
        name: "go",
        kind: DepType::Runtime,
        description: "The Go toolchain",
        default_version: Some("1.19"),
        apt_packages: &["golang-go"],
        requires: None,
        provides: "Debian's golang-go package (bookworm: Go 1.19); another @version is refused with the reason; \
                   the installed version is recorded in /etc/moat/versions",
    },
    DepInfo {
        name: "gh",
        kind: DepType::Tool,
        description: "GitHub CLI",
        default_version: None,
        apt_packages: &["gh"],
        requires: None,
        provides: "Debian's gh package (bookworm: 2.23)",
    },
    apt("git", "Git version control", &["git"]),
    apt("jq", "JSON processor", &["jq"]),
    apt("curl", "HTTP client", &["curl"]),
    apt("wget", "HTTP client", &["wget"]),
    apt("ripgrep", "Fast recursive grep (rg)", &["ripgrep"]),
    apt("fd", "Fast find (fdfind)", &["fd-find"]),
    apt("make", "GNU make", &["make"]),
    apt("build-essential", "C/C++ compilers, make and libc headers", &["build-essential"]),
    apt("cmake", "CMake build system", &["cmake"]),
    apt("pkg-config", "pkg-config", &["pkg-config"]),
    apt("unzip", "unzip", &["unzip"]),
    apt("zip", "zip", &["zip"]),
    apt("less", "Pager", &["less"]),
    apt("vim", "Vim editor", &["vim"]),
    apt("nano", "Nano editor", &["nano"]),
    apt("tree", "Directory listing as a tree", &["tree"]),
    apt("openssh-client", "ssh and scp", &["openssh-client"]),
    apt("sqlite3", "SQLite command line", &["sqlite3"]),
    apt("postgresql-client", "psql", &["postgresql-client"]),
    apt(
        "mysql-client",
        "mysql, mysqldump (Debian's MariaDB client)",
        &["default-mysql-client"],
    ),
    apt("redis-tools", "redis-cli", &["redis-tools"]),
    apt("shellcheck", "Shell script linter", &["shellcheck"]),
    apt("procps", "ps, top, free", &["procps"]),
    service(
        &services::POSTGRES,
        "PostgreSQL database (sidecar; MOAT_POSTGRES_URL, _HOST, _PORT, _USER, _PASSWORD, _DB)",
    ),
    service(
        &services::MYSQL,
        "MySQL database (sidecar; MOAT_MYSQL_URL, _HOST, _PORT, _USER, _PASSWORD, _DB)",
    ),
    service(
        &services::REDIS,
        "Redis key-value store (sidecar; MOAT_REDIS_URL, _HOST, _PORT, _PASSWORD)",
    ),
    DepInfo {
        name: "docker:",
        kind: DepType::Docker,
        description: "Docker for the sandbox: docker:host (the host's daemon) or docker:dind (a daemon of its own)",
        default_version: None,
        apt_packages: &["docker.io"],
        requires: None,
        provides: "the docker CLI (Debian's docker.io) with DOCKER_HOST set; docker:host mounts the engine's socket \
                   (Docker and Podman runtimes only; it gives the sandbox the host's Docker)",
    },
    DepInfo {
        name: "npm:",
        kind: DepType::Dynamic,
        description: "A global npm package, e.g. npm:typescript or npm:@anthropic-ai/claude-code@1.0.0",
        default_version: None,
        apt_packages: &[],
        requires: Some("node"),
        provides: "npm install -g from the npm registry (needs network access at build time)",
    },
    DepInfo {
        name: "pip:",
        kind: DepType::Dynamic,
        description: "A Python package installed with pip, e.g. pip:ruff",
        default_version: None,
        apt_packages: &[],
        requires: Some("python"),
        provides: "pip install into /opt/moat/venv (on PATH) from PyPI (needs network access at build time)",
    },
    DepInfo {
        name: "uv:",
        kind: DepType::Dynamic,
        description: "A Python tool installed with uv, e.g. uv:ruff",
        default_version: None,
        apt_packages: &[],
        requires: Some("python"),
        provides: "uv (itself installed with pip) runs `uv tool install`; tools land in /usr/local/bin",
    },
    DepInfo {
        name: "go:",
        kind: DepType::Dynamic,
        description: "A Go program installed with go install, e.g. go:golang.org/x/tools/gopls",
        default_version: None,
        apt_packages: &[],
        requires: Some("go"),
        provides: "go install MODULE@VERSION (default @latest) into /usr/local/bin (needs network access at build time)",
    },
];

impl DepInfo {
    /// The text of `moat deps info NAME`: its fields, and for a service
    /// its image, readiness check and the variables the sandbox gets
    /// (`<password>` standing for each run's fresh one).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "Name:        {}\nType:        {}\nDefault:     {}\nDescription: {}\nProvides:    {}\n",
            self.name,
            self.kind.as_str(),
            self.default_version.unwrap_or("-"),
            self.description,
            self.provides
        );
        if !self.apt_packages.is_empty() {
            out.push_str(&format!("Packages:    {}\n", self.apt_packages.join(", ")));
        }
        if let Some(r) = self.requires {
            out.push_str(&format!("Requires:    {r}\n"));
        }
        if let Some(def) = moat_sandbox::services::service_def(self.name) {
            out.push_str(&format!("Image:       {}:<version>\n", def.image));
            out.push_str(&format!("Readiness:   {}\n", def.ready.join(" ")));
            out.push_str(
                "In the sandbox (<password>: 32 random characters, fresh for each run):\n",
            );
            let example = moat_sandbox::services::ServiceRequest {
                version: self.default_version.map(str::to_owned),
                ..moat_sandbox::services::ServiceRequest::new(def)
            };
            for (name, value) in example.plan("<password>").env {
                out.push_str(&format!("  {name}={value}\n"));
            }
        }
        out
    }
}

/// Lists the registry, optionally only one kind (`moat deps list [--type]`).
pub fn deps_list(kind: Option<DepType>) -> Vec<&'static DepInfo> {
    REGISTRY
        .iter()
        .filter(|d| kind.is_none_or(|k| d.kind == k))
        .collect()
}

/// Looks up one entry (`moat deps info NAME`); `npm:x` finds `npm:`.
pub fn deps_info(name: &str) -> Result<&'static DepInfo, DockerError> {
    let key = name.split('@').next().unwrap_or(name);
    let key = match key.split_once(':') {
        Some((prefix, _)) => &name[..prefix.len() + 1],
        None => key,
    };
    REGISTRY
        .iter()
        .find(|d| d.name == key)
        .ok_or_else(|| unknown(name, key))
}

/// A dependency as written by the user, checked against the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// As written (`node@20`, `npm:typescript`).
    pub spec: String,
    /// The registry entry.
    pub info: &'static DepInfo,
    /// The version written or the default one.
    pub version: Option<String>,
    /// For dynamic kinds: the package or module (`typescript`).
    pub package: Option<String>,
}

/// Checks `dependencies:`, as moat.yaml parsed them, against the
/// registry: unknown names (with the nearest suggestions), versions the
/// registry cannot give, dynamic kinds without their runtime.
pub fn resolve_dependencies(
    written: &[moat_config::Dependency],
) -> Result<Vec<Dependency>, DockerError> {
    let resolved = written
        .iter()
        .map(resolve_one)
        .collect::<Result<Vec<_>, _>>()?;
    for dep in &resolved {
        if let Some(runtime) = dep.info.requires {
            if !resolved.iter().any(|d| d.info.name == runtime) {
                return Err(DockerError::MissingRuntime {
                    name: dep.spec.clone(),
                    runtime,
                });
            }
        }
    }
    Ok(resolved)
}

/// Parses dependencies written as text (`node@20`, `npm:typescript`) and
/// checks them as [`resolve_dependencies`] does, for callers that hold
/// text rather than a parsed moat.yaml.
pub fn parse_dependencies(specs: &[String]) -> Result<Vec<Dependency>, DockerError> {
    let written = specs
        .iter()
        .map(|spec| {
            let spec = spec.trim();
            moat_config::Dependency::parse(spec).map_err(|e| DockerError::InvalidDependency {
                name: spec.to_owned(),
                message: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    resolve_dependencies(&written)
}

fn resolve_one(written: &moat_config::Dependency) -> Result<Dependency, DockerError> {
    match written.kind.prefix() {
        Some(prefix) => resolve_package(written, prefix),
        None => resolve_registry_entry(written),
    }
}

/// `prefix:package[@version]`: a package of a language's registry, or
/// `docker:host`/`docker:dind`. The version stays part of the package, as
/// the installers take it.
fn resolve_package(
    written: &moat_config::Dependency,
    prefix: &str,
) -> Result<Dependency, DockerError> {
    let spec = written.to_string();
    let key = format!("{prefix}:");
    let info = REGISTRY
        .iter()
        .find(|d| d.name == key)
        .ok_or_else(|| unknown(&spec, &key))?;
    let package = match &written.version {
        Some(version) => format!("{}@{version}", written.name),
        None => written.name.clone(),
    };
    let invalid = |message: String| DockerError::InvalidDependency {
        name: spec.clone(),
        message,
    };
    if info.kind == DepType::Docker && !matches!(package.as_str(), "host" | "dind") {
        return Err(invalid(format!(
            "expected docker:host or docker:dind, found docker:{package}"
        )));
    }
    if package.is_empty() || !package.chars().all(safe_package_char) {
        return Err(invalid(format!(
            "the package name {package:?} is empty or has characters other than letters, digits and @ / . _ - ~ ^ = < >"
        )));
    }
    Ok(Dependency {
        spec,
        info,
        version: None,
        package: Some(package),
    })
}

/// `name[@version]`: an entry of moat's own registry.
fn resolve_registry_entry(written: &moat_config::Dependency) -> Result<Dependency, DockerError> {
    let spec = written.to_string();
    let name = written.name.as_str();
    let info = REGISTRY
        .iter()
        .find(|d| d.name == name && d.kind != DepType::Dynamic)
        .ok_or_else(|| unknown(&spec, name))?;
    let invalid = |message: String| DockerError::InvalidDependency {
        name: spec.clone(),
        message,
    };
    let version = match (written.version.as_deref(), info.default_version) {
        (Some(v), Some(_)) => {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return Err(invalid(format!(
                    "version {v:?} is not of the form 22 or 3.12"
                )));
            }
            Some(v.to_owned())
        }
        (Some(_), None) => {
            return Err(invalid(format!(
                "{name} takes no version: it is installed from the base image's Debian release"
            )))
        }
        (None, default) => default.map(str::to_owned),
    };
    Ok(Dependency {
        spec,
        info,
        version,
        package: None,
    })
}

fn safe_package_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "@/._-~^=<>".contains(c)
}

fn unknown(written: &str, key: &str) -> DockerError {
    DockerError::UnknownDependency {
        name: written.to_owned(),
        suggestions: suggest(key),
    }
}

/// The registry names nearest to `name`: those at the smallest edit
/// distance, if it is at most 2 (or a third of the name); at most three.
pub fn suggest(name: &str) -> Vec<String> {
    let limit = (name.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = REGISTRY
        .iter()
        .map(|d| (edit_distance(name, d.name), d.name))
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    let best = scored.first().map_or(0, |(d, _)| *d);
    scored
        .into_iter()
        .take_while(|(d, _)| *d == best)
        .take(3)
        .map(|(_, n)| n.to_owned())
        .collect()
}

/// Edit distance counting a swap of two neighbours as one edit (optimal
/// string alignment), so `nmp` is one edit from `npm`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn parses_versions_and_defaults() {
        let deps = parse_dependencies(&specs(&["node@20", "python", "git", "npm:typescript"]))
            .unwrap_or_default();
        assert_eq!(deps.len(), 4);
        assert_eq!(deps[0].version.as_deref(), Some("20"));
        assert_eq!(deps[1].version.as_deref(), Some("3.11"));
        assert_eq!(deps[2].version, None);
        assert_eq!(deps[3].package.as_deref(), Some("typescript"));
    }

    #[test]
    fn misspelt_names_suggest_the_nearest() {
        use moat_hint::Hint as _;
        let err = parse_dependencies(&specs(&["pyhton"])).err();
        assert_eq!(
            err.as_ref().map(ToString::to_string).as_deref(),
            Some("unknown dependency \"pyhton\": did you mean python?")
        );
        assert_eq!(
            err.and_then(|e| e.hint()).map(|f| f.to_string()).as_deref(),
            Some("Run `moat deps list` to see every known dependency.")
        );
        assert_eq!(suggest("ripgrp"), vec!["ripgrep".to_owned()]);
        assert_eq!(suggest("nmp:"), vec!["npm:".to_owned()]);
        assert!(suggest("kubernetes-operator").is_empty());
    }

    #[test]
    fn dynamic_needs_its_runtime() {
        use moat_hint::Hint as _;
        let err = parse_dependencies(&specs(&["npm:typescript"])).err();
        assert_eq!(
            err.as_ref().map(ToString::to_string).as_deref(),
            Some("invalid dependency \"npm:typescript\": it needs the node runtime")
        );
        assert_eq!(
            err.and_then(|e| e.hint()).map(|f| f.to_string()).as_deref(),
            Some("Add `node` to the dependencies.")
        );
        assert!(parse_dependencies(&specs(&["git@2"])).is_err());
        assert!(parse_dependencies(&specs(&["node@lts;rm"])).is_err());
        assert!(parse_dependencies(&specs(&["npm:a b"])).is_err());
    }

    #[test]
    fn list_and_info() {
        assert_eq!(deps_list(Some(DepType::Runtime)).len(), 3);
        assert!(deps_list(None).len() > 20);
        assert_eq!(
            deps_info("npm:typescript").map(|d| d.name).ok(),
            Some("npm:")
        );
        assert_eq!(deps_info("node@20").map(|d| d.name).ok(), Some("node"));
        assert!(deps_info("nod").is_err());
    }
}
