//! Shared helpers for end-to-end tests that drive the real `moat` binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// A temporary user: a HOME and a MOAT_HOME inside it.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> Self {
        TestEnv {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn moat_home(&self) -> PathBuf {
        self.dir.path().join("moat")
    }

    /// `moat` with a clean environment: no inherited tokens, no keychain,
    /// no terminal.
    pub fn moat(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_moat"));
        std::fs::create_dir_all(self.home()).expect("home");
        cmd.env_clear()
            .env("HOME", self.home())
            .env("MOAT_HOME", self.moat_home())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("MOAT_KEYRING_BACKEND", "file")
            // Docker tests opt in; everything else runs natively even
            // where an engine is reachable.
            .env("MOAT_RUNTIME", "native")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Result {
        Result::from(self.moat().args(args).output().expect("spawn moat"))
    }

    pub fn run_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Result {
        let mut cmd = self.moat();
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Result::from(cmd.output().expect("spawn moat"))
    }

    /// `moat grant github` with `token`, validated against a local API
    /// that knows it as octocat.
    pub fn grant_github(&self, token: &str) {
        let api = FakeApi::start(|_| (200, r#"{"login":"octocat"}"#.into()));
        self.run_with(
            &["grant", "github"],
            &[("GITHUB_TOKEN", token), ("MOAT_GITHUB_API_URL", &api.url)],
        )
        .success();
    }

    pub fn run_stdin(&self, args: &[&str], input: &str) -> Result {
        let mut child = self
            .moat()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moat");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        Result::from(child.wait_with_output().expect("wait"))
    }

    /// Replaces the temp dir in `text` so snapshots are stable.
    pub fn redact(&self, text: &str) -> String {
        text.replace(&self.dir.path().display().to_string(), "[TMP]")
    }

    /// Every file under MOAT_HOME.
    pub fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        out.push(p.clone());
                        walk(&p, out);
                    } else {
                        out.push(p);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.moat_home(), &mut out);
        out
    }
}

pub struct Result {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Result {
    fn from(o: Output) -> Self {
        Result {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Result {
    pub fn success(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn failure(&self) -> &Self {
        assert_eq!(
            self.code,
            Some(1),
            "expected failure\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A request seen by [`FakeApi`].
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub request_line: String,
    pub headers: Vec<(String, String)>,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain-HTTP API on 127.0.0.1 that answers with a status and body
/// chosen per request by `respond`.
pub struct FakeApi {
    pub url: String,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
}

impl FakeApi {
    pub fn start<F>(respond: F) -> Self
    where
        F: Fn(&SeenRequest) -> (u16, String) + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut headers = Vec::new();
                let mut content_length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            content_length = v.trim().parse().unwrap_or(0);
                        }
                        headers.push((k.trim().to_string(), v.trim().to_string()));
                    }
                }
                let mut body = vec![0u8; content_length];
                let _ = reader.read_exact(&mut body);
                let req = SeenRequest {
                    request_line: request_line.trim_end().to_string(),
                    headers,
                };
                let (status, body) = respond(&req);
                seen2.lock().expect("lock").push(req);
                let reason = match status {
                    200 => "OK",
                    401 => "Unauthorized",
                    403 => "Forbidden",
                    _ => "Status",
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeApi { url, seen }
    }
}

/// A [`TestEnv`] whose runs reach a local HTTPS upstream standing in for
/// public hosts (`MOAT_CONNECT_TO` + `MOAT_UPSTREAM_CA_FILE`), from a
/// project directory, with a daemon on a free port that exits soon after
/// its last run. The daemon is stopped when the value is dropped.
pub struct ProxiedEnv {
    pub env: TestEnv,
    pub ca_file: PathBuf,
    pub upstream: moat_testkit::EchoUpstream,
    hosts: Vec<String>,
}

impl ProxiedEnv {
    /// Serves `hosts` (e.g. `api.github.com`) from the local upstream.
    pub fn new(hosts: &[&str]) -> Self {
        let env = TestEnv::new();
        let ca = moat_testkit::TestCa::new();
        let ca_file = ca.write_pem(env.dir.path());
        let upstream = moat_testkit::EchoUpstream::start(&ca, hosts);
        std::fs::create_dir_all(env.dir.path().join("project")).expect("project dir");
        ProxiedEnv {
            env,
            ca_file,
            upstream,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    pub fn project(&self) -> PathBuf {
        self.env.dir.path().join("project")
    }

    /// `moat` run from the project, with the proxy settings.
    pub fn moat(&self) -> Command {
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        let mut cmd = self.env.moat();
        cmd.env("MOAT_PROXY_PORT", "0")
            .env("MOAT_ROUTING_LISTEN", "127.0.0.1:0")
            .env("MOAT_DAEMON_IDLE_TIMEOUT", "2")
            .env("MOAT_UPSTREAM_CA_FILE", &self.ca_file)
            .env("MOAT_CONNECT_TO", self.upstream.connect_to(&hosts))
            .current_dir(self.project());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Result {
        Result::from(self.moat().args(args).output().expect("spawn moat"))
    }

    pub fn run_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Result {
        let mut cmd = self.moat();
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Result::from(cmd.output().expect("spawn moat"))
    }

    /// `moat grant github` with `token`, validated against a local API.
    pub fn grant_github(&self, token: &str) {
        self.env.grant_github(token);
    }

    /// The routing listener's port, from `moat proxy status`'s index URL.
    #[allow(dead_code)]
    pub fn routing_port(&self) -> u16 {
        let out = self.run(&["proxy", "status"]);
        out.success();
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Index:"))
            .and_then(|url| url.trim().strip_prefix("https://localhost:"))
            .and_then(|rest| rest.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no index URL in:\n{}", out.stdout))
    }
}

impl Drop for ProxiedEnv {
    fn drop(&mut self) {
        let _ = self.env.run(&["proxy", "stop"]);
    }
}

/// Runs the shell command `inner` under a fresh terminal (util-linux
/// `script`, in Debian's essential bsdutils), with the environment `like`
/// would give moat; `keys` are typed after 1.5 s.
pub fn under_terminal(
    like: &Command,
    cwd: &Path,
    inner: &str,
    keys: Option<&'static [u8]>,
) -> Result {
    let mut script = Command::new("/usr/bin/script");
    script.env_clear();
    for (k, v) in like.get_envs() {
        if let Some(v) = v {
            script.env(k, v);
        }
    }
    script
        .env("SHELL", "/bin/sh")
        .current_dir(cwd)
        .args(["-qec", inner, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = script.spawn().expect("spawn script");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::spawn(move || {
        if let Some(keys) = keys {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            let _ = stdin.write_all(keys);
        }
        std::thread::sleep(std::time::Duration::from_secs(60));
        drop(stdin);
    });
    Result::from(child.wait_with_output().expect("wait for script"))
}

/// A stand-in for a local model server on the host's 127.0.0.1: answers
/// each connection's first line with `model says <line>`. Returns its port.
pub fn line_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let Ok(clone) = conn.try_clone() else {
                continue;
            };
            let mut line = String::new();
            let _ = BufReader::new(clone).read_line(&mut line);
            let _ = (&conn).write_all(format!("model says {line}").as_bytes());
        }
    });
    port
}

/// Whether a Docker engine with the local base image answers; without one
/// the calling test skips with the reason printed, unless
/// `MOAT_REQUIRE_DOCKER=1` (CI), which makes it fail.
#[allow(dead_code)] // not every test file uses every helper
pub fn docker_available() -> bool {
    moat_testkit::require::docker()
}

const POSTGRES_STANDIN: &str = r#"# moat test stand-in for the official postgres image's contract:
# POSTGRES_PASSWORD (required), POSTGRES_USER (default postgres),
# POSTGRES_DB (default: the user); serves on 5432; pg_isready on PATH.
FROM local/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
RUN printf '%s\n' '#!/bin/sh' 'set -e' \
  'if [ -z "$POSTGRES_PASSWORD" ]; then echo "Error: Database is uninitialized and superuser password is not specified." >&2; exit 1; fi' \
  'user=${POSTGRES_USER:-postgres}; db=${POSTGRES_DB:-$user}' \
  'if [ ! -s "$PGDATA/PG_VERSION" ]; then' \
  '  mkdir -p "$PGDATA"; chown postgres:postgres "$PGDATA"; chmod 700 "$PGDATA"' \
  '  printf "%s\n" "$POSTGRES_PASSWORD" > /tmp/pwfile; chown postgres /tmp/pwfile' \
  '  runuser -u postgres -- initdb --no-sync -D "$PGDATA" -U "$user" --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 >/dev/null' \
  '  rm -f /tmp/pwfile' \
  '  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"' \
  '  if [ "$db" != postgres ]; then echo "CREATE DATABASE \"$db\";" | runuser -u postgres -- postgres --single -D "$PGDATA" postgres >/dev/null; fi' \
  'fi' \
  'exec runuser -u postgres -- postgres -D "$PGDATA" -c "listen_addresses=*" "$@"' \
  > /usr/local/bin/docker-entrypoint.sh && chmod 755 /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
"#;

const REDIS_STANDIN: &str = r#"# moat test stand-in for the official redis image: redis-server, redis-cli.
FROM local/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
CMD ["redis-server", "--protected-mode", "no"]
"#;

/// Builds `dockerfile` as `local/moat-test-<name>:<hash>` unless it exists.
pub fn service_standin(name: &str, dockerfile: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dockerfile.hash(&mut hasher);
    let tag = format!("local/moat-test-{name}:{:016x}", hasher.finish());
    let exists = Command::new("docker")
        .args(["image", "inspect", &tag])
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        let mut child = Command::new("docker")
            .args(["build", "-q", "-t", &tag, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dockerfile.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "building {tag}");
    }
    tag
}

/// Local stand-ins for the official `postgres` and `redis` images (no
/// registry is reachable here), built once and kept: Debian's packages
/// behind the same contract.
pub fn service_images() -> &'static (String, String) {
    static IMAGES: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    IMAGES.get_or_init(|| {
        (
            service_standin("postgres", POSTGRES_STANDIN),
            service_standin("redis", REDIS_STANDIN),
        )
    })
}

const DIND_STANDIN: &str = r#"# moat test stand-in for the official docker:dind image's contract:
# arguments starting with - go to dockerd; without DOCKER_TLS_CERTDIR it
# listens on tcp://0.0.0.0:2375 beside its Unix socket.
FROM local/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends docker.io iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN printf '%s\n' '#!/bin/sh' 'set -e' \
 'if [ $# -eq 0 ] || [ "${1#-}" != "$1" ]; then' \
 '  if [ -z "${DOCKER_TLS_CERTDIR:-}" ]; then set -- dockerd --host=unix:///var/run/docker.sock --host=tcp://0.0.0.0:2375 "$@"; else set -- dockerd --host=unix:///var/run/docker.sock "$@"; fi' \
 'fi' \
 'exec "$@"' > /usr/local/bin/dockerd-entrypoint.sh && chmod 755 /usr/local/bin/dockerd-entrypoint.sh
VOLUME /var/lib/docker
ENTRYPOINT ["/usr/local/bin/dockerd-entrypoint.sh"]
"#;

/// A local stand-in for `docker:dind`, built once and kept.
pub fn dind_image() -> String {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| service_standin("dind", DIND_STANDIN))
        .clone()
}

/// A local stand-in for the official `mysql` image (Debian's MariaDB
/// behind the same contract: `MYSQL_ROOT_PASSWORD`, `MYSQL_DATABASE`),
/// built once and kept. Its entrypoint is `tests/standins/`.
pub fn mysql_image() -> String {
    use base64::Engine as _;
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let entrypoint = base64::engine::general_purpose::STANDARD
                .encode(include_bytes!("../standins/mysql-entrypoint.sh"));
            let dockerfile = format!(
                "FROM local/debian:bookworm\n\
                 RUN apt-get update && apt-get install -y --no-install-recommends mariadb-server mariadb-client \\\n \
                 && rm -rf /var/lib/apt/lists/* && mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld\n\
                 RUN echo {entrypoint} | base64 -d > /usr/local/bin/docker-entrypoint.sh && chmod 755 /usr/local/bin/docker-entrypoint.sh\n\
                 ENTRYPOINT [\"/usr/local/bin/docker-entrypoint.sh\"]\n"
            );
            service_standin("mysql", &dockerfile)
        })
        .clone()
}

/// A shell script, run in a sandbox from its workspace, that tries every
/// ordinary way of leaving a setuid or setgid file there: a copy of `id`
/// made setuid (with `chmod`, `install -m`, `fchmod`, `fchmodat2` and the
/// legacy `chmod`), created with the bits in its mode (`open`, `openat`,
/// `creat`, `O_TMPFILE`, `openat2`, `mknod`), and setgid directories
/// (`chmod g+s`, `mkdir -m`). Files created with the bits stay empty (a
/// write would clear them); each non-empty executable it leaves is a copy
/// of `id`, so running it tells which user it runs as. It prints `chmod-eperm` when
/// chmod was refused with EPERM, `plain-ok` when an ordinary chmod still
/// works, and `FAIL <what>` when a refused call succeeded.
pub const SETID_ATTACKS: &str = r#"
cp /bin/id suid; chmod 4755 suid 2>&1 | grep -q 'Operation not permitted' && echo chmod-eperm
cp /bin/id sgid; chmod 2755 sgid
cp /bin/id both; chmod u+s,g+s both
mkdir setgid-dir; chmod g+s setgid-dir
install -m 4755 /bin/id installed
install -d -m 2755 installed-dir
mkdir -m 2755 mkdir-m
cp /bin/id plain && chmod 755 plain && mkdir -m 750 plain-dir && echo plain-ok
python3 - <<'PYEOF'
import ctypes, os, platform
libc = ctypes.CDLL(None, use_errno=True)
image = open("/bin/id", "rb").read()
AT_FDCWD = -100
os.umask(0o022)

def attempt(name, action):
    try:
        action()
    except OSError as e:
        print(name, e)

def write_id(fd):
    os.write(fd, image)
    os.close(fd)

def raw(nr, *args):
    r = libc.syscall(nr, *args)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r

attempt("open", lambda: os.close(os.open("open-suid", os.O_CREAT | os.O_WRONLY, 0o4755)))
attempt("open-g", lambda: os.close(os.open("open-sgid", os.O_CREAT | os.O_WRONLY, 0o2755)))

def tmpfile():
    fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o6755)
    os.link(f"/proc/self/fd/{fd}", "tmpfile-suid")
    os.close(fd)
attempt("tmpfile", tmpfile)

def fchmod():
    fd = os.open("fchmod-suid", os.O_CREAT | os.O_WRONLY, 0o755)
    os.write(fd, image)
    try:
        os.fchmod(fd, 0o6755)
    finally:
        os.close(fd)
attempt("fchmod", fchmod)

def fchmodat2():
    write_id(os.open("fchmodat2-suid", os.O_CREAT | os.O_WRONLY, 0o755))
    raw(452, AT_FDCWD, b"fchmodat2-suid", 0o4755, 0)
attempt("fchmodat2", fchmodat2)

class OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]
def openat2():
    how = OpenHow(os.O_CREAT | os.O_WRONLY, 0o4755, 0)
    os.close(raw(437, AT_FDCWD, b"openat2-suid", ctypes.byref(how), ctypes.sizeof(how)))
attempt("openat2", openat2)

attempt("mknod", lambda: os.mknod("mknod-suid", 0o100000 | 0o4755))
attempt("mkdir", lambda: os.mkdir("py-mkdir", 0o2755))

if platform.machine() == "x86_64":
    attempt("legacy-open", lambda: os.close(raw(2, b"legacy-open-suid", os.O_CREAT | os.O_WRONLY, 0o4755)))
    attempt("legacy-creat", lambda: os.close(raw(85, b"legacy-creat-suid", 0o4755)))
    def legacy_chmod():
        write_id(os.open("legacy-chmod-suid", os.O_CREAT | os.O_WRONLY, 0o755))
        raw(90, b"legacy-chmod-suid", 0o4755)
    attempt("legacy-chmod", legacy_chmod)
    attempt("legacy-mkdir", lambda: raw(83, b"legacy-mkdir", 0o2755))
    attempt("legacy-mknod", lambda: raw(133, b"legacy-mknod-suid", 0o100000 | 0o4755, 0))

# io_uring's IORING_OP_OPENAT would create files with any mode, unseen
# by a system-call filter: the ring itself must be refused.
params = ctypes.create_string_buffer(120)
if libc.syscall(425, 1, params) >= 0:
    print("FAIL io_uring_setup")
PYEOF
echo attacks-done
"#;

/// The uid (and gid) a root caller's container workload runs as.
pub const CONTAINER_FALLBACK_UID: u32 = 1000;

/// Makes a root caller's `workspace` the container user's, as a user's
/// project is when root runs moat in it: the workload may then write there
/// (and files it makes setuid would run as that user on the host).
pub fn give_to_sandbox_user(workspace: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::os::unix::fs::chown(
        workspace,
        Some(CONTAINER_FALLBACK_UID),
        Some(CONTAINER_FALLBACK_UID),
    )
    .unwrap();
    // Its parent (the test's temporary directory) must let it through.
    if let Some(parent) = workspace.parent() {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// Every file or directory under `workspace` (symbolic links not
/// followed) whose mode has the setuid or setgid bit, with the mode.
pub fn setid_left_in(workspace: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt as _;
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.mode() & 0o6000 != 0 {
                out.push(format!("{} {:o}", path.display(), meta.mode()));
            }
            if meta.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(workspace, &mut out);
    out
}

/// Runs every non-empty executable regular file directly in `workspace`
/// (each a copy of `id`, see [`SETID_ATTACKS`]) as `uid` with `-u`;
/// returns how many ran and those that printed another effective uid.
/// `open_up` are the directories above it to make traversable for `uid`.
pub fn run_each_as(workspace: &Path, open_up: &[&Path], uid: u32) -> (usize, Vec<String>) {
    use std::os::unix::fs::PermissionsExt as _;
    for dir in open_up.iter().copied().chain([workspace]) {
        let mut perms = std::fs::metadata(dir).unwrap().permissions();
        perms.set_mode(perms.mode() | 0o755);
        std::fs::set_permissions(dir, perms).unwrap();
    }
    let mut ran = 0;
    let mut gained = Vec::new();
    for entry in std::fs::read_dir(workspace).unwrap().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if !meta.is_file() || meta.permissions().mode() & 0o001 == 0 || meta.len() == 0 {
            continue;
        }
        let uid_arg = uid.to_string();
        let out = Command::new("setpriv")
            .args(["--reuid", &uid_arg, "--regid", &uid_arg, "--clear-groups"])
            .arg(&path)
            .arg("-u")
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ran += 1;
        if printed != uid_arg {
            gained.push(format!(
                "{} runs as euid {printed:?} for uid {uid}",
                path.display()
            ));
        }
    }
    (ran, gained)
}

/// Checks the outcome of [`SETID_ATTACKS`] run in `workspace`: the script
/// completed, chmod was refused with EPERM, ordinary modes still work, no
/// refused call succeeded, no setuid or setgid bit is on the host, and
/// each executable left runs as `runner` (an unprivileged host uid other
/// than the one the sandbox's files belong to), not as their owner.
pub fn assert_no_setid_left(out: &Result, workspace: &Path, open_up: &[&Path], runner: u32) {
    let mut problems = Vec::new();
    for (line, meaning) in [
        ("attacks-done", "the script did not complete"),
        ("plain-ok", "an ordinary chmod or mkdir failed"),
        ("chmod-eperm", "chmod u+s was not refused with EPERM"),
    ] {
        if !out.stdout.contains(line) {
            problems.push(meaning.to_owned());
        }
    }
    problems.extend(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .map(str::to_owned),
    );
    problems.extend(
        setid_left_in(workspace)
            .into_iter()
            .map(|f| format!("setuid/setgid on the host: {f}")),
    );
    let (ran, gained) = run_each_as(workspace, open_up, runner);
    // At least the copies made by cp (suid, sgid, both, plain).
    if ran < 4 {
        problems.push(format!("only {ran} executables in the workspace"));
    }
    problems.extend(gained);
    assert!(
        problems.is_empty(),
        "{problems:#?}\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
}

/// Reads a child's pipe into a shared string, on a thread of its own.
#[allow(dead_code)]
pub fn collect(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}
