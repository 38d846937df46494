//! Who the sandbox is on the host.
//!
//! A non-root caller's sandbox maps the caller's own uid and gid onto
//! themselves: the kernel allows nothing else without privileges, and the
//! command can do no more than the caller could.
//!
//! A root caller's sandbox must not map onto host root: a process that is
//! host uid 0 (even without capabilities) owns `/proc/sys`, root's files and
//! every root-owned socket. So the sandbox user is mapped onto an
//! unprivileged host id instead — the first id of root's subordinate range
//! in `/etc/subuid` / `/etc/subgid`, or [`FALLBACK_HOST_ID`] — and the
//! workspace and the mounts are *ID-mapped* (`mount_setattr` with
//! `MOUNT_ATTR_IDMAP`): through them, files owned by root on disk appear as
//! owned by the sandbox user, and files the sandbox writes are stored as
//! owned by root, as the caller expects.
//!
//! Only a process of the parent user namespace may write such mappings, so
//! both namespaces (the sandbox's, and the one describing the mount
//! mapping) are prepared by a short-lived child and written from outside;
//! the init then enters the sandbox's with `setns`.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use rustix::thread::UnshareFlags;

use crate::error::SetupError;
use crate::sys::{self, Fork};

/// Host uid and gid of a root caller's sandbox when root has no
/// subordinate range: far above any allocated user, below the ranges
/// systemd reserves.
pub(crate) const FALLBACK_HOST_ID: u32 = 1_879_048_000;

/// The first id of `user`'s range in a `/etc/subuid`-style file.
fn subordinate_start(text: &str, user: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let (name, start, count) = (fields.next()?, fields.next()?, fields.next()?);
        let start: u32 = start.parse().ok()?;
        let count: u32 = count.parse().ok()?;
        (name == user && start > 0 && count > 0).then_some(start)
    })
}

/// The host uid and gid a root caller's sandbox user maps onto.
pub(crate) fn host_ids_for_root() -> (u32, u32) {
    let read = |path: &str| {
        fs::read_to_string(path)
            .ok()
            .and_then(|t| subordinate_start(&t, "root"))
    };
    (
        read("/etc/subuid").unwrap_or(FALLBACK_HOST_ID),
        read("/etc/subgid").unwrap_or(FALLBACK_HOST_ID),
    )
}

/// A new user namespace with the given `uid_map` and `gid_map`, written
/// from this (parent-namespace, privileged) process; returns a descriptor
/// of it. Call only while single-threaded.
pub(crate) fn prepared_userns(uid_map: &str, gid_map: &str) -> Result<OwnedFd, SetupError> {
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| SetupError::step("cannot create a pipe", e))
    };
    let (ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let child = match sys::fork_single_threaded() {
        Err(e) => {
            return Err(SetupError::step(
                "cannot fork to prepare a user namespace",
                e,
            ))
        }
        Ok(Fork::Child) => {
            drop(ready_r);
            drop(go_w);
            let ok = sys::unshare_namespaces(UnshareFlags::NEWUSER).is_ok();
            let mut ready = fs::File::from(ready_w);
            let _ = ready.write_all(if ok { b"1" } else { b"0" });
            drop(ready);
            // Wait until the parent has taken the namespace.
            let mut byte = [0u8; 1];
            let _ = fs::File::from(go_r).read(&mut byte);
            std::process::exit(0);
        }
        Ok(Fork::Parent(pid)) => pid,
    };
    drop(ready_w);
    drop(go_r);
    let result = (|| {
        let mut byte = [0u8; 1];
        let unshared = fs::File::from(ready_r).read(&mut byte).ok() == Some(1) && byte[0] == b'1';
        if !unshared {
            return Err(SetupError::UserNamespace);
        }
        let proc = format!("/proc/{child}");
        let write_map = |name: &str, map: &str| {
            let path = format!("{proc}/{name}");
            fs::write(&path, map).map_err(|error| SetupError::IdMapFile {
                path,
                map: map.trim().to_owned(),
                error,
            })
        };
        write_map("uid_map", uid_map)?;
        write_map("gid_map", gid_map)?;
        let ns = format!("{proc}/ns/user");
        fs::File::open(&ns)
            .map(OwnedFd::from)
            .map_err(|e| SetupError::path("cannot open", std::path::Path::new(&ns), e))
    })();
    drop(go_w);
    if let Some(pid) = rustix::process::Pid::from_raw(child) {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_range_of_the_user() {
        let text = "alice:100000:65536\nroot:231072:65536\nroot:500000:10\n";
        assert_eq!(subordinate_start(text, "root"), Some(231072));
        assert_eq!(subordinate_start(text, "bob"), None);
        assert_eq!(subordinate_start("root:0:10\n", "root"), None);
        assert_eq!(subordinate_start("root:x:10\n", "root"), None);
        assert_eq!(subordinate_start("", "root"), None);
    }
}
