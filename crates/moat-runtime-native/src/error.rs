//! Errors of the native runtime.

use std::io;
use std::path::{Path, PathBuf};

/// Why a sandbox could not be started, signalled or waited for.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec is inconsistent (empty command, relative path, ...).
    #[error("invalid sandbox spec: {message}")]
    InvalidSpec {
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The kernel does not let this user create the namespaces we need.
    #[error("user namespaces are not available: {message}")]
    Unsupported {
        /// What is blocking it and how to enable it.
        message: String,
    },

    /// A resource limit was asked for that cannot be enforced here.
    #[error("{message}")]
    LimitUnavailable {
        /// Which limit, why, and what to do instead.
        message: String,
    },

    /// Building the sandbox failed inside the init process (a mount that
    /// failed, a missing workspace...). The message names the path and, when
    /// known, the fix.
    #[error("sandbox setup failed: {message}")]
    Setup {
        /// The init's own explanation.
        message: String,
    },

    /// A system call on the caller's side failed.
    #[error("{context}: {error}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        error: io::Error,
    },

    /// The sandbox has already been waited for.
    #[error("the sandbox has already exited and been waited for")]
    AlreadyWaited,

    /// The signal number is not a signal this platform knows.
    #[error("unknown signal number {0}")]
    UnknownSignal(i32),

    /// Nothing serves a sandbox's exec socket: the sandbox has ended (or
    /// was started without one).
    #[error("nothing serves {}: {error}", socket.display())]
    NotServing {
        /// The socket.
        socket: std::path::PathBuf,
        /// Why connecting failed.
        error: io::Error,
    },

    /// A command given to a running sandbox could not be started.
    #[error("{message}")]
    ExecFailed {
        /// The sandbox's explanation (`command not found in sandbox: x`).
        message: String,
        /// What a shell would exit with: 127 not found, 126 not executable.
        code: i32,
    },
}

impl SandboxError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        SandboxError::Io {
            context: context.into(),
            error: source,
        }
    }
}

/// Why the sandbox init could not build the sandbox. It is sent to the
/// caller as text over the status channel (the init is another process),
/// where it becomes [`SandboxError::Setup`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    /// A call on one path failed.
    #[error("{what} {}: {error}", path.display())]
    Path {
        /// What moat was doing ("cannot create directory").
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A step that names no single path failed.
    #[error("{what}: {error}")]
    Step {
        /// The step ("cannot block signals").
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// A bind mount of a host path failed.
    #[error("cannot bind-mount {} onto {}: {error}", from.display(), onto.display())]
    Bind {
        /// The host path, as the host names it.
        from: PathBuf,
        /// The path in the sandbox.
        onto: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// Listening on a port inside the sandbox failed.
    #[error("{what}{port} in the sandbox: {error}")]
    Listen {
        /// "cannot capture port ", "cannot listen on 127.0.0.1:".
        what: &'static str,
        /// The port.
        port: u16,
        /// The OS error.
        error: io::Error,
    },
    /// The namespaces could not be created.
    #[error("{what}: {error}. {}", crate::userns::namespace_hint())]
    Namespaces {
        /// The step.
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// The proxy's socket cannot be resolved.
    #[error("proxy socket {} cannot be used: {error} (is the moat proxy running?)", path.display())]
    ProxySocket {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The proxy's socket is `/`.
    #[error("proxy socket {} has no directory", path.display())]
    ProxySocketWithoutDir {
        /// The socket.
        path: PathBuf,
    },
    /// The proxy's socket directory holds other files.
    #[error(
        "the proxy socket {} shares its directory with other files, so a sandbox cannot be \
         shown it (the running proxy daemon is from an older moat). Restart it with: \
         moat proxy restart",
        path.display()
    )]
    SharedSocketDir {
        /// The socket.
        path: PathBuf,
    },
    /// The workspace cannot be resolved.
    #[error(
        "workspace {} cannot be used: {error} (create the directory or run from an existing \
         project)",
        path.display()
    )]
    Workspace {
        /// The workspace as given.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The workspace is a file.
    #[error("workspace {} is not a directory", path.display())]
    WorkspaceNotADirectory {
        /// The workspace as given.
        path: PathBuf,
    },
    /// A mount's source cannot be resolved.
    #[error("mount source {} cannot be used: {error} (fix or remove this mount)", path.display())]
    MountSource {
        /// The source as given.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// The workspace's file system cannot ID-map.
    #[error(
        "cannot map the ownership of {} for the sandbox ({error}).\n\
         A sandbox started by root runs as an unprivileged user and writes the files \
         root owns through an ID-mapped mount, which this file system does not support \
         (Linux 5.12 or later with ext4, xfs, btrfs, tmpfs or overlayfs is needed).\n\
         To fix: move the project to such a file system, run moat as a regular user, \
         or use --runtime docker",
        path.display()
    )]
    IdMap {
        /// The host path.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// Mount options with a NUL byte.
    #[error("mount options {options:?} hold a NUL byte")]
    MountOptions {
        /// The options.
        options: String,
    },
    /// A protected path moved while the run started.
    #[error(
        "cannot protect {} in the workspace ({what}: {error}); the workspace changed while \
         the run started. Run again.",
        path.display()
    )]
    Protect {
        /// The path, relative to the workspace.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// An excluded path that cannot be hidden.
    #[error(
        "cannot exclude {} from the mount at {} ({what}: {error}); moat hides only a \
         directory beneath the mount.",
        path.display(),
        target.display()
    )]
    Exclude {
        /// The mount's target inside the sandbox.
        target: PathBuf,
        /// The path, relative to the target.
        path: PathBuf,
        /// The step, or what the path is.
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// Preparing a user namespace for a root caller.
    #[error("cannot create a user namespace. {}", crate::userns::namespace_hint())]
    UserNamespace,
    /// Writing a user namespace's id map.
    #[error("cannot write {path} ({map}): {error}")]
    IdMapFile {
        /// `/proc/PID/uid_map`.
        path: String,
        /// The line written.
        map: String,
        /// The OS error.
        error: io::Error,
    },
    /// The system-call filter.
    #[error("{what}: {error}")]
    Filter {
        /// The step.
        what: &'static str,
        /// seccompiler's error.
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The hostname was refused.
    #[error("cannot set the hostname {hostname:?}: {error}")]
    Hostname {
        /// The hostname.
        hostname: String,
        /// The OS error.
        error: io::Error,
    },
    /// A root caller whose group is the host's root group.
    #[error(
        "moat will not run a sandbox whose group maps onto the host's root group (gid 0): \
         run it with another primary group (e.g. `sg users -c 'moat run ...'`)"
    )]
    RootGroup,
    /// The spec does not hold together.
    #[error(transparent)]
    Spec(#[from] SandboxError),
}

impl SetupError {
    /// A failed call on `path`.
    pub(crate) fn path(what: &'static str, path: &Path, error: impl Into<io::Error>) -> Self {
        SetupError::Path {
            what,
            path: path.to_path_buf(),
            error: error.into(),
        }
    }

    /// A failed step.
    pub(crate) fn step(what: &'static str, error: impl Into<io::Error>) -> Self {
        SetupError::Step {
            what,
            error: error.into(),
        }
    }
}
