//! Reading an overlay upper layer back as a list of changes, and applying
//! them. No symbolic link is followed, in the copy or in the workspace.

use std::fmt;
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::OverlayError;

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Not in the workspace, made by the run.
    Added,
    /// In both, with other contents, mode, link target or type.
    Modified,
    /// In the workspace, removed by the run.
    Deleted,
}

/// One changed path, relative to the workspace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// `a/b.txt`.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = match self.kind {
            ChangeKind::Added => 'A',
            ChangeKind::Modified => 'M',
            ChangeKind::Deleted => 'D',
        };
        write!(f, "{letter} {}", self.path.display())
    }
}

/// Permission bits moat compares and writes; set-id bits are dropped.
const MODE_BITS: u32 = 0o1777;

fn lstat(path: &Path) -> Result<Option<Metadata>, OverlayError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OverlayError::io("cannot read", path)(e)),
    }
}

fn is_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 4];
    ["user.overlay.opaque", "trusted.overlay.opaque"]
        .iter()
        .any(|name| matches!(rustix::fs::lgetxattr(dir, *name, &mut buf), Ok(1) if buf[0] == b'y'))
}

fn entries(dir: &Path) -> Result<Vec<std::ffi::OsString>, OverlayError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(OverlayError::io("cannot list", dir))? {
        names.push(
            entry
                .map_err(OverlayError::io("cannot list", dir))?
                .file_name(),
        );
    }
    names.sort();
    Ok(names)
}

/// What the run whose overlay upper layer is `upper` changed in
/// `workspace` (its lower layer), sorted by path.
pub fn changes(upper: &Path, workspace: &Path) -> Result<Vec<Change>, OverlayError> {
    let mut out = Vec::new();
    walk(upper, workspace, Path::new(""), &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(upper: &Path, lower: &Path, rel: &Path, out: &mut Vec<Change>) -> Result<(), OverlayError> {
    let (udir, ldir) = (upper.join(rel), lower.join(rel));
    let lower_is_dir = lstat(&ldir)?.is_some_and(|m| m.is_dir());
    let names = entries(&udir)?;
    if lower_is_dir && is_opaque(&udir) {
        for name in entries(&ldir)? {
            if !names.contains(&name) {
                all_below(lower, &rel.join(&name), ChangeKind::Deleted, out)?;
            }
        }
    }
    for name in names {
        let path = rel.join(&name);
        let u = lstat(&upper.join(&path))?.ok_or_else(|| gone(&upper.join(&path)))?;
        let l = if lower_is_dir {
            lstat(&lower.join(&path))?
        } else {
            None
        };
        match (is_whiteout(&u), l) {
            (true, Some(_)) => all_below(lower, &path, ChangeKind::Deleted, out)?,
            (true, None) => {}
            (false, None) => all_below(upper, &path, ChangeKind::Added, out)?,
            (false, Some(l)) => {
                if differs(&upper.join(&path), &u, &lower.join(&path), &l)? {
                    out.push(Change {
                        path: path.clone(),
                        kind: ChangeKind::Modified,
                    });
                }
                if u.is_dir() {
                    walk(upper, lower, &path, out)?;
                }
            }
        }
    }
    Ok(())
}

/// What a container run changed: its extracted `tree` (Docker, Podman)
/// against `workspace`, whole, `excluded` paths (a tmpfs in the run) left
/// out on both sides. Sorted by path.
pub fn tree_changes(
    tree: &Path,
    workspace: &Path,
    excluded: &[PathBuf],
) -> Result<Vec<Change>, OverlayError> {
    let mut out = Vec::new();
    compare(tree, workspace, Path::new(""), excluded, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn compare(
    tree: &Path,
    host: &Path,
    rel: &Path,
    excluded: &[PathBuf],
    out: &mut Vec<Change>,
) -> Result<(), OverlayError> {
    let mut names = entries(&tree.join(rel))?;
    names.extend(entries(&host.join(rel))?);
    names.sort();
    names.dedup();
    for name in names {
        let path = rel.join(&name);
        if excluded.contains(&path) {
            continue;
        }
        match (lstat(&tree.join(&path))?, lstat(&host.join(&path))?) {
            (Some(_), None) => all_below(tree, &path, ChangeKind::Added, out)?,
            (None, Some(_)) => all_below(host, &path, ChangeKind::Deleted, out)?,
            (Some(t), Some(h)) => {
                if differs(&tree.join(&path), &t, &host.join(&path), &h)? {
                    out.push(Change {
                        path: path.clone(),
                        kind: ChangeKind::Modified,
                    });
                }
                if t.is_dir() && h.is_dir() {
                    compare(tree, host, &path, excluded, out)?;
                }
            }
            (None, None) => {}
        }
    }
    Ok(())
}

fn gone(path: &Path) -> OverlayError {
    OverlayError::io("cannot read", path)(io::ErrorKind::NotFound.into())
}

/// `rel` and, if it is a directory in `root`, everything beneath it.
fn all_below(
    root: &Path,
    rel: &Path,
    kind: ChangeKind,
    out: &mut Vec<Change>,
) -> Result<(), OverlayError> {
    out.push(Change {
        path: rel.to_path_buf(),
        kind,
    });
    let full = root.join(rel);
    if lstat(&full)?.is_some_and(|m| m.is_dir()) {
        for name in entries(&full)? {
            let path = rel.join(name);
            let whiteout = lstat(&root.join(&path))?.is_some_and(|m| is_whiteout(&m));
            if !whiteout {
                all_below(root, &path, kind, out)?;
            }
        }
    }
    Ok(())
}

/// Whether the upper entry differs from the lower one in type, mode, link
/// target or bytes (a directory's entries are compared on their own).
fn differs(up: &Path, u: &Metadata, low: &Path, l: &Metadata) -> Result<bool, OverlayError> {
    let (ut, lt) = (u.file_type(), l.file_type());
    if ut.is_dir() != lt.is_dir()
        || ut.is_symlink() != lt.is_symlink()
        || ut.is_file() != lt.is_file()
    {
        return Ok(true);
    }
    if ut.is_symlink() {
        let target = |p: &Path| fs::read_link(p).map_err(OverlayError::io("cannot read link", p));
        return Ok(target(up)? != target(low)?);
    }
    if u.mode() & MODE_BITS != l.mode() & MODE_BITS {
        return Ok(true);
    }
    if ut.is_file() {
        return Ok(u.len() != l.len() || !same_bytes(up, low)?);
    }
    Ok(false)
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool, OverlayError> {
    let open = |p: &Path| fs::File::open(p).map_err(OverlayError::io("cannot open", p));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(OverlayError::io("cannot read", a))?;
        let nb = read_full(&mut fb, &mut bb).map_err(OverlayError::io("cannot read", b))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes `list` (from [`changes`] on `upper`) into `workspace`:
/// deletions first, deepest first, then additions and modifications,
/// parents before children. Set-id bits are not carried over.
pub fn apply(list: &[Change], upper: &Path, workspace: &Path) -> Result<(), OverlayError> {
    for c in list.iter().rev().filter(|c| c.kind == ChangeKind::Deleted) {
        through_link(workspace, &c.path)?;
        remove(&workspace.join(&c.path))?;
    }
    for c in list.iter().filter(|c| c.kind != ChangeKind::Deleted) {
        let (src, dst) = (upper.join(&c.path), workspace.join(&c.path));
        through_link(workspace, &c.path)?;
        let m = lstat(&src)?.ok_or_else(|| gone(&src))?;
        let existing = lstat(&dst)?;
        if m.is_dir() {
            if existing.as_ref().is_some_and(|e| !e.is_dir()) {
                remove(&dst)?;
            }
            if existing.as_ref().is_none_or(|e| !e.is_dir()) {
                fs::create_dir(&dst).map_err(OverlayError::io("cannot create", &dst))?;
            }
        } else {
            if existing.is_some() {
                remove(&dst)?;
            }
            if m.file_type().is_symlink() {
                let target =
                    fs::read_link(&src).map_err(OverlayError::io("cannot read link", &src))?;
                std::os::unix::fs::symlink(target, &dst)
                    .map_err(OverlayError::io("cannot create", &dst))?;
                continue;
            }
            copy_file(&src, &dst)?;
        }
        let perms = fs::Permissions::from_mode(m.mode() & MODE_BITS);
        fs::set_permissions(&dst, perms)
            .map_err(OverlayError::io("cannot set the mode of", &dst))?;
    }
    Ok(())
}

/// Refuses `rel` when a directory on its way in `workspace` is a
/// symbolic link (the workspace changed since the run, or the list does
/// not come from it): nothing is written outside the workspace.
fn through_link(workspace: &Path, rel: &Path) -> Result<(), OverlayError> {
    let mut at = workspace.to_path_buf();
    for c in rel.parent().into_iter().flat_map(Path::components) {
        at.push(c);
        if lstat(&at)?.is_some_and(|m| m.file_type().is_symlink()) {
            return Err(OverlayError::io("refusing to write through the link", &at)(
                io::ErrorKind::InvalidInput.into(),
            ));
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path) -> Result<(), OverlayError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(src)
        .map_err(OverlayError::io("cannot open", src))?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(OverlayError::io("cannot create", dst))?;
    io::copy(&mut from, &mut to).map_err(OverlayError::io("cannot write", dst))?;
    Ok(())
}

fn remove(path: &Path) -> Result<(), OverlayError> {
    match lstat(path)? {
        None => Ok(()),
        Some(m) if m.is_dir() => {
            fs::remove_dir_all(path).map_err(OverlayError::io("cannot remove", path))
        }
        Some(_) => fs::remove_file(path).map_err(OverlayError::io("cannot remove", path)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }

    #[test]
    fn an_opaque_directory_deletes_the_lower_entries_it_does_not_readd() {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
        write(&lower.join("d/a"), "a");
        write(&lower.join("d/b"), "b");
        write(&upper.join("d/b"), "b");
        write(&upper.join("d/c"), "c");
        rustix::fs::setxattr(
            upper.join("d"),
            "user.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let got: Vec<String> = changes(&upper, &lower)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        // `b` was re-added with the same bytes: not a change.
        assert_eq!(got, ["D d/a", "A d/c"]);
    }

    #[test]
    fn apply_writes_nothing_through_a_link_in_the_workspace() {
        let t = tempfile::tempdir().unwrap();
        let (ws, upper, outside) = (
            t.path().join("ws"),
            t.path().join("up"),
            t.path().join("out"),
        );
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir_all(&ws).unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("d")).unwrap();
        write(&upper.join("d/x"), "x");
        let list = [Change {
            path: "d/x".into(),
            kind: ChangeKind::Added,
        }];
        assert!(apply(&list, &upper, &ws).is_err());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_file_copied_up_unchanged_is_not_a_change_but_a_new_mode_is() {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
        write(&lower.join("same"), "x");
        write(&upper.join("same"), "x");
        write(&lower.join("exec"), "x");
        write(&upper.join("exec"), "x");
        fs::set_permissions(upper.join("exec"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(lower.join("exec"), fs::Permissions::from_mode(0o644)).unwrap();
        let got: Vec<String> = changes(&upper, &lower)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["M exec"]);
    }
}
