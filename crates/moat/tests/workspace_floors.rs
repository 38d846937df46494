//! What a run may leave in the workspace for the host to act on later,
//! attacked from inside through the real `moat` binary: git hooks and the
//! keys of `.git/config` that run programs, editor and agent settings,
//! direnv and shell files, at the workspace root and in nested
//! repositories. Each test plants them, then uses the workspace on the
//! host the way its owner would (`git commit`, `git status`) and checks
//! that nothing planted ran and nothing protected changed; git inside the
//! sandbox keeps working, pushes through the proxy included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;

struct Workspace {
    env: common::TestEnv,
}

impl Workspace {
    /// A project that is a git repository with one commit.
    fn repo() -> Self {
        let env = common::TestEnv::new();
        let ws = Workspace { env };
        std::fs::create_dir_all(ws.project()).unwrap();
        ws.host_git(&["init", "-q", "-b", "main"]);
        std::fs::write(ws.project().join("README"), "hello\n").unwrap();
        ws.host_git(&["add", "README"]);
        ws.host_git(&["commit", "-q", "-m", "first"]);
        ws
    }

    fn project(&self) -> PathBuf {
        self.env.dir.path().join("project")
    }

    /// Where a planted program would leave its mark on the host.
    fn marks(&self) -> PathBuf {
        let dir = self.env.dir.path().join("marks");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn marks_left(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.marks())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// git on the host, as the project's owner.
    fn host_git_in(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("HOME", self.env.home())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("GIT_AUTHOR_NAME", "owner")
            .env("GIT_AUTHOR_EMAIL", "owner@example.com")
            .env("GIT_COMMITTER_NAME", "owner")
            .env("GIT_COMMITTER_EMAIL", "owner@example.com")
            // The container tests hand the project to the image's user.
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "safe.directory")
            .env("GIT_CONFIG_VALUE_0", "*")
            .output()
            .unwrap()
    }

    fn host_git(&self, args: &[&str]) -> String {
        std::fs::create_dir_all(self.env.home()).unwrap();
        let out = self.host_git_in(&self.project(), args);
        assert!(
            out.status.success(),
            "host git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The owner adds a file and commits in the repository at `dir` on the
    /// host, then asks for its status: what would run a planted program.
    fn owner_commits_in(&self, dir: &Path) {
        std::fs::write(dir.join("f"), "f\n").unwrap();
        assert!(self.host_git_in(dir, &["add", "f"]).status.success());
        let commit = self.host_git_in(dir, &["commit", "-q", "-m", "host commit"]);
        assert!(
            commit.status.success(),
            "{}",
            String::from_utf8_lossy(&commit.stderr)
        );
        assert!(self.host_git_in(dir, &["status"]).status.success());
    }

    fn run(&self, args: &[&str], script: &str) -> common::Result {
        self.run_env(args, script, &[])
    }

    fn run_env(&self, args: &[&str], script: &str, envs: &[(&str, &str)]) -> common::Result {
        let mut cmd = self.env.moat();
        cmd.env("MOAT_DAEMON_IDLE_TIMEOUT", "2")
            .env("MOAT_PROXY_PORT", "0")
            .env("MARKS", self.marks())
            .current_dir(self.project())
            .arg("run")
            .args(args)
            .args(["-e", &format!("MARKS={}", self.marks().display())])
            .args(["--", "sh", "-c", script]);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        common::Result::from(cmd.output().unwrap())
    }

    /// Every entry of the project, recursively (`.git/objects` left out),
    /// with its kind and size: what the host sees of the tree.
    fn tree(&self) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                if rel == ".git/objects" || rel == ".git/logs" {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &path, out);
                } else {
                    out.push(format!("{rel} {}", meta.len()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.project(), &self.project(), &mut out);
        out.sort();
        out
    }
}

/// Plants, in the repository at `dir` (relative to the workspace), every
/// way of leaving a program for the host that the floors refuse; each
/// step's failure is reported and the script goes on.
fn plant(dir: &str) -> String {
    format!(
        r#"cd /workspace/{dir} || exit 9
hook='#!/bin/sh
touch "$MARKS/hook-{tag}"'
try() {{ if "$@" 2>/dev/null; then echo "PLANTED: $*"; else echo "refused: $*"; fi; }}
try sh -c "printf '%s\n' \"\$0\" > .git/hooks/post-commit && chmod +x .git/hooks/post-commit" "$hook"
try sh -c "printf '%s\n' \"\$0\" > .git/hooks/pre-commit" "$hook"
try git config core.fsmonitor "touch $MARKS/fsmonitor-{tag}; false"
try git config core.hooksPath /workspace/{dir}/planted-hooks
try git config alias.st '!touch $MARKS/alias-{tag}'
try sh -c 'echo "* filter=evil" > .git/info/attributes'
try sh -c 'mkdir -p .vscode && echo "{{\"tasks\":[]}}" > .vscode/tasks.json'
try sh -c 'mkdir -p .idea && echo x > .idea/workspace.xml'
try sh -c 'mkdir -p .claude && echo "{{\"hooks\":{{}}}}" > .claude/settings.json'
try sh -c 'mkdir -p .claude/commands && echo x > .claude/commands/evil.md'
try sh -c 'echo "{{}}" > .mcp.json'
try sh -c 'echo "touch $MARKS/envrc" > .envrc'
try sh -c 'echo "[submodule \"x\"]" > .gitmodules'
try sh -c 'echo "--pre=evil" > .ripgreprc'
try sh -c 'echo "[core]" > .gitconfig'
try sh -c 'echo "touch $MARKS/bashrc" > .bashrc'
try sh -c 'echo "touch $MARKS/zshrc" > .zshrc'
try sh -c 'echo x > .profile'
try rm -rf .git/hooks
try mv .git/config .git/config.old
try rm -f .git/config
echo done
"#,
        tag = if dir.is_empty() { "root" } else { dir }
    )
}

fn assert_all_refused(out: &common::Result) {
    assert!(
        out.stdout.contains("done"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let planted: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("PLANTED"))
        .collect();
    // `git config` changes land in the sandbox's own copy of .git/config:
    // they succeed inside and never reach the host (checked there).
    let unexpected: Vec<&&str> = planted
        .iter()
        .filter(|l| !l.starts_with("PLANTED: git config"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "writes that should have been refused: {unexpected:#?}\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn nothing_planted_in_the_workspace_runs_on_the_host() {
    let ws = Workspace::repo();
    let config_before = std::fs::read(ws.project().join(".git/config")).unwrap();
    let tree_before = ws.tree();

    let out = ws.run(&[], &plant(""));
    out.success();
    assert_all_refused(&out);

    // The owner uses the repository on the host afterwards.
    ws.host_git(&["status", "--short"]);
    std::fs::write(ws.project().join("more"), "more\n").unwrap();
    ws.host_git(&["add", "more"]);
    ws.host_git(&["commit", "-q", "-m", "host commit"]);
    // An alias the sandbox tried to define does not exist on the host.
    assert!(!ws.host_git_in(&ws.project(), &["st"]).status.success());
    assert_eq!(ws.marks_left(), Vec::<String>::new(), "{}", out.stdout);
    assert_eq!(
        std::fs::read(ws.project().join(".git/config")).unwrap(),
        config_before,
        "the host's .git/config changed"
    );
    // Nothing new, nothing left behind (placeholders included), apart
    // from the owner's own commit.
    let tree_after: Vec<String> = ws
        .tree()
        .into_iter()
        .filter(|e| !e.starts_with("more ") && !e.starts_with(".git/"))
        .collect();
    let tree_before: Vec<String> = tree_before
        .into_iter()
        .filter(|e| !e.starts_with(".git/"))
        .collect();
    assert_eq!(tree_after, tree_before);
    assert!(!ws.project().join(".git/hooks/post-commit").exists());
    assert!(!ws.project().join(".git/info/attributes").exists());
}

#[test]
fn nested_repositories_are_protected_too() {
    let ws = Workspace::repo();
    let sub = ws.project().join("libs/sub");
    std::fs::create_dir_all(&sub).unwrap();
    let out = ws.host_git_in(&sub, &["init", "-q", "-b", "main"]);
    assert!(out.status.success());
    let out = ws.run(&[], &plant("libs/sub"));
    out.success();
    assert_all_refused(&out);
    ws.owner_commits_in(&sub);
    assert_eq!(ws.marks_left(), Vec::<String>::new(), "{}", out.stdout);
}

#[test]
fn allow_write_lets_one_path_through_for_one_run() {
    let ws = Workspace::repo();
    let out = ws.run(
        &["--allow-write", ".vscode"],
        "mkdir -p .vscode && echo '{}' > .vscode/settings.json && echo ok; \
         echo x > .envrc || echo envrc-refused",
    );
    out.success();
    assert!(out.stdout.contains("ok"), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("envrc-refused"), "{}", out.stdout);
    assert!(ws.project().join(".vscode/settings.json").exists());
    assert!(!ws.project().join(".envrc").exists());

    // The same for the workspace, from a (trusted) moat.yaml.
    std::fs::write(ws.project().join("moat.yaml"), "allow_write: [.envrc]\n").unwrap();
    let out = ws.run(&[], "echo 'export A=1' > .envrc && echo ok");
    out.success();
    assert!(out.stdout.contains("ok"), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        std::fs::read_to_string(ws.project().join(".envrc")).unwrap(),
        "export A=1\n"
    );
}

#[test]
fn protected_paths_are_named_with_the_fix() {
    let ws = Workspace::repo();
    let out = ws.run(&[], "echo x > .git/hooks/post-commit");
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("Read-only file system")
            && out.stderr.contains("moat: .git/hooks is protected")
            && out.stderr.contains("--allow-write .git/hooks"),
        "the run's stderr should name the protected path and the fix:\n{}",
        out.stderr
    );
    let trust = ws.env.run(&["trust", ws.project().to_str().unwrap()]);
    assert!(
        trust.stdout.contains(".git/hooks") && trust.stdout.contains("--allow-write"),
        "moat trust should list the protected paths and the fix:\n{}\n{}",
        trust.stdout,
        trust.stderr
    );
}

/// A git smart-HTTP server for `root` on 127.0.0.1 (`git http-backend`
/// behind a few lines of Python), so pushes go through moat's proxy as
/// they would to a forge.
struct GitServer {
    child: std::process::Child,
    port: u16,
}

impl GitServer {
    fn start(root: &Path) -> Self {
        let script = r#"
import http.server, os, subprocess, sys
root = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def handle_one(self):
        path, _, query = self.path.partition("?")
        if path.startswith("http://"):
            path = "/" + path.split("/", 3)[3]
        body = b""
        if "Content-Length" in self.headers:
            body = self.rfile.read(int(self.headers["Content-Length"]))
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_USER="agent", REMOTE_ADDR="127.0.0.1",
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""),
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            k, _, v = line.decode().partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)
    do_GET = handle_one
    do_POST = handle_one
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", script, root.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        GitServer {
            child,
            port: line.trim().parse().unwrap(),
        }
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn git_inside_commits_branches_and_pushes_through_the_proxy() {
    let ws = Workspace::repo();
    let forge = ws.env.dir.path().join("forge");
    std::fs::create_dir_all(&forge).unwrap();
    let init = Command::new("git")
        .args(["init", "-q", "--bare", "repo.git"])
        .current_dir(&forge)
        .output()
        .unwrap();
    assert!(init.status.success());
    let config = Command::new("git")
        .args(["config", "http.receivepack", "true"])
        .current_dir(forge.join("repo.git"))
        .output()
        .unwrap();
    assert!(config.status.success());
    let server = GitServer::start(&forge);

    let script = "set -e
git config user.name agent && git config user.email agent@example.com
git checkout -q -b feature
echo change > change.txt && git add change.txt && git commit -q -m 'agent change'
git remote add origin http://forge.test/repo.git
git push -q -u origin feature 2>&1
git branch -vv | grep -q 'origin/feature'
git fetch -q origin
echo pushed";
    let connect_to = format!("forge.test:80:127.0.0.1:{}", server.port);
    let out = ws.run_env(&[], script, &[("MOAT_CONNECT_TO", &connect_to)]);
    out.success();
    assert!(
        out.stdout.contains("pushed"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );

    // The commit and the branch are the host's: they are in its repository.
    let log = ws.host_git(&["log", "--format=%s", "feature"]);
    assert!(log.starts_with("agent change"), "{log}");
    // And the forge has it, through the proxy (its trace names the host).
    let pushed = Command::new("git")
        .args(["log", "--format=%s", "feature"])
        .current_dir(forge.join("repo.git"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pushed.stdout).starts_with("agent change"),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let trace = ws.env.run(&["trace", "--network"]);
    assert!(
        trace.stdout.contains("forge.test"),
        "the push should have gone through the proxy: {}",
        trace.stdout
    );
    // The configuration git wrote inside stayed there.
    let config = std::fs::read_to_string(ws.project().join(".git/config")).unwrap();
    assert!(!config.contains("forge.test"), "{config}");
    assert!(!config.contains("agent@example.com"), "{config}");
}

#[test]
fn a_symlinked_protected_entry_is_pinned_not_followed() {
    let ws = Workspace::repo();
    let secret = ws.env.dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("key"), "s3cret\n").unwrap();
    // Left by someone in the workspace: a protected name that is a link
    // out of it. The run must neither expose nor replace it.
    std::os::unix::fs::symlink(&secret, ws.project().join(".vscode")).unwrap();
    let out = ws.run(
        &[],
        "cat .vscode/key 2>&1; rm .vscode 2>&1 && echo REMOVED; \
         ln -sfn /tmp .vscode 2>&1 && echo REPLACED; echo done",
    );
    out.success();
    assert!(!out.stdout.contains("s3cret"), "{}", out.stdout);
    assert!(!out.stdout.contains("REMOVED"), "{}", out.stdout);
    assert!(!out.stdout.contains("REPLACED"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_link(ws.project().join(".vscode")).unwrap(),
        secret
    );
}

/// The same plants from a container (no git in the test image: the file
/// writes are what is checked), on the host's workspace bind.
fn container_runs_cannot_plant(runtime: &str) {
    let ws = Workspace::repo();
    // The image's user (uid 1000) owns the project, as it would be the
    // caller's own on a workstation: every write is allowed but the floors.
    let chown = Command::new("chown")
        .args(["-R", "1000:1000"])
        .arg(ws.project())
        .status()
        .unwrap();
    assert!(chown.success());
    let config_before = std::fs::read(ws.project().join(".git/config")).unwrap();
    let out = ws.run_env(
        &[],
        &plant(""),
        &[
            ("MOAT_RUNTIME", runtime),
            ("MOAT_DAEMON_IDLE_TIMEOUT", "5"),
            (
                "MOAT_IMAGE_MAP",
                "debian:bookworm-slim=local/debian:bookworm",
            ),
        ],
    );
    out.success();
    assert_all_refused(&out);
    std::fs::write(ws.project().join("more"), "more\n").unwrap();
    ws.host_git(&["add", "more"]);
    ws.host_git(&["commit", "-q", "-m", "host commit"]);
    assert_eq!(ws.marks_left(), Vec::<String>::new(), "{}", out.stdout);
    assert_eq!(
        std::fs::read(ws.project().join(".git/config")).unwrap(),
        config_before
    );
    for name in [".vscode", ".envrc", ".claude", ".mcp.json", ".bashrc"] {
        assert!(
            !ws.project().join(name).exists(),
            "{name} left behind on the host"
        );
    }

    // A protected name that is a link would show the container its
    // target: refused, with the fix.
    std::os::unix::fs::symlink("/etc", ws.project().join(".vscode")).unwrap();
    let out = ws.run_env(
        &[],
        "true",
        &[
            ("MOAT_RUNTIME", runtime),
            (
                "MOAT_IMAGE_MAP",
                "debian:bookworm-slim=local/debian:bookworm",
            ),
        ],
    );
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains(".vscode is a symbolic link") && out.stderr.contains("--allow-write"),
        "{}",
        out.stderr
    );
}

#[test]
fn docker_runs_cannot_plant_either() {
    if !common::docker_available() {
        return;
    }
    container_runs_cannot_plant("docker");
}

#[test]
fn podman_runs_cannot_plant_either() {
    if !moat_testkit::require::podman() {
        return;
    }
    container_runs_cannot_plant("podman");
}

#[test]
fn a_repository_the_run_creates_is_disarmed_when_it_ends() {
    // A project that is not a repository yet, and a nested one made inside.
    let env = common::TestEnv::new();
    let ws = Workspace { env };
    std::fs::create_dir_all(ws.project()).unwrap();
    let script = r#"set -e
for dir in . vendored; do
  mkdir -p $dir && cd /workspace/$dir
  git init -q -b main
  printf '#!/bin/sh\ntouch "$MARKS/hook-%s"\n' "$dir" > .git/hooks/post-commit
  chmod +x .git/hooks/post-commit
  ln -s post-commit .git/hooks/pre-commit
  git config core.fsmonitor "touch $MARKS/fsmonitor-$dir; false"
  git config alias.st '!touch $MARKS/alias'
  git config remote.origin.url https://example.com/x.git
  cd /workspace
done
echo made"#;
    let out = ws.run(&[], script);
    out.success();
    assert!(out.stdout.contains("made"), "{}", out.stderr);
    for dir in [ws.project(), ws.project().join("vendored")] {
        ws.owner_commits_in(&dir);
        assert!(!ws.host_git_in(&dir, &["st"]).status.success());
        // What was not a program is kept.
        let url = ws.host_git_in(&dir, &["config", "remote.origin.url"]);
        assert_eq!(
            String::from_utf8_lossy(&url.stdout),
            "https://example.com/x.git\n"
        );
        assert!(dir.join(".git/hooks/post-commit.moat-disabled").exists());
    }
    assert_eq!(ws.marks_left(), Vec::<String>::new());
    assert!(
        out.stderr
            .contains("the run created the git repository vendored/.git in the workspace")
            && out.stderr.contains("core.fsmonitor removed")
            && out
                .stderr
                .contains("hook post-commit renamed post-commit.moat-disabled"),
        "{}",
        out.stderr
    );
}

#[test]
fn placeholders_stay_while_another_run_of_the_workspace_is_active() {
    let ws = Workspace::repo();
    let mut first = ws.env.moat();
    first
        .env("MOAT_DAEMON_IDLE_TIMEOUT", "2")
        .env("MOAT_PROXY_PORT", "0")
        .current_dir(ws.project())
        .args(["run", "--", "sh", "-c", "sleep 3; ls -d .vscode"])
        .stdout(std::process::Stdio::piped());
    let first = first.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ws.project().join(".vscode").exists() {
        assert!(std::time::Instant::now() < deadline, "no placeholder");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ws.run(&[], "true").success();
    assert!(
        ws.project().join(".vscode").is_dir(),
        "the first run still shows it"
    );
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), ".vscode\n");
    assert!(!ws.project().join(".vscode").exists());
}
