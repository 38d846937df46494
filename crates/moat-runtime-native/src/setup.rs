//! What the steps building the sandbox's filesystem share (`rootfs.rs`,
//! `protect.rs`): the sandbox user's ids, a step's result and path error,
//! and mounting a tmpfs.

use std::ffi::CString;
use std::io;
use std::path::Path;

use rustix::mount::{mount, MountFlags};

use crate::error::SetupError;

/// Numeric ids of the sandbox user inside the sandbox.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ids {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// A step of building the sandbox.
pub(crate) type SetupResult<T> = Result<T, SetupError>;

pub(crate) fn err(what: &'static str, path: &Path, e: impl Into<io::Error>) -> SetupError {
    SetupError::path(what, path, e)
}

/// Mount options as the kernel takes them.
pub(crate) fn options_text(options: &str) -> SetupResult<CString> {
    CString::new(options).map_err(|_| SetupError::MountOptions {
        options: options.to_owned(),
    })
}

pub(crate) fn mount_tmpfs(target: &Path, flags: MountFlags, options: &str) -> SetupResult<()> {
    let data = options_text(options)?;
    mount("tmpfs", target, "tmpfs", flags, Some(data.as_c_str()))
        .map_err(|e| err("cannot mount a tmpfs on", target, e))
}
