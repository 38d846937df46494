//! `moat open [run] [endpoint]`: the URL the daemon's routing serves a
//! run's endpoint at, and a browser for it when one is available.

use moat_home::MoatHome;
use moat_storage::RunStore;

/// Why there is no URL to open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No daemon, or one whose routing does not listen.
    #[error("the proxy daemon's routing is not listening, so no run's endpoints are reachable")]
    NoRouting,
    /// The run is not running.
    #[error("run {0} is not running")]
    NotRunning(String),
    /// The run declares no endpoint.
    #[error("run {0} serves no endpoint")]
    NoEndpoints(String),
    /// An endpoint the run does not have, or none named among several.
    #[error("run {run} has endpoints {known}; name one of them")]
    WhichEndpoint {
        /// The run.
        run: String,
        /// Its endpoints.
        known: String,
    },
    /// The run could not be found or read.
    #[error(transparent)]
    Storage(#[from] moat_storage::StorageError),
    /// The daemon could not be asked.
    #[error(transparent)]
    Daemon(#[from] moat_daemon::ClientError),
}

impl moat_hint::Hint for OpenError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            OpenError::NoRouting => Some(
                "Start a run with ports: (or --port NAME=PORT); if one runs, see moat proxy \
                 status and the daemon's log for why the routing port is taken \
                 (MOAT_ROUTING_LISTEN sets another)."
                    .into(),
            ),
            OpenError::NotRunning(_) => Some("See running runs with: moat list".into()),
            OpenError::NoEndpoints(_) => Some(
                "Declare one in moat.yaml (ports: {web: 3000}) or with --port web=3000.".into(),
            ),
            OpenError::WhichEndpoint { run, .. } => {
                Some(format!("For example: moat open {run} <endpoint>").into())
            }
            OpenError::Storage(e) => e.hint(),
            OpenError::Daemon(e) => e.hint(),
        }
    }
}

/// The URL of `endpoint` of `run` (the only endpoint when `None`), or of
/// the index of running runs when `run` is `None`.
pub async fn endpoint_url(
    home: &MoatHome,
    run: Option<&str>,
    endpoint: Option<&str>,
) -> Result<String, OpenError> {
    let client = moat_daemon::DaemonClient::connect_existing(home)
        .await?
        .ok_or(OpenError::NoRouting)?;
    let port = client
        .status()
        .await?
        .routing_port
        .ok_or(OpenError::NoRouting)?;
    let Some(query) = run else {
        return Ok(format!("https://localhost:{port}/"));
    };
    let meta = RunStore::new(home.clone()).find(Some(query), |_| true)?;
    if !meta.state.is_active() {
        return Err(OpenError::NotRunning(meta.name));
    }
    let known = || meta.ports.keys().cloned().collect::<Vec<_>>().join(", ");
    let name = match endpoint {
        Some(e) if meta.ports.contains_key(e) => e.to_owned(),
        None if meta.ports.len() == 1 => meta.ports.keys().next().cloned().unwrap_or_default(),
        _ if meta.ports.is_empty() => return Err(OpenError::NoEndpoints(meta.name.clone())),
        _ => {
            return Err(OpenError::WhichEndpoint {
                run: meta.name.clone(),
                known: known(),
            })
        }
    };
    Ok(format!("https://{name}.{}.localhost:{port}", meta.name))
}

/// [`endpoint_url`], opened in a browser when `browser` and one is
/// available (see [`open_in_browser`]).
pub async fn open_url(
    home: &MoatHome,
    run: Option<String>,
    endpoint: Option<String>,
    browser: bool,
) -> Result<String, OpenError> {
    let url = endpoint_url(home, run.as_deref(), endpoint.as_deref()).await?;
    if browser {
        open_in_browser(&url);
    }
    Ok(url)
}

/// Opens `url` in the user's browser when one is available (`$BROWSER`,
/// else `xdg-open` with a display); false when none is.
pub fn open_in_browser(url: &str) -> bool {
    let has_display = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()));
    let program = match std::env::var("BROWSER") {
        Ok(b) if !b.trim().is_empty() => b,
        _ if has_display => "xdg-open".to_owned(),
        _ => return false,
    };
    std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}
