//! Loading and validating a project's `moat.yaml`.
//!
//! [`load`] finds the file in a workspace (falling back to `agent.yaml`),
//! [`parse`] turns its text into a [`ProjectConfig`]. Every key is checked:
//! an unknown key, a value of the wrong type or a bad network rule is a
//! [`ConfigError`] naming the file, the line, the key path and the fix;
//! nothing is silently ignored.
//!
//! This crate owns the file format only. It must not touch credentials,
//! start anything or look at the network: what a grant or dependency
//! *means* belongs to the crates that use them. Network rules are parsed
//! with `moat-policy`, so the grammar lives in one place.
//!
//! YAML is read with `saphyr-parser` into a small positioned tree
//! (`yaml.rs`) rather than through serde, because good messages need the
//! position of every key and whether a scalar was quoted.

mod diff;
mod error;
mod mount;
mod reserved;
mod schema;
mod spec;
mod suggest;
mod types;
mod yaml;

use std::path::{Path, PathBuf};

pub use crate::diff::{diff_keys, KeyChange};
pub use crate::error::{ConfigError, SpecError};
pub use crate::mount::parse_allow_write;
pub use crate::spec::{is_dns_label, parse_port_flag};
pub use crate::types::{
    ContainerLimits, Dependency, DependencyKind, Hooks, McpAuth, McpServer, Mount, NetworkConfig,
    ProjectConfig, RuntimeKind, SandboxMode, ServiceConfig, SnapshotConfig, UnknownRuntime,
    UnknownWorkspaceMode, WorkspaceMode,
};

/// File names looked up in the workspace, in order.
pub const CONFIG_FILE_NAMES: [&str; 2] = ["moat.yaml", "agent.yaml"];

/// The largest config file moat reads. A run can write the workspace, so
/// moat.yaml may be anything by the next run: a settings file stays far
/// below this, an 8 GB file or `/dev/zero` behind a link is refused.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The bytes of config file `name` in `workspace`, `None` when absent:
/// a regular file of at most [`MAX_CONFIG_BYTES`], no link followed.
pub fn read_config_file(workspace: &Path, name: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    Ok(moat_home::read_bounded(
        workspace,
        Path::new(name),
        MAX_CONFIG_BYTES,
    )?)
}

/// A config file as read once for a run: which file, its bytes, and
/// what they say. The bytes let the run check, as it opens, that the file
/// is still the one it was planned from (see `moat_trust::ConfigUsed`).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// `moat.yaml` or `agent.yaml`.
    pub name: &'static str,
    /// The file's bytes as read.
    pub bytes: Vec<u8>,
    /// What they say.
    pub config: ProjectConfig,
}

/// Reads `workspace/moat.yaml`, or `workspace/agent.yaml` if there is no
/// `moat.yaml`, keeping the bytes read. `Ok(None)` when neither exists.
pub fn load_with_source(workspace: &Path) -> Result<Option<LoadedConfig>, ConfigError> {
    for name in CONFIG_FILE_NAMES {
        let file = workspace.join(name);
        let Some(bytes) = read_config_file(workspace, name)? else {
            continue;
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| ConfigError::Read {
            file: file.clone(),
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is not UTF-8 text",
            ),
        })?;
        let config = parse(text, &file, workspace)?;
        return Ok(Some(LoadedConfig {
            name,
            bytes,
            config,
        }));
    }
    Ok(None)
}

/// Reads `workspace/moat.yaml`, or `workspace/agent.yaml` if there is no
/// `moat.yaml`. `Ok(None)` when neither exists.
pub fn load(workspace: &Path) -> Result<Option<ProjectConfig>, ConfigError> {
    Ok(load_with_source(workspace)?.map(|loaded| loaded.config))
}

/// Parses and validates the text of a config file. `file` is only used in
/// messages, as given; relative mount sources are resolved against
/// `workspace` (made absolute first).
pub fn parse(text: &str, file: &Path, workspace: &Path) -> Result<ProjectConfig, ConfigError> {
    let root = yaml::parse(text).map_err(|e| ConfigError::Syntax {
        file: file.to_owned(),
        line: e.line,
        column: e.col,
        message: e.message,
    })?;
    // `absolute` only fails for an empty path or a vanished cwd; the
    // workspace as given is still the best answer then.
    let workspace: PathBuf =
        std::path::absolute(workspace).unwrap_or_else(|_| workspace.to_owned());
    let ctx = schema::Ctx {
        file,
        workspace: &workspace,
    };
    schema::project(&ctx, root.as_ref())
}
