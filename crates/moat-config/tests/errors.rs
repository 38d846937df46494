//! Every kind of error moat.yaml can produce, as the user sees it.
//!
//! Each snapshot lists inputs and the resulting message, so a wording
//! change shows up as one readable diff.

use std::fmt::Write as _;
use std::path::Path;

use insta::assert_snapshot;
use moat_config::{parse, ConfigError, Mount, ProjectConfig};

fn try_parse(yaml: &str) -> Result<ProjectConfig, ConfigError> {
    parse(yaml, Path::new("moat.yaml"), Path::new("/ws"))
}

/// Renders each case as its YAML followed by the error it produced.
fn report(cases: &[&str]) -> String {
    let mut out = String::new();
    for yaml in cases {
        let result = match try_parse(yaml) {
            Ok(cfg) => format!("UNEXPECTEDLY OK: {cfg:?}"),
            Err(e) => with_fix(&e),
        };
        let _ = writeln!(out, "{}\n=> {result}\n", yaml.trim_end());
    }
    out
}

/// The error's message, then its fix (as the binary prints it, apart).
fn with_fix(error: &ConfigError) -> String {
    match moat_hint::Hint::hint(error) {
        Some(fix) => format!("{error}\n   fix: {fix}"),
        None => error.to_string(),
    }
}

#[test]
fn yaml_syntax() {
    assert_snapshot!(report(&[
        "name: demo\ngrants: [github\n",
        "name: demo\n  env: x\n",
        "name: \"unterminated\n",
        "name: a\nname: b\n",
        "a: &x 1\nb: *x\n",
        "memory: !!int 5\n",
        "name: a\n---\nname: b\n",
    ]));
}

#[test]
fn unknown_and_unsupported_keys() {
    assert_snapshot!(report(&[
        "name: demo\n\nnetwrok:\n  policy: strict\n",
        "nmae: demo\n",
        "zzzzzz: 1\n",
        "network:\n  polcy: strict\n",
        "secrets:\n  TOKEN: op://vault/item/field\n",
        "network:\n  keep_policy: pack\n",
        "container:\n  ulimits: {}\n",
        "hooks:\n  pre_start: echo\n",
        "mounts:\n  - {source: ., target: /x, readonly: true}\n",
    ]));
}

#[test]
fn wrong_types() {
    assert_snapshot!(report(&[
        "- name\n",
        "name: 42\n",
        "env:\n  PORT: 8080\n",
        "env:\n  DEBUG: true\n",
        "env:\n  EMPTY:\n",
        "env:\n  LIST: [a]\n",
        "env: [A=1]\n",
        "grants: github\n",
        "grants: [1]\n",
        "interactive: yes\n",
        "command: npm test\n",
        "command: {a: b}\n",
        "container:\n  memory: 4GB\n",
        "container:\n  cpus: many\n",
        "hooks:\n  pre_run: 1\n",
    ]));
}

#[test]
fn invalid_values() {
    assert_snapshot!(report(&[
        "name: My App\n",
        "name: \"\"\n",
        "agent: \"  \"\n",
        "grants: [github, \"ssh:*.x.com\", \"vault:x\"]\n",
        "grants: [github, \"oauth:notion\"]\n",
        "env:\n  1BAD: x\n",
        "command: []\n",
        "runtime: kubernetes\n",
        "sandbox: gvisor\n",
        "sandbox: false\n",
        "base_image: \"\"\n",
        "container:\n  memory: 0\n",
        "container:\n  cpus: -1\n",
        "container:\n  cpus: .nan\n",
    ]));
}

#[test]
fn network() {
    assert_snapshot!(report(&[
        "network:\n  policy: strcit\n",
        "network:\n  policy: 1\n",
        "network:\n  rules:\n    - api.github.com\n    - api.github.com:443\n",
        "network:\n  policy: strict\n  rules:\n    - api.github.com\n    - example.com:\n        - allow GET /x\n        - alow GET /x\n",
        "network:\n  rules:\n    - api.github.com:\n        - allow get /x\n",
        "network:\n  rules:\n    - \"*.example.com\": allow GET /x\n",
        "network:\n  rules:\n    - [a]\n",
        "network:\n  host: [8080, 70000]\n",
        "network:\n  host: [0]\n",
        "network:\n  host: [\"8080\"]\n",
        "network:\n  host: [3000, 3000]\n",
        "network: strict\n",
    ]));
}

#[test]
fn mounts() {
    assert_snapshot!(report(&[
        "mounts:\n  - data\n",
        "mounts:\n  - data:relative\n",
        "mounts:\n  - data:/data:rx\n",
        "mounts:\n  - ~/.cache:/cache\n",
        "mounts:\n  - a:/data\n  - b:/data/\n",
        "mounts:\n  - {source: a, target: /a}\n  - source: b\n",
        "mounts:\n  - {target: /a}\n",
        "mounts:\n  - {source: a, target: /a, mode: readonly}\n",
        "mounts:\n  - {source: a, target: /a, exclude: [/abs]}\n",
        "mounts:\n  - {source: a, target: /a, exclude: [../up]}\n",
        "mounts:\n  - {source: a, target: /a, exclude: [.]}\n",
        "mounts:\n  - source: a\n    target: /a\n    exclude:\n      - node_modules\n      - ./node_modules/\n",
        "mounts:\n  - source: a\n    target: /a\n    exclude:\n      - node_modules\n      - node_modules/.cache\n",
        "mounts:\n  - source: a\n    target: /a\n    exclude:\n      - build/cache\n      - build\n",
        "mounts:\n  - 5\n",
    ]));
}

#[test]
fn dependencies_and_services() {
    assert_snapshot!(report(&[
        "dependencies: [node@22, docker]\n",
        "dependencies: [\"brew:jq\"]\n",
        "dependencies: [\"node@>=20\"]\n",
        "dependencies: [\"docker:sock\"]\n",
        "services:\n  postgres:\n    memory: 512\n",
        "dependencies: [\"npm:postgres\"]\nservices:\n  postgres: {}\n",
        "dependencies: [postgres@17]\nservices:\n  postgres:\n    models: [x]\n",
        "dependencies: [postgres@17]\nservices:\n  postgres:\n    env:\n      POSTGRES_PORT: 5432\n",
        "dependencies: [postgres@17]\nservices:\n  postgres:\n    wait: no\n",
        "dependencies: [postgres@17]\nservices:\n  postgres:\n    memory: -5\n",
        "dependencies: [postgres@17]\nservices:\n  postgres:\n    wait: false\n    provision: [\"psql -c 'select 1'\"]\n",
        "dependencies: [postgres@17]\nservices:\n  postgres:\n    provision: [\"  \"]\n",
        "dependencies: [postgres@17]\nservices:\n  postgres:\n    provision: psql\n",
    ]));
}

#[test]
fn mcp() {
    assert_snapshot!(report(&[
        "mcp:\n  - linear\n",
        "mcp:\n  - name: linear\n",
        "mcp:\n  - url: https://mcp.linear.app/mcp\n",
        "mcp:\n  - name: local\n    url: http://example.com/mcp\n",
        "mcp:\n  - name: x\n    url: notaurl\n",
        "mcp:\n  - {name: a, url: \"https://a.example/mcp\"}\n  - {name: a, url: \"https://b.example/mcp\"}\n",
        "mcp:\n  - name: a\n    url: https://a.example/mcp\n    auth:\n      grant: mcp:a\n",
        "mcp:\n  - name: a\n    url: https://a.example/mcp\n    auth:\n      header: Authorization\n",
        "mcp:\n  - name: a\n    url: https://a.example/mcp\n    auth: {grant: mcp:a, header: \"Bad Header\"}\n",
        "mcp:\n  - name: a/b\n    url: https://a.example/mcp\n",
        "mcp:\n  - name: a\n    url: https://a.example/mcp\n    policy: linear-readonly\n",
    ]));
}

#[test]
fn cli_specs() {
    let mut out = String::new();
    for spec in ["data", "data:rel", "a:/b:rx", ":/b", "~/x:/x"] {
        let r = Mount::parse_cli(spec, Path::new("/ws"));
        let _ = writeln!(
            out,
            "{spec} => {}",
            r.map_or_else(|e| with_fix(&e), |m| format!("{m:?}"))
        );
    }
    for spec in ["docker", "brew:jq", "Node@1"] {
        let r = moat_config::Dependency::parse(spec);
        let _ = writeln!(
            out,
            "{spec} => {}",
            r.map_or_else(|e| with_fix(&e), |d| d.to_string())
        );
    }
    assert_snapshot!(out);
}

#[test]
fn errors_know_their_line() {
    let Err(e) = try_parse("name: demo\n\n\nnetwork:\n  policy: strcit\n") else {
        panic!("expected an error");
    };
    assert_eq!(e.line(), Some(5));
}

#[test]
fn the_file_is_named_as_given() {
    let result = parse(
        "nmae: x\n",
        Path::new("sub/dir/moat.yaml"),
        Path::new("sub/dir"),
    );
    let Err(e) = result else {
        panic!("expected an error");
    };
    assert!(e.to_string().starts_with("sub/dir/moat.yaml:1: "), "{e}");
}

#[test]
fn ports() {
    assert_snapshot!(report(&[
        "ports:\n  web: 0\n",
        "ports:\n  web: 70000\n",
        "ports:\n  web: \"3000\"\n",
        "ports:\n  Web: 3000\n",
        "ports:\n  my_web: 3000\n",
        "ports:\n  web-: 3000\n",
        "ports: [3000]\n",
        "name: my_run\n",
    ]));
}
