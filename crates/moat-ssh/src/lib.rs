//! SSH for sandboxes, without keys in them.
//!
//! This crate owns the SSH grants (`ssh.json`: which of the user's agent
//! keys may sign for which host, and that host's pinned host keys) and the
//! filtering agent proxy a run's sandbox talks to instead of the user's
//! `ssh-agent`: it lists only granted keys, signs only inside a session
//! bound (OpenSSH `session-bind@openssh.com`) to a pinned host key of a
//! granted host, and refuses every request that would change the agent.
//!
//! It also owns the sandbox side of SSH: [`tunnel`], the `ProxyCommand`
//! that reaches a granted host through moat's proxy with HTTP CONNECT.
//!
//! It must not touch private keys (they stay in the user's agent), the
//! proxy daemon or runtimes: callers place the proxy's socket in a sandbox
//! and record the [`SshEvent`]s it reports.

mod agent;
mod choose;
mod error;
mod grants;
pub mod tunnel;
pub mod wire;

pub use crate::agent::{
    agent_key_count, agent_socket_from_env, list_identities, AgentFilter, AgentProxy, SshAction,
    SshEvent,
};
pub use crate::choose::{find_key, identity_listing, known_hosts_files, parse_host_keys};
pub use crate::error::SshError;
pub use crate::grants::{
    fingerprint, key_blob, known_host_keys, openssh_line, SshGrant, SshGrantStore,
};
pub use crate::tunnel::TunnelError;
pub use crate::wire::Identity;
