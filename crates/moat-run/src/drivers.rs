//! The table of runtimes, and choosing one: `--runtime`, `MOAT_RUNTIME`
//! or `runtime:` name one; otherwise the first available in the table's
//! order (Docker, Podman, the native sandbox). This is the one place that
//! knows which runtimes exist; everything else drives a
//! [`SandboxDriver`].

use moat_config::RuntimeKind;
use moat_runtime_docker::{ContainerDriver, Engine};
use moat_runtime_native::NativeDriver;
use moat_sandbox::{CheckStatus, DoctorCheck, DriverError, SandboxDriver};
use moat_storage::{RunId, RunMetadata, RunStore};

/// How a runtime's probe may go about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// For a run: a service the runtime needs may be started.
    Run,
    /// To look (doctor, stop, clean): nothing is started.
    Look,
}

/// One runtime of the table.
struct Entry {
    /// Which runtime.
    kind: RuntimeKind,
    /// As messages name it.
    title: &'static str,
    /// As the notice of an automatic choice names it.
    chosen_as: &'static str,
    /// An engine that `DOCKER_HOST` could have named instead.
    docker_compatible: bool,
    /// Connects, or says why it cannot.
    probe: fn(Probe) -> Result<Box<dyn SandboxDriver>, DriverError>,
    /// What to do when it cannot be reached, for `moat doctor`.
    fix: &'static str,
}

fn container(engine: Engine, probe: Probe) -> Result<Box<dyn SandboxDriver>, DriverError> {
    ContainerDriver::connect(engine, probe == Probe::Run)
        .map(|d| Box::new(d) as Box<dyn SandboxDriver>)
        .map_err(DriverError::hinted)
}

const RUNTIMES: &[Entry] = &[
    Entry {
        kind: RuntimeKind::Docker,
        title: "Docker",
        chosen_as: "Docker",
        docker_compatible: false,
        probe: |p| container(Engine::Docker, p),
        fix: "start the Docker daemon (sudo systemctl start docker) and make sure you may use \
              it (sudo usermod -aG docker $USER, then log in again); runs use the native \
              sandbox meanwhile",
    },
    Entry {
        kind: RuntimeKind::Podman,
        title: "Podman",
        chosen_as: "Podman",
        docker_compatible: true,
        probe: |p| container(Engine::Podman, p),
        fix: "install Podman (sudo apt-get install podman); moat starts its API service \
              (podman system service) itself on the first Podman run",
    },
    Entry {
        kind: RuntimeKind::Native,
        title: "native sandbox",
        chosen_as: "the native Linux sandbox",
        docker_compatible: false,
        probe: |_| Ok(Box::new(NativeDriver::new())),
        fix: "",
    },
];

/// Why no runtime could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// The runtime asked for cannot be used.
    #[error("{title} runtime requested (via MOAT_RUNTIME or moat.yaml) but not available")]
    RequestedButUnavailable {
        /// As messages name it.
        title: &'static str,
        /// Which runtime.
        kind: RuntimeKind,
        /// The runtime's own explanation, with its fix.
        #[source]
        error: DriverError,
    },
    /// Apple containers, asked for on a machine that has none.
    #[error("Apple containers are only available on macOS 26 or later")]
    AppleUnavailable,
    /// Nothing can run sandboxes here.
    #[error("no runtime available: {}", unavailable_list(.0))]
    NoneAvailable(Vec<Unavailable>),
}

impl moat_hint::Hint for SelectionError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        match self {
            SelectionError::RequestedButUnavailable { kind, .. } => Some(moat_hint::Fix::new(
                format!(
                    "To use another runtime: unset MOAT_RUNTIME (and remove `runtime: {kind}` from moat.yaml)"
                ),
            )),
            SelectionError::AppleUnavailable => Some(moat_hint::Fix::new(
                "On this machine use --runtime native, --runtime docker or --runtime podman \
                 (or unset MOAT_RUNTIME)",
            )),
            SelectionError::NoneAvailable(_) => None,
        }
    }
}

/// A runtime of the table that could not be reached.
#[derive(Debug)]
pub struct Unavailable {
    /// As messages name it.
    pub title: &'static str,
    /// Why.
    pub error: DriverError,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cause = moat_sandbox::error_chain(&self.error);
        let first = cause.lines().next().unwrap_or_default();
        write!(f, "{} is not available ({first})", self.title)
    }
}

fn unavailable_list(unavailable: &[Unavailable]) -> String {
    unavailable
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A chosen runtime, and what to tell the user about the choice.
#[derive(Debug)]
pub struct Selection {
    /// The connected runtime (a run reuses its connection).
    pub driver: Box<dyn SandboxDriver>,
    /// Why it was chosen over the ones before it, when some were not
    /// available.
    pub notice: Option<String>,
}

/// The runtime named by `requested`, or the first available.
pub fn select_driver(requested: Option<RuntimeKind>) -> Result<Selection, SelectionError> {
    if let Some(kind) = requested {
        let Some(entry) = RUNTIMES.iter().find(|e| e.kind == kind) else {
            // The table holds every runtime but Apple's.
            return Err(SelectionError::AppleUnavailable);
        };
        return match (entry.probe)(Probe::Run) {
            Ok(driver) => Ok(Selection {
                driver,
                notice: None,
            }),
            Err(error) => Err(SelectionError::RequestedButUnavailable {
                title: entry.title,
                kind: entry.kind,
                error,
            }),
        };
    }
    // DOCKER_HOST names the one engine the user means; when it does not
    // answer, no other engine is looked for behind the user's back.
    let skip_other_engines = std::env::var("DOCKER_HOST").is_ok_and(|v| !v.trim().is_empty());
    let mut unavailable = Vec::new();
    for entry in RUNTIMES {
        if skip_other_engines && entry.docker_compatible {
            continue;
        }
        match (entry.probe)(Probe::Run) {
            Ok(driver) => {
                let notice = (!unavailable.is_empty()).then(|| {
                    format!(
                        "{}; using {}.",
                        unavailable_list(&unavailable),
                        entry.chosen_as
                    )
                });
                return Ok(Selection { driver, notice });
            }
            Err(error) => unavailable.push(Unavailable {
                title: entry.title,
                error,
            }),
        }
    }
    Err(SelectionError::NoneAvailable(unavailable))
}

/// Every runtime that can be reached without starting anything.
pub fn reachable_drivers() -> Vec<Box<dyn SandboxDriver>> {
    RUNTIMES
        .iter()
        .filter_map(|e| (e.probe)(Probe::Look).ok())
        .collect()
}

/// What `moat status` says of one runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeStatus {
    /// Which runtime.
    pub kind: RuntimeKind,
    /// Whether runs can use it now.
    pub available: bool,
    /// Its checks in one line (where it answers, gVisor...), or why it
    /// cannot be reached.
    pub message: String,
}

/// Every runtime of the table, looked at without starting anything.
pub fn runtime_statuses() -> Vec<RuntimeStatus> {
    RUNTIMES
        .iter()
        .map(|entry| match (entry.probe)(Probe::Look) {
            Ok(mut driver) => {
                let checks = driver.doctor();
                let available = checks
                    .first()
                    .is_some_and(|c| c.status != CheckStatus::Fail);
                let message = checks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        if i == 0 {
                            c.message.clone()
                        } else {
                            format!("{}: {}", c.name, c.message)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                RuntimeStatus {
                    kind: entry.kind,
                    available,
                    message,
                }
            }
            Err(e) => RuntimeStatus {
                kind: entry.kind,
                available: false,
                message: format!(
                    "not available: {}",
                    moat_sandbox::error_chain(&e)
                        .lines()
                        .next()
                        .unwrap_or_default()
                ),
            },
        })
        .collect()
}

/// `moat doctor`'s checks of every runtime. One that cannot be reached is
/// a warning while another one works.
pub fn doctor_checks() -> Vec<DoctorCheck> {
    let mut checks = Vec::new();
    let mut availability = Vec::new();
    for entry in RUNTIMES {
        availability.push(checks.len());
        match (entry.probe)(Probe::Look) {
            Ok(mut driver) => checks.extend(driver.doctor()),
            Err(e) => {
                let cause = moat_sandbox::error_chain(&e);
                checks.push(DoctorCheck::problem(
                    CheckStatus::Fail,
                    &entry.kind.to_string(),
                    format!(
                        "not reachable: {}",
                        cause.lines().next().unwrap_or_default()
                    ),
                    entry.fix,
                ));
            }
        }
    }
    let any_available = availability
        .iter()
        .any(|i| checks.get(*i).is_some_and(|c| c.status == CheckStatus::Ok));
    if any_available {
        for i in availability {
            if let Some(check) = checks.get_mut(i) {
                if check.status == CheckStatus::Fail {
                    check.status = CheckStatus::Warn;
                }
            }
        }
    }
    checks
}

/// The runtime a run was started on, connected without starting
/// anything (a running run's runtime is up).
pub(crate) fn driver_for_run(run: &RunMetadata) -> Result<Box<dyn SandboxDriver>, DriverError> {
    let kind = run
        .runtime
        .parse::<RuntimeKind>()
        .map_err(|e| DriverError::io("reading the run's runtime", std::io::Error::other(e)))?;
    let entry = RUNTIMES.iter().find(|e| e.kind == kind).ok_or_else(|| {
        DriverError::io(
            format!("the {kind} runtime"),
            std::io::Error::other("not available on this machine"),
        )
    })?;
    (entry.probe)(Probe::Look)
}

/// Removes what the run's runtime still holds for it (a container left by
/// a supervisor that died). Quietly does nothing when that runtime cannot
/// be reached.
pub fn remove_run_leftovers(store: &RunStore, run: &RunMetadata) -> usize {
    let drivers = RUNTIMES
        .iter()
        .filter(|e| run.runtime.parse::<RuntimeKind>() == Ok(e.kind))
        .filter_map(|e| (e.probe)(Probe::Look).ok())
        .collect();
    remove_from(drivers, store, Some(run.id.as_str()))
}

/// Removes what reachable runtimes hold for runs that are no longer
/// active (or gone from storage). Returns how many were removed.
pub fn remove_leftovers(store: &RunStore) -> usize {
    remove_from(reachable_drivers(), store, None)
}

fn remove_from(
    drivers: Vec<Box<dyn SandboxDriver>>,
    store: &RunStore,
    run_id: Option<&str>,
) -> usize {
    let home = store.home().root().display().to_string();
    let mut removed = 0;
    for mut driver in drivers {
        let Ok(leftovers) = driver.leftovers() else {
            continue;
        };
        // A container another one depends on (a network guard whose
        // namespace a workload joined) can only go after it: Podman
        // refuses, so what failed is tried once more at the end.
        let mut retry = Vec::new();
        for leftover in leftovers {
            let Some(owner) = leftover.run_id.as_deref() else {
                continue;
            };
            // Another installation's (another MOAT_HOME on this engine) is
            // never ours to judge; an unlabelled one only when its run is.
            let ours = leftover.owner.as_deref().map(|o| o == home.as_str());
            if ours == Some(false) {
                continue;
            }
            let wanted = match run_id {
                Some(id) => owner == id,
                None => match RunId::parse(owner).map(|id| store.load(&id)) {
                    Some(Ok(mut meta)) => {
                        let _ = store.reconcile(&mut meta);
                        !meta.state.is_active()
                    }
                    // A container whose run is gone from storage is an orphan.
                    _ => ours == Some(true),
                },
            };
            if !wanted {
                continue;
            }
            if driver.remove_leftover(&leftover).is_ok() {
                removed += 1;
            } else {
                retry.push(leftover);
            }
        }
        for leftover in retry {
            if driver.remove_leftover(&leftover).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}
