//! What a test needs from the machine, and what happens when it is not
//! there: the test is skipped with the reason, unless the switch
//! `MOAT_REQUIRE_<NEED>=1` is set, which makes it fail instead. `.ci/run`
//! sets every switch, so in CI nothing passes by not running.

use std::process::{Command, Stdio};

/// Whether a test may go on: `missing` names what is absent (`None` when
/// everything is there). Panics when it is missing and
/// `MOAT_REQUIRE_<switch>=1`.
pub fn available(switch: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    let var = format!("MOAT_REQUIRE_{switch}");
    assert!(
        std::env::var(&var).as_deref() != Ok("1"),
        "{var}=1 but {why}"
    );
    eprintln!("skipping: {why} (with {var}=1 this is a failure)");
    false
}

/// Whether `program args…` succeeds (an engine that has an image).
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Docker engine with the local base image (`DOCKER`).
pub fn docker() -> bool {
    let ok = succeeds("docker", &["image", "inspect", "local/debian:bookworm"]);
    available(
        "DOCKER",
        (!ok).then(|| {
            "no Docker daemon with the local/debian:bookworm image (bash .ci/run builds it)".into()
        }),
    )
}

/// Podman with the local base image (`PODMAN`).
pub fn podman() -> bool {
    let ok = succeeds(
        "podman",
        &["image", "exists", "localhost/local/debian:bookworm"],
    );
    available(
        "PODMAN",
        (!ok).then(|| {
            "no Podman with localhost/local/debian:bookworm (bash .ci/run loads it)".into()
        }),
    )
}

/// OpenSSH's client, agent and server (`OPENSSH`).
pub fn openssh() -> bool {
    available("OPENSSH", crate::ssh::openssh_missing())
}

/// Root (`ROOT`): per-run cgroups, ID-mapped mounts, switching users,
/// mounting a tmpfs.
pub fn root() -> bool {
    available(
        "ROOT",
        (!rustix::process::getuid().is_root()).then(|| "the tests do not run as root".into()),
    )
}

/// util-linux's `script`, which gives a command a terminal (`SCRIPT`).
pub fn script() -> bool {
    available(
        "SCRIPT",
        (!std::path::Path::new("/usr/bin/script").exists())
            .then(|| "/usr/bin/script (util-linux) not found".into()),
    )
}
