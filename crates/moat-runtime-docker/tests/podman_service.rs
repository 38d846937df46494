//! Starting Podman's API service: a socket left by a service that died is
//! replaced, and parallel callers start one service, not several. Each test
//! uses its own socket path, so the service the other tests share is left
//! alone. They skip (printing why) when `podman` is not installed, unless
//! `MOAT_REQUIRE_PODMAN=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use moat_runtime_docker::{ensure_podman_service, PodmanService};

fn podman_installed() -> bool {
    let found = std::process::Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert_ne!(
            std::env::var("MOAT_REQUIRE_PODMAN").as_deref(),
            Ok("1"),
            "MOAT_REQUIRE_PODMAN=1 but podman is not installed"
        );
        eprintln!("skipping: podman is not installed");
    }
    found
}

/// Stops a service this test started (its own process group).
struct ServiceGuard(Vec<u32>);

impl Drop for ServiceGuard {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
            }
        }
    }
}

fn ping(socket: &Path) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_by_a_running_service() {
    if !podman_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("podman.sock");
    // What a killed service leaves: the socket file, nobody listening.
    // Made by a socket that never listens: a listener, even dropped, can
    // still accept while a process forked meanwhile by the other test
    // holds its descriptor until it executes (seen in CI).
    drop(std::os::unix::net::UnixDatagram::bind(&socket).unwrap());
    assert!(socket.exists());

    let started = ensure_podman_service(&socket).await.unwrap();
    let PodmanService::Started { pid } = started else {
        panic!("expected a started service, got {started:?}");
    };
    let _guard = ServiceGuard(vec![pid]);
    assert!(ping(&socket).contains("OK"), "the service answers _ping");
    // It outlives the caller: nothing of the caller's may go stale under
    // it (a working directory deleted later broke every container it
    // started), and the caller's variables (tokens...) are not its own.
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let names: Vec<String> = environ
        .split(|b| *b == 0)
        .filter_map(|kv| {
            String::from_utf8_lossy(kv)
                .split('=')
                .next()
                .map(str::to_owned)
        })
        .filter(|k| !k.is_empty())
        .collect();
    assert!(
        names.iter().all(|k| !k.starts_with("CARGO")),
        "inherited the caller's environment: {names:?}"
    );
    assert_eq!(
        ensure_podman_service(&socket).await.unwrap(),
        PodmanService::Running
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_callers_start_one_service() {
    if !podman_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("podman.sock");
    let (a, b, c) = tokio::join!(
        ensure_podman_service(&socket),
        ensure_podman_service(&socket),
        ensure_podman_service(&socket)
    );
    let results = [a.unwrap(), b.unwrap(), c.unwrap()];
    let started: Vec<u32> = results
        .iter()
        .filter_map(|r| match r {
            PodmanService::Started { pid } => Some(*pid),
            PodmanService::Running => None,
        })
        .collect();
    let _guard = ServiceGuard(started.clone());
    assert_eq!(started.len(), 1, "{results:?}");
    assert!(ping(&socket).contains("OK"));
}
