//! End-to-end tests of `moat doctor` through the real binary: a loose key
//! file fails with its fix, a missing Docker is only a warning while native
//! sandboxes work, undecryptable credentials and stale daemon state are
//! named with the command that fixes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::TestEnv;

const NO_DOCKER: (&str, &str) = ("DOCKER_HOST", "unix:///nonexistent/docker.sock");

fn lines_of<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in stdout.lines() {
        if line.starts_with('[') {
            inside = line[7..].starts_with(&format!("{name}:"));
        }
        if inside {
            out.push(line);
        }
    }
    out
}

#[test]
fn healthy_setup_passes_and_missing_docker_is_a_warning() {
    let t = TestEnv::new();
    let out = t.run_with(&["doctor"], &[NO_DOCKER]);
    out.success();
    assert!(
        out.stdout
            .contains("[ok]   native sandbox: user namespaces work; "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("seccomp filter, no capabilities"),
        "{}",
        out.stdout
    );
    if rustix::process::getuid().is_root() {
        assert!(
            out.stdout.contains("with the workspace ID-mapped"),
            "{}",
            out.stdout
        );
    }
    let docker = lines_of(&out.stdout, "docker").join("\n");
    assert!(
        docker.starts_with("[warn] docker: not reachable:"),
        "{docker}"
    );
    assert!(docker.contains("fix: start the Docker daemon"), "{docker}");
    assert!(
        out.stdout.contains("[ok]   proxy daemon: not running"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.ends_with("warning(s).\n"), "{}", out.stdout);

    let out = t.run_with(
        &["doctor", "--json"],
        &[NO_DOCKER, ("SSH_AUTH_SOCK", "/nonexistent/agent.sock")],
    );
    out.success();
    let checks: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let ssh = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ssh agent")
        .unwrap();
    assert_eq!(ssh["status"], "warn");
    assert!(
        ssh["message"].as_str().unwrap().contains("does not answer"),
        "{ssh}"
    );
}

#[test]
fn loose_key_file_fails_with_its_fix() {
    let t = TestEnv::new();
    std::fs::create_dir_all(t.moat_home()).unwrap();
    let key = t.moat_home().join("key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = t.run_with(&["doctor"], &[NO_DOCKER]);
    out.failure();
    let text = t.redact(&lines_of(&out.stdout, "key file").join("\n"));
    insta::assert_snapshot!(text, @r"
    [fail] key file: key file has insecure permissions: [TMP]/moat/key has permissions 0644 (expected 0600).
           fix: chmod 600 [TMP]/moat/key
    ");
    assert!(
        out.stdout.ends_with("problem(s) need fixing.\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn undecryptable_credentials_and_stale_daemon_state() {
    let t = TestEnv::new();
    t.grant_github("ghp_doctorE2eSecret0123456789abcdefghij");
    let out = t.run_with(&["doctor"], &[NO_DOCKER]);
    out.success();
    assert!(
        out.stdout.contains("[ok]   credential github: decrypts\n"),
        "{}",
        out.stdout
    );

    // Another key: the stored credential no longer decrypts.
    std::fs::write(t.moat_home().join("key"), [9u8; 32]).unwrap();
    // A lock naming a dead daemon.
    std::fs::create_dir_all(t.moat_home().join("proxy")).unwrap();
    std::fs::write(
        t.moat_home().join("proxy/daemon.lock"),
        r#"{"pid": 999999999, "port": 8080, "version": "0.0.1", "api": 1, "started_at": "2025-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let out = t.run_with(&["doctor"], &[NO_DOCKER]);
    out.failure();
    let cred = lines_of(&out.stdout, "credential github").join("\n");
    assert!(
        cred.starts_with("[fail] credential github: cannot be decrypted"),
        "{cred}"
    );
    assert!(cred.ends_with("fix: moat grant github"), "{cred}");
    let daemon = t.redact(&lines_of(&out.stdout, "proxy daemon").join("\n"));
    insta::assert_snapshot!(daemon, @r"
    [warn] proxy daemon: stale lock file: pid 999999999 in [TMP]/moat/proxy/daemon.lock is not running
           fix: rm -f [TMP]/moat/proxy/daemon.lock [TMP]/moat/proxy/daemon.sock
    ");
}
