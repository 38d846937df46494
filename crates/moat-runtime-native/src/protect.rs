//! The workspace's protected paths, shown read-only inside (see
//! `moat_sandbox::ProtectedPath` for what they are and moat-run for how
//! they are chosen).
//!
//! Done by PID 1 in the sandbox's mount namespace once `/workspace` is
//! mounted: each path is resolved beneath `/workspace` without following
//! any symbolic link (a link planted by an earlier run cannot point the
//! protection elsewhere, nor the sandbox at a host file), and covered by a
//! read-only clone of itself. A clone of a symbolic link is the link
//! itself: pinned, neither followed nor replaceable. Mount points cannot
//! be removed or renamed over, so the sandbox cannot swap a protected
//! entry for one of its own either.
//!
//! A [`ProtectedView::SandboxCopy`] (`.git/config`) is covered instead by
//! a symbolic link to a private copy on a tmpfs at [`COPIES_DIR`]. git
//! writes its configuration to a lock file beside the *target* of a link
//! and renames it there, so `git config`, `remote add` and `push -u` work
//! inside, on the copy; the host's file is never written.

use std::fs;
use std::io::Read as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::{symlink, DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use moat_sandbox::{ProtectedPath, ProtectedView};
use rustix::fs::{Mode, OFlags, ResolveFlags, CWD};
use rustix::mount::{move_mount, open_tree, MountFlags, MoveMountFlags, OpenTreeFlags};

use crate::error::SetupError;
use crate::setup::{Ids, SetupResult};
use crate::spec::WORKSPACE_IN_SANDBOX;
use crate::sys;

/// Where the sandbox's private copies live (a tmpfs of their own).
pub(crate) const COPIES_DIR: &str = "/run/moat/workspace";

/// The largest file copied: git's configuration is a few hundred bytes;
/// a run must not make the next one copy gigabytes.
const MAX_COPY_BYTES: u64 = 1 << 20;

/// Covers every path of `protected` (see the module's documentation).
pub(crate) fn apply(protected: &[ProtectedPath], ids: Ids) -> SetupResult<()> {
    if protected.is_empty() {
        return Ok(());
    }
    let workspace = rustix::fs::open(
        WORKSPACE_IN_SANDBOX,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SetupError::path("cannot open", Path::new(WORKSPACE_IN_SANDBOX), e))?;
    let mut copies = 0usize;
    for p in protected {
        let fail = |what: &'static str, error: std::io::Error| SetupError::Protect {
            path: p.path.clone(),
            what,
            error,
        };
        let (parent, name) = match (p.path.parent(), p.path.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => return Err(fail("not a path", std::io::Error::other("empty"))),
        };
        let parent = if parent.as_os_str().is_empty() {
            workspace.try_clone().map_err(|e| fail("opening", e))?
        } else {
            rustix::fs::openat2(
                &workspace,
                parent,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
            .map_err(|e| fail("opening its directory", e.into()))?
        };
        match p.view {
            ProtectedView::ReadOnly => {
                pin_read_only(&parent, name).map_err(|(what, e)| fail(what, e.into()))?
            }
            ProtectedView::SandboxCopy => {
                let Some(contents) = read_regular(&parent, name).map_err(|e| fail("reading", e))?
                else {
                    // Not a regular file (a link, a directory): read-only.
                    pin_read_only(&parent, name).map_err(|(what, e)| fail(what, e.into()))?;
                    continue;
                };
                if copies == 0 {
                    copies_tmpfs(ids)?;
                }
                copies += 1;
                let dir = Path::new(COPIES_DIR).join(copies.to_string());
                let link = private_copy(&dir, name, &contents, ids)
                    .map_err(|e| fail("making the sandbox's copy", e))?;
                let tree = open_tree(
                    CWD,
                    &link,
                    OpenTreeFlags::OPEN_TREE_CLONE
                        | OpenTreeFlags::OPEN_TREE_CLOEXEC
                        | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| fail("taking the link to the copy", e.into()))?;
                cover(&tree, &parent, name).map_err(|e| fail("mounting over it", e.into()))?;
                // The mount holds the link; its name can go.
                fs::remove_file(&link).map_err(|e| fail("tidying", e))?;
            }
        }
    }
    Ok(())
}

/// Covers `name` in `parent` with a read-only clone of itself (a link
/// pinned as it is); the error says which step failed.
fn pin_read_only(
    parent: &OwnedFd,
    name: &std::ffi::OsStr,
) -> Result<(), (&'static str, rustix::io::Errno)> {
    let tree = open_tree(
        parent,
        name,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| ("taking a copy of its mount", e))?;
    sys::mount_setattr_tree(
        tree.as_fd(),
        false,
        sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        None,
    )
    .map_err(|e| {
        (
            "making it read-only",
            rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
        )
    })?;
    cover(&tree, parent, name).map_err(|e| ("mounting over it", e))
}

/// Attaches `tree` over `name` in `parent`, never following a link there.
fn cover(tree: &OwnedFd, parent: &OwnedFd, name: &std::ffi::OsStr) -> rustix::io::Result<()> {
    move_mount(
        tree.as_fd(),
        "",
        parent.as_fd(),
        name,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
}

/// The contents of `name` in `parent` if it is a regular file (not
/// following a link, never blocking on a FIFO), at most
/// [`MAX_COPY_BYTES`]; `None` for anything else.
fn read_regular(parent: &OwnedFd, name: &std::ffi::OsStr) -> std::io::Result<Option<Vec<u8>>> {
    let fd = match rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let stat = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Ok(None);
    }
    let mut contents = Vec::new();
    fs::File::from(fd)
        .take(MAX_COPY_BYTES + 1)
        .read_to_end(&mut contents)?;
    if contents.len() as u64 > MAX_COPY_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_COPY_BYTES} bytes"
        )));
    }
    Ok(Some(contents))
}

/// A tmpfs for the copies, the sandbox user's.
fn copies_tmpfs(ids: Ids) -> SetupResult<()> {
    let dir = Path::new(COPIES_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| SetupError::path("cannot create", dir, e))?;
    crate::setup::mount_tmpfs(
        dir,
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        &format!("mode=0700,size=4m,uid={},gid={}", ids.uid, ids.gid),
    )
}

/// Writes `contents` as `dir/name`, owned by the sandbox user, and a link
/// to it beside; returns the link's path.
fn private_copy(
    dir: &Path,
    name: &std::ffi::OsStr,
    contents: &[u8],
    ids: Ids,
) -> std::io::Result<PathBuf> {
    fs::DirBuilder::new().mode(0o700).create(dir)?;
    let copy = dir.join(name);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&copy)
        .and_then(|mut f| std::io::Write::write_all(&mut f, contents))?;
    let link = dir.join(".link");
    symlink(&copy, &link)?;
    for path in [dir, copy.as_path()] {
        rustix::fs::chown(
            path,
            Some(rustix::process::Uid::from_raw(ids.uid)),
            Some(rustix::process::Gid::from_raw(ids.gid)),
        )?;
    }
    Ok(link)
}
