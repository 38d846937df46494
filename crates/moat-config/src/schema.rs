//! Turns the positioned YAML tree into a [`ProjectConfig`], key by key.
//!
//! Each accessor takes the key path it is reading so that every error can
//! say where it is; nothing unknown is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use moat_policy::{HostPattern, HostRules, Policy, Rule};

use crate::mount::{
    check_exclude, check_exclude_among, check_target, parse_mode, parse_mount_string,
    resolve_source,
};
use crate::spec::{
    check_endpoint_name, check_env_name, check_grant, check_mcp_auth_header, check_mcp_url,
    check_run_name, parse_dependency,
};
use crate::suggest::closest;
use crate::yaml::{Node, Resolved, Value};
use crate::{
    ConfigError, ContainerLimits, Dependency, DependencyKind, Hooks, McpAuth, McpServer, Mount,
    NetworkConfig, ProjectConfig, RuntimeKind, SandboxMode, ServiceConfig, SnapshotConfig,
    SpecError, WorkspaceMode,
};

type R<T> = Result<T, ConfigError>;

const TOP_KEYS: &[&str] = &[
    "name",
    "agent",
    "grants",
    "env",
    "mounts",
    "network",
    "command",
    "runtime",
    "sandbox",
    "dependencies",
    "base_image",
    "hooks",
    "container",
    "interactive",
    "mcp",
    "services",
    "claude",
    "codex",
    "gemini",
    "allow_write",
    "snapshots",
    "workspace",
    "ports",
];

/// Keys moat.yaml has elsewhere that this version does not implement yet:
/// they get "not supported yet" rather than a misleading "did you mean".
const TOP_NOT_YET: &[&str] = &[
    "version",
    "secrets",
    "volumes",
    "clipboard",
    "copilot",
    "pi",
    "language_servers",
    "tracing",
];

pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    pub workspace: &'a Path,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

impl Ctx<'_> {
    fn invalid(&self, node: &Node, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line: node.line,
            path: path.to_owned(),
            message: message.into(),
            fix: None,
        }
    }

    /// [`Ctx::invalid`] with the one thing to change.
    fn invalid_with_fix(
        &self,
        node: &Node,
        path: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line: node.line,
            path: path.to_owned(),
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    /// A value that does not parse; `spec` is shown before the error
    /// when the error does not name the value itself.
    fn bad_value(
        &self,
        node: &Node,
        path: &str,
        spec: Option<&str>,
        error: SpecError,
    ) -> ConfigError {
        ConfigError::BadValue {
            file: self.file.to_owned(),
            line: node.line,
            path: path.to_owned(),
            spec: spec.map(str::to_owned),
            error: Box::new(error),
        }
    }

    fn wrong_type(
        &self,
        node: &Node,
        path: &str,
        expected: &'static str,
        fix: Option<String>,
    ) -> ConfigError {
        ConfigError::WrongType {
            file: self.file.to_owned(),
            line: node.line,
            path: path.to_owned(),
            expected,
            found: found(node),
            fix,
        }
    }

    /// Entries of a mapping with a fixed set of keys. A missing value
    /// (`key:` alone) counts as an empty mapping.
    fn fields<'n>(
        &self,
        node: &'n Node,
        path: &str,
        known: &[&str],
        not_yet: &[&str],
    ) -> R<Vec<(&'n str, &'n Node)>> {
        let entries = self.map(node, path)?;
        for (key, key_node, _) in &entries {
            if known.contains(key) {
                continue;
            }
            if not_yet.contains(key) {
                return Err(ConfigError::Unsupported {
                    file: self.file.to_owned(),
                    line: key_node.line,
                    path: join(path, key),
                });
            }
            let help = match closest(key, known) {
                Some(s) => format!(". Did you mean {s:?}? (known keys: {})", known.join(", ")),
                None => format!(" (known keys: {})", known.join(", ")),
            };
            return Err(ConfigError::UnknownKey {
                file: self.file.to_owned(),
                line: key_node.line,
                key: (*key).to_owned(),
                parent: path.to_owned(),
                help,
            });
        }
        Ok(entries.into_iter().map(|(k, _, v)| (k, v)).collect())
    }

    /// Entries of a mapping with free-form keys.
    fn map<'n>(&self, node: &'n Node, path: &str) -> R<Vec<(&'n str, &'n Node, &'n Node)>> {
        match &node.value {
            Value::Map(entries) => Ok(entries
                .iter()
                .map(|(k, v)| (k.text().unwrap_or(""), k, v))
                .collect()),
            _ if node.resolve() == Some(Resolved::Null) => Ok(Vec::new()),
            _ => Err(self.wrong_type(node, path, "a mapping", None)),
        }
    }

    /// Items of a list; a missing value counts as an empty list.
    fn seq<'n>(&self, node: &'n Node, path: &str) -> R<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Ok(items),
            _ if node.resolve() == Some(Resolved::Null) => Ok(&[]),
            _ => {
                let hint = match (node.resolve(), path.rsplit('.').next()) {
                    (Some(Resolved::Str(s)), Some(key)) if !key.ends_with(']') => {
                        Some(format!("Write it as a list: {key}: [{s}]"))
                    }
                    _ => None,
                };
                Err(self.wrong_type(node, path, "a list", hint))
            }
        }
    }

    /// A string; `key` names the mapping key for the "quote it" hint.
    fn string(&self, node: &Node, path: &str, key: Option<&str>) -> R<String> {
        match node.resolve() {
            Some(Resolved::Str(s)) => Ok(s.to_owned()),
            Some(Resolved::Null) => Err(self.wrong_type(node, path, "a string", None)),
            Some(_) => {
                let text = node.text().unwrap_or("");
                let hint = match key {
                    Some(k) => format!("Quote it: {k}: \"{text}\""),
                    None => format!("Quote it: \"{text}\""),
                };
                Err(self.wrong_type(node, path, "a string", Some(hint)))
            }
            None => Err(self.wrong_type(node, path, "a string", None)),
        }
    }

    fn non_empty_string(&self, node: &Node, path: &str, key: Option<&str>) -> R<String> {
        let s = self.string(node, path, key)?;
        if s.trim().is_empty() {
            return Err(self.invalid_with_fix(
                node,
                path,
                "must not be empty",
                "To fix: remove the key instead.",
            ));
        }
        Ok(s)
    }

    fn bool(&self, node: &Node, path: &str) -> R<bool> {
        match node.resolve() {
            Some(Resolved::Bool(b)) => Ok(b),
            _ => Err(self.wrong_type(node, path, "true or false", None)),
        }
    }

    fn positive_int(&self, node: &Node, path: &str, what: &'static str) -> R<u64> {
        match node.resolve() {
            Some(Resolved::Int(i)) if i > 0 => {
                u64::try_from(i).map_err(|_| self.invalid(node, path, format!("{i} is too large")))
            }
            Some(Resolved::Int(i)) => {
                Err(self.invalid(node, path, format!("must be greater than 0, found {i}")))
            }
            _ => Err(self.wrong_type(node, path, what, None)),
        }
    }

    fn string_list<'n>(&self, node: &'n Node, path: &str) -> R<Vec<(String, &'n Node, String)>> {
        self.seq(node, path)?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let p = index(path, i);
                Ok((self.string(item, &p, None)?, item, p))
            })
            .collect()
    }

    fn env_map(&self, node: &Node, path: &str) -> R<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        for (key, key_node, value) in self.map(node, path)? {
            let p = join(path, key);
            check_env_name(key).map_err(|e| self.bad_value(key_node, &p, None, e))?;
            let v = match value.resolve() {
                Some(Resolved::Null) => {
                    return Err(self.wrong_type(
                        value,
                        &p,
                        "a string",
                        Some(format!("Write {key}: \"\" for an empty value")),
                    ))
                }
                _ => self.string(value, &p, Some(key))?,
            };
            env.insert(key.to_owned(), v);
        }
        Ok(env)
    }
}

pub(crate) fn project(ctx: &Ctx<'_>, root: Option<&Node>) -> R<ProjectConfig> {
    let mut cfg = ProjectConfig::default();
    let Some(root) = root else {
        return Ok(cfg);
    };
    if !matches!(root.value, Value::Map(_)) && root.resolve() != Some(Resolved::Null) {
        return Err(ConfigError::WrongType {
            file: ctx.file.to_owned(),
            line: root.line,
            path: "top level".to_owned(),
            expected: "a mapping of settings (name: ..., grants: [...])",
            found: found(root),
            fix: None,
        });
    }
    let mut services_node = None;
    let mut mcp_node = None;
    for (key, value) in ctx.fields(root, "", TOP_KEYS, TOP_NOT_YET)? {
        let path = key;
        match key {
            "name" => {
                let name = ctx.string(value, path, Some(key))?;
                check_run_name(&name).map_err(|e| ctx.bad_value(value, path, None, e))?;
                cfg.name = Some(name);
            }
            "agent" => cfg.agent = Some(ctx.non_empty_string(value, path, Some(key))?),
            "grants" => cfg.grants = grants(ctx, value, path)?,
            "env" => cfg.env = ctx.env_map(value, path)?,
            "mounts" => cfg.mounts = mounts(ctx, value, path)?,
            "network" => cfg.network = network(ctx, value, path)?,
            "command" => cfg.command = Some(command(ctx, value, path)?),
            "runtime" => {
                let s = ctx.string(value, path, Some(key))?;
                let kind = s
                    .parse::<RuntimeKind>()
                    .map_err(|m| ctx.invalid(value, path, m.to_string()))?;
                cfg.runtime = Some(kind);
            }
            "sandbox" => cfg.sandbox = sandbox_mode(ctx, value, path)?,
            "dependencies" => cfg.dependencies = dependencies(ctx, value, path)?,
            "base_image" => cfg.base_image = Some(ctx.non_empty_string(value, path, Some(key))?),
            "hooks" => cfg.hooks = hooks(ctx, value, path)?,
            "container" => cfg.container = container(ctx, value, path)?,
            "interactive" => cfg.interactive = ctx.bool(value, path)?,
            "allow_write" => cfg.allow_write = allow_write(ctx, value, path)?,
            "snapshots" => cfg.snapshots = snapshots(ctx, value, path)?,
            "workspace" => cfg.workspace_mode = workspace(ctx, value, path)?,
            "ports" => cfg.ports = ports(ctx, value, path)?,
            "mcp" => mcp_node = Some(value),
            "services" => services_node = Some(value),
            "claude" | "codex" | "gemini" => {
                cfg.agents
                    .insert(key.to_owned(), agent_section(ctx, value, path)?);
            }
            // `fields` has rejected every other key.
            _ => {}
        }
    }
    if let Some(node) = mcp_node {
        cfg.mcp = mcp(ctx, node, "mcp", &cfg.grants)?;
    }
    if let Some(node) = services_node {
        cfg.services = services(ctx, node, "services", &cfg)?;
    }
    Ok(cfg)
}

fn grants(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<Vec<String>> {
    let mut out = Vec::new();
    for (grant, item, p) in ctx.string_list(node, path)? {
        check_grant(&grant).map_err(|e| ctx.bad_value(item, &p, None, e))?;
        out.push(grant);
    }
    Ok(out)
}

fn sandbox_mode(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<SandboxMode> {
    match node.resolve() {
        Some(Resolved::Null) => Ok(SandboxMode::Sandboxed),
        Some(Resolved::Str("")) => Ok(SandboxMode::Sandboxed),
        Some(Resolved::Str("none")) => Ok(SandboxMode::Disabled),
        _ => Err(ctx.invalid(
            node,
            path,
            format!(
                "expected \"\" (sandbox on, the default) or \"none\", found {}",
                describe(node)
            ),
        )),
    }
}

/// `ports:`: endpoint name (a DNS label) to the port the run serves it
/// on inside the sandbox.
fn ports(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<BTreeMap<String, u16>> {
    let mut out = BTreeMap::new();
    for (name, key_node, value) in ctx.map(node, path)? {
        let p = join(path, name);
        check_endpoint_name(name).map_err(|e| ctx.bad_value(key_node, &p, None, e))?;
        let port = match value.resolve() {
            Some(Resolved::Int(n)) => u16::try_from(n).ok().filter(|n| *n > 0),
            _ => return Err(ctx.wrong_type(value, &p, "a port number (1-65535)", None)),
        };
        let port = port.ok_or_else(|| {
            ctx.invalid(
                value,
                &p,
                format!(
                    "port must be between 1 and 65535, found {}",
                    describe(value)
                ),
            )
        })?;
        out.insert(name.to_owned(), port);
    }
    Ok(out)
}

/// `workspace:`: only `mode` so far.
fn workspace(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<WorkspaceMode> {
    let mut mode = WorkspaceMode::default();
    for (key, value) in ctx.fields(node, path, &["mode"], &[])? {
        let p = join(path, key);
        let s = ctx.string(value, &p, Some(key))?;
        mode = s.parse().map_err(|e: crate::types::UnknownWorkspaceMode| {
            ctx.invalid_with_fix(
                value,
                &p,
                e.to_string(),
                "To fix: write `mode: volume` (the run works on a copy) or `mode: bind` (the default).",
            )
        })?;
    }
    Ok(mode)
}

fn dependencies(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<Vec<Dependency>> {
    let mut out = Vec::new();
    for (spec, item, p) in ctx.string_list(node, path)? {
        let dep = parse_dependency(&spec).map_err(|e| ctx.bad_value(item, &p, Some(&spec), e))?;
        out.push(dep);
    }
    Ok(out)
}

fn allow_write(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (spec, item, p) in ctx.string_list(node, path)? {
        let allowed = crate::mount::allow_write_path(&spec)
            .map_err(|e| ctx.bad_value(item, &p, Some(&spec), e))?;
        out.push(allowed);
    }
    Ok(out)
}

/// An agent's section, kept as JSON: what it means is the agent's
/// business (moat-agents checks it when the agent starts).
fn agent_section(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<serde_json::Value> {
    if !matches!(node.value, crate::yaml::Value::Map(_)) {
        return Err(ctx.wrong_type(node, path, "a mapping of the agent's settings", None));
    }
    Ok(to_json(node))
}

/// What a node is, for "expected X, found Y": strings are quoted so the
/// user sees which text was read.
fn found(node: &Node) -> String {
    match node.resolve() {
        Some(Resolved::Str(s)) if s.chars().count() <= 60 => format!("the string {s:?}"),
        _ => node.type_name().to_owned(),
    }
}

/// A scalar as the user wrote it, for "found ..." messages.
fn describe(node: &Node) -> String {
    match node.text() {
        Some(t) => format!("{t:?}"),
        None => node.type_name().to_owned(),
    }
}

fn command(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<Vec<String>> {
    if let Some(Resolved::Str(s)) = node.resolve() {
        let words: Vec<String> = s.split_whitespace().map(|w| format!("{w:?}")).collect();
        return Err(ctx.invalid(
            node,
            path,
            format!(
                "expected a list of arguments, found a string. Write it as a list: command: [{}]",
                words.join(", ")
            ),
        ));
    }
    if !matches!(node.value, Value::Seq(_)) {
        return Err(ctx.wrong_type(node, path, "a list of arguments", None));
    }
    let args: Vec<String> = ctx
        .string_list(node, path)?
        .into_iter()
        .map(|(s, _, _)| s)
        .collect();
    if args.is_empty() {
        return Err(ctx.invalid_with_fix(
            node,
            path,
            "the command is empty",
            "To fix: remove the key to use the image's default command.",
        ));
    }
    Ok(args)
}

fn mounts(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<Vec<Mount>> {
    let mut out: Vec<Mount> = Vec::new();
    let mut targets: Vec<(PathBuf, usize, usize)> = Vec::new();
    for (i, item) in ctx.seq(node, path)?.iter().enumerate() {
        let p = index(path, i);
        let mount = match &item.value {
            Value::Map(_) => mount_object(ctx, item, &p)?,
            _ => {
                let spec = ctx.string(item, &p, None)?;
                parse_mount_string(&spec, ctx.workspace)
                    .map_err(|e| ctx.bad_value(item, &p, Some(&spec), e))?
            }
        };
        if let Some((_, first, line)) = targets.iter().find(|(t, _, _)| *t == mount.target) {
            return Err(ctx.invalid(
                item,
                &p,
                format!(
                    "target {:?} is already used by {path}[{first}] (line {line}); each target can be mounted once",
                    mount.target.display().to_string()
                ),
            ));
        }
        targets.push((mount.target.clone(), i, item.line));
        out.push(mount);
    }
    Ok(out)
}

fn mount_object(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<Mount> {
    let (mut source, mut target, mut read_only, mut exclude) = (None, None, false, Vec::new());
    let mut relative = false;
    for (key, value) in ctx.fields(node, path, &["source", "target", "mode", "exclude"], &[])? {
        let p = join(path, key);
        match key {
            "source" => {
                let s = ctx.string(value, &p, Some(key))?;
                let (resolved, is_relative) = resolve_source(&s, ctx.workspace)
                    .map_err(|e| ctx.bad_value(value, &p, None, e))?;
                source = Some(resolved);
                relative = is_relative;
            }
            "target" => {
                let s = ctx.string(value, &p, Some(key))?;
                target = Some(check_target(&s).map_err(|e| ctx.bad_value(value, &p, None, e))?);
            }
            "mode" => {
                let s = ctx.string(value, &p, Some(key))?;
                read_only = parse_mode(&s).map_err(|e| ctx.bad_value(value, &p, None, e))?;
            }
            _ => {
                for (s, item, ip) in ctx.string_list(value, &p)? {
                    let path = check_exclude(&s)
                        .and_then(|e| check_exclude_among(&e, &s, &exclude).map(|()| e))
                        .map_err(|e| ctx.bad_value(item, &ip, None, e))?;
                    exclude.push(path);
                }
            }
        }
    }
    let missing = |key: &str| {
        ctx.invalid(
            node,
            path,
            format!("missing {key:?}; a mount object needs source and target"),
        )
    };
    Ok(Mount {
        source: source.ok_or_else(|| missing("source"))?,
        target: target.ok_or_else(|| missing("target"))?,
        read_only,
        exclude,
        relative,
    })
}

fn network(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<NetworkConfig> {
    let mut net = NetworkConfig::default();
    let not_yet = &["keep_policy"];
    for (key, value) in ctx.fields(node, path, &["policy", "rules", "host"], not_yet)? {
        let p = join(path, key);
        match key {
            "policy" => {
                let found = match value.resolve() {
                    Some(Resolved::Str(s)) => s.parse::<Policy>().ok(),
                    _ => None,
                };
                net.policy = found.ok_or_else(|| {
                    ctx.invalid(
                        value,
                        &p,
                        format!(
                            "expected \"permissive\" or \"strict\", found {}",
                            describe(value)
                        ),
                    )
                })?;
            }
            "rules" => net.rules = network_rules(ctx, value, &p)?,
            _ => {
                for (i, item) in ctx.seq(value, &p)?.iter().enumerate() {
                    let ip = index(&p, i);
                    let port = match item.resolve() {
                        Some(Resolved::Int(n)) => u16::try_from(n).ok().filter(|n| *n > 0),
                        _ => {
                            return Err(ctx.wrong_type(item, &ip, "a port number (1-65535)", None))
                        }
                    };
                    let port = port.ok_or_else(|| {
                        ctx.invalid(
                            item,
                            &ip,
                            format!("port must be between 1 and 65535, found {}", describe(item)),
                        )
                    })?;
                    if net.host_ports.contains(&port) {
                        return Err(ctx.invalid(item, &ip, format!("port {port} is listed twice")));
                    }
                    net.host_ports.push(port);
                }
            }
        }
    }
    Ok(net)
}

fn network_rules(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<Vec<HostRules>> {
    let policy_err = |n: &Node, p: &str, source| ConfigError::Policy {
        file: ctx.file.to_owned(),
        line: n.line,
        path: p.to_owned(),
        error: source,
    };
    let mut out = Vec::new();
    for (i, item) in ctx.seq(node, path)?.iter().enumerate() {
        let p = index(path, i);
        let seed_form = matches!(&item.value, Value::Map(_))
            && ctx.map(item, &p)?.iter().any(|(key, _, value)| {
                *key == "host" && matches!(value.resolve(), Some(Resolved::Str(_)))
            });
        match &item.value {
            // `- host: api.example.com` with `allow: true|false` (the form
            // the troubleshooting page gives): the whole host allowed, or
            // denied outright.
            Value::Map(_) if seed_form => {
                let (mut host, mut allow) = (None, true);
                for (key, value) in ctx.fields(item, &p, &["host", "allow"], &[])? {
                    let kp = join(&p, key);
                    if key == "host" {
                        let h = ctx.string(value, &kp, Some(key))?;
                        host = Some(HostPattern::parse(&h).map_err(|e| policy_err(value, &kp, e))?);
                    } else {
                        allow = ctx.bool(value, &kp)?;
                    }
                }
                let host = host.ok_or_else(|| ctx.invalid(item, &p, "missing \"host\""))?;
                out.push(if allow {
                    HostRules::allow_all(host)
                } else {
                    HostRules {
                        host,
                        rules: vec![Rule::parse("deny * /**").map_err(|e| policy_err(item, &p, e))?],
                    }
                });
            }
            Value::Map(_) => {
                for (host, key_node, rules) in ctx.map(item, &p)? {
                    let host_pattern =
                        HostPattern::parse(host).map_err(|e| policy_err(key_node, &p, e))?;
                    if let Some(Resolved::Str(rule)) = rules.resolve() {
                        return Err(ctx.invalid(
                            rules,
                            &p,
                            format!(
                                "the rules for {host:?} must be a list, even for one rule: \"{host}\": [{rule:?}]"
                            ),
                        ));
                    }
                    let mut parsed = Vec::new();
                    for (rule, rule_node, _) in ctx.string_list(rules, &join(&p, host))? {
                        parsed.push(Rule::parse(&rule).map_err(|e| policy_err(rule_node, &p, e))?);
                    }
                    out.push(HostRules {
                        host: host_pattern,
                        rules: parsed,
                    });
                }
            }
            _ => {
                let host = ctx.string(item, &p, None)?;
                let host = HostPattern::parse(&host).map_err(|e| policy_err(item, &p, e))?;
                out.push(HostRules::allow_all(host));
            }
        }
    }
    Ok(out)
}

fn hooks(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<Hooks> {
    let mut hooks = Hooks::default();
    let known = &["post_build_root", "post_build", "pre_run"];
    for (key, value) in ctx.fields(node, path, known, &[])? {
        let script = Some(ctx.non_empty_string(value, &join(path, key), Some(key))?);
        match key {
            "post_build_root" => hooks.post_build_root = script,
            "post_build" => hooks.post_build = script,
            _ => hooks.pre_run = script,
        }
    }
    Ok(hooks)
}

fn snapshots(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<SnapshotConfig> {
    let mut cfg = SnapshotConfig::default();
    let known = &["disabled", "triggers", "exclude", "retention"];
    for (key, value) in ctx.fields(node, path, known, &[])? {
        let p = join(path, key);
        match key {
            "disabled" => cfg.disabled = ctx.bool(value, &p)?,
            "triggers" => snapshot_triggers(ctx, value, &p, &mut cfg)?,
            "retention" => {
                for (k, v) in ctx.fields(value, &p, &["max_count", "delete_initial"], &[])? {
                    let kp = join(&p, k);
                    if k == "max_count" {
                        cfg.max_count = Some(ctx.positive_int(v, &kp, "a number of snapshots")?);
                    } else {
                        cfg.delete_initial = ctx.bool(v, &kp)?;
                    }
                }
            }
            _ => {
                for (_, v) in ctx.fields(value, &p, &["additional"], &["ignore_gitignore"])? {
                    cfg.exclude = snapshot_excludes(ctx, v, &join(&p, "additional"))?;
                }
            }
        }
    }
    Ok(cfg)
}

/// `snapshots.triggers`.
fn snapshot_triggers(ctx: &Ctx<'_>, node: &Node, path: &str, cfg: &mut SnapshotConfig) -> R<()> {
    let known = &[
        "disable_pre_run",
        "disable_git_commits",
        "disable_builds",
        "disable_idle",
        "idle_threshold_seconds",
    ];
    for (k, v) in ctx.fields(node, path, known, &[])? {
        let p = join(path, k);
        if k == "idle_threshold_seconds" {
            cfg.idle_threshold_seconds = Some(ctx.positive_int(v, &p, "a number of seconds")?);
            continue;
        }
        let on = ctx.bool(v, &p)?;
        match k {
            "disable_pre_run" => cfg.disable_pre_run = on,
            "disable_git_commits" => cfg.disable_git_commits = on,
            "disable_idle" => cfg.disable_idle = on,
            _ if !on => {
                return Err(ctx.invalid_with_fix(
                    v,
                    &p,
                    "moat has no build trigger: it does not see which commands run \
                     in the sandbox, so no snapshot is taken on builds",
                    "Remove the key (or set it to true); snapshots are still taken \
                     before the run, on git commits and when the workspace goes idle",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `snapshots.exclude.additional`: relative paths inside the workspace.
fn snapshot_excludes(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<Vec<String>> {
    let mut out = Vec::new();
    for (s, item, p) in ctx.string_list(node, path)? {
        let rel = s.trim_start_matches("./").trim_end_matches('/');
        let inside = !rel.is_empty()
            && !rel.starts_with('/')
            && !rel.split('/').any(|c| c == ".." || c == ".");
        if !inside {
            let message = format!("must be a path inside the workspace, found {s:?}");
            return Err(ctx.invalid(item, &p, message));
        }
        out.push(rel.to_owned());
    }
    Ok(out)
}

fn container(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<ContainerLimits> {
    let mut limits = ContainerLimits::default();
    let not_yet = &["dns", "ulimits"];
    for (key, value) in ctx.fields(node, path, &["memory", "cpus"], not_yet)? {
        let p = join(path, key);
        match key {
            "memory" => {
                limits.memory_mb =
                    Some(ctx.positive_int(value, &p, "a whole number of megabytes")?)
            }
            _ => {
                let cpus = match value.resolve() {
                    Some(Resolved::Int(i)) => i as f64,
                    Some(Resolved::Float(f)) => f,
                    _ => return Err(ctx.wrong_type(value, &p, "a number of CPUs", None)),
                };
                if !(cpus.is_finite() && cpus > 0.0) {
                    return Err(ctx.invalid(
                        value,
                        &p,
                        format!("must be a number greater than 0, found {}", describe(value)),
                    ));
                }
                limits.cpus = Some(cpus);
            }
        }
    }
    Ok(limits)
}

fn mcp(ctx: &Ctx<'_>, node: &Node, path: &str, grants: &[String]) -> R<Vec<McpServer>> {
    let mut out: Vec<McpServer> = Vec::new();
    for (i, item) in ctx.seq(node, path)?.iter().enumerate() {
        let p = index(path, i);
        if let Some(Resolved::Str(name)) = item.resolve() {
            return Err(ctx.invalid_with_fix(
                item,
                &p,
                format!("catalog entries ({name:?}) are not supported by this version of moat yet"),
                format!("To fix: write {{name: {name}, url: https://...}}"),
            ));
        }
        let (mut name, mut url, mut auth) = (None, None, None);
        for (key, value) in ctx.fields(item, &p, &["name", "url", "auth"], &["policy"])? {
            let kp = join(&p, key);
            match key {
                "name" => name = Some(mcp_name(ctx, value, &kp, path, &out)?),
                "url" => {
                    let u = ctx.string(value, &kp, Some(key))?;
                    url = Some(check_mcp_url(&u).map_err(|e| ctx.bad_value(value, &kp, None, e))?);
                }
                _ => auth = Some((mcp_auth(ctx, value, &kp)?, value)),
            }
        }
        let missing = |key: &str| {
            ctx.invalid(
                item,
                &p,
                format!("missing {key:?}; an MCP server needs name and url"),
            )
        };
        let name = name.ok_or_else(|| missing("name"))?;
        if let Some((auth, node)) = &auth {
            check_mcp_grant(ctx, &name, auth, node, &join(&p, "auth.grant"), grants)?;
        }
        out.push(McpServer {
            name,
            url: url.ok_or_else(|| missing("url"))?,
            auth: auth.map(|(a, _)| a),
        });
    }
    Ok(out)
}

/// An MCP server's name, unique among those before it (`earlier`, of the
/// list at `list_path`).
fn mcp_name(
    ctx: &Ctx<'_>,
    node: &Node,
    path: &str,
    list_path: &str,
    earlier: &[McpServer],
) -> R<moat_policy::McpServerName> {
    let text = ctx.string(node, path, Some("name"))?;
    let name = moat_policy::McpServerName::parse(&text).map_err(|error| ConfigError::Policy {
        file: ctx.file.to_owned(),
        line: node.line,
        path: path.to_owned(),
        error,
    })?;
    if let Some(first) = earlier.iter().position(|s| s.name == name) {
        return Err(ctx.invalid(
            node,
            path,
            format!(
                "{:?} is already the name of {list_path}[{first}]; names must be unique",
                name.as_str()
            ),
        ));
    }
    Ok(name)
}

/// A server gets its own token (`mcp:NAME`), or a grant of the run whose
/// hosts include the server's (checked when the run starts, where the
/// providers are known); anything else would hand one service's
/// credential to another.
fn check_mcp_grant(
    ctx: &Ctx<'_>,
    name: &moat_policy::McpServerName,
    auth: &McpAuth,
    node: &Node,
    path: &str,
    grants: &[String],
) -> R<()> {
    let own = auth.grant.starts_with("mcp:") || auth.grant.starts_with("mcp-");
    if own || grants.contains(&auth.grant) {
        return Ok(());
    }
    Err(ctx.invalid_with_fix(
        node,
        path,
        format!(
            "MCP server {:?} may not use grant {:?}: it is neither the server's own token nor \
             one of this file's grants.",
            name.as_str(),
            auth.grant
        ),
        format!(
            "Store a token for the server with `moat grant mcp {name}` and write grant: \
             mcp:{name}"
        ),
    ))
}

fn mcp_auth(ctx: &Ctx<'_>, node: &Node, path: &str) -> R<McpAuth> {
    let (mut grant, mut header) = (None, None);
    for (key, value) in ctx.fields(node, path, &["grant", "header"], &[])? {
        let p = join(path, key);
        let s = ctx.string(value, &p, Some(key))?;
        match key {
            "grant" => {
                check_grant(&s).map_err(|e| ctx.bad_value(value, &p, None, e))?;
                grant = Some(s);
            }
            _ => {
                check_mcp_auth_header(&s).map_err(|e| ctx.bad_value(value, &p, None, e))?;
                header = Some(s);
            }
        }
    }
    match (grant, header) {
        (Some(grant), Some(header)) => Ok(McpAuth { grant, header }),
        (g, _) => {
            let key = if g.is_none() { "grant" } else { "header" };
            Err(ctx.invalid(
                node,
                path,
                format!("missing {key:?}; auth needs both grant and header (e.g. header: Authorization)"),
            ))
        }
    }
}

fn services(
    ctx: &Ctx<'_>,
    node: &Node,
    path: &str,
    cfg: &ProjectConfig,
) -> R<BTreeMap<String, ServiceConfig>> {
    let mut out = BTreeMap::new();
    for (name, key_node, value) in ctx.map(node, path)? {
        let p = join(path, name);
        let declared = cfg
            .dependencies
            .iter()
            .any(|d| d.kind == DependencyKind::Registry && d.name == name);
        if !declared {
            return Err(ctx.invalid(
                key_node,
                &p,
                format!(
                    "service {name:?} is not in dependencies; add it there too, e.g. dependencies: [{name}]"
                ),
            ));
        }
        let mut svc = ServiceConfig::default();
        for (key, v) in ctx.fields(
            value,
            &p,
            &["env", "image", "memory", "wait", "provision"],
            &[],
        )? {
            let kp = join(&p, key);
            match key {
                "env" => svc.env = ctx.env_map(v, &kp)?,
                "provision" => {
                    for (command, item, ip) in ctx.string_list(v, &kp)? {
                        if command.trim().is_empty() {
                            return Err(ctx.invalid(item, &ip, "is an empty command".to_owned()));
                        }
                        svc.provision.push(command);
                    }
                }
                "image" => svc.image = Some(ctx.non_empty_string(v, &kp, Some(key))?),
                "memory" => {
                    svc.memory_mb = Some(ctx.positive_int(v, &kp, "a whole number of megabytes")?)
                }
                _ => svc.wait = ctx.bool(v, &kp)?,
            }
        }
        if !svc.wait && !svc.provision.is_empty() {
            return Err(ctx.invalid_with_fix(
                value,
                &p,
                "provision runs once the service is ready, so it needs the wait",
                "To fix: remove wait: false or the provision list.",
            ));
        }
        out.insert(name.to_owned(), svc);
    }
    Ok(out)
}

/// A YAML subtree as JSON, scalars resolved by the core schema.
fn to_json(node: &crate::yaml::Node) -> serde_json::Value {
    use crate::yaml::{Resolved, Value};
    match &node.value {
        Value::Seq(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.text().unwrap_or_default().to_owned(), to_json(v)))
                .collect(),
        ),
        Value::Scalar { .. } => match node.resolve() {
            Some(Resolved::Null) | None => serde_json::Value::Null,
            Some(Resolved::Bool(b)) => serde_json::Value::Bool(b),
            Some(Resolved::Int(i)) => i64::try_from(i)
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| serde_json::Value::String(i.to_string())),
            Some(Resolved::Float(f)) => serde_json::Number::from_f64(f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Some(Resolved::Str(text)) => serde_json::Value::String(text.to_owned()),
        },
    }
}
