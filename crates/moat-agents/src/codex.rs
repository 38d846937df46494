//! Codex (`@openai/codex`).
//!
//! Staged in the sandbox's home:
//! - `~/.codex/config.toml`: the user's `~/.codex/config.toml` without
//!   what runs host commands or reaches host paths (`notify`, its MCP
//!   servers, `projects`…), then moat's: no approval prompts and no
//!   sandbox of Codex's own (moat is the sandbox; `--noyolo` keeps the
//!   prompts), the workspace trusted, moat's relayed MCP servers (`url`)
//!   and `codex.mcp` stdio servers;
//! - `~/.codex/auth.json`: the placeholder API key, so Codex starts
//!   logged in.

use std::path::Path;

use serde_json::json;
use toml_edit::{value, Array, DocumentMut, InlineTable, Item, Table};

use crate::json::{self, pretty};
use crate::{staged, Agent, AgentError, AgentLaunch, LaunchOptions, StageContext};

/// Codex.
#[derive(Debug, Clone, Copy)]
pub struct Codex;

/// Host settings that would run host commands or reach host paths.
const DROPPED_SETTINGS: &[&str] = &[
    "notify",
    "mcp_servers",
    "projects",
    "approval_policy",
    "sandbox_mode",
    "sandbox_workspace_write",
    "experimental_instructions_file",
    "model_instructions_file",
    "history",
];

/// The variable an MCP server of `codex.mcp` gets for a grant it names.
fn grant_variable(grant: &str) -> Option<&'static str> {
    Some(match grant {
        "github" => "GITHUB_TOKEN",
        "openai" => "OPENAI_API_KEY",
        "anthropic" => "ANTHROPIC_API_KEY",
        "gemini" => "GEMINI_API_KEY",
        _ => return None,
    })
}

impl Agent for Codex {
    fn name(&self) -> &'static str {
        "codex"
    }

    fn npm_package(&self) -> &'static str {
        "@openai/codex"
    }

    fn binary(&self) -> &'static str {
        "codex"
    }

    fn grants(&self) -> &'static [&'static str] {
        &["openai"]
    }

    fn probe_url(&self, _grant: &str) -> &'static str {
        "https://api.openai.com/v1/models"
    }

    fn sessions_dir(&self) -> &'static str {
        ".codex/sessions"
    }

    fn argv(&self, program: &str, opts: &LaunchOptions) -> Vec<String> {
        let mut argv = vec![program.to_owned()];
        if opts.prompt.is_some() {
            // A workspace need not be a git repository.
            argv.extend(["exec".into(), "--skip-git-repo-check".into()]);
        }
        if opts.continue_last {
            argv.extend(["resume".into(), "--last".into()]);
        }
        if let Some(id) = &opts.resume {
            argv.extend(["resume".into(), id.clone()]);
        }
        if let Some(model) = &opts.model {
            argv.extend(["--model".into(), model.clone()]);
        }
        argv.extend(opts.extra_args.iter().cloned());
        if let Some(prompt) = &opts.prompt {
            argv.push(prompt.clone());
        }
        argv
    }

    fn stage(
        &self,
        ctx: &StageContext<'_>,
        opts: &LaunchOptions,
    ) -> Result<AgentLaunch, AgentError> {
        let argv = self.argv(&ctx.program, opts);
        let config = config(ctx, opts)?;
        let auth = json!({"OPENAI_API_KEY": ctx.placeholder});
        Ok(AgentLaunch {
            argv,
            env: Vec::new(),
            files: vec![
                staged(
                    ctx.home.join(".codex/config.toml"),
                    config.to_string(),
                    0o600,
                ),
                staged(ctx.home.join(".codex/auth.json"), pretty(&auth), 0o600),
            ],
        })
    }
}

fn config(ctx: &StageContext<'_>, opts: &LaunchOptions) -> Result<DocumentMut, AgentError> {
    let mut doc = match ctx.host_home {
        Some(home) => host_config(home)?,
        None => DocumentMut::new(),
    };
    for key in DROPPED_SETTINGS {
        doc.remove(key);
    }
    if !opts.keep_permission_prompts {
        doc["approval_policy"] = value("never");
    }
    doc["sandbox_mode"] = value("danger-full-access");
    if let Some(model) = &opts.model {
        doc["model"] = value(model.as_str());
    }
    let mut trusted = Table::new();
    trusted["trust_level"] = value("trusted");
    let mut projects = Table::new();
    projects.set_implicit(true);
    projects.insert(&ctx.workspace.to_string_lossy(), Item::Table(trusted));
    doc["projects"] = Item::Table(projects);

    let servers = mcp_servers(ctx)?;
    if !servers.is_empty() {
        doc["mcp_servers"] = Item::Table(servers);
    }
    Ok(doc)
}

/// `[mcp_servers]`: the run's relays, then the section's stdio servers.
fn mcp_servers(ctx: &StageContext<'_>) -> Result<Table, AgentError> {
    let mut servers = Table::new();
    servers.set_implicit(true);
    for relay in ctx.mcp_relays {
        let mut t = Table::new();
        t["url"] = value(relay.url.as_str());
        if !relay.headers.is_empty() {
            let mut headers = InlineTable::new();
            for (k, v) in &relay.headers {
                headers.insert(k, v.as_str().into());
            }
            t["http_headers"] = value(headers);
        }
        servers.insert(&relay.name, Item::Table(t));
    }
    for server in json::stdio_servers("codex", ctx.section, true)? {
        servers.insert(&server.name, Item::Table(stdio_server(ctx, &server)?));
    }
    Ok(servers)
}

/// One stdio server's table; its grant, if any, becomes the placeholder
/// in the environment variable its tool reads.
fn stdio_server(ctx: &StageContext<'_>, server: &json::StdioServer) -> Result<Table, AgentError> {
    let mut t = Table::new();
    t["command"] = value(server.command.as_str());
    let mut args = Array::new();
    for a in &server.args {
        args.push(a.as_str());
    }
    t["args"] = value(args);
    let mut env = InlineTable::new();
    for (k, v) in &server.env {
        env.insert(k, v.as_str().into());
    }
    if let Some(grant) = ctx
        .section
        .get("mcp")
        .and_then(|m| m.get(&server.name))
        .and_then(|s| s.get("grant"))
        .and_then(serde_json::Value::as_str)
    {
        let (Some(variable), Some((_, placeholder))) = (
            grant_variable(grant),
            ctx.placeholders.iter().find(|(g, _)| g == grant),
        ) else {
            return Err(AgentError::Section {
                section: "codex",
                key: format!("mcp.{}.grant", server.name),
                problem: format!(
                    "{grant:?} must be one of github, openai, anthropic, gemini and among the run's grants"
                ),
            });
        };
        env.insert(variable, placeholder.as_str().into());
    }
    if !env.is_empty() {
        t["env"] = value(env);
    }
    if let Some(cwd) = &server.cwd {
        t["cwd"] = value(cwd.as_str());
    }
    Ok(t)
}

fn host_config(home: &Path) -> Result<DocumentMut, AgentError> {
    let path = home.join(".codex/config.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.parse().map_err(|e| AgentError::HostSettings {
            path,
            problem: format!("not valid TOML ({e})"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DocumentMut::new()),
        Err(e) => Err(AgentError::HostSettings {
            path,
            problem: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::McpRelay;
    use serde_json::Value;

    const PLACEHOLDER: &str = "sk-proj-moatPlaceholder";

    fn ctx<'a>(
        section: &'a Value,
        host_home: Option<&'a Path>,
        relays: &'a [McpRelay],
        placeholders: &'a [(String, String)],
    ) -> StageContext<'a> {
        StageContext {
            program: "/opt/moat/agent/bin/codex".into(),
            workspace: Path::new("/workspace"),
            home: Path::new("/home/dev"),
            host_home,
            grant: "openai",
            placeholder: PLACEHOLDER,
            placeholders,
            mcp_relays: relays,
            section,
        }
    }

    fn config_of(launch: &AgentLaunch) -> DocumentMut {
        let f = launch
            .files
            .iter()
            .find(|f| f.path.ends_with(".codex/config.toml"));
        String::from_utf8_lossy(&f.map(|f| f.contents.clone()).unwrap_or_default())
            .parse()
            .unwrap_or_default()
    }

    #[test]
    fn a_prompt_runs_codex_exec_without_approvals() {
        let none = Value::Null;
        let opts = LaunchOptions {
            prompt: Some("fix it".into()),
            continue_last: true,
            ..Default::default()
        };
        let launch = Codex.stage(&ctx(&none, None, &[], &[]), &opts).unwrap();
        assert_eq!(
            launch.argv,
            [
                "/opt/moat/agent/bin/codex",
                "exec",
                "--skip-git-repo-check",
                "resume",
                "--last",
                "fix it"
            ]
        );
        let config = config_of(&launch);
        assert_eq!(config["approval_policy"].as_str(), Some("never"));
        assert_eq!(config["sandbox_mode"].as_str(), Some("danger-full-access"));
        assert_eq!(
            config["projects"]["/workspace"]["trust_level"].as_str(),
            Some("trusted")
        );
        let auth = launch
            .files
            .iter()
            .find(|f| f.path.ends_with(".codex/auth.json"))
            .map(|f| String::from_utf8_lossy(&f.contents).into_owned())
            .unwrap_or_default();
        assert!(auth.contains(PLACEHOLDER));
        let noyolo = LaunchOptions {
            keep_permission_prompts: true,
            ..Default::default()
        };
        let launch = Codex.stage(&ctx(&none, None, &[], &[]), &noyolo).unwrap();
        assert!(config_of(&launch).get("approval_policy").is_none());
    }

    #[test]
    fn host_config_is_kept_without_host_commands_and_mcp_is_wired() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".codex")).unwrap();
        std::fs::write(
            home.path().join(".codex/config.toml"),
            "model = \"gpt-5\"\nnotify = [\"/usr/bin/notify-send\"]\n[mcp_servers.host]\ncommand = \"/home/me/bin/srv\"\n",
        )
        .unwrap();
        let section = serde_json::json!({"mcp": {"gh": {"command": "gh-mcp", "grant": "github"}}});
        let relays = [McpRelay {
            name: "docs".into(),
            url: "http://127.0.0.1:8080/mcp/docs".into(),
            headers: vec![("Proxy-Authorization".into(), "Basic eA==".into())],
        }];
        let placeholders = [("github".to_owned(), "ghp_moatPlaceholder".to_owned())];
        let launch = Codex
            .stage(
                &ctx(&section, Some(home.path()), &relays, &placeholders),
                &LaunchOptions::default(),
            )
            .unwrap();
        let config = config_of(&launch);
        assert_eq!(config["model"].as_str(), Some("gpt-5"));
        assert!(config.get("notify").is_none());
        assert!(config["mcp_servers"].get("host").is_none());
        assert_eq!(
            config["mcp_servers"]["docs"]["url"].as_str(),
            Some("http://127.0.0.1:8080/mcp/docs")
        );
        assert_eq!(
            config["mcp_servers"]["gh"]["env"]["GITHUB_TOKEN"].as_str(),
            Some("ghp_moatPlaceholder")
        );
        // A grant the run does not have is a moat.yaml error.
        let err = Codex
            .stage(&ctx(&section, None, &[], &[]), &LaunchOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("moat.yaml: codex.mcp.gh.grant:"), "{err}");
    }
}
