//! Integration tests against a real Docker daemon. They skip (printing why)
//! when no daemon is reachable, unless `MOAT_REQUIRE_DOCKER=1`.
//!
//! The local Debian base (`local/debian:bookworm`, debootstrap + import, no
//! registry) is built once and kept; one `[git, jq]` image is shared.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use moat_runtime_docker::{
    ContainerSpec, DockerError, DockerRuntime, ImageMap, ImageRequest, InjectedFile, NetworkPolicy,
    ProgressMode, SandboxRuntime, HOST_GATEWAY_NAME,
};
use tokio::sync::{Mutex, OnceCell};

const LOCAL_BASE: &str = "local/debian:bookworm";

async fn runtime() -> Option<DockerRuntime> {
    match DockerRuntime::connect().await {
        Ok(rt) => Some(rt),
        Err(e) => {
            if std::env::var("MOAT_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("MOAT_REQUIRE_DOCKER=1 but {e}");
            }
            eprintln!(
                "skipping: {}",
                e.to_string().lines().next().unwrap_or_default()
            );
            None
        }
    }
}

/// The uid/gid the sandbox user gets: the caller's, or 4321 when the tests
/// run as root (moat never makes the sandbox user root).
fn test_ids() -> (u32, u32) {
    // The owner of a fresh directory is the caller (no libc call needed).
    let dir = tempfile::tempdir().unwrap();
    let meta = std::fs::metadata(dir.path()).unwrap();
    if meta.uid() == 0 {
        (4321, 4321)
    } else {
        (meta.uid(), meta.gid())
    }
}

fn image_map() -> ImageMap {
    let mut map = ImageMap::default();
    map.insert("debian:bookworm-slim", LOCAL_BASE);
    map
}

static BASE: OnceCell<()> = OnceCell::const_new();

/// Builds `local/debian:bookworm` with debootstrap unless it exists.
async fn ensure_local_base(rt: &DockerRuntime) {
    BASE.get_or_init(|| async {
        if rt.image_exists(LOCAL_BASE).await.unwrap() {
            return;
        }
        let started = Instant::now();
        let root = tempfile::tempdir().unwrap();
        let sources =
            std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
        let mirror = sources
            .lines()
            .find_map(|l| l.strip_prefix("URIs:"))
            .map(|s| s.split_whitespace().next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| "http://deb.debian.org/debian".into());
        let status = std::process::Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=curl,ca-certificates,iptables,python3",
                "bookworm",
            ])
            .arg(root.path())
            .arg(&mirror)
            .stdout(std::process::Stdio::null())
            .status()
            .expect(
                "debootstrap (apt-get install debootstrap) is needed to build the local base image",
            );
        assert!(status.success(), "debootstrap failed");
        let tar = std::process::Command::new("tar")
            .arg("-C")
            .arg(root.path())
            .args(["-c", "."])
            .output()
            .unwrap();
        assert!(tar.status.success());
        use futures_util::StreamExt;
        let options = bollard::query_parameters::CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo("local/debian")
            .tag("bookworm")
            .build();
        let mut s = rt.client().create_image(
            Some(options),
            Some(bollard::body_full(tar.stdout.into())),
            None,
        );
        while let Some(item) = s.next().await {
            item.unwrap();
        }
        eprintln!(
            "built {LOCAL_BASE} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    })
    .await;
}

static DEPS_IMAGE: OnceCell<String> = OnceCell::const_new();
static BUILD_LOCK: Mutex<()> = Mutex::const_new(());

/// `dependencies:` as moat.yaml would parse them.
fn deps(specs: &[&str]) -> Vec<moat_config::Dependency> {
    specs
        .iter()
        .map(|spec| moat_config::Dependency::parse(spec).unwrap())
        .collect()
}

fn git_jq_request() -> ImageRequest {
    let (uid, gid) = test_ids();
    let log = std::env::temp_dir().join(format!("moat-docker-test-build-{uid}.log"));
    let mut req = ImageRequest::new(deps(&["git", "jq"]), uid, gid, log);
    req.progress = ProgressMode::Plain;
    req
}

/// The shared `[git, jq]` image.
async fn deps_image(rt: &DockerRuntime) -> String {
    ensure_local_base(rt).await;
    DEPS_IMAGE
        .get_or_init(|| async {
            let _guard = BUILD_LOCK.lock().await;
            let started = Instant::now();
            let resolved = rt
                .resolve_image(&git_jq_request(), &image_map())
                .await
                .unwrap();
            eprintln!(
                "[git, jq] image {} {} in {:.1} s",
                resolved.tag,
                if resolved.built { "built" } else { "found" },
                started.elapsed().as_secs_f64()
            );
            resolved.tag
        })
        .await
        .clone()
}

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (uid, gid) = test_ids();
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).ok();
    dir
}

fn run_id(name: &str) -> String {
    format!("test-{name}-{}", std::process::id())
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

async fn run(rt: &DockerRuntime, spec: &ContainerSpec) -> (i64, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let code = rt.run(spec, &mut out, &mut err).await.unwrap();
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

#[tokio::test]
async fn echo_hello_exit_codes_and_injected_ca_under_gvisor() {
    let Some(rt) = runtime().await else { return };
    let image = deps_image(&rt).await;
    let ws = workspace();
    let mut spec = ContainerSpec::new(
        run_id("echo"),
        &image,
        ws.path(),
        vec!["echo".into(), "hello".into()],
    );
    assert_eq!(
        spec.runtime,
        SandboxRuntime::gvisor(),
        "gVisor is the default on Linux"
    );
    let started = Instant::now();
    let (code, out, _) = run(&rt, &spec).await;
    eprintln!(
        "echo hello under runsc: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((code, out.as_str()), (0, "hello\n"));

    spec.workload.command = sh("echo out; echo err >&2; exit 3");
    let (code, out, err) = run(&rt, &spec).await;
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));

    // The CA goes in before start, owned by root; gVisor's kernel is the one answering.
    spec.workload.files.push(InjectedFile {
        path_in_sandbox: "/etc/ssl/certs/moat-ca/ca.crt".into(),
        contents: b"-----BEGIN CERTIFICATE-----\nfake\n".to_vec(),
        mode: 0o644,
    });
    spec.workload.command = sh("find /etc/ssl/certs/moat-ca/ca.crt -printf '%U %m\\n'; head -1 /etc/ssl/certs/moat-ca/ca.crt; dmesg | head -1; id -u");
    let (code, out, _) = run(&rt, &spec).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(code, 0, "{out}");
    assert_eq!(lines[0], "0 644");
    assert_eq!(lines[1], "-----BEGIN CERTIFICATE-----");
    assert!(
        lines[2].contains("gVisor"),
        "not running under gVisor: {out}"
    );
    assert_eq!(lines[3], test_ids().0.to_string());
}

#[tokio::test]
async fn missing_gvisor_runtime_is_a_clear_error() {
    let Some(rt) = runtime().await else { return };
    assert!(rt.has_runtime("runsc").await.unwrap());
    let ws = workspace();
    let mut spec = ContainerSpec::new(
        run_id("nogvisor"),
        LOCAL_BASE,
        ws.path(),
        vec!["true".into()],
    );
    spec.runtime = SandboxRuntime::Gvisor {
        runtime: "runsc-not-registered".into(),
    };
    let err = rt.create(&spec).await.unwrap_err();
    assert!(matches!(err, DockerError::GvisorUnavailable { .. }));
    let text = err.to_string();
    assert!(
        text.starts_with("gVisor (runsc) is required but not available"),
        "{text}"
    );
    assert!(text.contains("runsc-not-registered"));
    assert!(!text.contains('\n'), "the message is one line: {text}");
    let fix = moat_hint::Hint::hint(&err)
        .map(|f| f.to_string())
        .unwrap_or_default();
    assert!(fix.contains("apt-get install runsc"), "{fix}");
    assert!(
        fix.contains("--no-sandbox")
            && fix.contains("MOAT_NO_SANDBOX=1")
            && fix.contains("sandbox: none"),
        "{fix}"
    );
}

#[tokio::test]
async fn deps_image_is_built_once_and_reused() {
    let Some(rt) = runtime().await else { return };
    let tag = deps_image(&rt).await;
    let again = rt
        .resolve_image(&git_jq_request(), &image_map())
        .await
        .unwrap();
    assert_eq!(again.tag, tag);
    assert!(!again.built, "an unchanged request must not rebuild");
    let ws = workspace();
    let mut spec = ContainerSpec::new(
        run_id("tools"),
        &tag,
        ws.path(),
        sh("git --version && jq --version && whoami"),
    );
    spec.runtime = SandboxRuntime::Runc;
    let (code, out, err) = run(&rt, &spec).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("git version") && out.contains("jq-") && out.contains("moatuser"),
        "{out}"
    );
}

#[tokio::test]
async fn misspelt_dependency_suggests_the_nearest() {
    let Some(rt) = runtime().await else { return };
    let mut req = git_jq_request();
    req.dependencies = deps(&["git", "jqq"]);
    let err = rt.resolve_image(&req, &image_map()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown dependency \"jqq\": did you mean jq?"
    );
    assert_eq!(
        moat_hint::Hint::hint(&err)
            .map(|f| f.to_string())
            .as_deref(),
        Some("Run `moat deps list` to see every known dependency.")
    );
}

#[tokio::test]
async fn workspace_files_keep_the_host_uid() {
    let Some(rt) = runtime().await else { return };
    let image = deps_image(&rt).await;
    let ws = workspace();
    let (uid, gid) = test_ids();
    let mut spec = ContainerSpec::new(
        run_id("uid"),
        &image,
        ws.path(),
        sh("echo data > /workspace/made-inside && pwd"),
    );
    spec.user = Some((uid, gid));
    let (code, out, err) = run(&rt, &spec).await;
    assert_eq!((code, out.as_str()), (0, "/workspace\n"), "{err}");
    let meta = std::fs::metadata(ws.path().join("made-inside")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
}

#[tokio::test]
async fn labels_and_list_managed() {
    let Some(rt) = runtime().await else { return };
    let ws = workspace();
    let id = run_id("labels");
    let mut spec = ContainerSpec::new(&id, LOCAL_BASE, ws.path(), vec!["true".into()]);
    spec.runtime = SandboxRuntime::Runc;
    let c = rt.create(&spec).await.unwrap();
    let listed = rt.list_managed().await.unwrap();
    let found = listed
        .iter()
        .find(|m| m.id == c.id)
        .expect("created container is listed");
    assert_eq!(found.run_id.as_deref(), Some(id.as_str()));
    assert_eq!(found.role.as_deref(), Some("workload"));
    assert_eq!(found.name, format!("moat-{id}"));
    assert_eq!(found.state, "created");
    rt.remove(&c).await.unwrap();
    assert!(!rt
        .list_managed()
        .await
        .unwrap()
        .iter()
        .any(|m| m.id == c.id));
}

/// A listener on the bridge gateway (the docker0 address) that greets.
async fn listener(addr: &str) -> u16 {
    let l = tokio::net::TcpListener::bind((addr, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            use tokio::io::AsyncWriteExt;
            s.write_all(b"hi\n").await.ok();
        }
    });
    port
}

fn probe(port: u16) -> String {
    format!(
        "if timeout 5 bash -c 'exec 3<>/dev/tcp/{HOST_GATEWAY_NAME}/{port}' 2>/dev/null; then echo open; else echo closed; fi"
    )
}

async fn check_policies(runtime: SandboxRuntime) {
    let Some(rt) = runtime_or_skip().await else {
        return;
    };
    let image = deps_image(&rt).await;
    let gateway = rt
        .bridge_gateway()
        .await
        .unwrap()
        .expect("the bridge has a gateway");
    let proxy_port = listener(&gateway).await;
    let other_port = listener(&gateway).await;
    let ws = workspace();
    let name = match &runtime {
        SandboxRuntime::Runc => "runc",
        SandboxRuntime::Gvisor { .. } => "runsc",
    };
    let script = format!("{}; {}", probe(other_port), probe(proxy_port));

    let mut spec = ContainerSpec::new(
        run_id(&format!("permissive-{name}")),
        &image,
        ws.path(),
        vec!["bash".into(), "-c".into(), script],
    );
    spec.runtime = runtime;
    let (code, out, err) = run(&rt, &spec).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "open\nopen\n"),
        "permissive under {name}: {err}"
    );

    spec.run_id = run_id(&format!("strict-{name}"));
    spec.network = NetworkPolicy::Strict {
        proxy_host: HOST_GATEWAY_NAME.into(),
        proxy_port,
    };
    let started = Instant::now();
    let (code, out, err) = run(&rt, &spec).await;
    eprintln!(
        "strict run under {name}: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "closed\nopen\n"),
        "strict under {name}: only the proxy is reachable: {err}"
    );
    // The guard is gone with the run: Docker removes it once it has
    // exited, which moat does not wait for.
    let mut left = true;
    for _ in 0..100 {
        left = rt
            .list_managed()
            .await
            .unwrap()
            .iter()
            .any(|m| m.run_id.as_deref() == Some(spec.run_id.as_str()));
        if !left {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        !left,
        "the guard of {} is still there after 5 s",
        spec.run_id
    );
}

async fn runtime_or_skip() -> Option<DockerRuntime> {
    runtime().await
}

#[tokio::test]
async fn strict_vs_permissive_under_runc() {
    check_policies(SandboxRuntime::Runc).await;
}

#[tokio::test]
async fn strict_vs_permissive_under_gvisor() {
    check_policies(SandboxRuntime::gvisor()).await;
}

#[tokio::test]
async fn strict_policy_without_iptables_fails_clearly() {
    let Some(rt) = runtime().await else { return };
    ensure_local_base(&rt).await;
    // An image whose PATH hides iptables stands in for one without it.
    let ws = workspace();
    let mut spec = ContainerSpec::new(
        run_id("noiptables"),
        LOCAL_BASE,
        ws.path(),
        vec!["true".into()],
    );
    spec.runtime = SandboxRuntime::Runc;
    spec.image = hidden_iptables_image(&rt).await;
    spec.network = NetworkPolicy::Strict {
        proxy_host: HOST_GATEWAY_NAME.into(),
        proxy_port: 9,
    };
    let err = rt.create(&spec).await.unwrap_err().to_string();
    assert!(
        err.starts_with(
            "firewall setup failed (required for strict network policy): the image has no iptables"
        ),
        "{err}"
    );
    assert!(!rt
        .list_managed()
        .await
        .unwrap()
        .iter()
        .any(|m| m.run_id.as_deref() == Some(spec.run_id.as_str())));
}

/// `local/debian:bookworm` with iptables removed (a one-step build, cached).
async fn hidden_iptables_image(rt: &DockerRuntime) -> String {
    let (uid, gid) = test_ids();
    let mut req = ImageRequest::new(
        vec![],
        uid,
        gid,
        std::env::temp_dir().join("moat-docker-test-noipt.log"),
    );
    req.progress = ProgressMode::Quiet;
    req.hooks.post_build_root = vec!["rm -f /usr/sbin/iptables /usr/sbin/ip6tables".into()];
    let _guard = BUILD_LOCK.lock().await;
    rt.resolve_image(&req, &image_map()).await.unwrap().tag
}

/// A guard removes itself after its run (AutoRemove); `moat clean` or
/// `moat stop` may meet one whose removal the engine has begun. Removing
/// it then is no error.
#[tokio::test]
async fn removing_a_container_the_engine_is_removing_is_fine() {
    let Some(rt) = runtime().await else { return };
    ensure_local_base(&rt).await;
    for attempt in 0..3 {
        let started = std::process::Command::new("docker")
            .args(["run", "-d", "--rm", LOCAL_BASE, "sleep", "100"])
            .output()
            .unwrap();
        assert!(started.status.success(), "{started:?}");
        let id = String::from_utf8_lossy(&started.stdout).trim().to_owned();
        // `docker kill` returns once the container is down, its removal
        // just begun.
        let killed = std::process::Command::new("docker")
            .args(["kill", &id])
            .output()
            .unwrap();
        assert!(killed.status.success(), "{killed:?}");
        let removed = rt.remove_by_id(&id).await;
        assert!(removed.is_ok(), "attempt {attempt}: {removed:?}");
    }
}
