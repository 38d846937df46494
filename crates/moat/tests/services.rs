//! Service sidecars (`dependencies: [postgres, redis]`) through the real
//! binary on Docker (gVisor and runc) and Podman: reachable by name with
//! the run's password under the strict policy, readiness, `wait: false`,
//! provisioning, the seed's errors, and nothing left behind after the run
//! or after the CLI is killed.
//!
//! No registry is reachable here: the official images are replaced (via
//! `MOAT_IMAGE_MAP`) by local stand-ins built from Debian's packages that
//! honour the same contract (`POSTGRES_PASSWORD`, `POSTGRES_USER`,
//! `POSTGRES_DB`; `redis-server --requirepass`), built once and kept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::TestEnv;

fn image_map() -> String {
    let (postgres, redis) = common::service_images();
    format!(
        "debian:bookworm-slim=local/debian:bookworm,postgres:17={postgres},postgres:16={postgres},redis:7={redis}"
    )
}

struct Project {
    env: TestEnv,
}

impl Project {
    fn new(yaml: &str) -> Self {
        let env = TestEnv::new();
        let dir = env.dir.path().join("project");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("moat.yaml"), yaml).unwrap();
        Project { env }
    }

    fn moat(&self, runtime: &str) -> Command {
        let mut cmd = self.env.moat();
        cmd.env("MOAT_RUNTIME", runtime)
            .env("MOAT_PROXY_PORT", "0")
            .env("MOAT_DAEMON_IDLE_TIMEOUT", "5")
            .env("MOAT_IMAGE_MAP", image_map())
            .current_dir(self.env.dir.path().join("project"));
        cmd
    }

    fn run(&self, runtime: &str, args: &[&str], envs: &[(&str, &str)]) -> common::Result {
        let mut cmd = self.moat(runtime);
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        common::Result::from(cmd.output().unwrap())
    }

    fn last_run_id(&self) -> String {
        let list: serde_json::Value =
            serde_json::from_str(&self.env.run(&["list", "--json"]).stdout).unwrap();
        list[0]["id"].as_str().unwrap().to_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.env.run(&["proxy", "stop"]);
    }
}

/// Containers of `engine` labelled with `run_id`, running or not.
fn containers_of(engine: &str, run_id: &str) -> Vec<String> {
    let out = Command::new(engine)
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("label=moat.run-id={run_id}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Containers of `engine` for `run_id` still there 5 s after the run: the
/// engine removes the network guard itself once it has exited, which moat
/// does not wait for.
fn containers_left(engine: &str, run_id: &str) -> Vec<String> {
    let mut left = containers_of(engine, run_id);
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = containers_of(engine, run_id);
    }
    left
}

/// Asks postgres (with psql) and redis (RESP over bash's /dev/tcp) by
/// name with the variables moat set; reads the provisioned table.
const CLIENT: &str = r#"
psql "$MOAT_POSTGRES_URL" -tAc "select 'pg=' || count(*) from provisioned"
echo "db=$MOAT_POSTGRES_DB host=$MOAT_POSTGRES_HOST port=$MOAT_POSTGRES_PORT user=$MOAT_POSTGRES_USER"
echo "pwlen=${#MOAT_POSTGRES_PASSWORD}"
exec 3<>/dev/tcp/redis/6379
printf 'AUTH %s\r\nPING\r\n' "$MOAT_REDIS_PASSWORD" >&3
head -c 12 <&3 | tr -d '\r' | tr '\n' ' '; echo
exec 3<>/dev/tcp/redis/6379
printf 'PING\r\n' >&3
head -c 7 <&3 | tr -d '\r'; echo
curl -sS -m 5 -o /dev/null -w "outside=%{http_code}\n" http://example.test/ 2>/dev/null || echo outside=refused
echo "runtoken=${HTTP_PROXY#http://moat:}"
echo "pgpw=$MOAT_POSTGRES_PASSWORD"
cp /bin/true /tmp/t; if chmod u+s /tmp/t 2>&1 | grep -q 'Operation not permitted'; then echo setuid=refused; else echo setuid=allowed; fi
"#;

const SERVICES_YAML: &str = r#"
dependencies: [postgresql-client, curl, postgres@17, redis]
network:
  policy: strict
services:
  postgres:
    env:
      POSTGRES_DB: myapp
    provision:
      - psql -U postgres -d myapp -c 'create table provisioned(x int)'
"#;

fn check_services_reachable(runtime: &str, extra: &[&str]) {
    let p = Project::new(SERVICES_YAML);
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend(["--", "bash", "-c", CLIENT]);
    let out = p.run(runtime, &args, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let stdout = &out.stdout;
    assert!(stdout.contains("pg=0"), "{stdout}");
    assert!(
        stdout.contains("db=myapp host=postgres port=5432 user=postgres"),
        "{stdout}"
    );
    assert!(stdout.contains("pwlen=32"), "{stdout}");
    assert!(stdout.contains("+OK +PONG"), "{stdout}");
    assert!(
        stdout.contains("-NOAUTH"),
        "redis refuses without the password: {stdout}"
    );
    // Strict: the sidecars are reachable, nothing else new is.
    assert!(stdout.contains("outside=407"), "blocked: {stdout}");
    // With services too, the workload runs under the setuid/setgid filter.
    assert!(stdout.contains("setuid=refused"), "{stdout}");
    // Neither the run's proxy token nor a service password is written
    // anywhere under MOAT_HOME (run files, debug logs).
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split('@').next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
    };
    let (token, password) = (value("runtoken="), value("pgpw="));
    assert_eq!(token.len(), 64, "{token}");
    // (The command's own output, in logs.jsonl, printed them above.)
    for file in p
        .env
        .files()
        .into_iter()
        .filter(|f| !f.ends_with("logs.jsonl"))
    {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()).into_owned();
        assert!(
            !text.contains(&token),
            "{} holds the run token",
            file.display()
        );
        assert!(
            !text.contains(&password),
            "{} holds the service password",
            file.display()
        );
    }
    let id = p.last_run_id();
    assert!(
        containers_left(
            if runtime == "podman" {
                "podman"
            } else {
                "docker"
            },
            &id
        )
        .is_empty(),
        "left behind"
    );
    // Their output is kept for `moat logs`, the passwords replaced.
    let logs = p.env.run(&["logs", &id]);
    assert!(
        logs.stdout.contains("--- service postgres ---"),
        "{}",
        logs.stdout
    );
    assert!(
        logs.stdout.contains("--- service redis ---"),
        "{}",
        logs.stdout
    );
}

#[test]
fn services_are_reachable_by_name_under_gvisor() {
    if !common::docker_available() {
        return;
    }
    check_services_reachable("docker", &[]);
}

#[test]
fn services_are_reachable_by_name_under_runc() {
    if !common::docker_available() {
        return;
    }
    check_services_reachable("docker", &["--no-sandbox"]);
}

#[test]
fn a_service_that_never_gets_ready_gets_the_seed_message_and_wait_false_skips_it() {
    if !common::docker_available() {
        return;
    }
    // The redis stand-in as postgres: it runs, and pg_isready never passes.
    let (_, redis) = common::service_images();
    let yaml = format!(
        "dependencies: [postgres]\nservices:\n  postgres:\n    image: {redis}\n    env:\n      POSTGRES_PASSWORD: visible-in-no-log\n"
    );
    let p = Project::new(&yaml);
    let out = p.run(
        "docker",
        &["run", "--no-sandbox", "--", "echo", "started"],
        &[("MOAT_SERVICE_READY_TIMEOUT", "2")],
    );
    assert_ne!(out.code, Some(0));
    let err = &out.stderr;
    assert!(
        err.contains("postgres service failed to become ready:"),
        "{err}"
    );
    assert!(err.contains("within 2 s"), "{err}");
    assert!(err.contains("moat logs run_"), "{err}");
    assert!(err.contains("wait: false"), "{err}");
    assert!(
        !err.contains("visible-in-no-log"),
        "password printed: {err}"
    );
    assert!(!out.stdout.contains("started"));
    let id = p.last_run_id();
    assert!(containers_left("docker", &id).is_empty(), "left behind");
    let logs = p.env.run(&["logs", &id]);
    assert!(
        logs.stdout.contains("--- service postgres ---"),
        "{}",
        logs.stdout
    );

    // The seed's fix: do not wait.
    let yaml = format!("{yaml}    wait: false\n");
    std::fs::write(p.env.dir.path().join("project/moat.yaml"), yaml).unwrap();
    let out = p.run(
        "docker",
        &["run", "--no-sandbox", "--", "echo", "started"],
        &[("MOAT_SERVICE_READY_TIMEOUT", "2")],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("started"));
}

#[test]
fn a_failing_provisioning_command_gets_the_seed_message() {
    if !common::docker_available() {
        return;
    }
    let p = Project::new(
        "dependencies: [redis]\nservices:\n  redis:\n    provision:\n      - redis-cli -a \"$NOPE\" SET k v && exit 3\n",
    );
    let out = p.run(
        "docker",
        &["run", "--no-sandbox", "--", "echo", "started"],
        &[],
    );
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("redis service provisioning failed:"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("exit code 3"), "{}", out.stderr);
    assert!(
        out.stderr.contains("services.redis.provision"),
        "{}",
        out.stderr
    );
    assert!(containers_left("docker", &p.last_run_id()).is_empty());
}

#[test]
fn sidecars_of_a_killed_cli_are_removed_by_stop() {
    if !common::docker_available() {
        return;
    }
    let p = Project::new("dependencies: [redis]\n");
    let mut child = p
        .moat("docker")
        .args([
            "run",
            "--no-sandbox",
            "--name",
            "svc-crash",
            "--",
            "sleep",
            "120",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let id = loop {
        let list: serde_json::Value =
            serde_json::from_str(&p.env.run(&["list", "--json"]).stdout).unwrap_or_default();
        if list[0]["state"] == "running" {
            break list[0]["id"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "run never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let names = containers_of("docker", &id);
    assert!(
        names.iter().any(|n| n == &format!("moat-redis-{id}")),
        "{names:?}"
    );
    // SIGKILL: the CLI cleans nothing up.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!containers_of("docker", &id).is_empty());
    let stop = p.env.run(&["stop", "svc-crash"]);
    assert!(matches!(stop.code, Some(0) | Some(1)), "{}", stop.stderr);
    assert!(containers_left("docker", &id).is_empty(), "left behind");
}

#[test]
fn the_native_runtime_says_services_need_a_container_runtime() {
    let p = Project::new("dependencies: [postgres]\n");
    let out = p.run("native", &["run", "--", "true"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("services (postgres) need a container runtime"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--runtime docker"), "{}", out.stderr);
}

#[test]
fn services_on_a_dependency_that_is_not_one_is_refused() {
    let p = Project::new("dependencies: [git]\nservices:\n  git:\n    wait: false\n");
    let out = p.run("native", &["run", "--", "true"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("services.git: git is not a service"),
        "{}",
        out.stderr
    );
}

#[test]
fn services_on_podman() {
    // The stand-ins are built with Docker.
    if !moat_testkit::require::podman() || !common::docker_available() {
        return;
    }
    // The stand-ins, built by Docker, copied into Podman's store.
    let (postgres, redis) = common::service_images();
    for image in [postgres, redis] {
        let present = Command::new("podman")
            .args(["image", "exists", image])
            .status()
            .unwrap()
            .success();
        if !present {
            let status = Command::new("sh")
                .args(["-c", &format!("docker save {image} | podman load -q")])
                .status()
                .unwrap();
            assert!(status.success(), "loading {image} into podman");
        }
    }
    check_services_reachable("podman", &[]);
}

/// `docker:host`: the docker CLI in the image, the engine's socket at
/// /var/run/docker.sock usable by the sandbox user, a warning every run.
fn check_docker_host(extra: &[&str]) {
    let p = Project::new("dependencies: [docker:host]\nnetwork:\n  policy: strict\n");
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend([
        "--",
        "sh",
        "-c",
        "id -u; echo host=$DOCKER_HOST; docker version --format 'server={{.Server.Version}}'",
    ]);
    let out = p.run("docker", &args, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("host=unix:///var/run/docker.sock"),
        "{}",
        out.stdout
    );
    let server = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&server.stdout).trim().to_owned();
    assert!(
        out.stdout.contains(&format!("server={version}")),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.starts_with("0\n"), "never root: {}", out.stdout);
    assert!(
        out.stderr
            .contains("Warning: docker:host gives this run the host's container engine"),
        "{}",
        out.stderr
    );
}

#[test]
fn docker_host_reaches_the_hosts_engine_under_gvisor() {
    if !common::docker_available() {
        return;
    }
    check_docker_host(&[]);
}

#[test]
fn docker_host_reaches_the_hosts_engine_under_runc() {
    if !common::docker_available() {
        return;
    }
    check_docker_host(&["--no-sandbox"]);
}

#[test]
fn docker_host_on_the_native_runtime_is_refused() {
    let p = Project::new("dependencies: [docker:host, redis]\n");
    let out = p.run("native", &["run", "--", "true"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("services (redis, docker:host) need a container runtime"),
        "{}",
        out.stderr
    );
}

/// `docker:dind`: a daemon of the run's own at tcp://dind:2375, reached
/// from the sandbox under gVisor and the strict policy; an image built
/// there stays there; the daemon and its network go with the run.
#[test]
fn docker_dind_gives_the_sandbox_a_daemon_of_its_own() {
    if !common::docker_available() {
        return;
    }
    let dind = common::dind_image();
    let p = Project::new("dependencies: [docker:dind]\nnetwork:\n  policy: strict\n");
    let script = r#"
echo "host=$DOCKER_HOST"
docker info --format 'driver={{.Driver}}'
mkdir -p /tmp/b && cd /tmp/b && echo hi > f && printf 'FROM scratch\nCOPY f /f\n' > Dockerfile
DOCKER_BUILDKIT=0 docker build -q -t moat-dind-built . >/dev/null && docker images moat-dind-built --format 'built={{.Repository}}'
"#;
    let map = format!("{},docker:dind={dind}", image_map());
    let out = p.run(
        "docker",
        &["run", "--", "sh", "-c", script],
        &[("MOAT_IMAGE_MAP", map.as_str())],
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("host=tcp://dind:2375"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("driver=vfs"), "{}", out.stdout);
    assert!(
        out.stdout.contains("built=moat-dind-built"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("Warning: docker:dind runs a privileged Docker daemon"),
        "{}",
        out.stderr
    );
    // Built in the run's daemon, not the host's.
    let host = Command::new("docker")
        .args(["images", "-q", "moat-dind-built"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&host.stdout).trim().is_empty());
    let id = p.last_run_id();
    assert!(containers_left("docker", &id).is_empty(), "left behind");
    let network = Command::new("docker")
        .args(["network", "inspect", &format!("moat-{id}")])
        .output()
        .unwrap();
    assert!(
        !network.status.success(),
        "the run's network is left behind"
    );
}

#[test]
fn docker_dind_on_podman_says_it_needs_docker() {
    if !moat_testkit::require::podman() {
        return;
    }
    let p = Project::new("dependencies: [docker:dind]\n");
    let out = p.run("podman", &["run", "--", "true"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains("Docker in Docker needs the Docker runtime"),
        "{}",
        out.stderr
    );
}

/// MySQL: the official image's contract (here Debian's MariaDB behind it),
/// reached as `mysql` with the run's password and the `moat` database.
#[test]
fn mysql_is_reachable_with_its_variables() {
    if !common::docker_available() {
        return;
    }
    let mysql = common::mysql_image();
    let p = Project::new("dependencies: [mysql@8, mysql-client]\n");
    let map = format!("{},mysql:8={mysql}", image_map());
    let out = p.run(
        "docker",
        &[
            "run",
            "--no-sandbox",
            "--",
            "sh",
            "-c",
            r#"echo "url=${MOAT_MYSQL_URL%%:*}://$MOAT_MYSQL_USER@$MOAT_MYSQL_HOST:$MOAT_MYSQL_PORT/$MOAT_MYSQL_DB"; mysql -h "$MOAT_MYSQL_HOST" -u "$MOAT_MYSQL_USER" -p"$MOAT_MYSQL_PASSWORD" -N -e 'select database()' "$MOAT_MYSQL_DB""#,
        ],
        &[("MOAT_IMAGE_MAP", map.as_str())],
    );
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("url=mysql://root@mysql:3306/moat"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.lines().any(|l| l.trim() == "moat"),
        "{}",
        out.stdout
    );
}

/// `moat deps info` of a service shows what the sandbox gets, and an
/// unknown type is refused with the types it may take. Needs no engine.
#[test]
fn deps_info_of_a_service_and_an_unknown_type() {
    let env = TestEnv::new();
    let out = env.run(&["deps", "info", "postgres"]);
    out.success();
    insta::assert_snapshot!(out.stdout, @r"
    Name:        postgres
    Type:        service
    Default:     17
    Description: PostgreSQL database (sidecar; MOAT_POSTGRES_URL, _HOST, _PORT, _USER, _PASSWORD, _DB)
    Provides:    a sidecar container from the official image NAME:VERSION (or services.NAME.image), reached from the sandbox as NAME with a fresh password per run; Docker and Podman runtimes only
    Image:       postgres:<version>
    Readiness:   pg_isready -h localhost -U {user} -d {db}
    In the sandbox (<password>: 32 random characters, fresh for each run):
      MOAT_POSTGRES_URL=postgresql://postgres:<password>@postgres:5432/postgres
      MOAT_POSTGRES_HOST=postgres
      MOAT_POSTGRES_PORT=5432
      MOAT_POSTGRES_USER=postgres
      MOAT_POSTGRES_PASSWORD=<password>
      MOAT_POSTGRES_DB=postgres
    ");
    let out = env.run(&["deps", "list", "--type", "bogus"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r#"
    Error: unknown dependency type "bogus"

    Use runtime, apt, tool or dynamic.
    "#);
}
