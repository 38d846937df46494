use std::path::{Component, Path, PathBuf};

use crate::{ConfigError, Mount};

const MOUNT_SYNTAX: &str = "expected SRC:DST[:ro|rw]";

impl Mount {
    /// Parses a `-m/--mount SRC:DST[:ro|rw]` flag; a relative `SRC` is
    /// resolved against `workspace`.
    pub fn parse_cli(spec: &str, workspace: &Path) -> Result<Mount, ConfigError> {
        parse_mount_string(spec, workspace).map_err(|message| ConfigError::InvalidSpec {
            what: "mount",
            spec: spec.to_owned(),
            message,
        })
    }
}

/// Parses a protected workspace path the sandbox may write anyway
/// (`--allow-write PATH`, moat.yaml `allow_write:`): relative to the
/// workspace, without `..`; `./` and trailing slashes are dropped.
pub fn parse_allow_write(spec: &str) -> Result<PathBuf, ConfigError> {
    allow_write_path(spec).map_err(|message| ConfigError::InvalidSpec {
        what: "allow-write path",
        spec: spec.to_owned(),
        message,
    })
}

pub(crate) fn allow_write_path(spec: &str) -> Result<PathBuf, String> {
    let path = Path::new(spec);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(
                    "write it relative to the workspace (e.g. .vscode or .git/config)".into(),
                )
            }
            Component::ParentDir => {
                return Err("'..' is not allowed: the path must stay inside the workspace".into())
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("name a path inside the workspace (e.g. .vscode or .git/config)".into());
    }
    Ok(out)
}

/// The string form shared by moat.yaml and the CLI.
pub(crate) fn parse_mount_string(spec: &str, workspace: &Path) -> Result<Mount, String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, read_only) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, mode] => (*src, *dst, parse_mode(mode)?),
        [_] => return Err(format!("missing :DST; {MOUNT_SYNTAX}")),
        _ => {
            return Err(format!(
                "too many ':'; {MOUNT_SYNTAX} (use the object form for paths containing ':')"
            ))
        }
    };
    let (source, relative) = resolve_source(src, workspace)?;
    Ok(Mount {
        source,
        target: check_target(dst)?,
        read_only,
        exclude: Vec::new(),
        relative,
    })
}

pub(crate) fn parse_mode(mode: &str) -> Result<bool, String> {
    match mode {
        "ro" => Ok(true),
        "rw" => Ok(false),
        _ => Err(format!("mode must be \"ro\" or \"rw\", found {mode:?}")),
    }
}

/// The absolute source, and whether it was written relative to the
/// workspace. A relative source must stay inside the workspace: `../x`
/// would reach whatever sits beside the project, and moat.yaml is a file a
/// sandboxed agent can write.
pub(crate) fn resolve_source(src: &str, workspace: &Path) -> Result<(PathBuf, bool), String> {
    if src.is_empty() {
        return Err(format!("the source is empty; {MOUNT_SYNTAX}"));
    }
    if src.starts_with('~') {
        return Err(format!(
            "source {src:?}: ~ is not expanded; write the absolute path"
        ));
    }
    if Path::new(src).is_absolute() {
        return Ok((normalize(Path::new(src)), false));
    }
    let workspace = normalize(workspace);
    let source = normalize(&workspace.join(src));
    if !source.starts_with(&workspace) {
        return Err(format!(
            "source {src:?} leaves the workspace (it is {}); a relative source must stay inside \
             the project. Write the absolute path to mount something outside it",
            source.display()
        ));
    }
    Ok((source, true))
}

/// Inside the sandbox, moat's own: a mount there could stand in for what
/// moat relies on (a container's entrypoint waits there for its firewall).
const MOAT_OWN_DIR: &str = "/run/moat";

pub(crate) fn check_target(dst: &str) -> Result<PathBuf, String> {
    if dst.is_empty() {
        return Err(format!("the target is empty; {MOUNT_SYNTAX}"));
    }
    let path = Path::new(dst);
    if !path.is_absolute() {
        return Err(format!(
            "target {dst:?} must be an absolute path inside the sandbox, like /data"
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("target {dst:?} must not contain .."));
    }
    let target = normalize(path);
    if target == Path::new("/") {
        return Err("the target cannot be / itself".to_owned());
    }
    if target.starts_with(MOAT_OWN_DIR) {
        return Err(format!(
            "target {dst:?} is under {MOAT_OWN_DIR}, where moat puts its own files (the proxy \
             socket, the SSH agent, the moat binary the sandbox starts with); choose another target"
        ));
    }
    Ok(target)
}

pub(crate) fn check_exclude(exclude: &str) -> Result<PathBuf, String> {
    let path = Path::new(exclude);
    if exclude.is_empty() {
        return Err("an exclude path is empty".to_owned());
    }
    if path.is_absolute() {
        return Err(format!(
            "exclude {exclude:?} must be relative to the mount target, like node_modules"
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "exclude {exclude:?} must stay inside the mount (no ..)"
        ));
    }
    let normalized = normalize(path);
    if normalized.as_os_str().is_empty() {
        return Err(format!(
            "exclude {exclude:?} names the whole mount; remove the mount instead"
        ));
    }
    Ok(normalized)
}

/// Removes `.` and resolves `..` lexically: the source may not exist yet,
/// and following symlinks here would check the wrong machine's view anyway.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_write_paths_stay_inside_the_workspace() {
        assert_eq!(
            allow_write_path("./.vscode/").unwrap(),
            Path::new(".vscode")
        );
        assert_eq!(
            allow_write_path(".git/config").unwrap(),
            Path::new(".git/config")
        );
        assert!(allow_write_path("/etc").unwrap_err().contains("relative"));
        assert!(allow_write_path("a/../../b").unwrap_err().contains("'..'"));
        assert!(allow_write_path(".").is_err());
        assert!(parse_allow_write("").is_err());
    }

    fn ok(spec: &str) -> Mount {
        match Mount::parse_cli(spec, Path::new("/ws")) {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        }
    }

    fn err(spec: &str) -> String {
        match Mount::parse_cli(spec, Path::new("/ws")) {
            Ok(m) => panic!("{spec} parsed as {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_modes_and_resolves_relative_sources() {
        let m = ok("data:/data");
        assert_eq!(m.source, Path::new("/ws/data"));
        assert_eq!(m.target, Path::new("/data"));
        assert!(!m.read_only);
        assert!(ok("/etc/x:/x:ro").read_only);
        assert!(!ok("/etc/x:/x:rw").read_only);
        assert!(m.relative);
        assert_eq!(ok("./cache/../a/:/c/").source, Path::new("/ws/a"));
        assert_eq!(ok("./cache/../a/:/c/").target, Path::new("/c"));
        assert_eq!(ok(".:/src").source, Path::new("/ws"));
        let absolute = ok("/etc/../srv/x:/x");
        assert_eq!(absolute.source, Path::new("/srv/x"));
        assert!(!absolute.relative);
    }

    #[test]
    fn rejects_bad_specs() {
        assert_eq!(
            err("data"),
            "invalid mount \"data\": missing :DST; expected SRC:DST[:ro|rw]"
        );
        assert!(err("a:b").contains("must be an absolute path"));
        assert!(err("a:/b:rx").contains("mode must be \"ro\" or \"rw\""));
        assert!(err("a:/b:ro:x").contains("too many ':'"));
        assert!(err(":/b").contains("source is empty"));
        assert!(err("a:").contains("target is empty"));
        assert!(err("~/x:/x").contains("~ is not expanded"));
        assert!(err("a:/x/../y").contains("must not contain .."));
        assert!(err("a:/").contains("cannot be /"));
        assert!(err("/tmp/gate:/run/moat/bin/moat").contains("where moat puts its own files"));
        assert!(err("/tmp:/run/moat").contains("where moat puts its own files"));
        assert_eq!(ok("/tmp:/run/moatish").target, Path::new("/run/moatish"));
        assert_eq!(
            err("../cache:/c"),
            "invalid mount \"../cache:/c\": source \"../cache\" leaves the workspace (it is \
             /cache); a relative source must stay inside the project. Write the absolute path \
             to mount something outside it"
        );
        assert!(err("data/../../x:/c").contains("leaves the workspace"));
    }

    #[test]
    fn excludes() {
        assert_eq!(
            check_exclude("./node_modules/"),
            Ok(PathBuf::from("node_modules"))
        );
        assert!(check_exclude("/abs").is_err());
        assert!(check_exclude("../up").is_err());
        assert!(check_exclude("").is_err());
        assert!(check_exclude(".").is_err());
    }
}
