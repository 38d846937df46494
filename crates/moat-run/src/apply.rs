//! `moat diff RUN [--apply]` for a copy-on-write run: what the run changed
//! (`moat-overlay`), and, applied to the workspace, the same guard as a
//! bind run's end: a git repository that the changes create comes back
//! disarmed (its hooks renamed, the configuration keys that run programs
//! removed, see `gitsweep`), so nothing the run made in its copy runs on
//! the host at the next `git commit` there.

use std::path::PathBuf;

use moat_home::MoatHome;
use moat_storage::RunStore;

/// What `moat diff` prints, and the notices of what applying disarmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffOutcome {
    /// The changes (`A/M/D PATH` lines or JSON), or the apply's summary.
    pub text: String,
    /// One line per created repository that was disarmed.
    pub notices: Vec<String>,
}

/// Lists what `run` (id, id prefix or name) changed in its copy and, with
/// `apply`, writes it into the workspace (see the module documentation).
pub fn diff_run(
    home: &MoatHome,
    run: &str,
    apply: bool,
    json: bool,
) -> Result<DiffOutcome, moat_overlay::OverlayError> {
    // Found again by `perform`, which reports a run that is not there.
    let workspace = apply
        .then(|| RunStore::new(home.clone()).find(Some(run), |_| true).ok())
        .flatten()
        .map(|meta| meta.workspace);
    let before: Option<Vec<PathBuf>> = workspace.as_deref().map(crate::protect::git_dirs);
    let text = moat_overlay::perform(home, run, apply, json)?;
    let notices = match (workspace, before) {
        (Some(workspace), Some(before)) => {
            let created: Vec<PathBuf> = crate::protect::git_dirs(&workspace)
                .into_iter()
                .filter(|g| !before.contains(g))
                .collect();
            crate::gitsweep::disarm_created(&workspace, &created)
        }
        _ => Vec::new(),
    };
    Ok(DiffOutcome { text, notices })
}
