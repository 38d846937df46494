//! `snapshots:` in moat.yaml.

use std::path::Path;

use moat_config::{parse, ConfigError, ProjectConfig, SnapshotConfig};

fn try_parse(yaml: &str) -> Result<ProjectConfig, ConfigError> {
    parse(yaml, Path::new("moat.yaml"), Path::new("/ws"))
}

fn snapshots(yaml: &str) -> SnapshotConfig {
    match try_parse(yaml) {
        Ok(cfg) => cfg.snapshots,
        Err(e) => panic!("{e}"),
    }
}

fn error(yaml: &str) -> String {
    match try_parse(yaml) {
        Ok(cfg) => panic!("unexpectedly ok: {:?}", cfg.snapshots),
        Err(e) => e.to_string(),
    }
}

#[test]
fn pre_run_snapshots_are_on_by_default() {
    let s = snapshots("name: demo\n");
    assert!(s.pre_run());
    assert_eq!(s, SnapshotConfig::default());
}

#[test]
fn snapshots_can_be_disabled_wholly_or_the_pre_run_trigger_alone() {
    assert!(!snapshots("snapshots: {disabled: true}\n").pre_run());
    assert!(!snapshots("snapshots:\n  triggers:\n    disable_pre_run: true\n").pre_run());
    let s = snapshots(
        "snapshots:\n  triggers:\n    disable_git_commits: true\n    disable_idle: true\n    \
         disable_builds: true\n  exclude:\n    additional: [node_modules, ./target/, .cache/x]\n",
    );
    assert!(s.pre_run());
    assert_eq!(s.exclude, ["node_modules", "target", ".cache/x"]);
}

#[test]
fn snapshot_keys_are_checked_with_their_line() {
    assert_eq!(
        error("name: a\nsnapshots:\n  disabled: yes please\n"),
        "moat.yaml:3: snapshots.disabled: expected true or false, found the string \"yes please\""
    );
    assert!(
        error("snapshots:\n  triggers:\n    disable_pre_runs: true\n")
            .starts_with("moat.yaml:3: unknown key \"disable_pre_runs\" in snapshots.triggers")
    );
    assert_eq!(
        error("snapshots:\n  exclude:\n    additional: [/etc]\n"),
        "moat.yaml:3: snapshots.exclude.additional[0]: must be a path inside the workspace, \
         found \"/etc\""
    );
    assert!(error("snapshots:\n  retention:\n    max_count: 3\n").starts_with("moat.yaml:2:"));
}
