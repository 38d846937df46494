//! Gemini CLI (`@google/gemini-cli`).
//!
//! Staged in the sandbox's home:
//! - `~/.gemini/settings.json`: the user's settings without what runs host
//!   commands (`tools.discoveryCommand`, `tools.callCommand`, `hooks`,
//!   their MCP servers), then moat's: API-key authentication (the
//!   placeholder is in `GEMINI_API_KEY`), no auto-update or usage
//!   statistics, moat's relayed MCP servers (`httpUrl`) and `gemini.mcp`
//!   stdio servers;
//! - `~/.gemini/trustedFolders.json`: the workspace trusted.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::json::{self, object_at, pretty, read_host_object, remove_path};
use crate::{staged, Agent, AgentError, AgentLaunch, LaunchOptions, StageContext};

/// Gemini CLI.
#[derive(Debug, Clone, Copy)]
pub struct Gemini;

const DROPPED_SETTINGS: &[&str] = &[
    "mcpServers",
    "hooks",
    "tools.discoveryCommand",
    "tools.callCommand",
    "security.auth",
    "advanced.bugCommand",
];

impl Agent for Gemini {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn npm_package(&self) -> &'static str {
        "@google/gemini-cli"
    }

    fn binary(&self) -> &'static str {
        "gemini"
    }

    fn grants(&self) -> &'static [&'static str] {
        &["gemini"]
    }

    fn probe_url(&self, _grant: &str) -> &'static str {
        "https://generativelanguage.googleapis.com/v1beta/models"
    }

    fn sessions_dir(&self) -> &'static str {
        ".gemini/tmp"
    }

    fn argv(&self, program: &str, opts: &LaunchOptions) -> Vec<String> {
        let mut argv = vec![program.to_owned()];
        if !opts.keep_permission_prompts {
            argv.push("--yolo".into());
        }
        if let Some(model) = &opts.model {
            argv.extend(["--model".into(), model.clone()]);
        }
        if opts.continue_last {
            argv.extend(["--resume".into(), "latest".into()]);
        }
        if let Some(id) = &opts.resume {
            argv.extend(["--resume".into(), id.clone()]);
        }
        if let Some(prompt) = &opts.prompt {
            argv.extend(["--prompt".into(), prompt.clone()]);
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

        let trusted = json!({ ctx.workspace.to_string_lossy(): "TRUST_FOLDER" });
        Ok(AgentLaunch {
            argv,
            env: vec![
                // Gemini CLI looks for a sandbox of its own otherwise.
                ("GEMINI_SANDBOX".to_owned(), "false".to_owned()),
            ],
            files: vec![
                staged(
                    ctx.home.join(".gemini/settings.json"),
                    pretty(&Value::Object(settings(ctx)?)),
                    0o600,
                ),
                staged(
                    ctx.home.join(".gemini/trustedFolders.json"),
                    pretty(&trusted),
                    0o600,
                ),
            ],
        })
    }
}

fn settings(ctx: &StageContext<'_>) -> Result<Map<String, Value>, AgentError> {
    let mut settings = match ctx.host_home {
        Some(home) => host_settings(home)?.unwrap_or_default(),
        None => Map::new(),
    };
    for path in DROPPED_SETTINGS {
        remove_path(&mut settings, path);
    }
    object_at(object_at(&mut settings, "security"), "auth")
        .insert("selectedType".into(), "gemini-api-key".into());
    object_at(&mut settings, "general").insert("disableAutoUpdate".into(), true.into());
    object_at(&mut settings, "privacy").insert("usageStatisticsEnabled".into(), false.into());
    let mut servers = Map::new();
    for relay in ctx.mcp_relays {
        servers.insert(
            relay.name.clone(),
            json!({"httpUrl": relay.url, "headers": relay.headers_json()}),
        );
    }
    for server in json::stdio_servers("gemini", ctx.section, false)? {
        let mut spec = json!({
            "command": server.command,
            "args": server.args,
            "env": server.env.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<Map<String, Value>>(),
        });
        if let (Some(cwd), Value::Object(m)) = (server.cwd, &mut spec) {
            m.insert("cwd".into(), Value::String(cwd));
        }
        servers.insert(server.name, spec);
    }
    if !servers.is_empty() {
        settings.insert("mcpServers".into(), Value::Object(servers));
    }
    Ok(settings)
}

fn host_settings(home: &Path) -> Result<Option<Map<String, Value>>, AgentError> {
    read_host_object(&home.join(".gemini/settings.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::McpRelay;

    #[test]
    fn gemini_starts_in_yolo_mode_with_api_key_auth_and_relayed_mcp() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".gemini")).unwrap();
        std::fs::write(
            home.path().join(".gemini/settings.json"),
            r#"{"ui": {"theme": "Dracula"}, "tools": {"discoveryCommand": "/host/bin/x"}, "mcpServers": {"h": {"command": "/host"}}}"#,
        )
        .unwrap();
        let relays = [McpRelay {
            name: "docs".into(),
            url: "http://127.0.0.1:8080/mcp/docs".into(),
            headers: vec![],
        }];
        let section = Value::Null;
        let ctx = StageContext {
            program: "gemini".into(),
            workspace: Path::new("/workspace"),
            home: Path::new("/home/dev"),
            host_home: Some(home.path()),
            grant: "gemini",
            placeholder: "AIzaSyMoatPlaceholder",
            placeholders: &[],
            mcp_relays: &relays,
            section: &section,
        };
        let opts = LaunchOptions {
            prompt: Some("hello".into()),
            ..Default::default()
        };
        let launch = Gemini.stage(&ctx, &opts).unwrap();
        assert_eq!(launch.argv, ["gemini", "--yolo", "--prompt", "hello"]);
        let settings: Value = launch
            .files
            .iter()
            .find(|f| f.path.ends_with(".gemini/settings.json"))
            .and_then(|f| serde_json::from_slice(&f.contents).ok())
            .unwrap_or(Value::Null);
        assert_eq!(settings["ui"]["theme"], "Dracula");
        assert!(settings["tools"].get("discoveryCommand").is_none());
        assert_eq!(
            settings["security"]["auth"]["selectedType"],
            "gemini-api-key"
        );
        assert_eq!(
            settings["mcpServers"],
            json!({"docs": {"httpUrl": "http://127.0.0.1:8080/mcp/docs", "headers": {}}})
        );
    }
}
