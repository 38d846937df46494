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
    assert!(
        error("snapshots:\n  exclude:\n    ignore_gitignore: true\n").starts_with("moat.yaml:3:")
    );
    assert!(error("snapshots:\n  retention:\n    max_count: 0\n")
        .starts_with("moat.yaml:3: snapshots.retention.max_count: must be greater than 0"));
    assert!(
        error("snapshots:\n  triggers:\n    idle_threshold_seconds: soon\n")
            .starts_with("moat.yaml:3: snapshots.triggers.idle_threshold_seconds: expected")
    );
}

#[test]
fn git_commit_and_idle_triggers_and_retention_follow_the_reference_defaults() {
    let s = snapshots("name: demo\n");
    assert!(s.git_commits());
    assert_eq!(s.idle(), Some(std::time::Duration::from_secs(30)));
    assert_eq!(s.max_count(), 10);
    assert!(!s.delete_initial);
    let s = snapshots(
        "snapshots:\n  triggers:\n    disable_git_commits: true\n    idle_threshold_seconds: 5\n  \
         retention:\n    max_count: 3\n    delete_initial: true\n",
    );
    assert!(!s.git_commits());
    assert_eq!(s.idle(), Some(std::time::Duration::from_secs(5)));
    assert_eq!(s.max_count(), 3);
    assert!(s.delete_initial);
    let s = snapshots("snapshots:\n  triggers:\n    disable_idle: true\n");
    assert_eq!(s.idle(), None);
    assert!(s.git_commits());
    let s = snapshots("snapshots: {disabled: true}\n");
    assert!(!s.git_commits());
    assert_eq!(s.idle(), None);
}

#[test]
fn asking_for_the_build_trigger_is_an_error_not_a_silent_ignore() {
    let e = error("snapshots:\n  triggers:\n    disable_builds: false\n");
    assert!(
        e.starts_with("moat.yaml:3: snapshots.triggers.disable_builds: moat has no build trigger"),
        "{e}"
    );
    assert!(snapshots("snapshots:\n  triggers:\n    disable_builds: true\n").pre_run());
}
