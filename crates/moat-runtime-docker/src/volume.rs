//! Volume mode on Docker and Podman (`workspace.mode: volume`): the
//! workload's `/workspace` is a named volume, `moat-ws-<run-id>`, filled
//! with a copy of the host workspace before the command starts (the host
//! workspace is also shown read-only at `/mnt/host-workspace`). When the
//! run ends its tree is extracted into the run's directory
//! (`MOAT_HOME/runs/<id>/workspace-copy/tree`, with `excluded` listing the
//! workspace's excluded paths) for `moat diff`, and the volume is removed
//! with the container unless `--keep`.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use bollard::query_parameters::{
    DownloadFromContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;

use crate::connect::DockerRuntime;
use crate::error::DockerError;
use crate::spec::ContainerSpec;

/// Where the host workspace is shown, read-only, in volume mode.
pub(crate) const HOST_WORKSPACE: &str = "/mnt/host-workspace";

/// The run's workspace volume.
pub(crate) fn volume_name(run_id: &str) -> String {
    format!("moat-ws-{run_id}")
}

/// The extracted tree and the excluded-paths list in the copy directory.
pub(crate) const TREE: &str = "tree";
pub(crate) const EXCLUDED: &str = "excluded";

/// The host workspace as a tar archive for the volume, owned by the
/// container's user, without the protected paths (bound read-only from the
/// host over the volume) or the excluded ones (a tmpfs there). No link is
/// followed; set-id bits are dropped.
pub(crate) fn workspace_archive(spec: &ContainerSpec) -> Result<Vec<u8>, DockerError> {
    let skip: Vec<PathBuf> = spec
        .workload
        .protected
        .iter()
        .map(|p| p.path.clone())
        .chain(spec.workload.workspace_exclude.iter().cloned())
        .collect();
    pack(
        &spec.workload.workspace,
        &skip,
        spec.user.unwrap_or((0, 0)),
        Path::new("."),
    )
}

/// `root` as a tar archive under `prefix`, entries owned by `owner`,
/// `skip` (relative paths) left out. No link is followed; set-id bits are
/// dropped; FIFOs, sockets and devices are left out.
fn pack(
    root: &Path,
    skip: &[PathBuf],
    (uid, gid): (u32, u32),
    prefix: &Path,
) -> Result<Vec<u8>, DockerError> {
    let mut builder = tar::Builder::new(Vec::new());
    let header_for = |meta: &fs::Metadata| {
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.mode() & 0o1777);
        header.set_uid(uid.into());
        header.set_gid(gid.into());
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        header.set_size(0);
        header
    };
    // The top directory: the container user's, as the workspace is the
    // caller's.
    let top = fs::metadata(root).map_err(|e| io_at("reading", root, e))?;
    let mut header = header_for(&top);
    header.set_entry_type(tar::EntryType::Directory);
    builder
        .append_data(&mut header, prefix, std::io::empty())
        .map_err(|e| io_at("packing", root, e))?;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = fs::read_dir(&dir).map_err(|e| io_at("reading", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_at("reading", &dir, e))?;
            let rel = rel.join(entry.file_name());
            if skip.contains(&rel) {
                continue;
            }
            let (path, name) = (root.join(&rel), prefix.join(&rel));
            let meta = fs::symlink_metadata(&path).map_err(|e| io_at("reading", &path, e))?;
            let mut header = header_for(&meta);
            let packed = if meta.file_type().is_symlink() {
                header.set_entry_type(tar::EntryType::Symlink);
                let target = fs::read_link(&path).map_err(|e| io_at("reading", &path, e))?;
                builder.append_link(&mut header, &name, target)
            } else if meta.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                stack.push(rel.clone());
                builder.append_data(&mut header, &name, std::io::empty())
            } else if meta.is_file() {
                header.set_size(meta.len());
                let file = fs::File::open(&path).map_err(|e| io_at("reading", &path, e))?;
                builder.append_data(&mut header, &name, file)
            } else {
                continue;
            };
            packed.map_err(|e| io_at("packing", &path, e))?;
        }
    }
    builder
        .into_inner()
        .map_err(|e| DockerError::io("packing a directory", e))
}

fn io_at(what: &str, path: &Path, e: std::io::Error) -> DockerError {
    DockerError::io(format!("{what} {}", path.display()), e)
}

/// A path of the archive, relative and without `..`, below `workspace/`.
fn inside(path: &Path) -> Option<PathBuf> {
    let rel = path.strip_prefix("workspace").ok()?;
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| rel.to_path_buf())
}

/// Whether a directory on the way to `rel` under `root` is a symbolic link
/// (an archive could make one, then write through it).
fn through_link(root: &Path, rel: &Path) -> bool {
    let mut at = root.to_path_buf();
    let parents: Vec<_> = rel
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    parents.into_iter().any(|c| {
        at.push(c);
        fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
    })
}

/// Unpacks the container's `/workspace` archive into `tree`: files,
/// directories and links only, modes without set-id bits, nothing
/// outside `tree`.
pub(crate) fn unpack(archive: &[u8], tree: &Path, excluded: &[PathBuf]) -> std::io::Result<()> {
    fs::create_dir_all(tree)?;
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let Some(rel) = inside(&entry.path()?) else {
            continue;
        };
        if rel.as_os_str().is_empty() || excluded.iter().any(|e| rel.starts_with(e)) {
            continue;
        }
        if through_link(tree, &rel) {
            continue;
        }
        let dst = tree.join(&rel);
        // A repeated entry replaces the earlier one; nothing is written
        // through a link an earlier entry made.
        if fs::symlink_metadata(&dst).is_ok_and(|m| !m.is_dir()) {
            fs::remove_file(&dst)?;
        }
        let mode = entry.header().mode()? & 0o777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&dst)?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(mode | 0o700))?;
            }
            tar::EntryType::Regular => {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&dst)?;
                std::io::copy(&mut entry, &mut file)?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
            }
            tar::EntryType::Symlink => {
                if let Some(target) = entry.link_name()? {
                    std::os::unix::fs::symlink(target, &dst)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

impl DockerRuntime {
    /// Fills the created workload's workspace volume with the workspace.
    pub(crate) async fn fill_workspace(
        &self,
        created: &str,
        spec: &ContainerSpec,
    ) -> Result<(), DockerError> {
        let archive = workspace_archive(spec)?;
        self.docker
            .upload_to_container(
                created,
                Some(
                    UploadToContainerOptionsBuilder::new()
                        .path("/workspace")
                        .build(),
                ),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| DockerError::engine("copying the workspace into its volume", e))
    }

    /// Extracts the ended workload's `/workspace` into `copy/tree`.
    pub(crate) async fn extract_workspace(
        &self,
        container: &str,
        run_id: &str,
        copy: &Path,
        excluded: &[PathBuf],
    ) -> Result<(), DockerError> {
        let archive = match self.engine_kind() {
            // Podman's archive of a stopped container does not mount its
            // volumes: the volume is read where the engine keeps it.
            crate::connect::Engine::Podman => {
                let volume = self
                    .docker
                    .inspect_volume(&volume_name(run_id))
                    .await
                    .map_err(|e| DockerError::engine("finding the run's workspace volume", e))?;
                pack(
                    Path::new(&volume.mountpoint),
                    &[],
                    (0, 0),
                    Path::new("workspace"),
                )?
            }
            _ => self.download_workspace(container).await?,
        };
        let list: String = excluded
            .iter()
            .map(|e| format!("{}\n", e.display()))
            .collect();
        fs::create_dir_all(copy).map_err(|e| io_at("creating", copy, e))?;
        fs::set_permissions(copy, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_at("creating", copy, e))?;
        fs::write(copy.join(EXCLUDED), list).map_err(|e| io_at("writing", copy, e))?;
        unpack(&archive, &copy.join(TREE), excluded)
            .map_err(|e| io_at("unpacking the run's workspace into", copy, e))
    }

    /// The ended container's `/workspace` as a tar archive.
    async fn download_workspace(&self, container: &str) -> Result<Vec<u8>, DockerError> {
        let options = DownloadFromContainerOptionsBuilder::new()
            .path("/workspace")
            .build();
        let mut stream = self
            .docker
            .download_from_container(container, Some(options));
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                DockerError::engine("copying the run's workspace out of its volume", e)
            })?;
            archive.extend_from_slice(&chunk);
        }
        Ok(archive)
    }

    /// Removes the run's workspace volume (already gone is fine).
    pub(crate) async fn remove_workspace_volume(&self, run_id: &str) -> Result<(), DockerError> {
        let name = volume_name(run_id);
        let options = RemoveVolumeOptionsBuilder::new().force(true).build();
        match self.docker.remove_volume(&name, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(DockerError::engine(format!("removing volume {name}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn archive(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            // Names written raw: the builder refuses `..`, an archive
            // from a container need not.
            let mut header = tar::Header::new_old();
            let name = path.as_bytes();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.set_entry_type(*kind);
            header.set_mode(0o6755);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name(data).unwrap();
                header.set_size(0);
                header.set_cksum();
                builder.append(&header, std::io::empty()).unwrap();
            } else {
                header.set_size(data.len() as u64);
                header.set_cksum();
                builder.append(&header, data.as_bytes()).unwrap();
            }
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn nothing_is_written_outside_the_tree_or_set_id() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let outside_s = outside.display().to_string();
        let tar = archive(&[
            ("workspace/l", tar::EntryType::Symlink, &outside_s),
            ("workspace/l/x", tar::EntryType::Regular, "through a link"),
            (
                "workspace/f",
                tar::EntryType::Symlink,
                &format!("{outside_s}/g"),
            ),
            ("workspace/f", tar::EntryType::Regular, "replaces the link"),
            ("workspace/../escape", tar::EntryType::Regular, "up"),
            ("workspace/ok", tar::EntryType::Regular, "ok"),
        ]);
        let tree = t.path().join("tree");
        unpack(&tar, &tree, &[]).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert!(!t.path().join("escape").exists());
        assert_eq!(
            fs::read_to_string(tree.join("f")).unwrap(),
            "replaces the link"
        );
        let mode = fs::metadata(tree.join("ok")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }
}
