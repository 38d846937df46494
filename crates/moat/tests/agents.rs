//! `moat claude`, `moat codex`, `moat gemini` with the real agent CLIs from
//! the npm registry, against fake model APIs on 127.0.0.1 (see
//! `moat_testkit::models`), on the native runtime.
//!
//! The CLIs come from `MOAT_TEST_AGENTS` (one npm prefix per package, as
//! `.ci/run` installs them); without it the tests skip, unless
//! `MOAT_REQUIRE_AGENTS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use moat_testkit::models;

const ANTHROPIC_KEY: &str = "sk-ant-api03-realAnthropicKey0123456789abcdefghij";
const OPENAI_KEY: &str = "sk-proj-realOpenAiKey0123456789abcdefghijklmnop";
const GEMINI_KEY: &str = "AIzaSyRealGeminiKey0123456789abcdefghij";

struct AgentEnv {
    env: common::TestEnv,
    upstream: moat_testkit::EchoUpstream,
    ca_file: PathBuf,
    path: String,
}

impl AgentEnv {
    /// `None` (the test is skipped) when the agent CLIs are not installed.
    fn new() -> Option<AgentEnv> {
        let agents = match std::env::var_os("MOAT_TEST_AGENTS") {
            Some(dir) => PathBuf::from(dir),
            None => {
                assert!(
                    std::env::var_os("MOAT_REQUIRE_AGENTS").is_none(),
                    "MOAT_REQUIRE_AGENTS is set but MOAT_TEST_AGENTS is not"
                );
                eprintln!("skipped: MOAT_TEST_AGENTS (npm prefixes of the agent CLIs) is not set");
                return None;
            }
        };
        let env = common::TestEnv::new();
        let ca = moat_testkit::TestCa::new();
        let ca_file = ca.write_pem(env.dir.path());
        let upstream = models::start(&ca);
        std::fs::create_dir_all(env.dir.path().join("project")).unwrap();
        let mut path: Vec<PathBuf> = ["claude-code", "codex", "gemini-cli"]
            .iter()
            .map(|p| agents.join(p).join("bin"))
            .collect();
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(path)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        Some(AgentEnv {
            env,
            upstream,
            ca_file,
            path,
        })
    }

    fn project(&self) -> PathBuf {
        self.env.dir.path().join("project")
    }

    fn moat(&self) -> std::process::Command {
        let mut cmd = self.env.moat();
        cmd.env("MOAT_PROXY_PORT", "0")
            .env("MOAT_DAEMON_IDLE_TIMEOUT", "2")
            .env("MOAT_RUNTIME", "native")
            .env("MOAT_UPSTREAM_CA_FILE", &self.ca_file)
            .env("MOAT_CONNECT_TO", self.upstream.connect_to(models::HOSTS))
            .env("PATH", &self.path)
            .current_dir(self.project());
        cmd
    }

    fn run(&self, args: &[&str], envs: &[(&str, &str)]) -> common::Result {
        let mut cmd = self.moat();
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        common::Result::from(cmd.output().unwrap())
    }

    fn grant(&self, provider: &str, var: &str, key: &str) {
        // Validation cannot reach the real API here; the key is kept.
        self.run(&["grant", provider], &[(var, key)]).success();
    }

    fn saw(&self, header: &str) -> Vec<String> {
        self.upstream
            .requests()
            .iter()
            .filter_map(|r| r.header(header).map(str::to_owned))
            .collect()
    }

    /// Every file moat keeps for runs and logs, as text.
    fn stored_text(&self) -> String {
        let mut out = String::new();
        for file in self.env.files() {
            if let Ok(bytes) = std::fs::read(&file) {
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        out
    }
}

impl Drop for AgentEnv {
    fn drop(&mut self) {
        let _ = self.run(&["proxy", "stop"], &[]);
    }
}

#[test]
fn claude_answers_a_prompt_with_the_real_key_only_upstream() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    let out = t.run(&["claude", "-p", "Say hello"], &[]);
    out.success();
    assert!(
        out.stdout.contains(models::ANSWER),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let keys = t.saw("x-api-key");
    assert!(!keys.is_empty(), "the fake API saw no request");
    assert!(keys.iter().all(|k| k == ANTHROPIC_KEY), "{keys:?}");
    let stored = t.stored_text();
    assert!(!stored.contains(ANTHROPIC_KEY), "a run file holds the key");
}

#[test]
fn a_claude_tool_call_runs_inside_the_sandbox() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    let out = t.run(
        &[
            "claude",
            "-p",
            "MOAT-TOOL: echo \"$(id -u) $ANTHROPIC_API_KEY\" > /workspace/tool-out; cat /workspace/tool-out",
        ],
        &[],
    );
    out.success();
    let written = std::fs::read_to_string(t.project().join("tool-out")).unwrap();
    // The tool ran as the sandbox user and saw only the placeholder.
    assert!(
        written.starts_with("1000 sk-ant-api03-moatPlaceholder"),
        "{written}"
    );
    assert!(
        out.stdout
            .contains("tool said: 1000 sk-ant-api03-moatPlaceholder"),
        "{}",
        out.stdout
    );
}

#[test]
fn claude_continues_the_last_session_of_the_workspace() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    t.run(&["claude", "-p", "remember the word pelican"], &[])
        .success();
    let before = t.upstream.requests().len();
    let out = t.run(&["claude", "-c", "-p", "which word?"], &[]);
    out.success();
    // The continued conversation carries the first turn: the agent's
    // session was kept for the workspace between the two runs.
    let seen = t.upstream.requests();
    let continued = seen[before..].iter().any(|r| {
        let body = String::from_utf8_lossy(&r.body);
        body.contains("which word?") && body.contains("pelican")
    });
    assert!(
        continued,
        "the second run did not continue the first session"
    );
}

#[test]
fn codex_answers_a_prompt_over_the_responses_api() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("openai", "OPENAI_API_KEY", OPENAI_KEY);
    let out = t.run(&["codex", "-p", "Say hello"], &[]);
    out.success();
    assert!(
        out.stdout.contains(models::ANSWER),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let auth = t.saw("authorization");
    assert!(
        auth.iter().any(|a| a == &format!("Bearer {OPENAI_KEY}")),
        "{auth:?}"
    );
    // Codex's first choice: the Responses API over a WebSocket, relayed.
    assert!(
        t.upstream.requests().iter().any(|r| r
            .header("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))),
        "no WebSocket upgrade reached the API"
    );
    assert!(!t.stored_text().contains(OPENAI_KEY));
}

#[test]
fn gemini_answers_a_prompt() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("gemini", "GEMINI_API_KEY", GEMINI_KEY);
    let out = t.run(
        &["gemini", "--model", "gemini-2.5-flash", "-p", "Say hello"],
        &[],
    );
    out.success();
    assert!(
        out.stdout.contains(models::ANSWER),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let keys = t.saw("x-goog-api-key");
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == GEMINI_KEY),
        "{keys:?}"
    );
    assert!(!t.stored_text().contains(GEMINI_KEY));
}

#[test]
fn an_agent_without_a_grant_says_which_to_add() {
    let Some(t) = AgentEnv::new() else { return };
    let out = t.run(&["codex", "-p", "hi"], &[]);
    out.failure();
    assert!(out.stderr.contains("moat grant openai"), "{}", out.stderr);
}

#[test]
fn mcp_servers_from_moat_yaml_reach_the_agent_through_the_relay() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    const MCP_TOKEN: &str = "mcp-token-0123456789abcdef";
    let mut grant = t.moat();
    grant
        .args(["grant", "mcp", "docs", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = grant.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), MCP_TOKEN.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::write(
        t.project().join("moat.yaml"),
        "mcp:\n  - name: docs\n    url: https://mcp.test/mcp\n    auth: {grant: \"mcp:docs\", header: Authorization}\n",
    )
    .unwrap();
    // Claude Code connects to every configured server to list them.
    let out = t.run(&["claude", "--", "mcp", "list"], &[]);
    out.success();
    assert!(
        out.stdout.contains("docs: http://") && out.stdout.contains("Connected"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let mcp: Vec<_> = t
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == "/mcp")
        .collect();
    assert!(!mcp.is_empty(), "the MCP server saw nothing");
    // The credential was added by the proxy, never seen by the agent.
    assert!(mcp
        .iter()
        .all(|r| r.header("authorization") == Some(MCP_TOKEN)));
    assert!(!t.stored_text().contains(MCP_TOKEN));
}

/// A stdio MCP server that answers `initialize` and `tools/list`.
const STDIO_MCP: &str = r#"import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg:
        continue
    if msg["method"] == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "local", "version": "1"}}
    elif msg["method"] == "tools/list":
        result = {"tools": []}
    else:
        result = {}
    print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
"#;

#[test]
fn the_agent_section_of_moat_yaml_is_honoured_and_checked() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    std::fs::write(t.project().join("srv.py"), STDIO_MCP).unwrap();
    std::fs::write(
        t.project().join("moat.yaml"),
        "claude:\n  mcp:\n    local:\n      command: python3\n      args: [/workspace/srv.py]\n",
    )
    .unwrap();
    let out = t.run(&["claude", "--", "mcp", "list"], &[]);
    out.success();
    assert!(
        out.stdout.contains("local: python3 /workspace/srv.py") && out.stdout.contains("Connected"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // A server without its command is a moat.yaml error naming the key.
    std::fs::write(
        t.project().join("moat.yaml"),
        "claude:\n  mcp:\n    local:\n      args: [x]\n",
    )
    .unwrap();
    let out = t.run(&["claude", "-p", "hi"], &[("MOAT_NO_PROMPT", "1")]);
    out.failure();
    assert!(
        out.stderr
            .contains("moat.yaml: claude.mcp.local.command: is required"),
        "{}",
        out.stderr
    );
}

#[test]
fn doctor_checks_an_agents_binary_grant_and_configuration() {
    let Some(t) = AgentEnv::new() else { return };
    let out = t.run(&["doctor", "claude"], &[]);
    out.failure();
    assert!(
        out.stdout.contains("[ok]   agent claude: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("[fail] grant: none of claude, anthropic is granted"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("moat grant anthropic"),
        "{}",
        out.stdout
    );
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    let out = t.run(&["doctor", "claude"], &[]);
    out.success();
    assert!(
        out.stdout.contains("[ok]   grant: anthropic"),
        "{}",
        out.stdout
    );
    // A real request from a sandbox: the proxy injected the key.
    assert!(
        out.stdout.contains(
            "[ok]   proxy injection: https://api.anthropic.com/v1/models accepted the anthropic credential"
        ),
        "{}",
        out.stdout
    );
    assert_eq!(
        t.saw("x-api-key").last().map(String::as_str),
        Some(ANTHROPIC_KEY)
    );
}

/// On Docker the agent is built into the image (`npm:` with `node`), and
/// runs under gVisor like any command.
#[test]
fn claude_runs_in_a_container_with_the_agent_built_into_the_image() {
    let Some(t) = AgentEnv::new() else { return };
    if !common::docker_available() {
        return;
    }
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    let out = t.run(
        &["claude", "--runtime", "docker", "-p", "MOAT-TOOL: id -u"],
        &[(
            "MOAT_IMAGE_MAP",
            "debian:bookworm-slim=local/debian:bookworm",
        )],
    );
    out.success();
    assert!(
        out.stdout.contains("tool said: 1000"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let keys = t.saw("x-api-key");
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == ANTHROPIC_KEY),
        "{keys:?}"
    );
}

#[test]
fn an_expired_claude_login_stops_moat_claude_with_the_fix() {
    let Some(t) = AgentEnv::new() else { return };
    // A Claude Code login that expires three seconds from now.
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3000;
    let claude = t.env.home().join(".claude");
    std::fs::create_dir_all(&claude).unwrap();
    std::fs::write(
        claude.join(".credentials.json"),
        format!(
            r#"{{"claudeAiOauth":{{"accessToken":"sk-ant-oat01-soonExpired","refreshToken":"r","expiresAt":{expires},"scopes":["user:inference"]}}}}"#
        ),
    )
    .unwrap();
    t.run(&["grant", "claude"], &[]).success();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let out = t.run(&["claude", "-p", "hi"], &[]);
    out.failure();
    assert!(
        out.stderr.contains("Claude Code token has expired"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("moat grant claude"), "{}", out.stderr);
}

#[test]
fn an_agent_runs_in_the_background_with_d() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    let out = t.run(
        &["claude", "-d", "--name", "bg-agent", "-p", "Say hello"],
        &[],
    );
    out.success();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let logs = t.run(&["logs", "bg-agent"], &[]);
        if logs.stdout.contains(models::ANSWER) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer in the logs: {}{}",
            logs.stdout,
            logs.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Claude Code's own `~/.claude.json` is kept per workspace (its first
/// start is not redone every run), without what moat owns: the MCP
/// servers, whose headers carry the run's proxy token. What the sandbox
/// leaves there is read without following links.
#[test]
fn claude_keeps_its_own_state_for_the_workspace_without_moats_keys() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    std::fs::write(
        t.project().join("moat.yaml"),
        "mcp:\n  - name: docs\n    url: https://mcp.test/mcp\n",
    )
    .unwrap();
    t.run(&["claude", "-p", "hello"], &[]).success();
    let states = t.env.home().join(".local/state/moat/agent-state/claude");
    let dir = std::fs::read_dir(&states)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let kept_path = dir.join(".claude.json");
    let read = |path: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let kept = read(&kept_path);
    let user_id = kept["userID"].as_str().unwrap().to_owned();
    assert!(kept.get("mcpServers").is_none(), "{kept}");
    let text = kept.to_string();
    assert!(
        !text.contains("Proxy-Authorization") && !text.contains("Basic "),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&kept_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The next run starts from it: Claude Code keeps the same user id.
    t.run(&["claude", "-p", "hello again"], &[]).success();
    assert_eq!(read(&kept_path)["userID"].as_str(), Some(user_id.as_str()));

    // A link the sandbox leaves in place of the file is not followed.
    let planted = t.env.dir.path().join("registry-auth.json");
    std::fs::write(&planted, r#"{"plantedSecret": "s3cr3t"}"#).unwrap();
    std::fs::remove_file(&kept_path).unwrap();
    std::os::unix::fs::symlink(&planted, &kept_path).unwrap();
    let out = t.run(
        &[
            "claude",
            "-p",
            "MOAT-TOOL: grep -c plantedSecret $HOME/.claude.json || true",
        ],
        &[],
    );
    out.success();
    assert!(out.stdout.contains("tool said: 0"), "{}", out.stdout);
    assert_eq!(
        std::fs::read_to_string(&planted).unwrap(),
        r#"{"plantedSecret": "s3cr3t"}"#
    );
}

/// Codex over the Responses API's SSE transport: where WebSocket upgrades
/// are refused, it falls back to streaming POSTs, which moat serves too.
#[test]
fn codex_answers_over_sse_when_websockets_are_refused() {
    let Some(t) = AgentEnv::new() else { return };
    t.upstream.refuse_websockets();
    t.grant("openai", "OPENAI_API_KEY", OPENAI_KEY);
    let out = t.run(&["codex", "-p", "Say hello"], &[]);
    out.success();
    assert!(
        out.stdout.contains(models::ANSWER),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let streamed: Vec<_> = t
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/responses"))
        .collect();
    assert!(!streamed.is_empty(), "no SSE request was made");
    assert!(streamed
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {OPENAI_KEY}"))));
    assert!(!t.stored_text().contains(OPENAI_KEY));
}

/// Each run keeps the transcripts it wrote in its own directory
/// (`runs/<id>/agent-sessions/`), besides the workspace's kept sessions;
/// a link the sandbox leaves among them is not followed.
#[test]
fn each_run_keeps_its_transcripts() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    t.run(&["claude", "-p", "remember the word pelican"], &[])
        .success();
    let sessions = t.env.home().join(".local/state/moat/sessions/claude");
    let kept = std::fs::read_dir(&sessions)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // A link planted where transcripts live, to a host file.
    let planted = t.env.dir.path().join("host-secret.jsonl");
    std::fs::write(&planted, "host secret").unwrap();
    std::os::unix::fs::symlink(&planted, kept.join("planted.jsonl")).unwrap();
    // Dated after the next run starts, as if the sandbox made it then.
    assert!(std::process::Command::new("touch")
        .args(["-h", "-d", "+1 hour"])
        .arg(kept.join("planted.jsonl"))
        .arg(&planted)
        .status()
        .unwrap()
        .success());
    t.run(&["claude", "-p", "what is the capital of France"], &[])
        .success();
    let list: serde_json::Value =
        serde_json::from_str(&t.run(&["list", "--json"], &[]).stdout).unwrap();
    let runs: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(runs.len(), 2, "{list}");
    let text_of = |id: &str| {
        let dir = t
            .env
            .moat_home()
            .join("runs")
            .join(id)
            .join("agent-sessions");
        let mut text = String::new();
        let mut pending = vec![dir];
        while let Some(d) = pending.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    pending.push(p);
                } else {
                    text.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
        text
    };
    let texts: Vec<String> = runs.iter().map(|id| text_of(id)).collect();
    assert!(
        texts.iter().any(|t| t.contains("pelican")),
        "no transcript of the first run"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("capital of France") && !t.contains("pelican")),
        "the second run's transcript is not its own"
    );
    assert!(
        texts.iter().all(|t| !t.contains("host secret")),
        "a link was followed"
    );
}

/// `moat join`: a second Claude Code session in a running run's sandbox
/// (the first one busy in a tool call), answered through the proxy with
/// the run's grant, its output kept in the run's `logs.1.jsonl`; another
/// agent than the run's is refused with the right command.
#[test]
fn a_second_claude_session_joins_a_running_run() {
    let Some(t) = AgentEnv::new() else { return };
    t.grant("anthropic", "ANTHROPIC_API_KEY", ANTHROPIC_KEY);
    let started = t.run(
        &[
            "claude",
            "-d",
            "--name",
            "busy",
            "-p",
            "MOAT-TOOL: touch /tmp/busy; sleep 120",
        ],
        &[],
    );
    started.success();
    let id = started.stdout.trim().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while t
        .run(&["exec", "busy", "--", "test", "-f", "/tmp/busy"], &[])
        .code
        != Some(0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first session never ran its tool"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    let out = t.run(&["join", "busy", "claude", "-p", "Say hello"], &[]);
    out.success();
    assert!(
        out.stdout.contains(models::ANSWER),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let log = t
        .env
        .moat_home()
        .join("runs")
        .join(&id)
        .join("logs.1.jsonl");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains(models::ANSWER), "{logged}");
    assert_eq!(
        t.saw("x-api-key").last().map(String::as_str),
        Some(ANTHROPIC_KEY)
    );

    let out = t.run(&["join", "busy", "codex", "-p", "hi"], &[]);
    out.failure();
    assert!(
        out.stderr.contains("runs claude, not codex")
            && out.stderr.contains("moat join busy claude"),
        "{}",
        out.stderr
    );

    // A joined session busy in its own tool call ends with the run.
    let mut joined = t.moat();
    joined.args([
        "join",
        "busy",
        "claude",
        "-p",
        "MOAT-TOOL: touch /tmp/joined; sleep 200",
    ]);
    let joined = joined
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while t
        .run(&["exec", "busy", "--", "test", "-f", "/tmp/joined"], &[])
        .code
        != Some(0)
    {
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(60),
            "the joined session never ran its tool"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    t.run(&["stop", "busy"], &[]).success();
    let out = common::Result::from(joined.wait_with_output().unwrap());
    assert_eq!(out.code, Some(137), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("the run ended"), "{}", out.stderr);
}
