//! The Docker runtime of moat: runs the sandboxed command in a container
//! through the Docker Engine API (bollard; the docker CLI is never used).
//!
//! This crate owns *everything moat does with a Docker daemon*: finding and
//! pinging it ([`DockerRuntime::connect`]), the registry of known
//! dependencies ([`deps`]), the images built from them ([`image`]: a
//! generated Dockerfile whose hash is the tag, so an unchanged config never
//! rebuilds), the containers ([`container`]: gVisor by default on Linux,
//! workspace bind, injected files, limits, labels, exit codes, orphans) and
//! the strict network policy. It also holds the exact texts of its errors
//! and warnings ([`DockerError`], [`NO_SANDBOX_WARNING`]), which are part
//! of the product.
//!
//! The same code drives Podman through its Docker-compatible API
//! ([`Engine::Podman`]): [`ContainerDriver`] is the `moat-sandbox` driver
//! for both. What differs is found in one place each: where the engine
//! listens and starting Podman's API service when its socket is absent
//! (`connect.rs`), whether gVisor is registered (Podman lists runtimes it
//! merely knows of, so only a `containers.conf` entry counts), and the
//! explicit rlimits Podman containers need (`container.rs`).
//!
//! It must not touch credentials, policy, the proxy, `MOAT_HOME` (whose
//! path it only receives as a parameter) or moat.yaml parsing (it takes
//! `dependencies:` as `moat-config` parsed them, and the services as
//! `moat-sandbox` describes them): the run orchestrator decides what goes into an [`ImageRequest`] and a
//! [`ContainerSpec`] (environment with the proxy variables, the moat CA as
//! an [`InjectedFile`], the proxy address for [`NetworkPolicy::Strict`]) and
//! this crate only carries it out.
//!
//! # Strict network policy: a firewalled network namespace
//!
//! Under [`NetworkPolicy::Strict`] the container can reach the proxy's
//! `address:port`, its loopback and the DNS servers of its resolv.conf, and
//! nothing else (connections are refused). How:
//!
//! 1. A *network guard* container is created first from the same image,
//!    under runc, as root with only `NET_ADMIN`/`NET_RAW` (and
//!    `SETUID`/`SETGID` for its relay to become `nobody`). Its network
//!    namespace is on the engine's default network, with
//!    `host.docker.internal` pointing at the host. Its entrypoint applies
//!    the firewall (iptables, always installed in moat's images) and then
//!    runs the capture relay; failure (e.g. a custom base image without
//!    iptables) is
//!    `firewall setup failed (required for strict network policy): ...`
//!    and nothing is left behind.
//! 2. The workload is created meanwhile with `network_mode:
//!    container:<guard>`: it shares the guard's namespace, with every
//!    capability dropped and `no-new-privileges`, so nothing in it can
//!    change the rules. It is started as soon as the guard runs; its
//!    entrypoint (the moat binary, read-only) waits until the relay
//!    listens, which it does only once the firewall holds, before it
//!    executes the command (`gate.rs`). With services, the workload starts
//!    only once the guard and the services are ready.
//! 3. At the end the workload is removed and the guard, on Docker created
//!    with AutoRemove, is sent SIGTERM: the engine removes it without
//!    moat waiting for it.
//!
//! Why not the alternatives, both tried on Docker 20.10 with gVisor:
//!
//! * iptables *inside* the workload (a root entrypoint that applies rules
//!   then drops to the user) works under runc but not under gVisor: with
//!   `--network=host` (the only mode that runs here) gVisor has no netfilter
//!   ("Protocol not supported"); the guard's rules live in the host kernel's
//!   namespace, which gVisor's host networking uses, so they hold for both.
//! * an `internal: true` network is not enough: the container still gets a
//!   default route through the bridge gateway, and every host address
//!   (docker0 included) stays reachable through it.
//! * a Unix-socket relay like the native runtime's is refused by gVisor
//!   unless runsc runs with `--host-uds=open`.
//!
//! The guard runs under runc even when the workload runs under gVisor; it
//! executes only `sleep` and the firewall script from the run's own image.
//!
//! # gVisor
//!
//! [`SandboxRuntime::default_for_host`] is gVisor (`runsc`) on Linux; when
//! the daemon has no such runtime, [`DockerRuntime::create`] fails with
//! `gVisor (runsc) is required but not available` and the install and
//! bypass instructions. With the bypass, the caller prints
//! [`NO_SANDBOX_WARNING`].
//!
//! # Air-gapped machines
//!
//! [`ImageMap`] maps a base image name to a local image:
//! `MOAT_IMAGE_MAP=debian:bookworm-slim=local/debian:bookworm[,a=b...]`
//! and/or `MOAT_HOME/images.json` (`{"debian:bookworm-slim":
//! "local/debian:bookworm"}`); the environment wins. Runtimes (node,
//! python, go) come from Debian packages, so building needs only Debian's
//! package mirror; `moat deps info` says which version that really is.

mod attach;
mod connect;
mod container;
pub mod deps;
pub mod dind;
mod driver;
mod error;
mod exec;
mod gate;
mod guard;
mod image;
pub mod services;
mod spec;
pub mod versions;
mod volume;

pub use crate::connect::{
    candidate_endpoints, ensure_podman_service, podman_endpoint, podman_registers_runtime,
    DockerRuntime, Engine, PodmanService, GVISOR_RUNTIME, PING_TIMEOUT,
};
pub use crate::container::{
    BindMount, Container, ContainerSpec, InjectedFile, ManagedContainer, NetworkPolicy,
    SandboxRuntime, GUARD_READY, HOST_GATEWAY_NAME, LABEL_MANAGED, LABEL_ROLE, LABEL_RUN_ID,
    WORKSPACE_IN_CONTAINER,
};
pub use crate::deps::{
    deps_info, deps_list, parse_dependencies, resolve_dependencies, DepInfo, DepType, Dependency,
};
pub use crate::driver::ContainerDriver;
pub use crate::error::{
    DaemonCause, DockerError, EndpointError, ImageUnavailable, PodmanCause, PodmanServiceError,
    SocketState, NO_SANDBOX_WARNING,
};
pub use crate::gate::{await_guard_then_exec, GateError, AWAIT_GUARD_SUBCOMMAND};
pub use crate::image::{
    generate_dockerfile, BuildHooks, ImageMap, ImageRequest, ProgressMode, ResolvedImage,
    DEFAULT_BASE_IMAGE, DEPS_IMAGE_REPO, FALLBACK_UID, IMAGE_MAP_ENV, IMAGE_MAP_FILE,
};
