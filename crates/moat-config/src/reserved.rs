//! The sandbox path moat keeps for itself, which no mount may target.

/// Inside the sandbox, moat's own: a mount there could stand in for what
/// moat relies on (a container's entrypoint waits there for its firewall).
pub(crate) const MOAT_OWN_DIR: &str = "/run/moat";
