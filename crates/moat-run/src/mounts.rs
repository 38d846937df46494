//! What a sandbox may mount from the host, whatever the config says.
//!
//! Every user mount (moat.yaml `mounts:`, `-m`) and the workspace itself
//! is resolved to its real path here, before any runtime sees the plan,
//! and checked against the *floors*: host paths that hold moat's or the
//! user's secrets, or that control the machine, and that no configuration
//! can lower:
//!
//! - `MOAT_HOME`: encrypted credentials, the key file, the audit signing
//!   key, and the proxy daemon's control and proxy sockets (`proxy/`);
//! - `~/.local/share/keyrings` (the keychain's files) and `~/.ssh`;
//! - `SSH_AUTH_SOCK` (so its directory, which contains it, too);
//! - the Docker and Podman sockets, and `DOCKER_HOST` when it is `unix://`.
//!
//! A source that resolves *into* one of them, or *contains* one (mounting
//! `~` would include `~/.moat`), is refused with the mount, the path and
//! why. moat's own mounts (the SSH agent proxy's socket directory, the
//! moat binary) are added later by the runtime code and are not checked.
//!
//! Relative sources were written relative to the workspace, which a run
//! can write: a symlink planted there must not lead the next run out of
//! it. They are opened with `openat2(RESOLVE_BENEATH)` from the workspace,
//! so the kernel refuses any step outside it; the runtime is then handed
//! the real path of what was opened, not the name. Absolute sources are
//! the user's own choice and are taken as written (the floors still
//! apply).

use std::os::fd::AsRawFd as _;
use std::path::{Component, Path, PathBuf};

use moat_home::MoatHome;

use crate::MountPlan;

/// A host path no sandbox may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Floor {
    /// Real path (symlinks resolved where the path exists).
    pub path: PathBuf,
    /// "holds moat's credentials", completing "X, which …".
    pub why: &'static str,
}

/// The floors of this process's environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Floors(pub Vec<Floor>);

const HOME_WHY: &str = "holds moat's credentials, key and daemon sockets";
const DOCKER_WHY: &str = "is the Docker daemon's socket (root on this machine)";
const PODMAN_WHY: &str = "is the Podman socket (it starts containers as you)";

impl Floors {
    /// From `home` and the environment: `HOME`, `SSH_AUTH_SOCK`,
    /// `XDG_RUNTIME_DIR`, `DOCKER_HOST`.
    pub(crate) fn from_env(home: &MoatHome) -> Floors {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let mut floors = Floors::default();
        floors.add(home.root(), HOME_WHY);
        if let Some(user_home) = var("HOME").map(PathBuf::from) {
            floors.add(
                &user_home.join(".local/share/keyrings"),
                "holds the keychain's files",
            );
            floors.add(&user_home.join(".ssh"), "holds your SSH keys");
        }
        // The socket itself: a mount of its directory, or of any parent,
        // contains it and is refused; a sibling directory shows nothing
        // of the agent, so a project next to the socket stays usable.
        if let Some(sock) = var("SSH_AUTH_SOCK").map(PathBuf::from) {
            floors.add(&sock, "is your SSH agent's socket");
        }
        for sock in ["/var/run/docker.sock", "/run/docker.sock"] {
            floors.add(Path::new(sock), DOCKER_WHY);
        }
        floors.add(Path::new("/run/podman/podman.sock"), PODMAN_WHY);
        if let Some(runtime_dir) = var("XDG_RUNTIME_DIR").map(PathBuf::from) {
            floors.add(&runtime_dir.join("podman/podman.sock"), PODMAN_WHY);
            floors.add(&runtime_dir.join("docker.sock"), DOCKER_WHY);
        }
        if let Some(host) = var("DOCKER_HOST") {
            if let Some(path) = host.to_string_lossy().strip_prefix("unix://") {
                floors.add(Path::new(path), DOCKER_WHY);
            }
        }
        floors
    }

    fn add(&mut self, path: &Path, why: &'static str) {
        let path = real_path_lenient(path);
        if !self.0.iter().any(|f| f.path == path) {
            self.0.push(Floor { path, why });
        }
    }

    /// Why `real` may not be mounted: the first floor it is, lies in or
    /// contains.
    pub(crate) fn violation(&self, real: &Path) -> Option<Violation> {
        self.0.iter().find_map(|floor| {
            let relation = if real == floor.path {
                Relation::Is
            } else if real.starts_with(&floor.path) {
                // `moat wt`'s checkouts hold no secret of moat's.
                if floor.why == HOME_WHY
                    && real.starts_with(floor.path.join(crate::worktree::WORKTREES_DIR))
                {
                    return None;
                }
                Relation::Inside
            } else if floor.path.starts_with(real) {
                Relation::Contains
            } else {
                return None;
            };
            Some(Violation {
                real: real.to_owned(),
                floor: floor.clone(),
                relation,
                of_workspace: false,
            })
        })
    }
}

/// How a real path meets a floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// It is the floor.
    Is,
    /// It lies inside the floor.
    Inside,
    /// It contains the floor.
    Contains,
}

/// A path that would show the sandbox a floor; its `Display` completes
/// "mount X: …" (or "workspace X: …").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The real path asked for.
    pub real: PathBuf,
    floor: Floor,
    /// How it meets the floor.
    pub relation: Relation,
    /// Said of the workspace rather than of a mount's source.
    of_workspace: bool,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (shown, why) = (self.floor.path.display(), self.floor.why);
        match self.relation {
            Relation::Is => write!(f, "its source resolves to {shown}, which {why}"),
            Relation::Inside => write!(
                f,
                "its source resolves to {}, inside {shown}, which {why}",
                self.real.display()
            ),
            Relation::Contains if self.of_workspace => {
                write!(f, "it contains {shown}, which {why}")
            }
            Relation::Contains => write!(
                f,
                "its source {} contains {shown}, which {why}",
                self.real.display()
            ),
        }
    }
}

/// Why a mount, or the workspace, may not be shown to the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum MountRefused {
    /// The workspace is, lies in or contains a floor.
    #[error("workspace {}: {violation}; moat never mounts it into a sandbox.", workspace.display())]
    Workspace {
        /// The workspace.
        workspace: PathBuf,
        /// The floor it meets.
        violation: Violation,
    },
    /// A relative source leads out of the workspace.
    #[error(
        "mount {mount}: its source leads out of the workspace {} ({escape}); a relative \
         source must stay inside the project.",
        workspace.display()
    )]
    Escapes {
        /// The mount as written.
        mount: String,
        /// The workspace.
        workspace: PathBuf,
        /// Where it leads.
        escape: Escape,
    },
    /// A source is, lies in or contains a floor.
    #[error("mount {mount}: {violation}; moat never mounts it into a sandbox.")]
    Floor {
        /// The mount as written.
        mount: String,
        /// The floor it meets.
        violation: Violation,
    },
    /// An excluded path that cannot be hidden as it is.
    #[error(
        "mount {mount}: exclude {} {why}; moat hides only a directory beneath the mount.",
        exclude.display()
    )]
    Exclude {
        /// The mount as written.
        mount: String,
        /// The exclude, relative to the mount.
        exclude: PathBuf,
        /// What it is instead.
        why: ExcludeRefused,
    },
}

/// Why an excluded path cannot be hidden.
#[derive(Debug, thiserror::Error)]
pub enum ExcludeRefused {
    /// A symbolic link, at its end or on the way: hiding what it points
    /// to would hide something else than what was named, perhaps outside
    /// the mount.
    #[error("is, or passes through, a symbolic link")]
    Symlink,
    /// A file, or below one.
    #[error("is not a directory")]
    NotADirectory,
    /// Opening it failed otherwise.
    #[error("cannot be opened ({0})")]
    Open(rustix::io::Errno),
}

impl moat_hint::Hint for MountRefused {
    fn hint(&self) -> Option<moat_hint::Fix> {
        Some(moat_hint::Fix::new(match self {
            MountRefused::Workspace { .. } => {
                "To fix: run moat in a project directory that does not contain it."
            }
            MountRefused::Escapes { .. } => {
                "To fix: point it at a path inside the workspace, or write an absolute path to \
                 mount something outside it."
            }
            MountRefused::Floor { .. } => "To fix: remove the mount or point it elsewhere.",
            MountRefused::Exclude { why, .. } => match why {
                ExcludeRefused::Symlink => {
                    "To fix: exclude the directory the link points to (its path beneath the \
                     mount), or replace the link by a directory."
                }
                ExcludeRefused::NotADirectory => {
                    "To fix: exclude the directory that holds it, or remove it from the list."
                }
                ExcludeRefused::Open(_) => "To fix: make it readable, or remove it from the list.",
            },
        }))
    }
}

/// Where a relative mount source leads instead of inside the workspace,
/// or why that could not be told.
#[derive(Debug, thiserror::Error)]
pub enum Escape {
    /// It resolves outside.
    #[error("it resolves to {}", .0.display())]
    ResolvesTo(PathBuf),
    /// A symlink leads out (to nothing that exists).
    #[error("{} is a symlink out of it", .0.display())]
    SymlinkOut(PathBuf),
    /// The workspace could not be opened.
    #[error("opening the workspace: {0}")]
    OpenWorkspace(std::io::Error),
    /// Where the opened source is could not be read.
    #[error("reading where it leads: {0}")]
    ReadLink(std::io::Error),
    /// Opening the source failed.
    #[error("opening it: {0}")]
    Open(rustix::io::Errno),
}

/// The user's mounts, resolved to real paths and checked, and the
/// workspace checked, for `plan`.
pub(crate) fn prepare(
    floors: &Floors,
    workspace: &Path,
    mounts: &[MountPlan],
) -> Result<Vec<MountPlan>, MountRefused> {
    let real_workspace = real_path_lenient(workspace);
    if let Some(violation) = floors.violation(&real_workspace) {
        return Err(MountRefused::Workspace {
            workspace: workspace.to_owned(),
            violation: Violation {
                of_workspace: true,
                ..violation
            },
        });
    }
    let mut out = Vec::with_capacity(mounts.len());
    for mount in mounts {
        let spec = shown_spec(mount, workspace);
        let real = if mount.relative {
            resolve_beneath(workspace, &mount.source).map_err(|escape| MountRefused::Escapes {
                mount: spec.clone(),
                workspace: workspace.to_owned(),
                escape,
            })?
        } else {
            real_path_lenient(&mount.source)
        };
        if let Some(violation) = floors.violation(&real) {
            return Err(MountRefused::Floor {
                mount: spec,
                violation,
            });
        }
        let mut exclude = Vec::with_capacity(mount.exclude.len());
        for path in &mount.exclude {
            let exists = check_exclude(&real, path).map_err(|why| MountRefused::Exclude {
                mount: spec.clone(),
                exclude: path.clone(),
                why,
            })?;
            // Missing under a read-only mount: nothing to hide, and nothing
            // can be written there.
            if exists || !mount.read_only {
                exclude.push(path.clone());
            }
        }
        out.push(MountPlan {
            source: real,
            exclude,
            ..mount.clone()
        });
    }
    Ok(out)
}

/// Checks on the host that `exclude` names a directory beneath `source`
/// (or nothing yet: `false`), reached without a symbolic link. The
/// runtime checks again as it mounts, from inside; this says it before
/// anything starts.
fn check_exclude(source: &Path, exclude: &Path) -> Result<bool, ExcludeRefused> {
    use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

    let Ok(dir) = std::fs::File::open(source) else {
        return Ok(true); // The runtime reports a missing source.
    };
    let opened = rustix::fs::openat2(
        &dir,
        exclude,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    );
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => {
            return Err(ExcludeRefused::Symlink)
        }
        Err(rustix::io::Errno::NOTDIR) => return Err(ExcludeRefused::NotADirectory),
        // Kernels before 5.6: the runtime's own check decides.
        Err(rustix::io::Errno::NOSYS) => return Ok(true),
        Err(e) => return Err(ExcludeRefused::Open(e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(ExcludeRefused::Open)?;
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => Ok(true),
        FileType::Symlink => Err(ExcludeRefused::Symlink),
        _ => Err(ExcludeRefused::NotADirectory),
    }
}

/// The mounts as the sandbox takes them, and the workspace's excludes: a
/// writable mount of the workspace itself at `/workspace` (moat.yaml
/// `{source: ., target: /workspace, exclude: [...]}`) is the workspace
/// mount every sandbox has, so it only brings its excludes. Any other
/// mount at `/workspace` stays, for the sandbox to refuse.
pub(crate) fn for_sandbox(
    workspace: &Path,
    mounts: &[MountPlan],
) -> (Vec<moat_sandbox::BindMount>, Vec<PathBuf>) {
    let real_workspace = real_path_lenient(workspace);
    let mut workspace_exclude = Vec::new();
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        let of_workspace = m.target == Path::new(moat_sandbox::WORKSPACE_IN_SANDBOX)
            && !m.read_only
            && real_path_lenient(&m.source) == real_workspace;
        if of_workspace {
            workspace_exclude.extend(m.exclude.iter().cloned());
            continue;
        }
        out.push(moat_sandbox::BindMount {
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
            exclude: m.exclude.clone(),
        });
    }
    (out, workspace_exclude)
}

/// The mount as the user wrote it: `./data:/data:ro`.
fn shown_spec(mount: &MountPlan, workspace: &Path) -> String {
    let source = match mount.source.strip_prefix(workspace) {
        Ok(rel) if mount.relative && rel.as_os_str().is_empty() => ".".to_owned(),
        Ok(rel) if mount.relative => format!("./{}", rel.display()),
        _ => mount.source.display().to_string(),
    };
    let mode = if mount.read_only { ":ro" } else { "" };
    format!("{source}:{}{mode}", mount.target.display())
}

/// Opens `source` (inside `workspace` by its name) without letting any
/// component, symlinks included, step outside `workspace`, and returns the
/// real path of what was opened. A source that does not exist is returned
/// as named: the runtime reports it. `Err` says where it leads instead.
pub(crate) fn resolve_beneath(workspace: &Path, source: &Path) -> Result<PathBuf, Escape> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};

    let outside = || match std::fs::canonicalize(source) {
        Ok(real) => Escape::ResolvesTo(real),
        Err(_) => Escape::SymlinkOut(source.to_owned()),
    };
    let Ok(relative) = source.strip_prefix(workspace) else {
        return Err(outside());
    };
    if relative.components().any(|c| c == Component::ParentDir) {
        return Err(outside());
    }
    if relative.as_os_str().is_empty() {
        return Ok(workspace.to_owned());
    }
    let dir = std::fs::File::open(workspace).map_err(Escape::OpenWorkspace)?;
    let opened = rustix::fs::openat2(
        &dir,
        relative,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    );
    match opened {
        Ok(fd) => std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(Escape::ReadLink),
        Err(rustix::io::Errno::XDEV) => Err(outside()),
        Err(rustix::io::Errno::NOENT) => {
            // Missing, or a dangling symlink: only the latter can lead out.
            match std::fs::symlink_metadata(source) {
                Ok(_) => match std::fs::canonicalize(source) {
                    Ok(real) if real.starts_with(workspace) => Ok(real),
                    _ => Err(outside()),
                },
                Err(_) => Ok(source.to_owned()),
            }
        }
        // Kernels before 5.6: the same rule by the resolved path, which a
        // concurrent run could race; the trust check still sees the swap.
        Err(rustix::io::Errno::NOSYS) => match std::fs::canonicalize(source) {
            Ok(real) if real.starts_with(workspace) => Ok(real),
            Ok(_) => Err(outside()),
            Err(_) => Ok(source.to_owned()),
        },
        Err(e) => Err(Escape::Open(e)),
    }
}

/// The real path of `path`, resolving symlinks as far as the path exists
/// and appending the rest: a floor that does not exist yet still guards
/// its place.
pub(crate) fn real_path_lenient(path: &Path) -> PathBuf {
    let mut existing = path.to_owned();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_owned();
            }
            _ => return path.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn floors(paths: &[(&Path, &'static str)]) -> Floors {
        let mut f = Floors::default();
        for (p, why) in paths {
            f.add(p, why);
        }
        f
    }

    fn mount(source: &Path, relative: bool) -> MountPlan {
        MountPlan {
            source: source.to_owned(),
            target: "/data".into(),
            read_only: true,
            relative,
            exclude: Vec::new(),
        }
    }

    #[test]
    fn floors_refuse_into_and_parent_but_not_siblings() {
        let f = floors(&[(Path::new("/h/.moat"), "holds moat's credentials")]);
        assert_eq!(
            f.violation(Path::new("/h/.moat")).unwrap().to_string(),
            "its source resolves to /h/.moat, which holds moat's credentials"
        );
        assert_eq!(
            f.violation(Path::new("/h/.moat/credentials"))
                .unwrap()
                .to_string(),
            "its source resolves to /h/.moat/credentials, inside /h/.moat, which holds moat's credentials"
        );
        assert_eq!(
            f.violation(Path::new("/h")).unwrap().to_string(),
            "its source /h contains /h/.moat, which holds moat's credentials"
        );
        assert!(f.violation(Path::new("/")).is_some());
        assert!(f.violation(Path::new("/h/.moatx")).is_none());
        assert!(f.violation(Path::new("/h/project")).is_none());
    }

    #[test]
    fn environment_floors() {
        let home = MoatHome::at("/nonexistent-moat-home");
        let f = Floors::from_env(&home);
        for p in [
            "/nonexistent-moat-home",
            "/run/podman/podman.sock",
            "/run/docker.sock",
        ] {
            assert!(
                f.violation(Path::new(p)).is_some(),
                "{p} not guarded: {f:?}"
            );
        }
        assert!(f
            .violation(&real_path_lenient(Path::new("/var/run")))
            .is_some());
        assert!(f.violation(Path::new("/srv/project")).is_none());
    }

    #[test]
    fn relative_sources_stay_beneath_the_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let ws = root.join("ws");
        std::fs::create_dir_all(ws.join("real/sub")).unwrap();
        std::fs::create_dir(root.join("secret")).unwrap();
        std::os::unix::fs::symlink(root.join("secret"), ws.join("abs")).unwrap();
        std::os::unix::fs::symlink("../secret", ws.join("rel")).unwrap();
        std::os::unix::fs::symlink("real/sub", ws.join("alias")).unwrap();
        std::os::unix::fs::symlink("../nowhere", ws.join("dangling")).unwrap();

        assert_eq!(
            resolve_beneath(&ws, &ws.join("alias")).unwrap(),
            ws.join("real/sub")
        );
        assert_eq!(resolve_beneath(&ws, &ws).unwrap(), ws);
        assert_eq!(
            resolve_beneath(&ws, &ws.join("missing")).unwrap(),
            ws.join("missing")
        );
        let secret = root.join("secret").display().to_string();
        assert_eq!(
            resolve_beneath(&ws, &ws.join("abs"))
                .unwrap_err()
                .to_string(),
            format!("it resolves to {secret}")
        );
        assert_eq!(
            resolve_beneath(&ws, &ws.join("rel"))
                .unwrap_err()
                .to_string(),
            format!("it resolves to {secret}")
        );
        assert!(resolve_beneath(&ws, &ws.join("rel/x")).is_err());
        assert!(resolve_beneath(&ws, &ws.join("dangling")).is_err());
        assert!(resolve_beneath(&ws, &root.join("secret")).is_err());
    }

    #[test]
    fn excludes_are_directories_beneath_the_mount_reached_without_links() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(ws.join("node_modules/.bin")).unwrap();
        std::fs::create_dir_all(ws.join("real")).unwrap();
        std::fs::write(ws.join("file"), "").unwrap();
        std::os::unix::fs::symlink("real", ws.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("out")).unwrap();
        let check = |e: &str| check_exclude(&ws, Path::new(e));
        assert!(check("node_modules").unwrap());
        assert!(check("node_modules/.bin").unwrap());
        assert!(!check("dist").unwrap());
        assert!(matches!(check("link"), Err(ExcludeRefused::Symlink)));
        assert!(matches!(check("link/x"), Err(ExcludeRefused::Symlink)));
        assert!(matches!(check("out"), Err(ExcludeRefused::Symlink)));
        assert!(matches!(check("file"), Err(ExcludeRefused::NotADirectory)));
        assert!(matches!(
            check("file/x"),
            Err(ExcludeRefused::NotADirectory)
        ));

        // Missing under a read-only mount: dropped; under a writable one:
        // kept (the runtime makes its mount point).
        let with = |read_only, exclude: &[&str]| MountPlan {
            read_only,
            exclude: exclude.iter().map(PathBuf::from).collect(),
            ..mount(&ws, true)
        };
        let kept = |read_only| {
            prepare(
                &Floors::default(),
                &ws,
                &[with(read_only, &["node_modules", "dist"])],
            )
            .unwrap()
            .remove(0)
            .exclude
        };
        assert_eq!(kept(true), [PathBuf::from("node_modules")]);
        assert_eq!(kept(false).len(), 2);
        let err = prepare(&Floors::default(), &ws, &[with(false, &["link"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mount .:/data: exclude link is, or passes through, a symbolic link; moat hides \
             only a directory beneath the mount."
        );

        // The workspace mounted at /workspace gives the workspace's
        // excludes; a read-only one stays a mount (the sandbox refuses it).
        let at_workspace = |read_only| MountPlan {
            target: "/workspace".into(),
            ..with(read_only, &["node_modules"])
        };
        let (mounts, workspace) = for_sandbox(&ws, &[at_workspace(false), with(true, &["a"])]);
        assert_eq!(workspace, [PathBuf::from("node_modules")]);
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].exclude, [PathBuf::from("a")]);
        let (mounts, workspace) = for_sandbox(&ws, &[at_workspace(true)]);
        assert!(workspace.is_empty());
        assert_eq!(mounts.len(), 1);
    }

    #[test]
    fn prepare_checks_mounts_and_the_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let ws = root.join("ws");
        let moat_home = root.join("home/.moat");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&moat_home).unwrap();
        std::fs::create_dir(ws.join("data")).unwrap();
        let f = floors(&[(&moat_home, "holds moat's credentials")]);

        let ok = prepare(&f, &ws, &[mount(&ws.join("data"), true)]).unwrap();
        assert_eq!(ok[0].source, ws.join("data"));

        std::fs::remove_dir(ws.join("data")).unwrap();
        std::os::unix::fs::symlink(&moat_home, ws.join("data")).unwrap();
        let err = prepare(&f, &ws, &[mount(&ws.join("data"), true)])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "mount ./data:/data:ro: its source leads out of the workspace {} (it resolves to {})",
                ws.display(),
                moat_home.display()
            )),
            "{err}"
        );
        // The same symlink written as an absolute source: taken as written,
        // and refused by the floor.
        let err = prepare(&f, &ws, &[mount(&ws.join("data"), false)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "mount {ws}/data:/data:ro: its source resolves to {mh}, which holds moat's \
                 credentials; moat never mounts it into a sandbox.",
                ws = ws.display(),
                mh = moat_home.display()
            )
        );
        assert_eq!(
            moat_hint::Hint::hint(&err)
                .map(|f| f.to_string())
                .as_deref(),
            Some("To fix: remove the mount or point it elsewhere.")
        );
        let err = prepare(&f, &root.join("home"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "workspace {}: it contains {}, which",
                root.join("home").display(),
                moat_home.display()
            )),
            "{err}"
        );
    }
}
