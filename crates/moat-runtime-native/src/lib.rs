//! The native Linux sandbox runtime of moat: runs a command in fresh
//! namespaces with a private root filesystem, no container engine, no
//! daemon, in a few milliseconds.
//!
//! This crate owns *how a sandbox is built, confined and supervised*: user, pid,
//! mount, ipc, uts, cgroup and (optionally) network namespaces created
//! directly with `unshare(2)`; the root filesystem (host `/usr` read-only, a
//! minimal generated `/etc`, private `/tmp`, `/dev`, `/proc` and home, the
//! workspace at `/workspace`); the loopback-only network with its relay to
//! the proxy's Unix socket; signal forwarding, exit codes and the death of
//! the whole process tree with the run.
//!
//! It must not touch credentials, policy, the proxy itself, `MOAT_HOME` or
//! configuration: the caller decides what goes into a [`SandboxSpec`]
//! (environment, injected files such as the moat CA, mounts, proxy socket)
//! and this crate only enforces it.
//!
//! # Integration
//!
//! [`spawn`] re-executes the current program as the sandbox init, so every
//! binary using this crate must call [`init::maybe_run_init`] as the first
//! statement of `main`:
//!
//! ```no_run
//! fn main() {
//!     moat_runtime_native::init::maybe_run_init();
//!     let spec = moat_runtime_native::SandboxSpec::new("/path/to/project", vec!["make".into()]);
//!     let exit = moat_runtime_native::spawn(&spec).and_then(|mut s| s.wait());
//!     // ...
//! }
//! ```
//!
//! # Why direct namespaces
//!
//! No external tool (bubblewrap, a container engine) is needed, and a run
//! starts in milliseconds.
//!
//! # The boundary
//!
//! A regular caller's uid is mapped to itself; a root caller's sandbox is
//! mapped onto an unprivileged host id, with the workspace and mounts
//! ID-mapped so files still come out owned by the caller (see
//! `identity.rs`): no sandbox id is ever host uid 0. Every capability is
//! dropped, `no_new_privs` set and a seccomp filter installed (`seccomp.rs`)
//! before the command runs; `/proc`'s kernel knobs are read-only and its
//! leaky entries masked (`rootfs.rs`); memory, CPU and processes are limited
//! by a cgroup per sandbox where the caller may create one, and by rlimits
//! otherwise (`cgroup.rs`, [`ResourceLimits`]).

// The examples show `fn main` on purpose: where the init hook goes is the point.
#![allow(clippy::needless_doctest_main)]

mod capture;
mod cgroup;
mod driver;
mod error;
mod exclude;
mod exec;
mod exec_driver;
mod identity;
pub mod init;
mod nft;
mod overlay;
mod protect;
mod protocol;
mod relay;
mod rootfs;
mod sandbox;
mod seccomp;
mod setup;
mod spec;
mod support;
mod sys;
mod userns;

pub use crate::driver::NativeDriver;
pub use crate::error::SandboxError;
pub use crate::exec::{exec, ExecExit, ExecSession, ExecSignaller, ExecStdio, ExecStreams};
pub use crate::sandbox::{spawn, Sandbox, SandboxExit, Signaller};
pub use crate::spec::{
    BindMount, CaptureSpec, InjectedFile, NetworkMode, ResourceLimits, SandboxSpec, StdioMode,
    DEFAULT_PATH, HOST_GATEWAY_ADDR, HOST_GATEWAY_NAME, PROXY_SOCKET_DIR_IN_SANDBOX,
    PROXY_SOCKET_IN_SANDBOX, WORKSPACE_IN_SANDBOX,
};
pub use crate::support::{check_support, protections};
pub use moat_capture::ProxyAuthorization;
