//! A refused change as the user is shown it: [`Review`], made of what
//! differs from the accepted state ([`Change`]) and the run blamed for it
//! ([`Culprit`]).

use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use moat_config::{KeyChange, CONFIG_FILE_NAMES};
use serde::{Deserialize, Serialize};

/// A refused change, for the error message or a prompt.
#[derive(Debug, Clone)]
pub struct Review {
    /// The workspace.
    pub workspace: PathBuf,
    /// The run blamed.
    pub culprit: Culprit,
    /// What differs from the accepted state.
    pub changes: Vec<Change>,
    /// The digest of what was shown, for [`crate::accept`].
    pub digest: String,
}

impl Review {
    /// "moat.yaml in /p changed while run run_x (name) had the workspace
    /// mounted".
    pub fn summary(&self) -> String {
        let what = subject(&self.changes);
        let run = format!("run {} ({})", self.culprit.run_id, self.culprit.run_name);
        let mounted = match &self.culprit.workspace {
            Some(outer) => format!("{} mounted, which contains it", outer.display()),
            None => "the workspace mounted".to_owned(),
        };
        let when = match self.culprit.how {
            RunEnd::Open => format!("while {run} has {mounted}"),
            RunEnd::Ended => format!("while {run} had {mounted}"),
            RunEnd::Crashed => {
                format!("while {run} had {mounted} (it stopped without recording its end)")
            }
        };
        format!("{what} in {} changed {when}", self.workspace.display())
    }

    /// One line per change, indented.
    pub fn change_lines(&self) -> String {
        changes_text(&self.changes)
    }

    /// How the user settles it.
    pub fn fix(&self) -> String {
        format!(
            "To fix: review the changes, then run\n  moat trust {}\nor restore the version you \
             accepted.",
            self.workspace.display()
        )
    }
}

impl std::fmt::Display for Review {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, so moat will not apply it without your review.\n{}",
            self.summary(),
            self.change_lines().trim_end()
        )
    }
}

/// `  changed: …\n` for each change.
pub fn changes_text(changes: &[Change]) -> String {
    changes.iter().map(|c| format!("  {c}\n")).collect()
}

fn subject(changes: &[Change]) -> String {
    let mut files: Vec<&str> = Vec::new();
    let mut push = |name: &'static str| {
        if !files.contains(&name) {
            files.push(name);
        }
    };
    for change in changes {
        match change {
            Change::Key { file, .. } | Change::ConfigFile { file, .. } => {
                match moat_config::CONFIG_FILE_NAMES
                    .iter()
                    .find(|n| **n == file.as_str())
                {
                    Some(name) => push(name),
                    None => push("the config file"),
                }
            }
            Change::MoatDir { .. } => push(".moat/"),
            Change::MountSource { .. } => push("a mount source"),
        }
    }
    match files.as_slice() {
        [] => "moat's configuration".to_owned(),
        [one] => (*one).to_owned(),
        many => many.join(" and "),
    }
}

/// One difference between the accepted snapshot and the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A key of a config file.
    Key {
        /// `moat.yaml` or `agent.yaml`.
        file: String,
        /// What changed.
        change: KeyChange,
    },
    /// A config file as a whole: created, deleted, made a symlink,
    /// unparseable, or changed in comments and layout only.
    ConfigFile {
        /// `moat.yaml` or `agent.yaml`.
        file: String,
        /// How, in words.
        how: FileChange,
    },
    /// An entry under `.moat/`.
    MoatDir {
        /// `.moat/...`.
        path: String,
        /// How.
        how: FileChange,
    },
    /// A mount source now resolves somewhere else.
    MountSource {
        /// The source as moat.yaml names it (made absolute).
        source: PathBuf,
        /// Where it resolved when accepted.
        was: String,
        /// Where it resolves now.
        now: String,
    },
}

/// How a whole file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    /// Created.
    Added,
    /// Deleted.
    Removed,
    /// Its contents (or kind) changed.
    Changed,
    /// Its keys are the same: comments or layout only.
    FormattingOnly,
    /// One version is not valid YAML, so keys cannot be compared.
    NotYaml,
    /// Now a symlink (to this), or no longer one.
    Symlink(Option<String>),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Key { file, change } if file == CONFIG_FILE_NAMES[0] => write!(f, "{change}"),
            Change::Key { file, change } => write!(f, "{file}: {change}"),
            Change::ConfigFile { file, how } | Change::MoatDir { path: file, how } => match how {
                FileChange::Added => write!(f, "added: {file}"),
                FileChange::Removed => write!(f, "removed: {file}"),
                FileChange::Changed => write!(f, "changed: {file}"),
                FileChange::FormattingOnly => {
                    write!(f, "changed: {file} (comments or layout only)")
                }
                FileChange::NotYaml => write!(
                    f,
                    "changed: {file} (not valid YAML, so keys cannot be compared; read it)"
                ),
                FileChange::Symlink(Some(target)) => {
                    write!(f, "changed: {file} (now a symlink to {target})")
                }
                FileChange::Symlink(None) => write!(f, "changed: {file} (no longer a symlink)"),
            },
            Change::MountSource { source, was, now } => write!(
                f,
                "changed: mount source {} (now resolves to {now}; was {was})",
                source.display()
            ),
        }
    }
}

/// The run a refused change is blamed on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Culprit {
    /// Run id.
    pub run_id: String,
    /// Run name.
    pub run_name: String,
    /// Whether the run is still open, ended, or crashed.
    pub how: RunEnd,
    /// When it was seen to end (or, for an open run, when it started).
    pub at: DateTime<Utc>,
    /// The enclosing workspace it had mounted, when that is not the
    /// workspace judged (it wrote into a subdirectory of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
}

/// How the culprit run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunEnd {
    /// It still has the workspace mounted.
    Open,
    /// It ended and recorded its end.
    Ended,
    /// Its supervisor disappeared without recording an end (killed,
    /// crashed, machine rebooted).
    Crashed,
}
