#![allow(clippy::unwrap_used, clippy::expect_used)]
//! SSH grants end to end, with real OpenSSH only: `ssh-keygen` keys, a
//! real `ssh-agent`, and `sshd`s on 127.0.0.1 with throwaway host keys and
//! a git repository. `git.test` is served by the first sshd through
//! `MOAT_CONNECT_TO`; the second sshd accepts the same key but was never
//! granted.

mod common;

use std::path::PathBuf;

use common::TestEnv;
use moat_testkit::ssh::{current_user, git_repo, keygen, public_key, SshAgent, Sshd};

struct SshWorld {
    env: TestEnv,
    agent: SshAgent,
    granted_key: PathBuf,
    other_key: PathBuf,
    granted: Sshd,
    other: Sshd,
    repo: PathBuf,
}

impl SshWorld {
    fn new() -> Option<Self> {
        if !moat_testkit::require::openssh() {
            return None;
        }
        let env = TestEnv::new();
        let keys = env.dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let granted_key = keygen(&keys, "granted");
        let other_key = keygen(&keys, "other");
        let agent = SshAgent::start(env.dir.path());
        agent.add(&granted_key);
        agent.add(&other_key);
        let authorized = [public_key(&granted_key), public_key(&other_key)];
        let granted = Sshd::start(&env.dir.path().join("sshd-granted"), &authorized);
        let other = Sshd::start(&env.dir.path().join("sshd-other"), &authorized);
        let repo = git_repo(&env.dir.path().join("git"), "repo.git");
        std::fs::create_dir_all(env.dir.path().join("project")).unwrap();
        Some(SshWorld {
            env,
            agent,
            granted_key,
            other_key,
            granted,
            other,
            repo,
        })
    }

    fn moat(&self) -> std::process::Command {
        let mut cmd = self.env.moat();
        cmd.env("SSH_AUTH_SOCK", self.agent.socket())
            .env("MOAT_PROXY_PORT", "0")
            .env("MOAT_DAEMON_IDLE_TIMEOUT", "2")
            .env(
                "MOAT_CONNECT_TO",
                format!("git.test:22:127.0.0.1:{}", self.granted.port()),
            )
            .current_dir(self.env.dir.path().join("project"));
        cmd
    }

    fn run(&self, args: &[&str]) -> common::Result {
        common::Result::from(self.moat().args(args).output().unwrap())
    }

    fn grant(&self) {
        let out = self.run(&[
            "grant",
            "ssh",
            "--host",
            "git.test",
            "--key",
            self.granted_key.to_str().unwrap(),
            "--host-key",
            self.granted.host_key(),
        ]);
        out.success();
        assert!(
            out.stdout
                .contains("Granted SSH access to git.test with key SHA256:"),
            "{}",
            out.stdout
        );
    }

    /// A script for the sandbox: clone through the proxy, list keys, try
    /// to delete them, try the sshd that was not granted, ask the agent to
    /// sign arbitrary data, look for the private keys.
    fn script(&self) -> String {
        let user = current_user();
        let granted_private = std::fs::read_to_string(&self.granted_key).unwrap();
        let secret_line = granted_private.lines().nth(2).unwrap().to_string();
        format!(
            r#"set -u
git clone -q ssh://{user}@git.test{repo} /tmp/clone && cat /tmp/clone/README
echo "--- keys"; ssh-add -L
if ssh-add -D >/dev/null 2>&1; then echo "delete: ALLOWED"; else echo "delete: refused"; fi
if ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=5 \
   -p {other_port} {user}@127.0.0.1 true 2>/tmp/other.err; then echo "other: LOGGED IN"; else echo "other: refused"; fi
ssh-add -L > /tmp/granted.pub; echo data > /tmp/data
if ssh-keygen -Y sign -f /tmp/granted.pub -n file /tmp/data >/dev/null 2>&1; then echo "arbitrary: SIGNED"; else echo "arbitrary: refused"; fi
for p in {granted_path} {other_path}; do test -e "$p" && echo "KEY FILE VISIBLE: $p"; done
env | grep -F -q -- '{secret_line}' && echo "KEY IN ENV"
grep -r -l -F -- '{secret_line}' /etc /tmp /run /workspace "$HOME" 2>/dev/null | sed 's/^/KEY IN FILE: /'
echo "sock=$SSH_AUTH_SOCK"
"#,
            repo = self.repo.display(),
            other_port = self.other.port(),
            granted_path = self.granted_key.display(),
            other_path = self.other_key.display(),
        )
    }
}

impl Drop for SshWorld {
    fn drop(&mut self) {
        let _ = self.run(&["proxy", "stop"]);
    }
}

fn run_id_of(env: &TestEnv) -> String {
    let out = env.run(&["list", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    runs.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_granted_host_clones_and_nothing_else_can_use_the_key() {
    let Some(w) = SshWorld::new() else { return };
    w.grant();
    let list = w.run(&["grant", "list"]);
    list.success();
    assert!(list.stdout.contains("ssh:git.test"), "{}", list.stdout);

    let out = w.run(&[
        "run",
        "--grant",
        "ssh:git.test",
        "--",
        "sh",
        "-c",
        &w.script(),
    ]);
    out.success();
    let stdout = &out.stdout;
    assert!(
        stdout.contains("hello from the test repository"),
        "clone failed:\n{stdout}\n{}",
        out.stderr
    );
    let keys: Vec<&str> = stdout
        .split("--- keys\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.starts_with("ssh-"))
        .collect();
    let granted_pub = public_key(&w.granted_key);
    assert_eq!(keys.len(), 1, "only the granted key is listed: {keys:?}");
    assert!(granted_pub.starts_with(keys[0].trim_end_matches(" granted").trim()));
    assert!(stdout.contains("delete: refused"), "{stdout}");
    assert!(stdout.contains("other: refused"), "{stdout}");
    // Signing anything but a login to the granted host is refused by the
    // agent proxy (the sandbox cannot even reach the other sshd).
    assert!(stdout.contains("arbitrary: refused"), "{stdout}");
    assert!(!stdout.contains("VISIBLE"), "{stdout}");
    assert!(!stdout.contains("KEY IN"), "{stdout}");
    assert!(
        stdout.contains("sock=/run/moat/ssh-agent/agent.sock"),
        "{stdout}"
    );

    // The agent still holds both keys: nothing inside could remove them.
    let all = std::process::Command::new("ssh-add")
        .arg("-L")
        .env("SSH_AUTH_SOCK", w.agent.socket())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 2);

    // Every signature, allowed and refused, is in the run's audit log, and
    // the log verifies.
    let id = run_id_of(&w.env);
    let audit =
        std::fs::read_to_string(w.env.moat_home().join("runs").join(&id).join("audit.jsonl"))
            .unwrap();
    assert!(
        audit.contains(r#""action":"sign_allowed""#) && audit.contains(r#""host":"git.test""#),
        "{audit}"
    );
    assert!(audit.contains(r#""action":"sign_denied""#), "{audit}");
    w.run(&["audit", &id]).success();
}

#[test]
fn strict_policy_reaches_the_granted_ssh_host_only() {
    let Some(w) = SshWorld::new() else { return };
    w.grant();
    std::fs::write(
        w.env.dir.path().join("project/moat.yaml"),
        "network:\n  policy: strict\n",
    )
    .unwrap();
    let user = current_user();
    let script = format!(
        "git clone -q ssh://{user}@git.test{} /tmp/clone && cat /tmp/clone/README\n\
         ssh -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -p {} {user}@127.0.0.1 true 2>/dev/null && echo 'direct: CONNECTED' || echo 'direct: unreachable'\n\
         ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -o 'ProxyCommand /run/moat/bin/moat __ssh-connect %h %p' -p 22 {user}@elsewhere.test true 2>&1 || true\n",
        w.repo.display(),
        w.other.port()
    );
    let out = w.run(&["run", "--grant", "ssh:git.test", "--", "sh", "-c", &script]);
    out.success();
    assert!(
        out.stdout.contains("hello from the test repository"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("direct: unreachable"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("moat's proxy refused the SSH connection to elsewhere.test:22"),
        "{}",
        out.stdout
    );
}

#[test]
fn ssh_errors_say_what_to_do() {
    let Some(w) = SshWorld::new() else { return };

    // No grant for the host: nothing starts.
    let out = w.run(&["run", "--grant", "ssh:github.com", "--", "true"]);
    out.failure();
    assert!(
        out.stderr.contains(
            "no SSH keys configured for hosts: [github.com]\n\nGrant SSH access first:\n  moat grant ssh --host github.com"
        ),
        "{}",
        out.stderr
    );
    assert!(!w.env.moat_home().join("runs").exists() || run_count(&w.env) == 0);

    // No agent.
    w.grant();
    let mut cmd = w.moat();
    cmd.env_remove("SSH_AUTH_SOCK")
        .args(["run", "--grant", "ssh:git.test", "--", "true"]);
    let out = common::Result::from(cmd.output().unwrap());
    out.failure();
    assert!(
        out.stderr.contains(
            "SSH grants require SSH_AUTH_SOCK to be set\n\nStart your SSH agent with: eval \"$(ssh-agent -s)\" && ssh-add"
        ),
        "{}",
        out.stderr
    );
    let mut cmd = w.moat();
    cmd.env_remove("SSH_AUTH_SOCK")
        .args(["grant", "ssh", "--host", "git.test"]);
    let out = common::Result::from(cmd.output().unwrap());
    out.failure();
    assert!(out
        .stderr
        .contains("SSH grants require SSH_AUTH_SOCK to be set"));

    // Several keys and no --key, no terminal: the fingerprints to choose from.
    let out = w.run(&[
        "grant",
        "ssh",
        "--host",
        "other.test",
        "--host-key",
        w.granted.host_key(),
    ]);
    out.failure();
    assert!(out.stderr.contains("--key FINGERPRINT"), "{}", out.stderr);

    // No host key to pin.
    let out = w.run(&[
        "grant",
        "ssh",
        "--host",
        "unknown.test",
        "--key",
        w.granted_key.to_str().unwrap(),
    ]);
    out.failure();
    assert!(
        out.stderr.contains("no host key known for unknown.test"),
        "{}",
        out.stderr
    );

    // ... found in ~/.ssh/known_hosts once the user has connected.
    let ssh_dir = w.env.home().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::write(
        ssh_dir.join("known_hosts"),
        format!("unknown.test {}\n", w.granted.host_key()),
    )
    .unwrap();
    w.run(&[
        "grant",
        "ssh",
        "--host",
        "unknown.test",
        "--key",
        w.granted_key.to_str().unwrap(),
    ])
    .success();

    // Revoke.
    w.run(&["revoke", "ssh:git.test"]).success();
    let list = w.run(&["grant", "list"]);
    assert!(!list.stdout.contains("ssh:git.test"), "{}", list.stdout);
    let out = w.run(&["revoke", "ssh:git.test"]);
    out.failure();
    assert!(
        out.stderr.contains("no SSH grant for git.test"),
        "{}",
        out.stderr
    );
}

fn run_count(env: &TestEnv) -> usize {
    std::fs::read_dir(env.moat_home().join("runs"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("run_"))
                .count()
        })
        .unwrap_or(0)
}
