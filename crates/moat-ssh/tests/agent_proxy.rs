#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The filtering agent proxy between real OpenSSH clients, a real
//! `ssh-agent` and real `sshd`s on 127.0.0.1.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use moat_ssh::wire::{self, msg};
use moat_ssh::{AgentFilter, AgentProxy, SshAction, SshEvent, SshGrant};
use moat_testkit::ssh::{current_user, keygen, public_key, SshAgent, Sshd};

struct World {
    dir: tempfile::TempDir,
    _agent: SshAgent,
    granted_key: String,
    granted: Sshd,
    other: Sshd,
    proxy: AgentProxy,
    events: Arc<Mutex<Vec<SshEvent>>>,
}

fn world() -> Option<World> {
    if !moat_testkit::require::openssh() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let granted_private = keygen(&keys, "granted");
    let other_private = keygen(&keys, "other");
    let agent = SshAgent::start(dir.path());
    agent.add(&granted_private);
    agent.add(&other_private);
    let granted_key = public_key(&granted_private);
    // Both servers accept the granted key: only the binding keeps the
    // second one out.
    let granted = Sshd::start(
        &dir.path().join("sshd1"),
        std::slice::from_ref(&granted_key),
    );
    let other = Sshd::start(
        &dir.path().join("sshd2"),
        std::slice::from_ref(&granted_key),
    );
    let grant = SshGrant {
        host: "127.0.0.1".into(),
        port: granted.port(),
        public_key: granted_key.clone(),
        fingerprint: moat_ssh::fingerprint(&moat_ssh::key_blob(&granted_key).unwrap()).unwrap(),
        host_keys: vec![granted.host_key().to_string()],
        granted_at: Utc::now(),
    };
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let proxy = AgentProxy::start(
        &dir.path().join("proxy.sock"),
        agent.socket().to_path_buf(),
        AgentFilter::new(&[grant]).unwrap(),
        move |e| sink.lock().unwrap().push(e.clone()),
    )
    .unwrap();
    Some(World {
        dir,
        _agent: agent,
        granted_key,
        granted,
        other,
        proxy,
        events,
    })
}

fn ssh(sock: &Path, port: u16, known_hosts: &Path) -> std::process::Output {
    Command::new("ssh")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("SSH_AUTH_SOCK", sock)
        .args(["-F", "/dev/null", "-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "IdentitiesOnly=no"])
        .arg(format!("{}@127.0.0.1", current_user()))
        .arg("echo authenticated")
        .output()
        .unwrap()
}

#[test]
fn signs_for_the_granted_host_only() {
    let Some(w) = world() else { return };
    let known = w.dir.path().join("known_hosts");

    let ok = ssh(w.proxy.socket(), w.granted.port(), &known);
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("authenticated"),
        "granted host: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let refused = ssh(w.proxy.socket(), w.other.port(), &known);
    assert!(
        !refused.status.success(),
        "the other sshd must not let us in"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let events = w.events.lock().unwrap().clone();
    assert!(events
        .iter()
        .any(|e| e.action == SshAction::SignAllowed && e.host.as_deref() == Some("127.0.0.1")));
    let denied = events
        .iter()
        .find(|e| e.action == SshAction::SignDenied)
        .expect("a refused signature is audited");
    assert!(
        denied.detail.as_deref().unwrap().contains("not pinned"),
        "{denied:?}"
    );
}

#[test]
fn lists_only_granted_keys_and_refuses_changes() {
    let Some(w) = world() else { return };
    let list = Command::new("ssh-add")
        .arg("-L")
        .env("SSH_AUTH_SOCK", w.proxy.socket())
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(w.granted_key.starts_with(listed.trim()) || listed.trim() == w.granted_key);

    for args in [&["-D"][..], &["-x"][..]] {
        let out = Command::new("ssh-add")
            .args(args)
            .env("SSH_AUTH_SOCK", w.proxy.socket())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "ssh-add {args:?} must fail");
    }
    // The real agent still holds both keys.
    let all = Command::new("ssh-add")
        .arg("-L")
        .env("SSH_AUTH_SOCK", w._agent.socket())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 2);
}

fn raw(sock: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn malformed_frames_close_the_connection_and_nothing_else() {
    let Some(w) = world() else { return };
    let sock = w.proxy.socket();
    // A length over the limit, a truncated frame, an unknown type, and
    // garbage after a valid frame: each connection is closed, answered at
    // most for the valid part.
    assert!(raw(sock, &u32::MAX.to_be_bytes()).is_empty());
    assert!(raw(sock, &[0, 0, 0, 40, msg::SIGN_REQUEST, 1, 2]).is_empty());
    assert!(raw(sock, &[0, 0, 0, 1, 99]).is_empty());
    let mut valid_then_garbage = vec![0, 0, 0, 1, msg::REQUEST_IDENTITIES];
    valid_then_garbage.extend_from_slice(b"\xff\xff\xff\xffgarbage");
    let answer = raw(sock, &valid_then_garbage);
    let mut r = &answer[..];
    let first = wire::read_frame(&mut r).unwrap().unwrap();
    assert_eq!(first[0], msg::IDENTITIES_ANSWER);
    assert!(r.is_empty(), "nothing after the garbage");
    // A sign request without a bound session is refused, not forwarded.
    let blob = moat_ssh::key_blob(&w.granted_key).unwrap();
    let mut req = wire::Writer::message(msg::SIGN_REQUEST);
    req.string(&blob).string(b"data").u32(0);
    let mut frame = Vec::new();
    wire::write_frame(&mut frame, &req.into_bytes()).unwrap();
    let answer = raw(sock, &frame);
    assert_eq!(&answer[..], &[0, 0, 0, 1, msg::FAILURE]);
    // And the proxy still serves well-formed clients.
    let ok = ssh(sock, w.granted.port(), &w.dir.path().join("known_hosts"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
