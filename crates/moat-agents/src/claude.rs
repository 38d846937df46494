//! Claude Code (`@anthropic-ai/claude-code`).
//!
//! Staged in the sandbox's home:
//! - `~/.claude.json`: onboarding done, the workspace trusted, the
//!   bypass-permissions warning acknowledged, moat's relayed MCP servers
//!   (`type: http`) and `claude.mcp` stdio servers, and, with an API key,
//!   the placeholder key approved so no "use this key?" prompt appears;
//! - `~/.claude/settings.json`: the user's `~/.claude/settings.json`
//!   without what runs host commands or reaches host paths (`hooks`,
//!   `apiKeyHelper`, `statusLine`, `env`…), plus `claude.plugins` and
//!   `claude.marketplaces` from moat.yaml;
//! - `~/.claude/.credentials.json` for an OAuth grant: the placeholder as
//!   the access token, far from expiry, so Claude Code never tries to
//!   refresh the real one (which it never sees).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::json::{self, object_at, pretty, read_host_object, remove_path};
use crate::{staged, Agent, AgentError, AgentLaunch, LaunchOptions, StageContext};

/// Claude Code.
#[derive(Debug, Clone, Copy)]
pub struct Claude;

/// Host settings that would run host commands, reach host paths or carry
/// secrets into the sandbox.
const DROPPED_SETTINGS: &[&str] = &[
    "hooks",
    "apiKeyHelper",
    "awsAuthRefresh",
    "awsCredentialExport",
    "otelHeadersHelper",
    "statusLine",
    "env",
    "forceLoginMethod",
    "permissions.additionalDirectories",
];

/// A refresh token of the right shape that refreshes nothing.
const PLACEHOLDER_REFRESH: &str = "sk-ant-ort01-moatPlaceholder0000000000000000000000000000000000000000000000000000000000000000000000-AAAAAAAA";

/// 2100-01-01 in milliseconds: the placeholder never looks expired.
const FAR_FUTURE_MS: u64 = 4_102_444_800_000;

impl Agent for Claude {
    fn name(&self) -> &'static str {
        "claude"
    }

    fn npm_package(&self) -> &'static str {
        "@anthropic-ai/claude-code"
    }

    fn binary(&self) -> &'static str {
        "claude"
    }

    fn grants(&self) -> &'static [&'static str] {
        &["claude", "anthropic"]
    }

    fn probe_url(&self, _grant: &str) -> &'static str {
        "https://api.anthropic.com/v1/models"
    }

    fn sessions_dir(&self) -> &'static str {
        ".claude/projects"
    }

    fn kept_state(&self) -> Option<crate::KeptState> {
        Some(crate::KeptState {
            file: ".claude.json",
            owned: &["mcpServers"],
        })
    }

    fn argv(&self, program: &str, opts: &LaunchOptions) -> Vec<String> {
        let mut argv = vec![program.to_owned()];
        if !opts.keep_permission_prompts {
            argv.push("--dangerously-skip-permissions".into());
        }
        if let Some(model) = &opts.model {
            argv.extend(["--model".into(), model.clone()]);
        }
        if opts.continue_last {
            argv.push("--continue".into());
        }
        if let Some(id) = &opts.resume {
            argv.extend(["--resume".into(), id.clone()]);
        }
        if let Some(prompt) = &opts.prompt {
            argv.extend(["-p".into(), prompt.clone()]);
        }
        argv.extend(opts.extra_args.iter().cloned());
        argv
    }

    fn stage(
        &self,
        ctx: &StageContext<'_>,
        opts: &LaunchOptions,
    ) -> Result<AgentLaunch, AgentError> {
        let argv = self.argv(&ctx.program, opts);

        let mut env = vec![
            // Updates would write into the read-only install; telemetry
            // and error reports are requests the policy would have to
            // allow for nothing.
            ("DISABLE_AUTOUPDATER".to_owned(), "1".to_owned()),
            (
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_owned(),
                "1".to_owned(),
            ),
        ];
        if let Some(base_url) = json::section_string("claude", ctx.section, "base_url")? {
            env.push(("ANTHROPIC_BASE_URL".to_owned(), base_url));
        }

        let mut files = vec![
            staged(ctx.home.join(".claude.json"), pretty(&state(ctx)?), 0o600),
            staged(
                ctx.home.join(".claude/settings.json"),
                pretty(&Value::Object(settings(ctx)?)),
                0o600,
            ),
        ];
        if ctx.grant == "claude" {
            let subscription = json::section_string("claude", ctx.section, "subscription_type")?
                .unwrap_or_else(|| "max".to_owned());
            let credentials = json!({
                "claudeAiOauth": {
                    "accessToken": ctx.placeholder,
                    "refreshToken": PLACEHOLDER_REFRESH,
                    "expiresAt": FAR_FUTURE_MS,
                    "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
                    "subscriptionType": subscription,
                }
            });
            files.push(staged(
                ctx.home.join(".claude/.credentials.json"),
                pretty(&credentials),
                0o600,
            ));
        }
        Ok(AgentLaunch { argv, env, files })
    }
}

/// `~/.claude.json`.
fn state(ctx: &StageContext<'_>) -> Result<Value, AgentError> {
    let mut servers = Map::new();
    for relay in ctx.mcp_relays {
        servers.insert(
            relay.name.clone(),
            json!({"type": "http", "url": relay.url, "headers": relay.headers_json()}),
        );
    }
    for server in json::stdio_servers("claude", ctx.section, false)? {
        let mut spec = json!({
            "type": "stdio",
            "command": server.command,
            "args": server.args,
            "env": server.env.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<Map<String, Value>>(),
        });
        if let (Some(cwd), Value::Object(m)) = (server.cwd, &mut spec) {
            m.insert("cwd".into(), Value::String(cwd));
        }
        servers.insert(server.name, spec);
    }
    let workspace = ctx.workspace.to_string_lossy();
    let mut state = json!({
        "hasCompletedOnboarding": true,
        "bypassPermissionsModeAccepted": true,
        "autoUpdates": false,
        "projects": {
            workspace.as_ref(): {
                "hasTrustDialogAccepted": true,
                "hasCompletedProjectOnboarding": true,
                "allowedTools": [],
            }
        },
        "mcpServers": servers,
    });
    if ctx.grant == "anthropic" {
        // Claude Code asks before using a key from the environment; it
        // remembers the answer by the key's last 20 characters.
        let tail: String = {
            let chars: Vec<char> = ctx.placeholder.chars().collect();
            chars[chars.len().saturating_sub(20)..].iter().collect()
        };
        if let Value::Object(m) = &mut state {
            m.insert(
                "customApiKeyResponses".into(),
                json!({"approved": [tail], "rejected": []}),
            );
        }
    }
    Ok(state)
}

/// `~/.claude/settings.json`.
fn settings(ctx: &StageContext<'_>) -> Result<Map<String, Value>, AgentError> {
    let mut settings = match ctx.host_home {
        Some(home) => host_settings(home)?.unwrap_or_default(),
        None => Map::new(),
    };
    for path in DROPPED_SETTINGS {
        remove_path(&mut settings, path);
    }
    if let Some(plugins) = ctx.section.get("plugins") {
        let Value::Object(plugins) = plugins else {
            return Err(AgentError::Section {
                section: "claude",
                key: "plugins".into(),
                problem: "must map \"plugin@marketplace\" to true or false".into(),
            });
        };
        let enabled = object_at(&mut settings, "enabledPlugins");
        for (name, on) in plugins {
            let Value::Bool(on) = on else {
                return Err(AgentError::Section {
                    section: "claude",
                    key: format!("plugins.{name}"),
                    problem: "must be true or false".into(),
                });
            };
            enabled.insert(name.clone(), Value::Bool(*on));
        }
    }
    if let Some(marketplaces) = ctx.section.get("marketplaces") {
        let Value::Object(marketplaces) = marketplaces else {
            return Err(AgentError::Section {
                section: "claude",
                key: "marketplaces".into(),
                problem: "must map names to {source: github, repo: owner/repo}".into(),
            });
        };
        let known = object_at(&mut settings, "extraKnownMarketplaces");
        for (name, spec) in marketplaces {
            let repo = spec.get("repo").and_then(Value::as_str);
            let source = spec
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or("github");
            let (Some(repo), "github") = (repo, source) else {
                return Err(AgentError::Section {
                    section: "claude",
                    key: format!("marketplaces.{name}"),
                    problem: "must be {source: github, repo: owner/repo}".into(),
                });
            };
            known.insert(
                name.clone(),
                json!({"source": {"source": "github", "repo": repo}}),
            );
        }
    }
    Ok(settings)
}

fn host_settings(home: &Path) -> Result<Option<Map<String, Value>>, AgentError> {
    read_host_object(&home.join(".claude/settings.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::McpRelay;

    const PLACEHOLDER: &str = "sk-ant-oat01-moatPlaceholder0000000000000000000000000000000000000000000000000000000000000000000000-AAAAAAAA";

    fn ctx<'a>(
        grant: &'a str,
        section: &'a Value,
        host_home: Option<&'a Path>,
        relays: &'a [McpRelay],
    ) -> StageContext<'a> {
        StageContext {
            program: "claude".into(),
            workspace: Path::new("/workspace"),
            home: Path::new("/home/dev"),
            host_home,
            grant,
            placeholder: PLACEHOLDER,
            placeholders: &[],
            mcp_relays: relays,
            section,
        }
    }

    fn file<'a>(launch: &'a AgentLaunch, path: &str) -> Option<&'a crate::StagedFile> {
        launch.files.iter().find(|f| f.path == Path::new(path))
    }

    fn parsed(launch: &AgentLaunch, path: &str) -> Value {
        file(launch, path)
            .and_then(|f| serde_json::from_slice(&f.contents).ok())
            .unwrap_or(Value::Null)
    }

    #[test]
    fn a_prompt_skips_permission_prompts_unless_asked_to_keep_them() {
        let none = Value::Null;
        let opts = LaunchOptions {
            prompt: Some("hi".into()),
            model: Some("opus".into()),
            ..Default::default()
        };
        let launch = Claude
            .stage(&ctx("claude", &none, None, &[]), &opts)
            .unwrap();
        assert_eq!(
            launch.argv,
            [
                "claude",
                "--dangerously-skip-permissions",
                "--model",
                "opus",
                "-p",
                "hi"
            ]
        );
        let opts = LaunchOptions {
            keep_permission_prompts: true,
            continue_last: true,
            ..Default::default()
        };
        let launch = Claude
            .stage(&ctx("claude", &none, None, &[]), &opts)
            .unwrap();
        assert_eq!(launch.argv, ["claude", "--continue"]);
        let both = LaunchOptions {
            continue_last: true,
            resume: Some("x".into()),
            ..Default::default()
        };
        assert!(crate::launch(&Claude, &ctx("claude", &none, None, &[]), &both).is_err());
    }

    #[test]
    fn an_oauth_grant_stages_the_placeholder_as_a_fresh_login() {
        let none = Value::Null;
        let launch = Claude
            .stage(&ctx("claude", &none, None, &[]), &LaunchOptions::default())
            .unwrap();
        let creds = parsed(&launch, "/home/dev/.claude/.credentials.json");
        assert_eq!(creds["claudeAiOauth"]["accessToken"], PLACEHOLDER);
        assert_eq!(creds["claudeAiOauth"]["subscriptionType"], "max");
        assert!(creds["claudeAiOauth"]["expiresAt"].as_u64().unwrap_or(0) > 4_000_000_000_000);
        let f = file(&launch, "/home/dev/.claude/.credentials.json");
        assert_eq!(f.map(|f| f.mode), Some(0o600));
        let state = parsed(&launch, "/home/dev/.claude.json");
        assert_eq!(state["hasCompletedOnboarding"], true);
        assert_eq!(
            state["projects"]["/workspace"]["hasTrustDialogAccepted"],
            true
        );
        // An API key instead: no OAuth file, the key approved.
        let launch = Claude
            .stage(
                &ctx("anthropic", &none, None, &[]),
                &LaunchOptions::default(),
            )
            .unwrap();
        assert!(file(&launch, "/home/dev/.claude/.credentials.json").is_none());
        let state = parsed(&launch, "/home/dev/.claude.json");
        assert_eq!(
            state["customApiKeyResponses"]["approved"][0],
            &PLACEHOLDER[PLACEHOLDER.len() - 20..]
        );
    }

    #[test]
    fn mcp_servers_point_at_the_relay_and_stdio_servers_run_inside() {
        let section = json!({"mcp": {"local": {"command": "node", "args": ["srv.js"]}}, "base_url": "http://gw.test"});
        let relays = [McpRelay {
            name: "docs".into(),
            url: "http://127.0.0.1:8080/mcp/docs".into(),
            headers: vec![("Proxy-Authorization".into(), "Basic eA==".into())],
        }];
        let launch = Claude
            .stage(
                &ctx("claude", &section, None, &relays),
                &LaunchOptions::default(),
            )
            .unwrap();
        let state = parsed(&launch, "/home/dev/.claude.json");
        assert_eq!(
            state["mcpServers"]["docs"],
            json!({"type": "http", "url": "http://127.0.0.1:8080/mcp/docs",
                   "headers": {"Proxy-Authorization": "Basic eA=="}})
        );
        assert_eq!(state["mcpServers"]["local"]["command"], "node");
        assert!(launch
            .env
            .contains(&("ANTHROPIC_BASE_URL".into(), "http://gw.test".into())));
    }

    #[test]
    fn host_settings_are_imported_without_what_reaches_the_host() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".claude")).unwrap();
        std::fs::write(
            home.path().join(".claude/settings.json"),
            r#"{"model": "sonnet", "hooks": {"Stop": []}, "apiKeyHelper": "/usr/bin/get-key",
                "env": {"ANTHROPIC_API_KEY": "sk-real"}, "permissions": {"allow": ["Bash(ls)"], "additionalDirectories": ["/etc"]},
                "enabledPlugins": {"a@m": true}}"#,
        )
        .unwrap();
        let section = json!({"plugins": {"b@m": true, "a@m": false}, "marketplaces": {"m": {"source": "github", "repo": "o/r"}}});
        let launch = Claude
            .stage(
                &ctx("claude", &section, Some(home.path()), &[]),
                &LaunchOptions::default(),
            )
            .unwrap();
        let settings = parsed(&launch, "/home/dev/.claude/settings.json");
        assert_eq!(
            settings,
            json!({
                "model": "sonnet",
                "permissions": {"allow": ["Bash(ls)"]},
                "enabledPlugins": {"a@m": false, "b@m": true},
                "extraKnownMarketplaces": {"m": {"source": {"source": "github", "repo": "o/r"}}},
            })
        );
        std::fs::write(home.path().join(".claude/settings.json"), "{oops").unwrap();
        let err = Claude
            .stage(
                &ctx("claude", &Value::Null, Some(home.path()), &[]),
                &LaunchOptions::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("settings.json: not valid JSON"), "{err}");
    }
}
