//! Reading the user's JSON settings and the agent sections of moat.yaml.

use std::path::Path;

use serde_json::{Map, Value};

use crate::AgentError;

/// The JSON object in `path` on the host, `None` when there is no such
/// file. Anything but an object is an error naming the file.
pub(crate) fn read_host_object(path: &Path) -> Result<Option<Map<String, Value>>, AgentError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AgentError::HostSettings {
                path: path.to_owned(),
                problem: e.to_string(),
            })
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(AgentError::HostSettings {
            path: path.to_owned(),
            problem: "not a JSON object".into(),
        }),
        Err(e) => Err(AgentError::HostSettings {
            path: path.to_owned(),
            problem: format!("not valid JSON ({e})"),
        }),
    }
}

/// Removes `dotted` (`a.b.c`) from `map` if present.
pub(crate) fn remove_path(map: &mut Map<String, Value>, dotted: &str) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut current = map;
    for part in parts {
        match current.get_mut(part) {
            Some(Value::Object(next)) => current = next,
            _ => return,
        }
    }
    current.remove(last);
}

/// The object at `key` in `map`, created (or replaced, if not an object).
pub(crate) fn object_at<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> &'a mut Map<String, Value> {
    let slot = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// A stdio MCP server from an agent section (`<agent>.mcp.<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StdioServer {
    pub name: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
}

/// The `mcp` map of an agent section: stdio servers run inside the
/// sandbox. A `grant` key is refused where the agent cannot take it.
pub(crate) fn stdio_servers(
    section: &'static str,
    value: &Value,
    grant_allowed: bool,
) -> Result<Vec<StdioServer>, AgentError> {
    let err = |key: String, problem: &str| AgentError::Section {
        section,
        key,
        problem: problem.to_owned(),
    };
    let Some(mcp) = value.get("mcp") else {
        return Ok(Vec::new());
    };
    let Value::Object(mcp) = mcp else {
        return Err(err(
            "mcp".into(),
            "must be a map of server names to {command, args, env, cwd}",
        ));
    };
    let mut servers = Vec::new();
    for (name, spec) in mcp {
        let key = |k: &str| format!("mcp.{name}.{k}");
        let Value::Object(spec) = spec else {
            return Err(err(
                format!("mcp.{name}"),
                "must be a map with command, args, env, cwd",
            ));
        };
        for k in spec.keys() {
            let known = matches!(k.as_str(), "command" | "args" | "env" | "cwd")
                || (grant_allowed && k == "grant");
            if !known {
                return Err(err(
                    key(k),
                    if k == "grant" {
                        "stdio servers of this agent cannot take a grant: put the server under the top-level mcp: (moat's relay injects the credential) instead"
                    } else {
                        "unknown key (expected command, args, env, cwd)"
                    },
                ));
            }
        }
        let command = match spec.get("command") {
            Some(Value::String(c)) if !c.trim().is_empty() => c.clone(),
            _ => return Err(err(key("command"), "is required: the program to start")),
        };
        let args = match spec.get("args") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(key("args"), "must be a list of strings"))?,
            Some(_) => return Err(err(key("args"), "must be a list of strings")),
        };
        let env = match spec.get("env") {
            None => Vec::new(),
            Some(Value::Object(e)) => e
                .iter()
                .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| err(key("env"), "must map names to strings"))?,
            Some(_) => return Err(err(key("env"), "must map names to strings")),
        };
        let cwd = match spec.get("cwd") {
            None => None,
            Some(Value::String(c)) => Some(c.clone()),
            Some(_) => return Err(err(key("cwd"), "must be a path")),
        };
        servers.push(StdioServer {
            name: name.clone(),
            command,
            args,
            env,
            cwd,
        });
    }
    Ok(servers)
}

/// A string value of the section, if set.
pub(crate) fn section_string(
    section_name: &'static str,
    section: &Value,
    key: &str,
) -> Result<Option<String>, AgentError> {
    match section.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AgentError::Section {
            section: section_name,
            key: key.to_owned(),
            problem: "must be a string".into(),
        }),
    }
}

/// Pretty JSON with a final newline, as the agents write their files.
pub(crate) fn pretty(value: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_broken_host_settings_file_names_the_file_and_its_fix_apart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("settings.json");
        std::fs::write(&path, "[1]").unwrap_or_else(|e| panic!("{e}"));
        let Err(err) = read_host_object(&path) else {
            panic!("an array was accepted");
        };
        assert_eq!(
            err.to_string(),
            format!("{}: not a JSON object", path.display())
        );
        let fix = moat_hint::Hint::hint(&err).unwrap_or_else(|| panic!("no fix"));
        assert!(
            fix.as_str().contains("set MOAT_SKIP_HOST_AGENT_SETTINGS=1"),
            "{fix}"
        );
    }

    #[test]
    fn paths_are_removed_where_present() {
        let Value::Object(mut m) = json!({"a": {"b": 1, "c": 2}, "d": 3}) else {
            panic!()
        };
        remove_path(&mut m, "a.b");
        remove_path(&mut m, "x.y");
        remove_path(&mut m, "d.e");
        assert_eq!(Value::Object(m), json!({"a": {"c": 2}, "d": 3}));
    }

    #[test]
    fn stdio_servers_are_read_and_checked() {
        let section =
            json!({"mcp": {"fs": {"command": "npx", "args": ["-y", "srv"], "env": {"A": "1"}}}});
        let servers = stdio_servers("claude", &section, false).unwrap();
        assert_eq!(servers[0].command, "npx");
        assert_eq!(servers[0].env, [("A".to_owned(), "1".to_owned())]);
        let granted = json!({"mcp": {"gh": {"command": "x", "grant": "github"}}});
        let err = stdio_servers("claude", &granted, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("moat.yaml: claude.mcp.gh.grant: stdio servers"),
            "{err}"
        );
        assert!(stdio_servers("codex", &granted, true).is_ok());
        let no_command = json!({"mcp": {"x": {"args": []}}});
        assert!(stdio_servers("gemini", &no_command, true)
            .unwrap_err()
            .to_string()
            .contains("mcp.x.command: is required"));
    }
}
