//! moat.yaml `mounts[].exclude`, through the real binary: an excluded
//! path is an empty, writable tmpfs inside the sandbox, on the workspace
//! (`{source: ., target: /workspace}`) and on an extra mount (read-only
//! ones included), and nothing written there reaches the host. A symlinked
//! exclude is refused before the run starts. Native runtime, Docker and
//! Podman; a container test is skipped (with the reason) when its engine
//! is not reachable, unless MOAT_REQUIRE_DOCKER=1 / MOAT_REQUIRE_PODMAN=1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

const MOAT_YAML: &str = "mounts:
  - {source: ., target: /workspace, exclude: [node_modules, dist]}
  - {source: ./app, target: /app, mode: ro, exclude: [node_modules]}
";

/// Lists each excluded path, writes into it, and reads it back. `ls`
/// lists from inside the directory: the gVisor of this machine's Docker
/// (runsc 2022-12) answers `statx` on any tmpfs path with EINVAL.
const PROBE: &str = "
  for d in /workspace/node_modules /workspace/dist /app/node_modules; do
    test -d $d && echo \"$d: [$(cd $d && ls -A)]\"
  done
  echo sandbox > /workspace/node_modules/f && echo sandbox > /workspace/node_modules/new
  echo sandbox > /workspace/dist/out
  echo sandbox > /app/node_modules/f
  cat /workspace/node_modules/f /app/node_modules/f
  cp /bin/true /workspace/node_modules/t && /workspace/node_modules/t && echo exec
  echo seen > /workspace/kept
";

fn write(path: &Path, contents: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

/// The project: `node_modules/f` and `app/node_modules/f` say "host".
fn project(dir: &Path) {
    write(&dir.join("node_modules/f"), "host");
    write(&dir.join("app/node_modules/f"), "host");
    write(&dir.join("app/main.js"), "main");
    write(&dir.join("moat.yaml"), MOAT_YAML);
}

/// What the host holds after the run: nothing the run wrote under an
/// excluded path, the rest of the workspace as written.
fn assert_host_untouched(dir: &Path) {
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    assert_eq!(read("node_modules/f"), "host");
    assert_eq!(read("app/node_modules/f"), "host");
    assert!(!dir.join("node_modules/new").exists());
    assert!(!dir.join("dist/out").exists());
    assert_eq!(read("kept"), "seen\n");
}

const EXPECTED: &str = "/workspace/node_modules: []
/workspace/dist: []
/app/node_modules: []
sandbox
sandbox
exec
";

#[test]
fn excluded_paths_are_empty_writable_and_stay_off_the_host() {
    let t = common::ProxiedEnv::new(&[]);
    project(&t.project());
    let out = t.run(&["run", "--", "sh", "-c", PROBE]);
    out.success();
    assert_eq!(out.stdout, EXPECTED);
    assert_host_untouched(&t.project());
    // A missing exclude of a writable mount becomes an empty directory on
    // the host (its mount point), as with Docker.
    assert_eq!(
        std::fs::read_dir(t.project().join("dist")).unwrap().count(),
        0
    );
}

#[test]
fn a_symlinked_exclude_is_refused_before_the_run() {
    let t = common::ProxiedEnv::new(&[]);
    project(&t.project());
    std::fs::create_dir(t.project().join("elsewhere")).unwrap();
    std::fs::remove_dir_all(t.project().join("node_modules")).unwrap();
    std::os::unix::fs::symlink("elsewhere", t.project().join("node_modules")).unwrap();
    let out = t.run(&["run", "--", "echo", "ran"]);
    out.failure();
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
    let stderr = t.env.redact(&out.stderr);
    assert!(
        stderr.contains(
            "mount .:/workspace: exclude node_modules is, or passes through, a symbolic link; moat \
             hides only a directory beneath the mount."
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("To fix: exclude the directory the link points to"),
        "{stderr}"
    );
}

/// The probe on a container runtime (`docker` or `podman`), with the
/// project handed to the image's user (uid 1000), as it would be the
/// user's own checkout.
fn on_container_runtime(runtime: &str) {
    let t = common::ProxiedEnv::new(&[]);
    project(&t.project());
    let chown = std::process::Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(t.project())
        .status()
        .unwrap();
    assert!(chown.success());
    let out = common::Result::from(
        t.moat()
            .env("MOAT_RUNTIME", runtime)
            .env("MOAT_DAEMON_IDLE_TIMEOUT", "5")
            .env(
                "MOAT_IMAGE_MAP",
                "debian:bookworm-slim=local/debian:bookworm",
            )
            .args(["run", "--", "sh", "-c", PROBE])
            .output()
            .unwrap(),
    );
    out.success();
    assert_eq!(out.stdout, EXPECTED);
    assert_host_untouched(&t.project());
}

#[test]
fn docker_excluded_paths_are_empty_writable_and_stay_off_the_host() {
    if !common::docker_available() {
        return;
    }
    on_container_runtime("docker");
}

#[test]
fn podman_excluded_paths_are_empty_writable_and_stay_off_the_host() {
    if !moat_testkit::require::podman() {
        return;
    }
    on_container_runtime("podman");
}
