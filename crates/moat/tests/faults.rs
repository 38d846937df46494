//! The fault suite (issue #13): each scenario is played against the real
//! binary and daemon, and each test asserts that nothing was lost and that
//! moat says what went wrong.
//!
//! - pipes closed early: every command ends quietly with status 0;
//! - Docker output without a trailing newline (gVisor and runc);
//! - a deleted encryption key while credentials exist;
//! - a stale daemon lock naming a live, unrelated pid;
//! - trimmed, re-chained and transplanted audit logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;

/// Runs `moat args` with its standard output closed before it writes.
fn with_closed_stdout(t: &common::ProxiedEnv, args: &[&str]) -> common::Result {
    let mut child = t
        .moat()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn moat");
    // The reader goes away before moat has started: its first write fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    common::Result::from(out)
}

#[test]
fn broken_pipes_end_quietly_with_status_0() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    // A run with output, a trace and an audit log to print.
    let script = "for i in $(seq 1 2000); do echo line $i; done; \
                  curl -sS -o /dev/null https://api.github.com/ || true";
    t.run(&["run", "--name", "piped", "--", "sh", "-c", script])
        .success();
    let commands: &[&[&str]] = &[
        &["list"],
        &["list", "--json"],
        &["status"],
        &["status", "--json"],
        &["logs", "piped", "-n", "5000"],
        &["trace", "piped"],
        &["trace", "piped", "--network"],
        &["--json", "trace", "piped", "--network"],
        &["audit", "piped"],
        &["proxy", "status"],
        &["version"],
        &["grant", "list"],
    ];
    for args in commands {
        let out = with_closed_stdout(&t, args);
        assert_eq!(
            out.code,
            Some(0),
            "moat {} with its output closed\nstderr: {}",
            args.join(" "),
            out.stderr
        );
        assert!(
            !out.stderr.contains("panicked") && !out.stderr.contains("Broken pipe"),
            "moat {}: {}",
            args.join(" "),
            out.stderr
        );
    }
}

fn docker_available() -> bool {
    let ok = std::process::Command::new("docker")
        .args(["image", "inspect", "local/debian:bookworm"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let msg = "no Docker daemon with the local/debian:bookworm image (bash .ci/run builds it)";
        if std::env::var("MOAT_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("MOAT_REQUIRE_DOCKER=1 but {msg}");
        }
        eprintln!("skipping Docker test: {msg}");
    }
    ok
}

/// `moat run` on Docker, from the project of `t`.
fn docker_run(t: &common::ProxiedEnv, args: &[&str]) -> common::Result {
    let mut cmd = t.moat();
    cmd.env("MOAT_RUNTIME", "docker")
        .env(
            "MOAT_IMAGE_MAP",
            "debian:bookworm-slim=local/debian:bookworm",
        )
        .args(args);
    common::Result::from(cmd.output().expect("spawn moat"))
}

#[test]
fn docker_output_without_a_final_newline_is_not_lost() {
    if !docker_available() {
        return;
    }
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    for (label, extra) in [("gvisor", &[][..]), ("runc", &["--no-sandbox"][..])] {
        for i in 0..4 {
            let name = format!("{label}-{i}");
            let mut args = vec!["run", "--name", &name];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--", "sh", "-c", "printf 'one\\ntwo'; printf 'oops' >&2"]);
            let out = docker_run(&t, &args);
            out.success();
            assert_eq!(out.stdout, "one\ntwo", "{label} run {i}: {}", out.stderr);
            assert!(
                out.stderr.contains("oops"),
                "{label} run {i}: {}",
                out.stderr
            );
            let logs = t.run(&["logs", &name]);
            logs.success();
            for line in ["] one", "] two", "] stderr: oops"] {
                assert!(
                    logs.stdout.contains(line),
                    "{label} run {i}: {}",
                    logs.stdout
                );
            }
            // The simplest case of the issue.
            let mut args = vec!["run"];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["--", "printf", "abc"]);
            let out = docker_run(&t, &args);
            out.success();
            assert_eq!(out.stdout, "abc", "{label} run {i}: {}", out.stderr);
        }
    }
}

#[test]
fn a_deleted_key_is_never_replaced_while_credentials_exist() {
    let env = common::TestEnv::new();
    env.run_with(&["grant", "openai"], &[("OPENAI_API_KEY", "sk-proj-abc")])
        .success();
    let key = env.moat_home().join("key");
    let saved = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();

    // Reading and granting both stop, name the key and what to restore.
    for args in [&["grant", "show", "openai"][..], &["grant", "list"][..]] {
        let out = env.run(args);
        assert_ne!(out.code, Some(0), "moat {}: {}", args.join(" "), out.stdout);
        let stderr = env.redact(&out.stderr);
        assert!(
            stderr.contains("[TMP]/moat/key") && stderr.contains("restore"),
            "moat {}: {stderr}",
            args.join(" ")
        );
    }
    let out = env.run_with(&["grant", "gemini"], &[("GEMINI_API_KEY", "AIzaabc")]);
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(
        env.redact(&out.stderr).contains("[TMP]/moat/key"),
        "{}",
        out.stderr
    );
    assert!(!key.exists(), "no new key may be created");
    assert!(!env.moat_home().join("credentials/gemini.enc").exists());

    // Restoring the key brings everything back.
    std::fs::write(&key, &saved).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    env.run(&["grant", "show", "openai"]).success();
}

#[test]
fn decryption_errors_say_wrong_key_corrupted_or_another_provider() {
    let env = common::TestEnv::new();
    env.run_with(&["grant", "openai"], &[("OPENAI_API_KEY", "sk-proj-abc")])
        .success();
    env.run_with(&["grant", "gemini"], &[("GEMINI_API_KEY", "AIzaabc")])
        .success();
    let creds = env.moat_home().join("credentials");
    let openai = std::fs::read(creds.join("openai.enc")).unwrap();

    // Another provider's file under this name.
    std::fs::copy(creds.join("gemini.enc"), creds.join("openai.enc")).unwrap();
    let out = env.run(&["grant", "show", "openai"]);
    out.failure();
    assert!(
        out.stderr.contains("belongs to another provider (gemini)"),
        "{}",
        out.stderr
    );

    // Damaged bytes.
    let mut damaged = openai.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    std::fs::write(creds.join("openai.enc"), &damaged).unwrap();
    let out = env.run(&["grant", "show", "openai"]);
    out.failure();
    assert!(out.stderr.contains("corrupted file"), "{}", out.stderr);

    // Another key.
    std::fs::write(creds.join("openai.enc"), &openai).unwrap();
    std::fs::write(env.moat_home().join("key"), [42u8; 32]).unwrap();
    let out = env.run(&["grant", "show", "openai"]);
    out.failure();
    assert!(out.stderr.contains("wrong key"), "{}", out.stderr);
}

/// A live process unrelated to moat, killed on drop.
struct Bystander(std::process::Child);

impl Bystander {
    fn start() -> Self {
        Bystander(
            std::process::Command::new("sleep")
                .arg("300")
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_stale_daemon_lock_naming_a_live_pid_is_ignored() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    let mut bystander = Bystander::start();
    let proxy = t.env.moat_home().join("proxy");
    std::fs::create_dir_all(&proxy).unwrap();
    std::fs::write(
        proxy.join("daemon.lock"),
        format!(
            r#"{{"pid":{},"port":1,"version":"0.0.0","api":1,"started_at":"2026-01-01T00:00:00Z"}}"#,
            bystander.pid()
        ),
    )
    .unwrap();
    std::fs::write(proxy.join("daemon.sock"), "").unwrap();

    let status = t.run(&["proxy", "status"]);
    status.success();
    assert!(status.stdout.contains("not running"), "{}", status.stdout);
    let stop = t.run(&["proxy", "stop"]);
    stop.success();
    assert!(
        bystander.alive(),
        "moat proxy stop signalled an unrelated process"
    );

    let out = t.run(&["run", "--", "printf", "ran"]);
    out.success();
    assert_eq!(out.stdout, "ran");
    assert!(bystander.alive());
}

#[test]
fn a_run_whose_supervisor_pid_was_reused_is_not_running() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    t.run(&["run", "--name", "reused", "--", "true"]).success();
    let mut bystander = Bystander::start();
    let list: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let path = t
        .env
        .moat_home()
        .join("runs")
        .join(&id)
        .join("metadata.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // As if moat had crashed mid-run and its pid had gone to another process.
    meta["state"] = "running".into();
    meta["supervisor_pid"] = bystander.pid().into();
    for k in ["stopped_at", "exit_code"] {
        meta.as_object_mut().unwrap().remove(k);
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();

    let stop = t.run(&["stop", "reused"]);
    assert!(
        bystander.alive(),
        "moat stop signalled an unrelated process"
    );
    assert!(
        stop.stdout.contains("already") || stop.code == Some(0),
        "{} {}",
        stop.stdout,
        stop.stderr
    );
    let list: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    assert_ne!(list[0]["state"], "running", "{list}");
    assert!(bystander.alive());
}

/// The run id of the run called `name`.
fn run_id(t: &common::ProxiedEnv, name: &str) -> String {
    let list: serde_json::Value = serde_json::from_str(&t.run(&["list", "--json"]).stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["id"].as_str())
        .unwrap()
        .to_owned()
}

/// The log's entries with `keep` applied, re-chained (seq, prev, hash
/// recomputed) as a forger would.
fn rechain(
    entries: &[moat_audit::Entry],
    keep: impl Fn(&moat_audit::Entry) -> bool,
) -> Vec<moat_audit::Entry> {
    let mut out: Vec<moat_audit::Entry> = Vec::new();
    for e in entries.iter().filter(|e| keep(e)) {
        let next = moat_audit::Entry::next(out.last(), e.ts.clone(), &e.kind, e.data.clone());
        out.push(next);
    }
    out
}

fn write_log(path: &std::path::Path, entries: &[moat_audit::Entry]) {
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn read_entries(path: &std::path::Path) -> Vec<moat_audit::Entry> {
    moat_audit::read_log(path)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.unwrap())
        .collect()
}

#[test]
fn trimmed_transplanted_and_resigned_audit_logs_fail() {
    let t = common::ProxiedEnv::new(&["api.github.com"]);
    let script = "curl -sS -o /dev/null https://api.github.com/a; \
                  curl -sS -o /dev/null https://api.github.com/b";
    for name in ["first", "second"] {
        t.run(&["run", "--name", name, "--", "sh", "-c", script])
            .success();
    }
    let (a, b) = (run_id(&t, "first"), run_id(&t, "second"));
    let runs = t.env.moat_home().join("runs");
    let log = runs.join(&a).join("audit.jsonl");
    let sig = runs.join(&a).join("audit.sig.json");
    let (log_bytes, sig_bytes) = (std::fs::read(&log).unwrap(), std::fs::read(&sig).unwrap());
    let restore = || {
        std::fs::write(&log, &log_bytes).unwrap();
        std::fs::write(&sig, &sig_bytes).unwrap();
    };
    let out = t.run(&["audit", &a]);
    out.success();
    assert!(out.stdout.contains("INTACT"), "{}", out.stdout);
    assert!(
        out.stdout.contains("this installation's key"),
        "{}",
        out.stdout
    );

    // The seal deleted, the requests dropped, the chain rebuilt.
    let entries = read_entries(&log);
    let trimmed = rechain(&entries, |e| e.kind != "network");
    assert!(trimmed.len() < entries.len());
    write_log(&log, &trimmed);
    std::fs::remove_file(&sig).unwrap();
    let out = t.run(&["audit", &a]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(out.stdout.contains("TAMPERED"), "{}", out.stdout);
    assert!(out.stdout.contains("no seal"), "{}", out.stdout);
    restore();

    // Another run's log and seal copied in.
    std::fs::copy(runs.join(&b).join("audit.jsonl"), &log).unwrap();
    std::fs::copy(runs.join(&b).join("audit.sig.json"), &sig).unwrap();
    let out = t.run(&["audit", &a]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(out.stdout.contains("TAMPERED"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("belongs to run {b}")),
        "{}",
        out.stdout
    );
    restore();

    // A crash in the middle of the last record: incomplete, not tampered.
    let mut cut = log_bytes.clone();
    let last = serde_json::to_vec(&read_entries(&log).last().unwrap()).unwrap();
    cut.extend_from_slice(&last[..last.len() / 2]);
    std::fs::write(&log, &cut).unwrap();
    let out = t.run(&["audit", &a]);
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("incomplete (moat stopped while writing)"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("TAMPERED"), "{}", out.stdout);
    restore();

    // An exported bundle, forged and re-signed with a fresh key.
    let bundle_path = t.env.dir.path().join("proof.json");
    t.run(&["audit", &a, "--export", bundle_path.to_str().unwrap()])
        .success();
    let out = t.run(&[
        "audit",
        "verify",
        bundle_path.to_str().unwrap(),
        "--trusted",
    ]);
    out.success();
    assert!(
        out.stdout.contains("this installation's key"),
        "{}",
        out.stdout
    );
    let mut bundle = moat_audit::Bundle::read(&bundle_path).unwrap();
    let forged = rechain(&bundle.entries, |e| e.kind != "network");
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = moat_audit::SigningKey::load_or_create(fresh_dir.path()).unwrap();
    bundle.attestations = vec![moat_audit::Attestation::sign(
        forged.last().unwrap(),
        &fresh,
    )];
    bundle.last_hash = forged.last().unwrap().hash.clone();
    bundle.entries = forged;
    let forged_path = t.env.dir.path().join("forged.json");
    bundle.write(&forged_path).unwrap();
    let installation_pub = std::fs::read_to_string(t.env.moat_home().join("audit/signing.pub"))
        .unwrap()
        .trim()
        .to_owned();
    for pin in [&["--trusted"][..], &["--key", &installation_pub][..]] {
        let mut args = vec!["audit", "verify", forged_path.to_str().unwrap()];
        args.extend_from_slice(pin);
        let out = t.run(&args);
        assert_eq!(out.code, Some(1), "{pin:?}: {}", out.stdout);
        assert!(out.stdout.contains("TAMPERED"), "{pin:?}: {}", out.stdout);
        assert!(
            out.stdout.contains(&fresh.public_key_hex()),
            "{pin:?}: {}",
            out.stdout
        );
    }
    // Unpinned, the key that signed is named and said to be unpinned.
    let out = t.run(&["audit", "verify", forged_path.to_str().unwrap()]);
    assert!(
        out.stdout.contains(&fresh.public_key_hex()),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("not pinned"), "{}", out.stdout);
}
