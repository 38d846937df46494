//! Builds the sandbox's root filesystem, inside the sandbox's own mount
//! namespace (run by PID 1 of the sandbox, before the command starts).
//!
//! Layout: a tmpfs is mounted over `/tmp` and becomes the new root with
//! `pivot_root`, the host root staying reachable at `/oldroot` while we
//! bind what the sandbox may see; `/oldroot` is then detached and the root
//! tmpfs remounted read-only. Host paths given by the caller are
//! canonicalised *before* the pivot, so a symlink cannot redirect a bind.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{statvfs, Mode, CWD};
use rustix::mount::{
    mount, mount_bind, mount_bind_recursive, mount_change, mount_remount, move_mount, open_tree,
    unmount, MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};

use crate::error::SetupError;
use crate::setup::{err, mount_tmpfs, options_text, Ids, SetupResult};
use crate::sys;

use crate::spec::{
    NetworkMode, SandboxSpec, HOST_GATEWAY_ADDR, HOST_GATEWAY_NAME, PROXY_SOCKET_DIR_IN_SANDBOX,
    PROXY_SOCKET_IN_SANDBOX, WORKSPACE_IN_SANDBOX,
};

/// The directory of the proxy's socket, which the sandbox is shown: it
/// must hold nothing but the socket (a daemon from an older moat serves it
/// beside its control socket and lock, which no sandbox may see).
fn socket_dir(proxy_socket: &Path) -> SetupResult<PathBuf> {
    let socket = fs::canonicalize(proxy_socket).map_err(|error| SetupError::ProxySocket {
        path: proxy_socket.to_path_buf(),
        error,
    })?;
    let dir = socket.parent().map(Path::to_path_buf).ok_or_else(|| {
        SetupError::ProxySocketWithoutDir {
            path: socket.clone(),
        }
    })?;
    let others = fs::read_dir(&dir)
        .map_err(|e| err("cannot list", &dir, e))?
        .flatten()
        .any(|e| Some(e.file_name().as_os_str()) != socket.file_name());
    if others {
        return Err(SetupError::SharedSocketDir { path: socket });
    }
    Ok(dir)
}

/// The file name of the proxy's socket, for the link beside its directory.
fn proxy_socket_name(spec: &SandboxSpec) -> Option<std::ffi::OsString> {
    match &spec.network {
        NetworkMode::Isolated { proxy_socket, .. } => {
            proxy_socket.file_name().map(|n| n.to_os_string())
        }
        NetworkMode::Host => None,
    }
}

/// Where the host root is attached while the new root is being built.
const OLD_ROOT: &str = "/oldroot";

/// Host files copied into the sandbox's `/etc` (when present).
const ETC_FILES: &[&str] = &[
    "resolv.conf",
    "hosts",
    "nsswitch.conf",
    "host.conf",
    "ld.so.cache",
    "ld.so.conf",
    "localtime",
    "timezone",
    "ca-certificates.conf",
    "services",
    "protocols",
];

/// Host directories shown read-only in `/etc` (see [`mount_etc_dir`]).
const ETC_DIRS: &[&str] = &["ssl", "ca-certificates", "alternatives", "ld.so.conf.d"];

/// Scratch tmpfs holding the upper layers of `/etc` overlays during setup.
const LAYERS: &str = "/.moat-layers";

/// Entries never copied from the host's `/etc` directories.
const ETC_SKIP: &[&str] = &["private"];

/// Host root-level entries reproduced as they are (symlink or read-only dir).
const ROOT_LINKS: &[&str] = &["bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// A host file or directory to show in the sandbox.
#[derive(Debug)]
pub(crate) enum HostSource {
    /// Bound by path from the sandbox's PID 1.
    Path(PathBuf),
    /// A detached, already configured mount tree (`open_tree`), attached
    /// by PID 1 with `move_mount`.
    Tree(OwnedFd),
}

/// One host path shown in the sandbox.
#[derive(Debug)]
pub(crate) struct HostMount {
    source: HostSource,
    target: PathBuf,
    read_only: bool,
    is_dir: bool,
    /// Paths beneath `target` hidden behind a tmpfs (see `exclude.rs`).
    exclude: Vec<PathBuf>,
}

/// Host paths from the spec, canonicalised by the init while it still sees
/// the host's tree with the caller's identity, so a symlink cannot redirect
/// a bind later.
#[derive(Debug)]
pub(crate) struct HostPaths {
    workspace: HostMount,
    /// Volume mode: the run's copy directory, the overlay's upper side
    /// (the workspace is then its read-only lower side).
    overlay: Option<HostMount>,
    mounts: Vec<HostMount>,
    proxy_socket: Option<HostMount>,
}

impl HostPaths {
    pub(crate) fn resolve(spec: &SandboxSpec) -> SetupResult<HostPaths> {
        let workspace =
            fs::canonicalize(&spec.workload.workspace).map_err(|error| SetupError::Workspace {
                path: spec.workload.workspace.clone(),
                error,
            })?;
        if !workspace.is_dir() {
            return Err(SetupError::WorkspaceNotADirectory {
                path: spec.workload.workspace.clone(),
            });
        }
        let mut mounts = Vec::new();
        for m in &spec.workload.mounts {
            let source = fs::canonicalize(&m.source).map_err(|error| SetupError::MountSource {
                path: m.source.clone(),
                error,
            })?;
            mounts.push(HostMount {
                is_dir: source.is_dir(),
                source: HostSource::Path(source),
                target: m.target.clone(),
                read_only: m.read_only,
                exclude: m.exclude.clone(),
            });
        }
        let proxy_socket = match &spec.network {
            NetworkMode::Host => None,
            // The socket's directory, read-only: a daemon that restarts binds a
            // new socket there, which the sandbox then reaches; it cannot
            // replace the socket other sandboxes use.
            NetworkMode::Isolated { proxy_socket, .. } => Some(HostMount {
                source: HostSource::Path(socket_dir(proxy_socket)?),
                target: PathBuf::from(PROXY_SOCKET_DIR_IN_SANDBOX),
                read_only: true,
                is_dir: true,
                exclude: Vec::new(),
            }),
        };
        let overlay = match &spec.workload.workspace_overlay {
            None => None,
            Some(copy) => Some(HostMount {
                source: HostSource::Path(crate::overlay::prepare_copy_dir(copy)?),
                target: PathBuf::from(crate::overlay::COPY_STAGE),
                read_only: false,
                is_dir: true,
                exclude: Vec::new(),
            }),
        };
        let (target, read_only) = match overlay {
            None => (WORKSPACE_IN_SANDBOX, false),
            Some(_) => (crate::overlay::LOWER_STAGE, true),
        };
        Ok(HostPaths {
            workspace: HostMount {
                source: HostSource::Path(workspace),
                target: PathBuf::from(target),
                read_only,
                is_dir: true,
                // Its excludes come after its protected paths (`build`).
                exclude: Vec::new(),
            },
            overlay,
            mounts,
            proxy_socket,
        })
    }

    /// Replaces every source by a detached copy of its mount tree, ID-mapped
    /// through `idmap` (see [`crate::identity`]), read-only where asked,
    /// never honouring set-uid bits or device files. Needs privileges over
    /// the host's mounts: only for a root caller, before the init enters the
    /// sandbox's user namespace.
    pub(crate) fn detach_idmapped(&mut self, idmap: BorrowedFd<'_>) -> SetupResult<()> {
        let all = std::iter::once(&mut self.workspace)
            .chain(self.overlay.iter_mut())
            .chain(self.mounts.iter_mut())
            .chain(self.proxy_socket.iter_mut());
        for m in all {
            let HostSource::Path(path) = &m.source else {
                continue;
            };
            // Read-only mounts show the directory alone, as a plain bind
            // would; writable ones bring their submounts along.
            let recursive = !m.read_only;
            let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
            if recursive {
                flags |= OpenTreeFlags::AT_RECURSIVE;
            }
            let tree = open_tree(CWD, path, flags)
                .map_err(|e| err("cannot take a copy of the mount at", path, e))?;
            let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
            if m.read_only {
                attrs |= sys::MOUNT_ATTR_RDONLY;
            }
            let mapped = sys::mount_setattr_tree(
                tree.as_fd(),
                recursive,
                attrs | sys::MOUNT_ATTR_IDMAP,
                Some(idmap),
            );
            if let Err(error) = mapped {
                if !m.read_only {
                    return Err(SetupError::IdMap {
                        path: path.clone(),
                        error,
                    });
                }
                // Read-only: world-readable files stay readable unmapped.
                sys::mount_setattr_tree(tree.as_fd(), recursive, attrs, None)
                    .map_err(|e| err("cannot configure the mount of", path, e))?;
            }
            m.source = HostSource::Tree(tree);
        }
        Ok(())
    }
}

/// The host path `p` as seen while the host root is at [`OLD_ROOT`].
fn host(p: &Path) -> PathBuf {
    Path::new(OLD_ROOT).join(p.strip_prefix("/").unwrap_or(p))
}

fn mkdir_p(path: &Path, mode: u32) -> SetupResult<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| err("cannot create directory", path, e))
}

fn touch(path: &Path) -> SetupResult<()> {
    if let Some(parent) = path.parent() {
        mkdir_p(parent, 0o755)?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map(drop)
        .map_err(|e| err("cannot create mount point", path, e))
}

/// Per-mount flags that a remount in a user namespace must keep (the kernel
/// refuses to clear them when they are locked).
fn kept_flags(path: &Path) -> SetupResult<MountFlags> {
    let st = statvfs(path).map_err(|e| err("cannot stat mount", path, e))?;
    let keep = MountFlags::NOSUID
        | MountFlags::NODEV
        | MountFlags::NOEXEC
        | MountFlags::NOATIME
        | MountFlags::NODIRATIME
        | MountFlags::RELATIME;
    Ok(MountFlags::from_bits_retain(st.f_flag.bits() as _) & keep)
}

fn remount_read_only(target: &Path) -> SetupResult<()> {
    let flags = kept_flags(target)? | MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID;
    mount_remount(target, flags, "").map_err(|e| err("cannot make read-only:", target, e))
}

/// Binds host `source` (an already-translated path) onto `target`.
fn bind(source: &Path, target: &Path, read_only: bool) -> SetupResult<()> {
    let result = if read_only {
        mount_bind(source, target)
    } else {
        mount_bind_recursive(source, target)
    };
    result.map_err(|e| SetupError::Bind {
        from: source
            .strip_prefix(OLD_ROOT)
            .map(|p| Path::new("/").join(p))
            .unwrap_or_else(|_| source.to_path_buf()),
        onto: target.to_path_buf(),
        error: e.into(),
    })?;
    if read_only {
        remount_read_only(target)?;
    }
    Ok(())
}

/// Shows `m` at its target: a bind of its host path (translated to where
/// the host root is now), or its detached tree moved into place; then
/// hides its excluded paths behind tmpfs of at most `tmpfs_size` bytes.
fn show_excluding(mut m: HostMount, ids: Ids, tmpfs_size: u64) -> SetupResult<()> {
    let exclude = std::mem::take(&mut m.exclude);
    let (target, read_only) = (m.target.clone(), m.read_only);
    show(m)?;
    let excluded = crate::exclude::Excluded {
        target: &target,
        paths: &exclude,
        read_only,
    };
    crate::exclude::apply(&excluded, ids, tmpfs_size)
}

/// Shows `m` at its target: a bind of its host path (translated to where
/// the host root is now), or its detached tree moved into place.
fn show(m: HostMount) -> SetupResult<()> {
    if m.is_dir {
        mkdir_p(&m.target, 0o755)?;
    } else {
        touch(&m.target)?;
    }
    match m.source {
        HostSource::Path(path) => bind(&host(&path), &m.target, m.read_only),
        HostSource::Tree(tree) => move_mount(
            tree.as_fd(),
            "",
            CWD,
            &m.target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| err("cannot attach the mount at", &m.target, e)),
    }
}

/// Builds the whole tree and leaves the process in `/workspace`, with the
/// host root detached. `tmpfs_size` caps each writable tmpfs (bytes). The
/// steps run in this order: each mounts onto what the one before made.
pub(crate) fn build(
    spec: &SandboxSpec,
    ids: Ids,
    paths: HostPaths,
    tmpfs_size: u64,
) -> SetupResult<()> {
    let sized = |mode: &str| format!("mode={mode},size={tmpfs_size}");
    pivot_into_new_root()?;
    show_usr()?;
    let handled = build_etc_in_layers(spec, ids)?;
    mount_tmp_and_proc(&sized("1777"))?;
    build_dev(&sized("1777"))?;

    let ws = Path::new(WORKSPACE_IN_SANDBOX);
    let workspace_exclude = crate::exclude::Excluded {
        target: ws,
        paths: &spec.workload.workspace_exclude,
        read_only: false,
    };
    show(paths.workspace)?;
    if let Some(copy) = paths.overlay {
        show(copy)?;
        crate::overlay::mount_at(ws)?;
    }
    crate::protect::apply(&spec.workload.protected, ids)?;
    crate::exclude::apply(&workspace_exclude, ids, tmpfs_size)?;

    let home = spec.home_in_sandbox();
    mkdir_p(&home, 0o755)?;
    mount_tmpfs(
        &home,
        MountFlags::NOSUID | MountFlags::NODEV,
        &sized("0700"),
    )?;

    for m in paths.mounts {
        show_excluding(m, ids, tmpfs_size)?;
    }
    if let Some(sock) = paths.proxy_socket {
        show_proxy_socket(spec, sock)?;
    }
    write_remaining_files(spec, &handled, &home)?;

    unmount(OLD_ROOT, UnmountFlags::DETACH)
        .map_err(|e| SetupError::step("cannot detach the host root", e))?;
    fs::remove_dir(OLD_ROOT).map_err(|e| err("cannot remove", Path::new(OLD_ROOT), e))?;
    remount_read_only(Path::new("/dev"))?;
    remount_read_only(Path::new("/"))?;

    std::env::set_current_dir(ws).map_err(|e| err("cannot enter", ws, e))?;
    Ok(())
}

/// A private mount tree, and a tmpfs over /tmp as the new root, the
/// host's kept at [`OLD_ROOT`].
fn pivot_into_new_root() -> SetupResult<()> {
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| SetupError::step("cannot make the mount tree private", e))?;
    mount_tmpfs(
        Path::new("/tmp"),
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=0755,size=64m",
    )?;
    mkdir_p(Path::new("/tmp/oldroot"), 0o700)?;
    rustix::process::pivot_root("/tmp", "/tmp/oldroot")
        .map_err(|e| SetupError::step("pivot_root into the new root failed", e))?;
    std::env::set_current_dir("/").map_err(|e| SetupError::step("cannot chdir to the new root", e))
}

/// /usr and the merged-/usr links, read-only.
fn show_usr() -> SetupResult<()> {
    mkdir_p(Path::new("/usr"), 0o755)?;
    bind(&host(Path::new("/usr")), Path::new("/usr"), true)?;
    for name in ROOT_LINKS {
        let src = host(&Path::new("/").join(name));
        let dst = Path::new("/").join(name);
        match fs::symlink_metadata(&src) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&src).map_err(|e| err("cannot read link", &src, e))?;
                symlink(&target, &dst).map_err(|e| err("cannot create link", &dst, e))?;
            }
            Ok(meta) if meta.is_dir() => {
                mkdir_p(&dst, 0o755)?;
                bind(&src, &dst, true)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// /etc, its overlays built on a scratch tmpfs that is detached after
/// (the overlays keep their own reference to their layers). Returns which
/// injected files it wrote.
fn build_etc_in_layers(spec: &SandboxSpec, ids: Ids) -> SetupResult<Vec<bool>> {
    mkdir_p(Path::new(LAYERS), 0o700)?;
    mount_tmpfs(
        Path::new(LAYERS),
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=0700,size=64m",
    )?;
    let mut handled = vec![false; spec.workload.files.len()];
    build_etc(spec, ids, &mut handled)?;
    unmount(LAYERS, UnmountFlags::DETACH)
        .map_err(|e| err("cannot detach", Path::new(LAYERS), e))?;
    fs::remove_dir(LAYERS).map_err(|e| err("cannot remove", Path::new(LAYERS), e))?;
    Ok(handled)
}

/// A writable /tmp (with /var/tmp linked to it), /run, and /proc.
fn mount_tmp_and_proc(tmp_options: &str) -> SetupResult<()> {
    mkdir_p(Path::new("/tmp"), 0o1777)?;
    mount_tmpfs(
        Path::new("/tmp"),
        MountFlags::NOSUID | MountFlags::NODEV,
        tmp_options,
    )?;
    mkdir_p(Path::new("/var"), 0o755)?;
    symlink("/tmp", "/var/tmp").map_err(|e| err("cannot create link", Path::new("/var/tmp"), e))?;
    mkdir_p(Path::new("/run"), 0o755)?;

    mkdir_p(Path::new("/proc"), 0o555)?;
    mount(
        "proc",
        "/proc",
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| SetupError::step("cannot mount /proc in the sandbox", e))?;
    restrict_proc()
}

/// The proxy socket's directory, and the link to the socket beside it.
fn show_proxy_socket(spec: &SandboxSpec, sock: HostMount) -> SetupResult<()> {
    show(sock)?;
    if let Some(name) = proxy_socket_name(spec) {
        let link = Path::new(PROXY_SOCKET_IN_SANDBOX);
        symlink(Path::new(PROXY_SOCKET_DIR_IN_SANDBOX).join(name), link)
            .map_err(|e| err("cannot link", link, e))?;
    }
    Ok(())
}

/// The injected files /etc did not take, read-only where their directory
/// is writable (/tmp, the home).
fn write_remaining_files(spec: &SandboxSpec, handled: &[bool], home: &Path) -> SetupResult<()> {
    for (file, _) in spec
        .workload
        .files
        .iter()
        .zip(handled)
        .filter(|(_, done)| !**done)
    {
        write_injected(&file.path_in_sandbox, &file.contents, file.mode)?;
        let writable_parent = [Path::new("/tmp"), home]
            .iter()
            .any(|p| file.path_in_sandbox.starts_with(p));
        if writable_parent {
            bind(&file.path_in_sandbox, &file.path_in_sandbox, true)?;
        }
    }
    Ok(())
}

fn write_injected(path: &Path, contents: &[u8], mode: u32) -> SetupResult<()> {
    if let Some(parent) = path.parent() {
        mkdir_p(parent, 0o755)?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err("cannot create injected file", path, e))?;
    f.write_all(contents)
        .map_err(|e| err("cannot write injected file", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777 & !0o6000))
        .map_err(|e| err("cannot set mode of injected file", path, e))
}

/// Builds `/etc`. Injected files that land in one of [`ETC_DIRS`] are
/// written there and flagged in `handled`.
fn build_etc(spec: &SandboxSpec, ids: Ids, handled: &mut [bool]) -> SetupResult<()> {
    let etc = Path::new("/etc");
    mkdir_p(etc, 0o755)?;
    for name in ETC_FILES {
        let src = host(&etc.join(name));
        let dst = etc.join(name);
        match fs::symlink_metadata(&src) {
            Ok(meta) if meta.file_type().is_symlink() && *name == "localtime" => {
                let target = fs::read_link(&src).map_err(|e| err("cannot read link", &src, e))?;
                symlink(&target, &dst).map_err(|e| err("cannot create link", &dst, e))?;
            }
            Ok(_) => copy_file(&src, &dst)?,
            Err(_) => {}
        }
    }
    for name in ETC_DIRS {
        mount_etc_dir(spec, name, handled)?;
    }
    // With capture, names are answered inside the sandbox (capture.rs).
    if matches!(
        spec.network,
        NetworkMode::Isolated {
            capture: Some(_),
            ..
        }
    ) {
        write_new(&etc.join("resolv.conf"), b"nameserver 127.0.0.1\n")?;
    }

    let shell = if Path::new("/usr/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let user = &spec.user;
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    let mut group = String::from("root:x:0:\n");
    if ids.uid != 65534 {
        passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    }
    if ids.gid != 65534 {
        group.push_str("nogroup:x:65534:\n");
    }
    passwd.push_str(&format!(
        "{user}:x:{}:{}:{user}:/home/{user}:{shell}\n",
        ids.uid, ids.gid
    ));
    group.push_str(&format!("{user}:x:{}:\n", ids.gid));
    write_new(&etc.join("passwd"), passwd.as_bytes())?;
    write_new(&etc.join("group"), group.as_bytes())?;
    write_new(
        &etc.join("hostname"),
        format!("{}\n", spec.hostname).as_bytes(),
    )?;
    // Let the sandbox hostname resolve, like a container does.
    let hosts = etc.join("hosts");
    let mut content = fs::read(&hosts).unwrap_or_else(|_| b"127.0.0.1\tlocalhost\n".to_vec());
    content.extend_from_slice(format!("127.0.1.1\t{}\n", spec.hostname).as_bytes());
    if matches!(
        spec.network,
        NetworkMode::Isolated {
            capture: Some(_),
            ..
        }
    ) {
        content.extend_from_slice(format!("{HOST_GATEWAY_ADDR}\t{HOST_GATEWAY_NAME}\n").as_bytes());
    }
    write_new(&hosts, &content)?;
    Ok(())
}

/// Makes host `/etc/<name>` visible read-only: a plain read-only bind, or,
/// when the spec injects files below it, a read-only overlay of a layer
/// holding those files over the host directory (falling back to a copy of
/// the directory if overlayfs is not available). `private/` subdirectories
/// (TLS private keys) are always hidden.
fn mount_etc_dir(spec: &SandboxSpec, name: &str, handled: &mut [bool]) -> SetupResult<()> {
    let dir = Path::new("/etc").join(name);
    let src = host(&dir);
    if !src.is_dir() {
        return Ok(());
    }
    mkdir_p(&dir, 0o755)?;
    let injected: Vec<usize> = spec
        .workload
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| f.path_in_sandbox.starts_with(&dir))
        .map(|(i, _)| i)
        .collect();
    if injected.is_empty() {
        bind(&src, &dir, true)?;
    } else {
        let layer = Path::new(LAYERS).join(name);
        mkdir_p(&layer, 0o755)?;
        for &i in &injected {
            let file = &spec.workload.files[i];
            let rel = file
                .path_in_sandbox
                .strip_prefix(&dir)
                .unwrap_or(&file.path_in_sandbox);
            write_injected(&layer.join(rel), &file.contents, file.mode)?;
        }
        let options = format!("lowerdir={}:{}", layer.display(), src.display());
        let data = options_text(&options)?;
        let overlay = mount(
            "overlay",
            &dir,
            "overlay",
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
            Some(data.as_c_str()),
        );
        if overlay.is_err() {
            copy_tree(&src, &dir)?;
            for &i in &injected {
                let file = &spec.workload.files[i];
                write_injected(&file.path_in_sandbox, &file.contents, file.mode)?;
            }
        }
        for i in injected {
            handled[i] = true;
        }
    }
    let private = dir.join("private");
    if private.is_dir() {
        mount_tmpfs(
            &private,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "mode=0700",
        )?;
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8]) -> SetupResult<()> {
    fs::write(path, contents).map_err(|e| err("cannot write", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .map_err(|e| err("cannot set mode of", path, e))
}

fn copy_file(src: &Path, dst: &Path) -> SetupResult<()> {
    let data = match fs::read(src) {
        Ok(data) => data,
        // Unreadable for this user: the sandbox would not see it either.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(()),
        Err(e) => return Err(err("cannot read host file", src, e)),
    };
    let mode = fs::metadata(src)
        .map(|m| m.permissions().mode() & 0o755)
        .unwrap_or(0o644);
    fs::write(dst, data).map_err(|e| err("cannot write", dst, e))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(mode))
        .map_err(|e| err("cannot set mode of", dst, e))
}

/// Copies a host directory tree: directories, regular files and symlinks
/// (as symlinks), skipping [`ETC_SKIP`] entries and what we cannot read.
fn copy_tree(src: &Path, dst: &Path) -> SetupResult<()> {
    mkdir_p(dst, 0o755)?;
    let entries = match fs::read_dir(src) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(()),
        Err(e) => return Err(err("cannot list host directory", src, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| err("cannot list host directory", src, e))?;
        let name = entry.file_name();
        if ETC_SKIP.iter().any(|s| name == *s) {
            continue;
        }
        let from = entry.path();
        let to = dst.join(&name);
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| err("cannot read link", &from, e))?;
            symlink(&target, &to).map_err(|e| err("cannot create link", &to, e))?;
        } else if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if kind.is_file() {
            copy_file(&from, &to)?;
        }
    }
    Ok(())
}

fn build_dev(shm_options: &str) -> SetupResult<()> {
    let dev = Path::new("/dev");
    mkdir_p(dev, 0o755)?;
    mount_tmpfs(
        dev,
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "mode=0755,size=1m",
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let dst = dev.join(node);
        touch(&dst)?;
        bind(&host(&dst), &dst, false)?;
    }
    let pts = dev.join("pts");
    mkdir_p(&pts, 0o755)?;
    mount(
        "devpts",
        &pts,
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some(c"newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(|e| err("cannot mount devpts on", &pts, e))?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        let path = dev.join(name);
        symlink(target, &path).map_err(|e| err("cannot create link", &path, e))?;
    }
    let shm = dev.join("shm");
    mkdir_p(&shm, 0o1777)?;
    mount_tmpfs(&shm, MountFlags::NOSUID | MountFlags::NODEV, shm_options)?;
    Ok(())
}

/// `/proc` entries that reach the kernel itself: shown read-only.
const PROC_READ_ONLY: &[&str] = &["sys", "sysrq-trigger", "irq", "bus", "fs"];

/// `/proc` entries that reveal or change host state: hidden (files behind
/// `/dev/null`, directories behind an empty read-only tmpfs).
const PROC_MASKED: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "latency_stats",
    "sched_debug",
    "kallsyms",
    "kmsg",
    "config.gz",
    "acpi",
    "scsi",
    "asound",
    "driver",
];

/// Makes the kernel's knobs in `/proc` read-only and hides the entries
/// that leak host state, as container runtimes do. Runs while the host
/// root is still attached (for `/dev/null`).
fn restrict_proc() -> SetupResult<()> {
    for name in PROC_MASKED {
        let path = Path::new("/proc").join(name);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => mount_tmpfs(
                &path,
                MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                "mode=0555,size=4k",
            )?,
            Ok(_) => mount_bind(host(Path::new("/dev/null")), &path)
                .map_err(|e| err("cannot hide", &path, e))?,
            Err(_) => {}
        }
    }
    for name in PROC_READ_ONLY {
        let path = Path::new("/proc").join(name);
        if fs::symlink_metadata(&path).is_err() {
            continue;
        }
        mount_bind_recursive(&path, &path).map_err(|e| err("cannot bind", &path, e))?;
        remount_read_only(&path)?;
    }
    Ok(())
}

/// Sets the file mode creation mask used while building (and inherited by
/// the command).
pub(crate) fn set_umask() {
    rustix::process::umask(Mode::from_bits_truncate(0o022));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_socket_directory_must_hold_the_socket_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("proxy.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert_eq!(
            socket_dir(&sock).unwrap(),
            fs::canonicalize(tmp.path()).unwrap()
        );
        std::fs::write(tmp.path().join("daemon.lock"), "{}").unwrap();
        let e = socket_dir(&sock).unwrap_err();
        assert!(e.to_string().contains("moat proxy restart"), "{e}");
    }
}
