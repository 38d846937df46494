//! `moat doctor`: one line per check of what moat needs here, and for each
//! problem the command that fixes it. Exits non-zero when something must be
//! fixed; warnings (an optional piece missing) do not.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use moat_credentials::CredentialStore;
use moat_daemon::{lockfile, DaemonClient, DaemonPaths};
use moat_sandbox::{CheckStatus, DoctorCheck};

use super::{block_on, Context};

/// The check's status as the first column of a report line.
fn label(status: CheckStatus) -> &'static str {
    match status {
        CheckStatus::Ok => "[ok]  ",
        CheckStatus::Warn => "[warn]",
        CheckStatus::Fail => "[fail]",
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

pub fn doctor(ctx: &Context, args: crate::cli::DoctorArgs) -> Result<ExitCode> {
    let checks = match &args.agent {
        Some(name) => {
            let agent = moat_agents::by_name(name).ok_or_else(|| {
                anyhow::anyhow!("unknown agent {name:?}: use claude, codex or gemini")
            })?;
            agent_checks(ctx, agent)
        }
        None => all_checks(ctx)?,
    };
    report(ctx, &checks)
}

fn all_checks(ctx: &Context) -> Result<Vec<DoctorCheck>> {
    let mut checks = runtimes()?;
    checks.extend(daemon(ctx)?);
    checks.push(ca_files(ctx));
    checks.push(private_file(
        "key file",
        &ctx.home.key_file(),
        "no key file (the OS keychain holds the key, or the first grant creates the file)",
    ));
    checks.push(private_file(
        "audit signing key",
        &moat_audit::SigningKey::key_path(&ctx.home.audit_dir()),
        "not created yet (the proxy daemon creates it)",
    ));
    checks.extend(credentials(ctx));
    checks.push(ssh_agent());
    checks.push(disk(ctx.home.root()));
    checks.extend(moat_agents::all().into_iter().map(agent_binary));
    Ok(checks)
}

fn report(ctx: &Context, checks: &[DoctorCheck]) -> Result<ExitCode> {
    let failures = checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .count();
    if ctx.json {
        outln!("{}", serde_json::to_string_pretty(checks)?);
    } else {
        let mut out = String::new();
        for c in checks {
            out.push_str(&format!("{} {}: {}\n", label(c.status), c.name, c.message));
            if let Some(fix) = &c.fix {
                for (i, line) in fix.lines().enumerate() {
                    let label = if i == 0 { "fix:" } else { "    " };
                    out.push_str(&format!("       {label} {line}\n"));
                }
            }
        }
        let warnings = checks
            .iter()
            .filter(|c| c.status == CheckStatus::Warn)
            .count();
        out.push_str(&match (failures, warnings) {
            (0, 0) => "\nAll checks passed.\n".to_owned(),
            (0, w) => format!("\nNo problems that stop moat; {w} warning(s).\n"),
            (f, _) => format!("\n{f} DoctorCheck::problem(s) need fixing.\n"),
        });
        out!("{out}");
    }
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every runtime moat knows (its driver's own checks). A missing runtime
/// is a warning while another one works.
fn runtimes() -> Result<Vec<DoctorCheck>> {
    Ok(moat_run::doctor_checks())
}

fn daemon(ctx: &Context) -> Result<Vec<DoctorCheck>> {
    let paths = DaemonPaths::new(&ctx.home);
    let info = match lockfile::read_info(&paths.lock) {
        Ok(Some(info)) => info,
        Ok(None) if paths.lock.exists() => {
            return Ok(vec![DoctorCheck::problem(
                CheckStatus::Fail,
                "proxy daemon",
                format!("{} is damaged", paths.lock.display()),
                format!("rm {}", paths.lock.display()),
            )])
        }
        Ok(None) => {
            return Ok(vec![DoctorCheck::ok(
                "proxy daemon",
                "not running (it starts with the next run)",
            )])
        }
        Err(e) => {
            return Ok(vec![DoctorCheck::problem(
                CheckStatus::Fail,
                "proxy daemon",
                e.to_string(),
                format!("rm {}", paths.lock.display()),
            )])
        }
    };
    if !lockfile::daemon_running(&paths) {
        return Ok(vec![DoctorCheck::problem(
            CheckStatus::Warn,
            "proxy daemon",
            format!(
                "stale lock file: pid {} in {} is not running",
                info.pid,
                paths.lock.display()
            ),
            format!(
                "rm -f {} {}",
                paths.lock.display(),
                paths.control_socket.display()
            ),
        )]);
    }
    if !paths.control_socket.exists() {
        return Ok(vec![DoctorCheck::problem(
            CheckStatus::Fail,
            "proxy daemon",
            format!(
                "pid {} runs but its control socket {} is missing",
                info.pid,
                paths.control_socket.display()
            ),
            "restart it: moat proxy restart",
        )]);
    }
    let mut checks = Vec::new();
    match block_on(DaemonClient::connect_existing(&ctx.home))? {
        Ok(Some(_)) => checks.push(DoctorCheck::ok(
            "proxy daemon",
            format!(
                "running (pid {}, port {}, version {})",
                info.pid, info.port, info.version
            ),
        )),
        Ok(None) => checks.push(DoctorCheck::ok(
            "proxy daemon",
            "not running (it starts with the next run)",
        )),
        Err(e) => {
            checks.push(DoctorCheck::problem(
                CheckStatus::Fail,
                "proxy daemon",
                first_line(&e.to_string()).to_owned(),
                e.to_string().lines().skip(1).collect::<Vec<_>>().join("\n"),
            ));
            return Ok(checks);
        }
    }
    let ours = env!("CARGO_PKG_VERSION");
    if info.version != ours {
        checks.push(DoctorCheck::problem(
            CheckStatus::Warn,
            "proxy daemon version",
            format!("the daemon is moat {}, this is moat {ours}", info.version),
            "once no run is active: moat proxy restart",
        ));
    }
    if let Ok(requested) = std::env::var("MOAT_PROXY_PORT") {
        if let Ok(port) = requested.trim().parse::<u16>() {
            if port != 0 && port != info.port {
                checks.push(DoctorCheck::problem(
                    CheckStatus::Fail,
                    "proxy port",
                    format!(
                        "proxy port mismatch: running on {}, requested {port}",
                        info.port
                    ),
                    "unset MOAT_PROXY_PORT, or stop all runs so the proxy exits and restarts on \
                     the new port",
                ));
            }
        }
    }
    Ok(checks)
}

fn ca_files(ctx: &Context) -> DoctorCheck {
    let dir = ctx.home.ca_dir();
    let (cert, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (cert.exists(), key.exists()) {
        (false, false) => DoctorCheck::ok(
            "interception CA",
            "not created yet (the proxy daemon creates it)",
        ),
        (true, true) => match moat_home::mode_of(&key) {
            Ok(mode) if mode & 0o077 == 0 => {
                DoctorCheck::ok("interception CA", format!("{}", dir.display()))
            }
            Ok(mode) => DoctorCheck::problem(
                CheckStatus::Fail,
                "interception CA",
                format!(
                    "{} has permissions {mode:04o} (expected 0600)",
                    key.display()
                ),
                format!("chmod 600 {}", key.display()),
            ),
            Err(e) => DoctorCheck::problem(
                CheckStatus::Fail,
                "interception CA",
                e.to_string(),
                format!("check the permissions of {}", dir.display()),
            ),
        },
        _ => DoctorCheck::problem(
            CheckStatus::Fail,
            "interception CA",
            format!("only one of ca.crt and ca.key exists in {}", dir.display()),
            format!(
                "remove both so the daemon creates a new CA: moat proxy stop && rm -f {} {}",
                cert.display(),
                key.display()
            ),
        ),
    }
}

/// A secret file: absent is fine, any group or other bit is a failure.
fn private_file(name: &str, path: &Path, absent: &str) -> DoctorCheck {
    if !path.exists() {
        return DoctorCheck::ok(name, absent);
    }
    match moat_home::mode_of(path) {
        Ok(mode) if mode & 0o077 == 0 => {
            DoctorCheck::ok(name, format!("{} (0600)", path.display()))
        }
        Ok(mode) => DoctorCheck::problem(
            CheckStatus::Fail,
            name,
            format!(
                "{name} has insecure permissions: {} has permissions {mode:04o} (expected 0600).",
                path.display()
            ),
            format!("chmod 600 {}", path.display()),
        ),
        Err(e) => DoctorCheck::problem(
            CheckStatus::Fail,
            name,
            e.to_string(),
            format!("check {}", path.display()),
        ),
    }
}

fn grant_command(provider: &str) -> String {
    match provider.strip_prefix("mcp-") {
        Some(name) => format!("moat grant mcp {name}"),
        None => format!("moat grant {provider}"),
    }
}

fn credentials(ctx: &Context) -> Vec<DoctorCheck> {
    let store = CredentialStore::new(ctx.home.clone(), ctx.profile.clone());
    let entries = match store.list() {
        Ok(entries) => entries,
        Err(e) => {
            return vec![DoctorCheck::problem(
                CheckStatus::Fail,
                "credentials",
                first_line(&e.to_string()).to_owned(),
                e.to_string().lines().skip(1).collect::<Vec<_>>().join("\n"),
            )]
        }
    };
    if entries.is_empty() {
        return vec![DoctorCheck::ok(
            "credentials",
            format!("none stored (profile {})", ctx.profile_name()),
        )];
    }
    let now = chrono::Utc::now();
    entries
        .into_iter()
        .map(|entry| {
            let name = format!("credential {}", entry.provider);
            match entry.credential {
                Ok(c) if c.is_expired(now) => DoctorCheck::problem(
                    CheckStatus::Fail,
                    &name,
                    format!(
                        "expired at {}",
                        c.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default()
                    ),
                    grant_command(&entry.provider),
                ),
                Ok(c) => DoctorCheck::ok(
                    &name,
                    match c.expires_at {
                        Some(t) => format!("decrypts; expires {}", t.format("%Y-%m-%d %H:%M UTC")),
                        None => "decrypts".to_owned(),
                    },
                ),
                Err(e) => DoctorCheck::problem(
                    CheckStatus::Fail,
                    &name,
                    format!("cannot be decrypted: {e} (the encryption key changed?)"),
                    grant_command(&entry.provider),
                ),
            }
        })
        .collect()
}

/// `SSH_AUTH_SOCK` set, and the agent answering a key list request.
fn ssh_agent() -> DoctorCheck {
    let fix = "eval \"$(ssh-agent -s)\" && ssh-add (needed only for ssh: grants)";
    let Some(sock) = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) else {
        return DoctorCheck::problem(
            CheckStatus::Warn,
            "ssh agent",
            "SSH_AUTH_SOCK is not set",
            fix,
        );
    };
    let sock = PathBuf::from(sock);
    match moat_ssh::agent_key_count(&sock) {
        Ok(n) => DoctorCheck::ok(
            "ssh agent",
            format!("answering at {} ({n} key(s))", sock.display()),
        ),
        Err(e) => DoctorCheck::problem(
            CheckStatus::Warn,
            "ssh agent",
            format!("{} does not answer: {e}", sock.display()),
            fix,
        ),
    }
}

/// Free space where MOAT_HOME is (or would be).
fn disk(home: &Path) -> DoctorCheck {
    let mut dir = home;
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p,
            None => break,
        }
    }
    match rustix::fs::statvfs(dir) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let text = format!("{:.1} GB free under {}", free as f64 / 1e9, dir.display());
            let fix = "free space on that filesystem: moat clean removes stopped runs, or set \
                       MOAT_HOME to a larger disk";
            if free < 100_000_000 {
                DoctorCheck::problem(CheckStatus::Fail, "disk", text, fix)
            } else if free < 1_000_000_000 {
                DoctorCheck::problem(CheckStatus::Warn, "disk", text, fix)
            } else {
                DoctorCheck::ok("disk", text)
            }
        }
        Err(e) => DoctorCheck::problem(
            CheckStatus::Warn,
            "disk",
            format!("cannot read free space of {}: {e}", dir.display()),
            "check that the directory is readable",
        ),
    }
}

/// Where the agent's executable comes from for the native runtime.
fn agent_binary(agent: &dyn moat_agents::Agent) -> DoctorCheck {
    use moat_agents::install;
    let name = format!("agent {}", agent.name());
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = install::find_on_path(agent, &path).or_else(|| {
        let cache = moat_run::agent_cache_dir();
        install::find_in_cache(agent, &cache)
    });
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

/// `moat doctor AGENT`: the agent's executable, its grant and its
/// configuration, each with the fix.
fn agent_checks(ctx: &Context, agent: &dyn moat_agents::Agent) -> Vec<DoctorCheck> {
    let mut checks = vec![agent_binary(agent)];
    let store = CredentialStore::new(ctx.home.clone(), ctx.profile.clone());
    let now = chrono::Utc::now();
    let grant = agent.grants().iter().find(|g| store.contains(g));
    checks.push(match grant {
        None => DoctorCheck::problem(
            CheckStatus::Fail,
            "grant",
            format!("none of {} is granted", agent.grants().join(", ")),
            agent
                .grants()
                .iter()
                .map(|g| format!("moat grant {g}"))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Some(g) => match store.load(g) {
            Ok(c) if c.is_expired(now) => DoctorCheck::problem(
                CheckStatus::Fail,
                "grant",
                format!(
                    "{g} expired at {}",
                    c.expires_at.map(|t| t.to_rfc3339()).unwrap_or_default()
                ),
                format!("moat grant {g}"),
            ),
            Ok(_) => DoctorCheck::ok("grant", format!("{g} (the sandbox gets a placeholder)")),
            Err(e) => DoctorCheck::problem(
                CheckStatus::Fail,
                "grant",
                first_line(&e.to_string()).to_owned(),
                e.to_string().lines().skip(1).collect::<Vec<_>>().join("\n"),
            ),
        },
    });
    if let Some(g) = grant {
        checks.push(injection_check(agent, g));
    }
    // The configuration a launch would stage, from the host's settings and
    // the current directory's moat.yaml.
    let section = std::env::current_dir()
        .ok()
        .and_then(|dir| moat_config::load(&dir).ok().flatten())
        .and_then(|c| c.agents.get(agent.name()).cloned())
        .unwrap_or_default();
    let host_home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let ctx_stage = moat_agents::StageContext {
        program: agent.binary().to_owned(),
        workspace: std::path::Path::new("/workspace"),
        home: std::path::Path::new("/home/moat"),
        host_home: host_home.as_deref(),
        grant: grant.copied().unwrap_or(agent.grants()[0]),
        placeholder: "placeholder",
        placeholders: &[],
        mcp_relays: &[],
        section: &section,
    };
    checks.push(
        match agent.stage(&ctx_stage, &moat_agents::LaunchOptions::default()) {
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
        },
    );
    checks
}

/// One request to the agent's API from a native sandbox holding only the
/// placeholder: the proxy must inject the credential and the API accept it.
fn injection_check(agent: &dyn moat_agents::Agent, grant: &str) -> DoctorCheck {
    let name = "proxy injection";
    let url = agent.probe_url(grant);
    let Ok(exe) = std::env::current_exe() else {
        return DoctorCheck::problem(CheckStatus::Warn, name, "cannot locate the moat binary", "");
    };
    let dir = std::env::temp_dir().join(format!("moat-doctor-{}", std::process::id()));
    if std::fs::create_dir_all(&dir).is_err() {
        return DoctorCheck::problem(
            CheckStatus::Warn,
            name,
            "cannot make a scratch workspace",
            "",
        );
    }
    let out = std::process::Command::new(exe)
        .args([
            "run",
            "--runtime",
            "native",
            "--no-prompt",
            "--grant",
            grant,
            "--",
        ])
        .args([
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
            url,
        ])
        .current_dir(&dir)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            return DoctorCheck::problem(
                CheckStatus::Warn,
                name,
                format!("cannot run moat: {e}"),
                "",
            )
        }
    };
    let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match code.as_str() {
        "200" => DoctorCheck::ok(
            name,
            format!("{url} accepted the {grant} credential the proxy injected"),
        ),
        "401" | "403" => DoctorCheck::problem(
            CheckStatus::Fail,
            name,
            format!("{url} refused the {grant} credential ({code})"),
            format!("moat grant {grant}"),
        ),
        _ => DoctorCheck::problem(
            CheckStatus::Warn,
            name,
            format!(
                "no answer from {url} ({})",
                first_line(stderr.trim()).trim_start_matches("Error: ")
            ),
            "check network access to the API (and moat doctor for the daemon and runtime)",
        ),
    }
}
