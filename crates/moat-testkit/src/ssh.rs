//! Real OpenSSH for tests: keys from `ssh-keygen`, an `ssh-agent`, and an
//! `sshd` on 127.0.0.1 with a throwaway host key. Each process dies with
//! its guard.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why OpenSSH tests cannot run here, if they cannot.
pub fn openssh_missing() -> Option<String> {
    for tool in [
        "ssh",
        "ssh-agent",
        "ssh-add",
        "ssh-keygen",
        "/usr/sbin/sshd",
    ] {
        let found = if tool.starts_with('/') {
            Path::new(tool).exists()
        } else {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !found {
            return Some(format!(
                "{tool} not found (apt-get install openssh-client openssh-server)"
            ));
        }
    }
    None
}

/// Generates an ed25519 key pair at `dir/name` (and `.pub`); returns the
/// private key's path.
pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .expect("running ssh-keygen");
    assert!(status.success(), "ssh-keygen failed");
    path
}

/// The OpenSSH public key line of the key at `private`.
pub fn public_key(private: &Path) -> String {
    let mut pubfile = private.as_os_str().to_owned();
    pubfile.push(".pub");
    std::fs::read_to_string(pubfile)
        .expect("reading a .pub file")
        .trim()
        .to_string()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `ssh-agent`.
#[derive(Debug)]
pub struct SshAgent {
    child: Child,
    socket: PathBuf,
}

impl SshAgent {
    /// Starts an agent with its socket in `dir`.
    pub fn start(dir: &Path) -> Self {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting ssh-agent");
        // The socket exists from bind(), before listen(): only a
        // connection that succeeds says ssh-add will reach it.
        wait_for("ssh-agent", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        SshAgent { child, socket }
    }

    /// Its socket (`SSH_AUTH_SOCK`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `ssh-add PRIVATE`.
    pub fn add(&self, private: &Path) {
        let status = Command::new("ssh-add")
            .arg(private)
            .env("SSH_AUTH_SOCK", &self.socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running ssh-add");
        assert!(status.success(), "ssh-add failed");
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `sshd` accepting the given public keys for the current user.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    port: u16,
    host_key: String,
}

impl Sshd {
    /// Starts `sshd` on 127.0.0.1 with a fresh host key in `dir`, letting
    /// in `authorized` (OpenSSH public key lines).
    pub fn start(dir: &Path, authorized: &[String]) -> Self {
        std::fs::create_dir_all(dir).expect("creating the sshd directory");
        let host_key_path = dir.join("host_key");
        if !host_key_path.exists() {
            keygen(dir, "host_key");
        }
        let host_key = public_key(&host_key_path);
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let auth = dir.join("authorized_keys");
        std::fs::write(&auth, authorized.join("\n") + "\n").expect("writing authorized_keys");
        // sshd refuses to start without its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("finding a free port");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f", "/dev/null"])
            .arg("-o")
            .arg(format!("Port={port}"))
            .args(["-o", "ListenAddress=127.0.0.1"])
            .arg("-o")
            .arg(format!("HostKey={}", host_key_path.display()))
            .arg("-o")
            .arg(format!("AuthorizedKeysFile={}", auth.display()))
            .args(["-o", "StrictModes=no"])
            .args(["-o", "PasswordAuthentication=no"])
            .args(["-o", "KbdInteractiveAuthentication=no"])
            .args(["-o", "UsePAM=no"])
            .args(["-o", "PermitRootLogin=prohibit-password"])
            .arg("-o")
            .arg(format!("PidFile={}", dir.join("sshd.pid").display()))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("sshd.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("starting sshd");
        wait_for("sshd", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Sshd {
            child,
            port,
            host_key,
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its host key, `type base64`.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The current user's name (what `ssh user@…` must say to this sshd).
pub fn current_user() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "root".into())
}

/// A bare git repository at `dir/name` with one commit holding `README`.
pub fn git_repo(dir: &Path, name: &str) -> PathBuf {
    let bare = dir.join(name);
    let work = dir.join(format!("{name}-work"));
    let git = |args: &[&str], cwd: &Path| {
        let status = Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running git");
        assert!(status.success(), "git {args:?} failed");
    };
    std::fs::create_dir_all(&work).expect("creating a work tree");
    git(&["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("README"), "hello from the test repository\n").expect("README");
    git(&["add", "README"], &work);
    git(&["commit", "-q", "-m", "init"], &work);
    git(
        &[
            "clone",
            "-q",
            "--bare",
            ".",
            bare.to_str().expect("utf-8 path"),
        ],
        &work,
    );
    bare
}
