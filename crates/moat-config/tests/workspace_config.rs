//! `workspace:` in moat.yaml (`mode: bind|volume`).

use std::path::Path;

use moat_config::{parse, ConfigError, ProjectConfig, WorkspaceMode};

fn try_parse(yaml: &str) -> Result<ProjectConfig, ConfigError> {
    parse(yaml, Path::new("moat.yaml"), Path::new("/ws"))
}

fn mode(yaml: &str) -> WorkspaceMode {
    match try_parse(yaml) {
        Ok(cfg) => cfg.workspace_mode,
        Err(e) => panic!("{e}"),
    }
}

fn error(yaml: &str) -> String {
    match try_parse(yaml) {
        Ok(cfg) => panic!("unexpectedly ok: {:?}", cfg.workspace_mode),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bind_is_the_default_and_volume_is_read() {
    assert_eq!(mode("name: demo\n"), WorkspaceMode::Bind);
    assert_eq!(mode("workspace:\n"), WorkspaceMode::Bind);
    assert_eq!(mode("workspace: {mode: bind}\n"), WorkspaceMode::Bind);
    assert_eq!(mode("workspace:\n  mode: volume\n"), WorkspaceMode::Volume);
}

#[test]
fn a_bad_mode_or_key_is_an_error_with_its_line() {
    assert_eq!(
        error("name: demo\nworkspace:\n  mode: copy\n"),
        "moat.yaml:3: workspace.mode: expected \"bind\" or \"volume\", found \"copy\""
    );
    let e = error("workspace:\n  mdoe: volume\n");
    assert!(e.starts_with("moat.yaml:2: unknown key \"mdoe\""), "{e}");
    let e = error("workspace:\n  mode: [volume]\n");
    assert!(e.starts_with("moat.yaml:2: workspace.mode:"), "{e}");
}
