//! End-to-end tests of `moat grant`, `moat revoke` and the credential
//! errors, through the real binary under a temporary MOAT_HOME.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{FakeApi, TestEnv};

const GH_TOKEN: &str = "ghp_e2eSecretToken0123456789abcdefWXYZ";

fn github_api() -> FakeApi {
    FakeApi::start(|req| {
        if req.header("authorization") == Some(&format!("Bearer {GH_TOKEN}")) {
            (200, r#"{"login":"octocat","id":1}"#.to_string())
        } else {
            (401, r#"{"message":"Bad credentials"}"#.to_string())
        }
    })
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn grant_list_show_revoke_round_trip() {
    let env = TestEnv::new();
    let api = github_api();
    let out = env.run_with(
        &["grant", "github"],
        &[
            ("GITHUB_TOKEN", GH_TOKEN),
            ("MOAT_GITHUB_API_URL", &api.url),
        ],
    );
    out.success();
    assert_eq!(out.stdout, "Granted github.\n");
    assert!(out.stderr.contains("Using token from GITHUB_TOKEN"));
    assert!(out.stderr.contains("Authenticated as: octocat"));
    {
        let seen = api.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].request_line, "GET /user HTTP/1.1");
    }

    let list = env.run(&["grant", "list"]);
    list.success();
    assert!(list.stdout.starts_with("PROVIDER  PROFILE  GRANTED"));
    assert!(list.stdout.contains("github    default"));
    assert!(list.stdout.contains("env     never"));

    let json = env.run(&["grant", "list", "--json"]);
    json.success();
    let rows: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(rows[0]["provider"], "github");
    assert_eq!(rows[0]["status"], "ok");
    assert_eq!(rows[0]["source"], "env");

    let show = env.run(&["grant", "show", "github"]);
    show.success();
    assert!(show.stdout.contains("Account:  octocat"));
    assert!(show.stdout.contains("Token:    ****WXYZ"));
    assert!(!show.stdout.contains(GH_TOKEN));

    // Nothing under MOAT_HOME holds the secret in plaintext, and modes are
    // private.
    for path in env.files() {
        if path.is_dir() {
            assert_eq!(mode(&path), 0o700, "{}", path.display());
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(GH_TOKEN.len())
                    .any(|w| w == GH_TOKEN.as_bytes()),
                "secret found in {}",
                path.display()
            );
        }
    }
    assert!(env.moat_home().join("credentials/github.enc").exists());
    assert_eq!(
        std::fs::read(env.moat_home().join("key")).unwrap().len(),
        32
    );

    env.run(&["revoke", "github"]).success();
    assert!(!env.moat_home().join("credentials/github.enc").exists());
    let again = env.run(&["revoke", "github"]);
    again.failure();
    insta::assert_snapshot!(again.stderr, @r"
    Error: credential not found: github

    Run: moat grant github
    If you granted it under a profile, select it: export MOAT_PROFILE=<name>
    ");
}

#[test]
fn github_401_is_rejected_and_nothing_is_stored() {
    let env = TestEnv::new();
    let api = github_api();
    let out = env.run_with(
        &["grant", "github"],
        &[("GH_TOKEN", "ghp_wrong"), ("MOAT_GITHUB_API_URL", &api.url)],
    );
    out.failure();
    insta::assert_snapshot!(out.stderr, @r"
    Using token from GH_TOKEN
    Error: invalid token (401 Unauthorized)
    GitHub rejected the token: it is wrong, expired or revoked.
    Create a new one (or run `gh auth login`), then run: moat grant github
    ");
    assert!(!env.moat_home().join("credentials/github.enc").exists());
}

#[test]
fn anthropic_invalid_key() {
    let env = TestEnv::new();
    let api = FakeApi::start(|req| {
        assert_eq!(req.request_line, "GET /v1/models HTTP/1.1");
        assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
        if req.header("x-api-key") == Some("sk-ant-good") {
            (200, r#"{"data":[]}"#.into())
        } else {
            (401, r#"{"type":"error"}"#.into())
        }
    });
    let bad = env.run_with(
        &["grant", "anthropic"],
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-bad"),
            ("MOAT_ANTHROPIC_API_URL", &api.url),
        ],
    );
    bad.failure();
    insta::assert_snapshot!(bad.stderr, @r"
    Using API key from ANTHROPIC_API_KEY
    Error: invalid API key (check that the key is correct and not expired)
    Create a key in the Anthropic Console, then run: moat grant anthropic
    ");
    env.run_with(
        &["grant", "anthropic"],
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-good"),
            ("MOAT_ANTHROPIC_API_URL", &api.url),
        ],
    )
    .success();
}

#[test]
fn api_override_refuses_plain_http_to_a_remote_host() {
    let env = TestEnv::new();
    let out = env.run_with(
        &["grant", "github"],
        &[
            ("GITHUB_TOKEN", GH_TOKEN),
            ("MOAT_GITHUB_API_URL", "http://ghe.example.test/api/v3"),
        ],
    );
    out.failure();
    assert!(out
        .stderr
        .contains("uses plain http:// for a non-loopback host"));
}

#[test]
fn claude_expired_token_at_grant() {
    let env = TestEnv::new();
    let dir = env.home().join(".claude");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(".credentials.json"),
        r#"{"claudeAiOauth":{"accessToken":"sk-ant-oat01-old","refreshToken":"r","expiresAt":1700000000000,"scopes":["user:inference"]}}"#,
    )
    .unwrap();
    let out = env.run(&["grant", "claude"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r"
    Error: Claude Code token has expired

    Re-authenticate with Claude Code (run `claude` and log in, or `claude setup-token`), then run:
      moat grant claude
    ");

    // A fresh login imports, with its expiry.
    let future = chrono::Utc::now().timestamp_millis() + 3_600_000;
    std::fs::write(
        dir.join(".credentials.json"),
        format!(
            r#"{{"claudeAiOauth":{{"accessToken":"sk-ant-oat01-fresh","expiresAt":{future}}}}}"#
        ),
    )
    .unwrap();
    let ok = env.run(&["grant", "claude"]);
    ok.success();
    assert!(ok.stderr.contains("Using OAuth token from"));
    let list = env.run(&["grant", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(rows[0]["provider"], "claude");
    assert_eq!(rows[0]["source"], "import");
    assert!(rows[0]["expires_at"].is_string());
}

#[test]
fn no_prompt_without_a_terminal_is_an_error_not_a_hang() {
    let env = TestEnv::new();
    let out = env.run(&["grant", "openai"]);
    out.failure();
    assert!(
        out.stderr
            .contains("no openai secret found, and standard input is not a terminal."),
        "{}",
        out.stderr
    );
    let out = env.run_with(&["grant", "gemini", "--no-prompt"], &[]);
    out.failure();
    assert!(
        out.stderr.contains("prompting is disabled"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("GEMINI_API_KEY, GOOGLE_API_KEY"));
}

#[test]
fn tampered_credential_file_is_reported_and_left_untouched() {
    let env = TestEnv::new();
    env.run_with(&["grant", "openai"], &[("OPENAI_API_KEY", "sk-proj-abc")])
        .success();
    let path = env.moat_home().join("credentials/openai.enc");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let out = env.run(&["grant", "show", "openai"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r"
    Error: decrypting credential for openai: corrupted file: it was written with this key but its contents were altered

    The file cannot be repaired; replace the credential.
    To re-authenticate: moat grant openai
    ");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "file must be left as it was"
    );

    for junk in [&b""[..], b"MOAT\x01short", b"{\"json\":true}"] {
        std::fs::write(&path, junk).unwrap();
        let out = env.run(&["grant", "show", "openai"]);
        out.failure();
        assert!(
            out.stderr
                .starts_with("Error: decrypting credential for openai: "),
            "{}",
            out.stderr
        );
        assert_eq!(std::fs::read(&path).unwrap(), junk);
    }

    // The list reports it instead of failing.
    let list = env.run(&["grant", "list"]);
    list.success();
    assert!(list.stdout.contains("unreadable: run moat grant again"));
}

#[test]
fn replaced_key_means_key_changed() {
    let env = TestEnv::new();
    env.run_with(&["grant", "openai"], &[("OPENAI_API_KEY", "sk-proj-abc")])
        .success();
    let key = env.moat_home().join("key");
    std::fs::write(&key, [42u8; 32]).unwrap();
    let out = env.run(&["grant", "show", "openai"]);
    out.failure();
    assert!(
        out.stderr
            .starts_with("Error: decrypting credential for openai: wrong key: "),
        "{}",
        out.stderr
    );
}

#[test]
fn insecure_key_file_is_refused() {
    let env = TestEnv::new();
    env.run_with(&["grant", "openai"], &[("OPENAI_API_KEY", "sk-proj-abc")])
        .success();
    let key = env.moat_home().join("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["grant", "show", "openai"]);
    out.failure();
    insta::assert_snapshot!(env.redact(&out.stderr), @r"
    Error: key file has insecure permissions: [TMP]/moat/key has permissions 0644 (expected 0600).

    Fix: chmod 600 [TMP]/moat/key
    ");
    // The fix named works.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.run(&["grant", "show", "openai"]).success();
}

#[test]
fn key_file_of_wrong_length() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.moat_home()).unwrap();
    let key = env.moat_home().join("key");
    std::fs::write(&key, b"0123456789").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.run_with(&["grant", "openai"], &[("OPENAI_API_KEY", "sk-proj-abc")]);
    out.failure();
    assert!(env
        .redact(&out.stderr)
        .contains("Error: key file [TMP]/moat/key has the wrong length: 10 bytes (expected 32)."));
    assert_eq!(std::fs::read(&key).unwrap(), b"0123456789");
}

#[test]
fn profiles_keep_separate_credentials() {
    let env = TestEnv::new();
    env.run_with(
        &["grant", "openai", "--profile", "work"],
        &[("OPENAI_API_KEY", "sk-proj-work")],
    )
    .success();
    assert!(env
        .moat_home()
        .join("credentials/profiles/work/openai.enc")
        .exists());
    let default_list = env.run(&["grant", "list"]);
    assert!(default_list
        .stdout
        .starts_with("No credentials in profile default"));
    let work = env.run_with(&["grant", "list"], &[("MOAT_PROFILE", "work")]);
    assert!(work.stdout.contains("openai    work"), "{}", work.stdout);
    let missing = env.run(&["grant", "show", "openai"]);
    missing.failure();
    assert!(missing
        .stderr
        .starts_with("Error: credential not found: openai"));
    env.run(&["revoke", "openai", "--profile", "work"])
        .success();
    let bad = env.run(&["grant", "list", "--profile", "../x"]);
    bad.failure();
    assert!(bad.stderr.contains("invalid profile name"));
}

#[test]
fn concurrent_grants_of_different_providers_lose_nothing() {
    let env = TestEnv::new();
    let providers = [
        ("openai", "OPENAI_API_KEY"),
        ("gemini", "GEMINI_API_KEY"),
        ("gitlab", "GITLAB_TOKEN"),
        ("npm", "NPM_TOKEN"),
    ];
    let children: Vec<_> = providers
        .iter()
        .map(|(p, var)| {
            env.moat()
                .args(["grant", p])
                .env(var, format!("secret-for-{p}-0123456789"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list = env.run(&["grant", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["provider"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gemini", "gitlab", "npm", "openai"]);
    assert!(rows.as_array().unwrap().iter().all(|r| r["status"] == "ok"));
}

#[test]
fn mcp_tokens_from_stdin() {
    let env = TestEnv::new();
    let out = env.run_stdin(
        &["grant", "mcp", "my-server", "--stdin"],
        "mcp-secret-value\n",
    );
    out.success();
    assert_eq!(out.stdout, "Granted mcp-my-server.\n");
    assert!(env
        .moat_home()
        .join("credentials/mcp-my-server.enc")
        .exists());
    let list = env.run(&["grant", "list"]);
    assert!(list.stdout.contains("mcp:my-server"));
    env.run(&["revoke", "mcp:my-server"]).success();
}

#[test]
fn unknown_provider_suggests_the_nearest() {
    let env = TestEnv::new();
    let out = env.run(&["grant", "gihtub"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r#"
    Error: unknown provider "gihtub" (did you mean "github"?)

    List the providers with: moat grant providers
    "#);
}

#[test]
fn providers_and_version() {
    let env = TestEnv::new();
    let out = env.run(&["grant", "providers", "--json"]);
    out.success();
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let github = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "github")
        .unwrap();
    assert_eq!(github["placeholder"], "GH_TOKEN");
    assert_eq!(github["hosts"][0], "api.github.com");
    let v = env.run(&["version"]);
    v.success();
    assert_eq!(v.stdout, format!("moat {}\n", env!("CARGO_PKG_VERSION")));
}
