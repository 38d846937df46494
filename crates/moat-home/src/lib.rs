//! The on-disk layout of `MOAT_HOME` and the file primitives every other
//! crate uses to write into it.
//!
//! This crate owns *where* things live (`MoatHome`) and *how* private files
//! are written (`write_private_atomic`, `ensure_private_dir`): directories
//! are created `0700`, secret-bearing files `0600`, and every write goes to a
//! temporary file in the same directory followed by a rename, so a crash or
//! a concurrent writer never leaves a half-written file behind.
//!
//! It must not know what the files contain: no credentials, no run formats.

mod debuglog;
mod fsutil;
mod layout;
mod profile;

pub use crate::debuglog::{dir_size, open_debug_log};
pub use crate::fsutil::{
    ensure_private_dir, human_bytes, mode_of, open_bounded, read_bounded, read_if_exists,
    write_private_atomic, write_private_atomic_unsynced, BoundedReadError, FileLock, HomeError,
};
pub use crate::layout::MoatHome;
pub use crate::profile::{Profile, ProfileError};
