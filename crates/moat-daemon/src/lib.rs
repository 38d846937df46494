//! Moat's proxy daemon: one process per `MOAT_HOME`, shared by every run.
//!
//! This crate owns the daemon's *process*: the files under
//! `MOAT_HOME/proxy/` (lock, sockets, log), the control protocol over the
//! Unix socket, registering and unregistering runs, the idle exit, and the
//! CLI side that finds or starts the daemon ([`DaemonClient`]). Everything
//! that touches proxied traffic belongs to `moat-proxy`; credentials are
//! decrypted by the CLI and arrive here already resolved, so the daemon
//! never reads the credential store. It decides what goes into each run's
//! audit log (`moat-audit`): registration, every proxied request, events
//! sent by the CLI, and the seal when the run unregisters.

mod audit;
pub mod client;
mod live;
pub mod lockfile;
pub mod protocol;
mod routes;
mod server;
mod status;
mod translate;

pub use crate::client::{ClientError, DaemonClient, Registration, StartOptions, DEFAULT_PORT};
pub use crate::live::{PolicyEntry, PolicyView};
pub use crate::lockfile::{DaemonInfo, DaemonPaths};
pub use crate::protocol::{
    EndpointSpec, HeaderSpec, InjectionSpec, McpSpec, Request, Response, RunSpec, RunSummary,
    Secret, SshHostSpec,
};
pub use crate::routes::DEFAULT_ROUTING_PORT;
pub use crate::server::{serve, DaemonConfig, DaemonError};
pub use crate::status::DaemonStatus;
pub use crate::translate::url_host;
