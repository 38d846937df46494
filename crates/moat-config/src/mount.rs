use std::path::{Component, Path, PathBuf};

use crate::reserved::MOAT_OWN_DIR;
use crate::{ConfigError, Mount, SpecError};

impl Mount {
    /// Parses a `-m/--mount SRC:DST[:ro|rw]` flag; a relative `SRC` is
    /// resolved against `workspace`.
    pub fn parse_cli(spec: &str, workspace: &Path) -> Result<Mount, ConfigError> {
        parse_mount_string(spec, workspace).map_err(|error| ConfigError::InvalidSpec {
            what: "mount",
            spec: spec.to_owned(),
            error: Box::new(error),
        })
    }
}

/// Parses a protected workspace path the sandbox may write anyway
/// (`--allow-write PATH`, moat.yaml `allow_write:`): relative to the
/// workspace, without `..`; `./` and trailing slashes are dropped.
pub fn parse_allow_write(spec: &str) -> Result<PathBuf, ConfigError> {
    allow_write_path(spec).map_err(|error| ConfigError::InvalidSpec {
        what: "allow-write path",
        spec: spec.to_owned(),
        error: Box::new(error),
    })
}

pub(crate) fn allow_write_path(spec: &str) -> Result<PathBuf, SpecError> {
    let path = Path::new(spec);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(SpecError::AllowWriteAbsolute),
            Component::ParentDir => return Err(SpecError::AllowWriteParent),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(SpecError::AllowWriteEmpty);
    }
    Ok(out)
}

/// The string form shared by moat.yaml and the CLI.
pub(crate) fn parse_mount_string(spec: &str, workspace: &Path) -> Result<Mount, SpecError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, read_only) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, mode] => (*src, *dst, parse_mode(mode)?),
        [_] => return Err(SpecError::MissingTarget),
        _ => return Err(SpecError::TooManyColons),
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

pub(crate) fn parse_mode(mode: &str) -> Result<bool, SpecError> {
    match mode {
        "ro" => Ok(true),
        "rw" => Ok(false),
        _ => Err(SpecError::Mode {
            mode: mode.to_owned(),
        }),
    }
}

/// The absolute source, and whether it was written relative to the
/// workspace. A relative source must stay inside the workspace: `../x`
/// would reach whatever sits beside the project, and moat.yaml is a file a
/// sandboxed agent can write.
pub(crate) fn resolve_source(src: &str, workspace: &Path) -> Result<(PathBuf, bool), SpecError> {
    if src.is_empty() {
        return Err(SpecError::EmptySource);
    }
    if src.starts_with('~') {
        return Err(SpecError::Tilde {
            given: src.to_owned(),
        });
    }
    if Path::new(src).is_absolute() {
        return Ok((normalize(Path::new(src)), false));
    }
    let workspace = normalize(workspace);
    let source = normalize(&workspace.join(src));
    if !source.starts_with(&workspace) {
        return Err(SpecError::LeavesWorkspace {
            given: src.to_owned(),
            resolved: source,
        });
    }
    Ok((source, true))
}

pub(crate) fn check_target(dst: &str) -> Result<PathBuf, SpecError> {
    if dst.is_empty() {
        return Err(SpecError::EmptyTarget);
    }
    let target = || dst.to_owned();
    let path = Path::new(dst);
    if !path.is_absolute() {
        return Err(SpecError::TargetRelative { target: target() });
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::TargetParent { target: target() });
    }
    let normalized = normalize(path);
    if normalized == Path::new("/") {
        return Err(SpecError::TargetRoot);
    }
    if normalized.starts_with(MOAT_OWN_DIR) {
        return Err(SpecError::TargetMoatOwn { target: target() });
    }
    Ok(normalized)
}

pub(crate) fn check_exclude(exclude: &str) -> Result<PathBuf, SpecError> {
    let path = Path::new(exclude);
    let named = || exclude.to_owned();
    if exclude.is_empty() {
        return Err(SpecError::EmptyExclude);
    }
    if path.is_absolute() {
        return Err(SpecError::ExcludeAbsolute { exclude: named() });
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(SpecError::ExcludeParent { exclude: named() });
    }
    let normalized = normalize(path);
    if normalized.as_os_str().is_empty() {
        return Err(SpecError::ExcludeWholeMount { exclude: named() });
    }
    Ok(normalized)
}

/// Checks that `exclude` (as written: `given`) neither repeats nor
/// overlaps one of the mount's `earlier` excludes: one tmpfs inside
/// another would hide nothing more, and a runtime would mount them in an
/// order that decides which one is seen.
pub(crate) fn check_exclude_among(
    exclude: &Path,
    given: &str,
    earlier: &[PathBuf],
) -> Result<(), SpecError> {
    let shown = |p: &Path| p.display().to_string();
    for other in earlier {
        if other == exclude {
            return Err(SpecError::ExcludeRepeated {
                exclude: given.to_owned(),
            });
        }
        if exclude.starts_with(other) {
            return Err(SpecError::ExcludeInside {
                exclude: given.to_owned(),
                other: shown(other),
            });
        }
        if other.starts_with(exclude) {
            return Err(SpecError::ExcludeContains {
                exclude: given.to_owned(),
                other: shown(other),
            });
        }
    }
    Ok(())
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
        let absolute = allow_write_path("/etc").unwrap_err();
        assert_eq!(absolute.to_string(), "the path is absolute");
        assert_eq!(
            moat_hint::Hint::hint(&absolute).unwrap().as_str(),
            "To fix: write it relative to the workspace (e.g. .vscode or .git/config)."
        );
        assert!(allow_write_path("a/../../b")
            .unwrap_err()
            .to_string()
            .contains("'..'"));
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
             /cache); a relative source must stay inside the project."
        );
        let leaves = Mount::parse_cli("../cache:/c", Path::new("/ws")).unwrap_err();
        assert_eq!(
            moat_hint::Hint::hint(&leaves).unwrap().as_str(),
            "To fix: write the absolute path to mount something outside it."
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
        let earlier = [PathBuf::from("node_modules"), PathBuf::from("a/b")];
        let among = |e: &str| check_exclude_among(&check_exclude(e).unwrap(), e, &earlier);
        assert_eq!(among("node_modules_x"), Ok(()));
        assert_eq!(among("a/bc"), Ok(()));
        assert!(matches!(
            among("./node_modules/"),
            Err(SpecError::ExcludeRepeated { .. })
        ));
        assert!(matches!(
            among("node_modules/.bin"),
            Err(SpecError::ExcludeInside { .. })
        ));
        assert!(matches!(among("a"), Err(SpecError::ExcludeContains { .. })));
    }
}
