//! The sandbox interface of moat: *what* a run asks a runtime to run
//! ([`SandboxRequest`]) and *how* moat talks to any runtime
//! ([`SandboxDriver`], [`RunningSandbox`], [`SandboxControl`]).
//!
//! This crate owns the one description every runtime consumes — the
//! workspace, bind mounts, injected files, environment, the way to the
//! proxy, standard streams, SSH additions, resource limits and, for
//! runtimes that run images, the image recipe and the services beside the
//! sandbox ([`services`]: what each is, and the [`Sidecar`] a request for
//! one becomes) — and the driver trait each
//! runtime implements in its own crate (`moat-runtime-native`,
//! `moat-runtime-docker` for Docker and Podman). It also owns the caller's
//! terminal as drivers share it ([`terminal`]: size, raw mode, relay to a
//! pseudo-terminal).
//!
//! It knows no runtime, no credentials, no proxy and no run storage: the
//! orchestrator (`moat-run`) fills a request, picks a driver by name and
//! drives it through the trait without ever asking which runtime it is.
//!
//! # The life of a sandbox
//!
//! 1. A runtime crate's probe connects to its runtime (or fails with an
//!    error that says why and how to fix it) and returns a boxed driver.
//!    The connection is kept: nothing connects twice in one run.
//! 2. [`SandboxDriver::proxy_route`]: where the proxy must listen and under
//!    which name the sandbox reaches it; the orchestrator registers the run
//!    with the proxy and builds the environment with that name.
//! 3. [`SandboxDriver::prepare`]: whatever must exist before a start, e.g.
//!    an image built from [`ImageRecipe`] (native: nothing).
//! 4. [`SandboxDriver::start`]: the sandbox runs; its output goes to the
//!    caller's [`OutputSinks`] (or to the terminal, for [`Stdio::Terminal`]).
//! 5. [`RunningSandbox::control`] forwards signals and window sizes;
//!    [`RunningSandbox::wait`] returns the exit code once every byte of
//!    output was written, and removes what the start created (unless
//!    [`SandboxRequest::keep`]).
//!
//! Leftovers of runs whose supervisor died are found and removed through
//! [`SandboxDriver::leftovers`] and [`SandboxDriver::remove_leftover`].
//!
//! # Why a synchronous trait
//!
//! The native runtime is synchronous by nature (fork, namespaces, wait),
//! the orchestrator is threads and blocking calls, and the Docker API
//! client is async. An async trait would need boxed futures on every
//! call and drag an executor into the native path, whose start-up is
//! measured in milliseconds; a synchronous trait lets each driver bring
//! what it needs: the Docker and Podman driver owns a single-threaded
//! tokio runtime, built only when that driver is chosen, and blocks on
//! it inside each call. A driver for Apple's `container` tool (a CLI and
//! XPC) or for Kubernetes (an HTTP API, async) fits the same way: it
//! translates a [`SandboxRequest`] into its own terms, owns its
//! executor, and reports its leftovers by run id. Nothing in the
//! orchestration changes for it; only the table of drivers in `moat-run`
//! gains an entry.
//!
//! Requests carry everything in terms of the sandbox, never of a runtime:
//! a field a runtime cannot honour is either ignored where that is
//! harmless (the native runtime has no image) or refused by its driver
//! with an error that says so.

pub mod services;
pub mod setid;
pub mod terminal;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use moat_capture::{ProxyAuthorization, HOST_GATEWAY_ADDR, HOST_GATEWAY_NAME};

/// Where the project directory appears in every sandbox (also its cwd).
pub const WORKSPACE_IN_SANDBOX: &str = "/workspace";

/// A volume-mode run's copy of its workspace, in the run's directory
/// (`MOAT_HOME/runs/<id>/workspace-copy`): on native the overlay's
/// `upper/` (what the run changed) and `work/`.
pub const WORKSPACE_COPY_DIR: &str = "workspace-copy";

/// A host path made visible inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// Absolute host path (file or directory); it must exist.
    pub source: PathBuf,
    /// Absolute path inside the sandbox. It may not be `/`, nor lie under
    /// `/proc`, `/dev` or `/workspace`.
    pub target: PathBuf,
    /// Mount read-only (recommended) instead of read-write.
    pub read_only: bool,
    /// Paths relative to `target` (clean, normal components only) hidden
    /// behind an empty, writable tmpfs of their own: what the sandbox
    /// writes there never reaches the host, even under a read-only mount.
    /// A runtime resolves each beneath the mount without following
    /// symbolic links.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<PathBuf>,
}

/// Whether `path` is a clean relative path (no `..`, no root, not empty).
pub fn clean_relative(path: &std::path::Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// A path of the workspace the sandbox may read but not change: what the
/// host acts on later (git hooks and configuration, editor tasks, agent
/// settings, shell files), so a write there would run on the host. moat's
/// run planning chooses them; every runtime enforces them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedPath {
    /// Relative to the workspace, normal components only. It exists on the
    /// host when the sandbox starts (moat creates what it guards).
    pub path: PathBuf,
    /// What the sandbox sees there.
    pub view: ProtectedView,
}

/// How a [`ProtectedPath`] appears inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtectedView {
    /// The host's entry, read-only; a symbolic link is pinned as it is
    /// (neither followed nor replaceable).
    ReadOnly,
    /// A private, writable copy of the file that lives and dies with the
    /// sandbox (`.git/config`: git inside may add remotes and set
    /// upstreams, the host's file never changes). A runtime that cannot
    /// give a copy shows the file read-only.
    SandboxCopy,
}

impl ProtectedPath {
    /// Whether `path` is a clean relative path (no `..`, no root, not empty).
    pub fn is_clean(&self) -> bool {
        clean_relative(&self.path)
    }
}

/// A file whose contents the caller provides, owned by root inside so
/// the command cannot change it, e.g. the moat CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectedFile {
    /// Absolute path inside the sandbox, e.g. `/etc/ssl/certs/moat-ca/ca.crt`.
    /// Parent directories are created. It may not lie under `/workspace`,
    /// `/proc`, `/dev` or an extra mount (that would write to the host).
    pub path_in_sandbox: PathBuf,
    /// The bytes of the file. Serialized as base64 text (a native
    /// sandbox's init receives its files that way): serde's default for
    /// bytes, a JSON array of numbers, is four times larger and slow to
    /// parse for a trust bundle of a few hundred kilobytes.
    #[serde(with = "base64_bytes")]
    pub contents: Vec<u8>,
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
}

/// What runs and what it sees of the host: the part every runtime's own
/// spec holds alike (the native sandbox's, a container's), filled from a
/// [`SandboxRequest`] (its mounts and environment with SSH's additions).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Workload {
    /// Host project directory, bound read-write at [`WORKSPACE_IN_SANDBOX`]
    /// (the command's working directory).
    pub workspace: PathBuf,
    /// Extra host paths made visible inside.
    pub mounts: Vec<BindMount>,
    /// Files put into the sandbox before the command starts.
    pub files: Vec<InjectedFile>,
    /// Environment of the command.
    pub env: Vec<(String, String)>,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Workspace paths the command may read but not change.
    pub protected: Vec<ProtectedPath>,
    /// Workspace paths hidden behind an empty, writable tmpfs, as a
    /// mount's [`BindMount::exclude`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workspace_exclude: Vec<PathBuf>,
    /// Volume mode: the directory holding the overlay's `upper/` and
    /// `work/`; `/workspace` is then the workspace read-only beneath
    /// them, and the host tree is not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_overlay: Option<PathBuf>,
}

impl Workload {
    /// Checks what must hold on every runtime: a command without NUL
    /// bytes, valid environment variables, an absolute workspace, mounts
    /// from absolute host paths to clean absolute paths outside the
    /// workspace, and injected files at clean absolute paths outside the
    /// workspace and the mounts (written there, they would land on the
    /// host). `reserved` are more paths the runtime manages itself (the
    /// native sandbox's `/proc` and `/dev`), refused as mount targets and
    /// as places for files.
    pub fn validate(&self, reserved: &[&str]) -> Result<(), InvalidWorkload> {
        if self.command.first().is_none_or(String::is_empty) {
            return Err(InvalidWorkload::EmptyCommand);
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(InvalidWorkload::NulInCommand);
        }
        if let Some((key, _)) = self.env.iter().find(|(key, value)| {
            key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0')
        }) {
            return Err(InvalidWorkload::Env(key.clone()));
        }
        if !self.workspace.is_absolute() {
            return Err(InvalidWorkload::RelativeWorkspace(self.workspace.clone()));
        }
        if let Some(p) = self.protected.iter().find(|p| !p.is_clean()) {
            return Err(InvalidWorkload::UncleanProtected(p.path.clone()));
        }
        let excludes = self
            .mounts
            .iter()
            .flat_map(|m| &m.exclude)
            .chain(&self.workspace_exclude);
        if let Some(e) = excludes.into_iter().find(|e| !clean_relative(e)) {
            return Err(InvalidWorkload::UncleanExclude(e.clone()));
        }
        let managed = Managed(reserved);
        for m in &self.mounts {
            if !m.source.is_absolute() {
                return Err(InvalidWorkload::RelativeMountSource(m.source.clone()));
            }
            if !clean_absolute(&m.target) {
                return Err(InvalidWorkload::MountTarget(m.target.clone()));
            }
            if managed.holds(&m.target) {
                return Err(InvalidWorkload::ManagedMountTarget {
                    target: m.target.clone(),
                    managed: managed.names(),
                });
            }
        }
        for f in &self.files {
            if !clean_absolute(&f.path_in_sandbox) {
                return Err(InvalidWorkload::FilePath(f.path_in_sandbox.clone()));
            }
            let in_mount = self
                .mounts
                .iter()
                .any(|m| f.path_in_sandbox.starts_with(&m.target));
            if managed.holds(&f.path_in_sandbox) || in_mount {
                return Err(InvalidWorkload::FileOnHost {
                    path: f.path_in_sandbox.clone(),
                    managed: managed.names(),
                });
            }
        }
        Ok(())
    }
}

/// The paths the sandbox manages: the workspace and the runtime's own
/// (`reserved`).
struct Managed<'a>(&'a [&'a str]);

impl Managed<'_> {
    fn holds(&self, path: &std::path::Path) -> bool {
        path.starts_with(WORKSPACE_IN_SANDBOX) || self.0.iter().any(|r| path.starts_with(r))
    }

    fn names(&self) -> String {
        self.0
            .iter()
            .copied()
            .chain([WORKSPACE_IN_SANDBOX])
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Why a [`Workload`] cannot run on any runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidWorkload {
    /// No program to run.
    #[error("the command is empty: give at least a program name")]
    EmptyCommand,
    /// An argument with a NUL byte.
    #[error("a command argument contains a NUL byte")]
    NulInCommand,
    /// A variable that cannot be set.
    #[error("invalid environment variable name or value: {0:?}")]
    Env(String),
    /// A relative workspace.
    #[error("the workspace path must be absolute: {}", .0.display())]
    RelativeWorkspace(PathBuf),
    /// A protected path that is not clean and relative.
    #[error("a protected workspace path must be relative without '.' or '..': {}", .0.display())]
    UncleanProtected(PathBuf),
    /// An excluded path that is not clean and relative.
    #[error("an excluded path must be relative to its mount without '.' or '..': {}", .0.display())]
    UncleanExclude(PathBuf),
    /// A mount from a relative host path.
    #[error("mount source must be an absolute host path: {}", .0.display())]
    RelativeMountSource(PathBuf),
    /// A mount target that is not a clean absolute path.
    #[error(
        "mount target must be an absolute path other than / without '.' or '..': {}",
        .0.display()
    )]
    MountTarget(PathBuf),
    /// A mount over what the sandbox manages.
    #[error("mount target {} is inside {managed}, which the sandbox manages", target.display())]
    ManagedMountTarget {
        /// The target.
        target: PathBuf,
        /// The managed paths, comma-separated.
        managed: String,
    },
    /// A file path that is not a clean absolute path.
    #[error(
        "injected file path must be an absolute path other than / without '.' or '..': {}",
        .0.display()
    )]
    FilePath(PathBuf),
    /// A file that would be written on the host. The files are moat's
    /// choice, never the user's: the words are for whoever changes moat.
    #[error(
        "injected file {} would be written inside {managed} or an extra mount \
         (i.e. on the host): choose a path elsewhere",
        path.display()
    )]
    FileOnHost {
        /// Its path inside.
        path: PathBuf,
        /// The managed paths, comma-separated.
        managed: String,
    },
}

/// An absolute path without `.` or `..` components, and not `/`.
fn clean_absolute(path: &std::path::Path) -> bool {
    use std::path::Component;
    path.is_absolute()
        && path.components().count() > 1
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// What a run's SSH grants add to a sandbox: the agent socket's
/// directory and the moat binary (the `ProxyCommand`) as mounts,
/// `SSH_AUTH_SOCK`, and the ssh configuration files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SshAdditions {
    /// Mounts (the agent socket's directory is read-write).
    pub mounts: Vec<BindMount>,
    /// Variables; they replace same-named ones of [`SandboxRequest::env`].
    pub env: Vec<(String, String)>,
    /// `ssh_config`, `ssh_known_hosts`.
    pub files: Vec<InjectedFile>,
}

/// The sandbox's one way out: the run's proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyAccess {
    /// TCP port of the proxy (a native sandbox's relay listens on the same
    /// port on its own loopback).
    pub port: u16,
    /// The proxy's Unix socket on the host (what a native sandbox's relay
    /// forwards to).
    pub socket: PathBuf,
    /// The run's `Proxy-Authorization` value, for transparent capture of
    /// clients that ignore the proxy variables.
    pub authorization: ProxyAuthorization,
    /// `network.host`: host TCP ports reachable at [`HOST_GATEWAY_NAME`].
    pub host_ports: Vec<u16>,
    /// The moat binary on the host: runtimes whose capture relay runs in a
    /// helper container mount it there.
    pub relay_binary: PathBuf,
}

/// Where the sandbox's standard streams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// stdin is the caller's; stdout and stderr go to the [`OutputSinks`].
    Logged,
    /// stdin is empty; stdout and stderr go to the [`OutputSinks`] (a
    /// background run).
    Detached,
    /// The caller's terminal, relayed (never handed over): the sandbox
    /// gets a terminal of its own sized like the caller's when stdin is a
    /// terminal, and the caller's stdin otherwise. Output is not logged.
    Terminal,
}

/// What the whole sandbox may consume.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    /// Memory, MiB.
    pub memory_mb: Option<u64>,
    /// CPUs (e.g. 1.5).
    pub cpus: Option<f64>,
}

/// What an image-based runtime builds the sandbox's userland from
/// (`dependencies:`, `base_image:`, build hooks in moat.yaml). Runtimes
/// that use the host's userland ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageRecipe {
    /// `dependencies:`, as moat.yaml parsed them (services included: an
    /// image-based runtime installs no service, but `docker:host` and
    /// `docker:dind` change the image).
    pub dependencies: Vec<moat_config::Dependency>,
    /// `base_image:`.
    pub base_image: Option<String>,
    /// `hooks.post_build_root`.
    pub post_build_root: Option<String>,
    /// `hooks.post_build`.
    pub post_build: Option<String>,
    /// Build even if an image with the same inputs exists.
    pub rebuild: bool,
    /// Stream the build log.
    pub verbose: bool,
}

/// A service the sandbox reaches by name (`dependencies: [postgres@17]`):
/// a sidecar container started before the command, ready and provisioned
/// when the command starts (unless [`Sidecar::wait`] is false), removed
/// with the sandbox. Only container runtimes run them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The service's name, also its host name inside the sandbox.
    pub name: String,
    /// The image as written (`postgres:17`); runtimes map it to a local
    /// image where configured.
    pub image: String,
    /// The sidecar's environment.
    pub env: Vec<(String, String)>,
    /// Its command; empty for the image's own.
    pub command: Vec<String>,
    /// The TCP port it serves on.
    pub port: u16,
    /// Run inside the sidecar until it exits 0: the service is ready.
    pub ready: Vec<String>,
    /// Run inside the sidecar, in order, once it is ready; each must exit 0.
    pub provision: Vec<Vec<String>>,
    /// Memory limit, MiB.
    pub memory_mb: Option<u64>,
    /// Wait for readiness (and provisioning) before the command starts.
    pub wait: bool,
    /// Words of the sidecar's configuration that must not appear in what
    /// moat prints (its password), replaced by `****`.
    pub secrets: Vec<String>,
}

/// Everything a runtime needs to run one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxRequest {
    /// Run id (letters, digits, `_`): names and labels what the runtime
    /// creates, so leftovers can be found by run.
    pub run_id: String,
    /// Host name inside.
    pub hostname: String,
    /// Host project directory (absolute), bound read-write at
    /// [`WORKSPACE_IN_SANDBOX`].
    pub workspace: PathBuf,
    /// `bind`: the workspace itself; `volume`: a copy-on-write copy kept
    /// in `workspace_copy`, the host tree untouched.
    pub workspace_mode: moat_config::WorkspaceMode,
    /// The run's own directory for its copy of the workspace (volume
    /// mode): an overlay's `upper/` and `work/` on native, the extracted
    /// tree on container runtimes. See [`WORKSPACE_COPY_DIR`].
    pub workspace_copy: PathBuf,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Environment, in precedence order (a later entry replaces an
    /// earlier one of the same name).
    pub env: Vec<(String, String)>,
    /// Extra mounts.
    pub mounts: Vec<BindMount>,
    /// Workspace paths the command may read but not change.
    pub protected: Vec<ProtectedPath>,
    /// Workspace paths hidden behind an empty, writable tmpfs (moat.yaml
    /// `{source: ., target: /workspace, exclude: [...]}`).
    pub workspace_exclude: Vec<PathBuf>,
    /// Files put into the sandbox before the command starts.
    pub files: Vec<InjectedFile>,
    /// SSH access, when the run has SSH grants.
    pub ssh: Option<SshAdditions>,
    /// The proxy.
    pub proxy: ProxyAccess,
    /// Standard streams.
    pub stdio: Stdio,
    /// Resource limits.
    pub limits: Limits,
    /// The sandbox's userland, for image-based runtimes.
    pub image: ImageRecipe,
    /// Where a build's log goes.
    pub build_log: PathBuf,
    /// `MOAT_HOME`, where a runtime's own settings live (the image map).
    pub settings_dir: Option<PathBuf>,
    /// The runtime's extra isolation layer (gVisor), where it has one;
    /// false with `--no-sandbox`.
    pub extra_isolation: bool,
    /// Leave what the runtime created after the command exits (`--keep`).
    pub keep: bool,
    /// Services started beside the sandbox.
    pub sidecars: Vec<Sidecar>,
    /// Where each sidecar's output is saved (`<name>.log`) when the run
    /// ends or the sidecar fails, for `moat logs`.
    pub sidecar_logs: PathBuf,
    /// Where a runtime without an engine to ask serves more commands
    /// into the sandbox for `moat exec` (a Unix socket on the host,
    /// 0600, in the run's storage); the same path comes back in
    /// [`ExecRequest::exec_socket`].
    pub exec_socket: PathBuf,
    /// `ports:` / `--port`: endpoint name to the TCP port the run serves
    /// it on inside the sandbox, reached from the host only through the
    /// daemon's routing.
    pub ports: std::collections::BTreeMap<String, u16>,
    /// Where a runtime without an engine serves the way in to
    /// [`SandboxRequest::ports`] (a Unix socket on the host, 0600, in the
    /// run's storage; native: see moat-runtime-native's `ports`).
    pub port_socket: PathBuf,
}

/// What [`SandboxDriver::exec`]'s command exits with when the run ends
/// while it runs (killed with the sandbox, as by SIGKILL).
pub const EXEC_RUN_ENDED: i32 = 128 + 9;

/// What a runtime writes to the exec's stderr then.
pub const EXEC_RUN_ENDED_NOTE: &str = "moat: the run ended while this command ran in it";

/// A command started in a running sandbox (`moat exec`, `moat join`):
/// inside everything the run's command is inside, with its environment
/// and working directory.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The run.
    pub run_id: String,
    /// The runtime's id for the sandbox (a container id), as
    /// [`RunningSandbox::runtime_id`] gave it at start.
    pub runtime_id: Option<String>,
    /// [`SandboxRequest::exec_socket`] of the run.
    pub exec_socket: PathBuf,
    /// Program and arguments.
    pub command: Vec<String>,
    /// [`Stdio::Terminal`]: a terminal of its own, relayed;
    /// [`Stdio::Logged`]: the caller's stdin piped in, output to the
    /// sinks; [`Stdio::Detached`]: empty stdin, output to the sinks.
    pub stdio: Stdio,
}

impl SandboxRequest {
    /// What runs and what it sees, SSH's additions included: the part of
    /// a runtime's own spec taken as is.
    pub fn workload(&self) -> Workload {
        Workload {
            workspace: self.workspace.clone(),
            mounts: self.all_mounts(),
            files: self.all_files(),
            env: self.all_env(),
            command: self.command.clone(),
            protected: self.protected.clone(),
            workspace_exclude: self.workspace_exclude.clone(),
            workspace_overlay: (self.workspace_mode == moat_config::WorkspaceMode::Volume)
                .then(|| self.workspace_copy.clone()),
        }
    }

    /// The mounts, SSH's included.
    pub fn all_mounts(&self) -> Vec<BindMount> {
        let mut mounts = self.mounts.clone();
        if let Some(ssh) = &self.ssh {
            mounts.extend(ssh.mounts.iter().cloned());
        }
        mounts
    }

    /// The environment, SSH's variables replacing same-named ones.
    pub fn all_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        if let Some(ssh) = &self.ssh {
            for (k, v) in &ssh.env {
                env.retain(|(name, _)| name != k);
                env.push((k.clone(), v.clone()));
            }
        }
        env
    }

    /// What only a container runtime gives: the sidecars, then the
    /// engines of `dependencies:` (`docker:host`, `docker:dind`), as
    /// written. A runtime without containers refuses a request that has
    /// any ([`DriverError::ServicesUnsupported`]).
    pub fn container_services(&self) -> Vec<String> {
        let engines = self
            .image
            .dependencies
            .iter()
            .filter(|d| d.kind == moat_config::DependencyKind::Docker)
            .map(ToString::to_string);
        self.sidecars
            .iter()
            .map(|s| s.name.clone())
            .chain(engines)
            .collect()
    }

    /// The injected files, SSH's included.
    pub fn all_files(&self) -> Vec<InjectedFile> {
        let mut files = self.files.clone();
        if let Some(ssh) = &self.ssh {
            files.extend(ssh.files.iter().cloned());
        }
        files
    }
}

/// Where the caller's side of the proxy must be for this runtime's
/// sandboxes, and how they name it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyRoute {
    /// Host addresses the proxy must also listen on (a container bridge's
    /// gateway); empty when loopback and the Unix socket suffice.
    pub listen: Vec<String>,
    /// Host name or address of the proxy inside the sandbox.
    pub host_in_sandbox: String,
}

/// What [`SandboxDriver::prepare`] made ready.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prepared {
    /// The image the sandbox runs, for runtimes that have one.
    pub image: Option<String>,
    /// Things the user should know (an image mapped to a local one...).
    pub notes: Vec<String>,
}

/// Where a sandbox's output goes when it is not the terminal: written as
/// it arrives, in chunks (partial lines included, so prompts show).
pub struct OutputSinks {
    /// The command's standard output.
    pub stdout: Box<dyn Write + Send>,
    /// The command's standard error.
    pub stderr: Box<dyn Write + Send>,
}

impl std::fmt::Debug for OutputSinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputSinks")
    }
}

/// A check for `moat doctor`. Serialized as one object of
/// `moat doctor --json`, so field names are part of that output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorCheck {
    /// What is checked (`docker`, `gvisor`...).
    pub name: String,
    /// Whether it is fine.
    pub status: CheckStatus,
    /// What was found.
    pub message: String,
    /// The command or change that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// How a [`DoctorCheck`] went (`ok`, `warn`, `fail` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Something optional is missing.
    Warn,
    /// moat cannot work this way until it is fixed.
    Fail,
}

impl DoctorCheck {
    /// A check that passed.
    pub fn ok(name: &str, message: impl Into<String>) -> Self {
        DoctorCheck {
            name: name.into(),
            status: CheckStatus::Ok,
            message: message.into(),
            fix: None,
        }
    }

    /// A check that did not, with its fix.
    pub fn problem(
        status: CheckStatus,
        name: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        DoctorCheck {
            name: name.into(),
            status,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Something a runtime created for a run, as found by
/// [`SandboxDriver::leftovers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The runtime's id for it.
    pub id: String,
    /// The run it belongs to, when it says.
    pub run_id: Option<String>,
    /// The installation it belongs to ([`SandboxRequest::settings_dir`]),
    /// when it says: only that installation removes it.
    pub owner: Option<String>,
}

/// Why a driver failed. Each runtime words its own errors (they are part
/// of the product); this carries them unchanged, with their fixes.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The runtime's error, as its crate words it.
    #[error(transparent)]
    Runtime(RuntimeError),
    /// The request has services (sidecars, `docker:host`) and this runtime
    /// runs no containers.
    #[error(
        "services ({services}) need a container runtime: the {runtime} runtime runs no containers."
    )]
    ServicesUnsupported {
        /// The runtime's name.
        runtime: &'static str,
        /// The services asked for, comma-separated.
        services: String,
    },
    /// A local operation around the runtime failed.
    #[error("{context}: {error}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        error: std::io::Error,
    },
}

impl moat_hint::Hint for DriverError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            DriverError::Runtime(error) => error.fix.clone(),
            DriverError::ServicesUnsupported { .. } => Some(moat_hint::Fix::new(
                "To fix: install Docker (sudo apt-get install docker.io) or Podman, then run with \
                 --runtime docker or --runtime podman (or `runtime: docker` in moat.yaml); \
                 or remove them from dependencies: in moat.yaml",
            )),
            DriverError::Io { .. } => None,
        }
    }
}

/// A runtime crate's error, seen through the driver: its words (as its
/// `Display` and sources) and its fix, taken when it was wrapped, since
/// the runtime's type is unknown here.
#[derive(Debug)]
pub struct RuntimeError {
    error: Box<dyn std::error::Error + Send + Sync + 'static>,
    fix: Option<moat_hint::Fix>,
}

impl std::fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for RuntimeError {
    // The runtime's error itself is this one's words: its causes follow.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl RuntimeError {
    /// The runtime's own error.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.error.as_ref()
    }
}

/// An error and its causes in one line, `outer: cause: root`, for places
/// that keep an error as text (run metadata, `moat status`). moat's own
/// errors either show their cause or return it as their source, never
/// both, so every message appears once.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

impl DriverError {
    /// Wraps a runtime crate's error that has no fix to offer.
    pub fn runtime(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        DriverError::Runtime(RuntimeError {
            error: Box::new(error),
            fix: None,
        })
    }

    /// Wraps a runtime crate's error with its fix.
    pub fn hinted(error: impl std::error::Error + moat_hint::Hint + Send + Sync + 'static) -> Self {
        let fix = error.hint();
        DriverError::Runtime(RuntimeError {
            error: Box::new(error),
            fix,
        })
    }

    /// A failed local operation.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DriverError::Io {
            context: context.into(),
            error: source,
        }
    }
}

/// One runtime, connected. Every method may block.
pub trait SandboxDriver: Send + std::fmt::Debug {
    /// The runtime's name as users write it (`native`, `docker`,
    /// `podman`); recorded with the run.
    fn name(&self) -> &'static str;

    /// Checks for `moat doctor`. The first says whether this runtime can
    /// run sandboxes at all.
    fn doctor(&mut self) -> Vec<DoctorCheck>;

    /// Whether the command runs as the caller's own uid, as the host sees
    /// it (a root caller's containers run as an unprivileged uid, which
    /// must then be able to open sockets the caller shares with it).
    fn runs_as_caller(&self) -> bool;

    /// The sandbox user's home directory, as the command sees it (files
    /// an agent reads from its home are staged there).
    fn home_in_sandbox(&self) -> std::path::PathBuf;

    /// Whether programs come from the host (`/usr` shown read-only, extra
    /// software mounted) rather than from an image built from
    /// `dependencies:`.
    fn uses_host_programs(&self) -> bool;

    /// Where the proxy must listen, and its name inside.
    fn proxy_route(&mut self) -> Result<ProxyRoute, DriverError>;

    /// Makes ready what a start needs (an image), before anything of the
    /// run exists in the runtime.
    fn prepare(&mut self, request: &SandboxRequest) -> Result<Prepared, DriverError>;

    /// Starts the sandbox. Output goes to `output` unless
    /// [`SandboxRequest::stdio`] is [`Stdio::Terminal`]. On failure,
    /// nothing the start created is left behind.
    fn start(
        &mut self,
        request: &SandboxRequest,
        prepared: &Prepared,
        output: OutputSinks,
    ) -> Result<Box<dyn RunningSandbox + '_>, DriverError>;

    /// Starts `request.command` in a run's running sandbox. The returned
    /// handle's [`RunningSandbox::wait`] gives the command's exit code
    /// (127 when it is not found, 137 when the run ends meanwhile, the
    /// reason then written to `output.stderr`); it removes nothing.
    fn exec(
        &mut self,
        request: &ExecRequest,
        output: OutputSinks,
    ) -> Result<Box<dyn RunningSandbox + '_>, DriverError>;

    /// What this runtime holds for runs (running or not).
    fn leftovers(&mut self) -> Result<Vec<Leftover>, DriverError>;

    /// Removes one leftover (killed if running; already gone is fine).
    fn remove_leftover(&mut self, leftover: &Leftover) -> Result<(), DriverError>;
}

/// A started sandbox.
pub trait RunningSandbox: Send {
    /// The runtime's id for it (a container id), if it has one worth
    /// recording.
    fn runtime_id(&self) -> Option<String>;

    /// A handle for another thread to signal the sandbox.
    fn control(&self) -> Arc<dyn SandboxControl>;

    /// Blocks until the command exits and its output is written; removes
    /// what the start created unless kept. Returns the exit code (128+N
    /// for signal N).
    fn wait(self: Box<Self>) -> Result<i32, DriverError>;
}

/// Signals for a running sandbox, from any thread.
pub trait SandboxControl: Send + Sync {
    /// Delivers the caller's signal `sig` (SIGINT, SIGTERM, SIGHUP,
    /// SIGQUIT) the way the runtime stops or interrupts its command.
    fn signal(&self, sig: i32);

    /// The caller's terminal changed size.
    fn window_changed(&self);
}

mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            workspace: "/tmp/ws".into(),
            command: vec!["true".into()],
            ..Workload::default()
        }
    }

    fn file(path: &str) -> InjectedFile {
        InjectedFile {
            path_in_sandbox: path.into(),
            contents: Vec::new(),
            mode: 0o644,
        }
    }

    fn mount(source: &str, target: &str) -> BindMount {
        BindMount {
            source: source.into(),
            target: target.into(),
            read_only: true,
            exclude: Vec::new(),
        }
    }

    #[test]
    fn a_workload_is_checked_alike_for_every_runtime() {
        assert_eq!(workload().validate(&[]), Ok(()));
        let refused: Vec<(&str, Workload)> = vec![
            (
                "no command",
                Workload {
                    command: Vec::new(),
                    ..workload()
                },
            ),
            (
                "empty program",
                Workload {
                    command: vec![String::new()],
                    ..workload()
                },
            ),
            (
                "NUL",
                Workload {
                    command: vec!["a\0b".into()],
                    ..workload()
                },
            ),
            (
                "env name",
                Workload {
                    env: vec![("A=B".into(), "v".into())],
                    ..workload()
                },
            ),
            (
                "env NUL",
                Workload {
                    env: vec![("A".into(), "v\0".into())],
                    ..workload()
                },
            ),
            (
                "relative workspace",
                Workload {
                    workspace: "ws".into(),
                    ..workload()
                },
            ),
            (
                "relative source",
                Workload {
                    mounts: vec![mount("etc", "/x")],
                    ..workload()
                },
            ),
            (
                "target /",
                Workload {
                    mounts: vec![mount("/etc", "/")],
                    ..workload()
                },
            ),
            (
                "target ..",
                Workload {
                    mounts: vec![mount("/etc", "/a/../b")],
                    ..workload()
                },
            ),
            (
                "target in workspace",
                Workload {
                    mounts: vec![mount("/etc", "/workspace/etc")],
                    ..workload()
                },
            ),
            (
                "exclude ..",
                Workload {
                    mounts: vec![BindMount {
                        exclude: vec!["a/../../b".into()],
                        ..mount("/srv", "/data")
                    }],
                    ..workload()
                },
            ),
            (
                "absolute workspace exclude",
                Workload {
                    workspace_exclude: vec!["/etc".into()],
                    ..workload()
                },
            ),
            (
                "file ..",
                Workload {
                    files: vec![file("/etc/../root/x")],
                    ..workload()
                },
            ),
            (
                "file in workspace",
                Workload {
                    files: vec![file("/workspace/x")],
                    ..workload()
                },
            ),
            (
                "file in a mount",
                Workload {
                    mounts: vec![mount("/srv", "/data")],
                    files: vec![file("/data/x")],
                    ..workload()
                },
            ),
        ];
        for (what, w) in refused {
            assert!(w.validate(&[]).is_err(), "{what} was accepted");
        }
        let reserved = Workload {
            files: vec![file("/proc/x")],
            ..workload()
        };
        assert_eq!(reserved.validate(&[]), Ok(()));
        let err = reserved.validate(&["/proc", "/dev"]).unwrap_err();
        assert!(err.to_string().contains("/proc, /dev, /workspace"), "{err}");
    }

    fn request() -> SandboxRequest {
        SandboxRequest {
            run_id: "run_1".into(),
            hostname: "moat".into(),
            workspace: "/w".into(),
            ports: Default::default(),
            port_socket: PathBuf::new(),
            workspace_mode: moat_config::WorkspaceMode::Bind,
            workspace_copy: "/runs/run_1/workspace-copy".into(),
            command: vec!["true".into()],
            env: vec![
                ("SSH_AUTH_SOCK".into(), "/host".into()),
                ("A".into(), "1".into()),
            ],
            mounts: vec![],
            protected: vec![],
            workspace_exclude: vec![],
            files: vec![],
            ssh: None,
            proxy: ProxyAccess {
                port: 1,
                socket: "/s".into(),
                authorization: ProxyAuthorization::new("Basic x"),
                host_ports: vec![],
                relay_binary: "/moat".into(),
            },
            stdio: Stdio::Logged,
            limits: Limits::default(),
            image: ImageRecipe::default(),
            build_log: "/b.log".into(),
            settings_dir: None,
            extra_isolation: true,
            keep: false,
            sidecars: Vec::new(),
            sidecar_logs: PathBuf::from("/tmp/services"),
            exec_socket: PathBuf::from("/tmp/exec.sock"),
        }
    }

    #[test]
    fn ssh_additions_join_and_replace() {
        let mut r = request();
        assert_eq!(r.all_env(), r.env);
        r.ssh = Some(SshAdditions {
            mounts: vec![BindMount {
                source: "/a".into(),
                target: "/run/moat/ssh".into(),
                read_only: false,
                exclude: Vec::new(),
            }],
            env: vec![("SSH_AUTH_SOCK".into(), "/run/moat/ssh/s".into())],
            files: vec![InjectedFile {
                path_in_sandbox: "/etc/ssh/ssh_config".into(),
                contents: vec![],
                mode: 0o644,
            }],
        });
        assert_eq!(
            r.all_env(),
            vec![
                ("A".to_owned(), "1".to_owned()),
                ("SSH_AUTH_SOCK".to_owned(), "/run/moat/ssh/s".to_owned())
            ]
        );
        assert_eq!(r.all_mounts().len(), 1);
        assert_eq!(r.all_files().len(), 1);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("engine down")]
    struct EngineDown;

    impl moat_hint::Hint for EngineDown {
        fn hint(&self) -> Option<moat_hint::Fix> {
            Some(moat_hint::Fix::new("Start the engine."))
        }
    }

    #[test]
    fn a_driver_error_keeps_the_runtime_words_and_fix() {
        use moat_hint::Hint as _;
        let wrapped = DriverError::hinted(EngineDown);
        assert_eq!(wrapped.to_string(), "engine down");
        assert_eq!(
            wrapped.hint(),
            Some(moat_hint::Fix::new("Start the engine."))
        );
        assert_eq!(DriverError::runtime(EngineDown).hint(), None);

        let mut r = request();
        r.image.dependencies = vec![moat_config::Dependency::parse("docker:host").unwrap()];
        let unsupported = DriverError::ServicesUnsupported {
            runtime: "native",
            services: r.container_services().join(", "),
        };
        assert_eq!(
            unsupported.to_string(),
            "services (docker:host) need a container runtime: the native runtime runs no containers."
        );
        assert!(unsupported
            .hint()
            .is_some_and(|f| f.as_str().starts_with("To fix: install Docker")));
    }
}
