//! `moat doctor AGENT`: the agent's executable, its grant, the
//! configuration a launch would stage, and one request through the proxy.

use std::path::Path;

use moat_agents::Agent;
use moat_credentials::CredentialStore;
use moat_home::{MoatHome, Profile};
use moat_sandbox::{CheckStatus, DoctorCheck};

/// Where the agent's executable comes from for the native runtime.
pub fn agent_binary(agent: &dyn Agent) -> DoctorCheck {
    use moat_agents::install;
    let name = format!("agent {}", agent.name());
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = install::find_on_path(agent, &path)
        .or_else(|| install::find_in_cache(agent, &moat_run::agent_cache_dir()));
    match found {
        Some(source) => DoctorCheck::ok(&name, source.describe()),
        None => DoctorCheck::problem(
            CheckStatus::Warn,
            &name,
            format!("{} is not installed", agent.binary()),
            format!(
                "moat installs it with npm on the first `moat {}` (or: npm install -g {})",
                agent.name(),
                agent.npm_package()
            ),
        ),
    }
}

/// Every check of `moat doctor AGENT`, each with its fix. `moat` is the
/// binary the injection check runs.
pub fn agent_checks(
    home: &MoatHome,
    profile: Option<&Profile>,
    agent: &dyn Agent,
    moat: &Path,
) -> Vec<DoctorCheck> {
    let store = CredentialStore::new(home.clone(), profile.cloned());
    let grant = agent.grants().iter().copied().find(|g| store.contains(g));
    let mut checks = vec![agent_binary(agent), grant_check(&store, agent, grant)];
    if let Some(g) = grant {
        checks.push(injection_check(agent, g, moat));
    }
    checks.push(configuration_check(agent, grant));
    checks
}

/// One of the agent's grants is stored, decrypts and has not expired.
fn grant_check(store: &CredentialStore, agent: &dyn Agent, grant: Option<&str>) -> DoctorCheck {
    let Some(g) = grant else {
        return DoctorCheck::problem(
            CheckStatus::Fail,
            "grant",
            format!("none of {} is granted", agent.grants().join(", ")),
            agent
                .grants()
                .iter()
                .map(|g| format!("moat grant {g}"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    };
    match store.load(g) {
        Ok(c) if c.is_expired(chrono::Utc::now()) => DoctorCheck::problem(
            CheckStatus::Fail,
            "grant",
            format!(
                "{g} expired at {}",
                c.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default()
            ),
            format!("moat grant {g}"),
        ),
        Ok(_) => DoctorCheck::ok("grant", format!("{g} (the sandbox gets a placeholder)")),
        Err(e) => crate::from_error(CheckStatus::Fail, "grant", &e),
    }
}

/// The configuration a launch would stage, from the host's settings and
/// the current directory's moat.yaml.
fn configuration_check(agent: &dyn Agent, grant: Option<&str>) -> DoctorCheck {
    let section = std::env::current_dir()
        .ok()
        .and_then(|dir| moat_config::load(&dir).ok().flatten())
        .and_then(|c| c.agents.get(agent.name()).cloned())
        .unwrap_or_default();
    let host_home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let stage = moat_agents::StageContext {
        program: agent.binary().to_owned(),
        workspace: Path::new("/workspace"),
        home: Path::new("/home/moat"),
        host_home: host_home.as_deref(),
        grant: grant.unwrap_or(agent.grants()[0]),
        placeholder: "placeholder",
        placeholders: &[],
        mcp_relays: &[],
        section: &section,
    };
    match agent.stage(&stage, &moat_agents::LaunchOptions::default()) {
        Ok(launch) => DoctorCheck::ok(
            "configuration",
            format!(
                "{} file(s) staged from your settings and moat.yaml",
                launch.files.len()
            ),
        ),
        Err(e) => DoctorCheck::problem(
            CheckStatus::Fail,
            "configuration",
            e.to_string(),
            "fix the file or key named above",
        ),
    }
}

/// One request to the agent's API from a native sandbox holding only the
/// placeholder: the proxy must inject the credential and the API accept it.
fn injection_check(agent: &dyn Agent, grant: &str, moat: &Path) -> DoctorCheck {
    const NAME: &str = "proxy injection";
    let url = agent.probe_url(grant);
    let dir = std::env::temp_dir().join(format!("moat-doctor-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return DoctorCheck::problem(
            CheckStatus::Warn,
            NAME,
            "cannot make a scratch workspace",
            "",
        );
    }
    let out = std::process::Command::new(moat)
        .args([
            "run",
            "--runtime",
            "native",
            "--no-prompt",
            "--grant",
            grant,
        ])
        .args(["--", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--max-time", "20", url])
        .current_dir(&dir)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            return DoctorCheck::problem(
                CheckStatus::Warn,
                NAME,
                format!("cannot run moat: {e}"),
                "",
            )
        }
    };
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match code.as_str() {
        "200" => DoctorCheck::ok(
            NAME,
            format!("{url} accepted the {grant} credential the proxy injected"),
        ),
        "401" | "403" => DoctorCheck::problem(
            CheckStatus::Fail,
            NAME,
            format!("{url} refused the {grant} credential ({code})"),
            format!("moat grant {grant}"),
        ),
        _ => DoctorCheck::problem(
            CheckStatus::Warn,
            NAME,
            format!(
                "no answer from {url} ({})",
                stderr
                    .trim()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("Error: ")
            ),
            "check network access to the API (and moat doctor for the daemon and runtime)",
        ),
    }
}
