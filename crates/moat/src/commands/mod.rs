//! One module per command family; each turns parsed arguments into calls
//! on the library crates and prints the result.

mod agent;
mod audit;
mod deps;
mod doctor;
mod grant;
mod proxy;
mod run;
mod runs;
mod snapshot;
mod ssh;
mod status;
mod trace;
mod trust;
mod wt;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use moat_home::{MoatHome, Profile};
use moat_run::LiveAction::{Allow, Deny};
use moat_run::PolicyAction::Change;

use crate::cli::{Cli, Command, GlobalArgs};

/// What every command may need: where state lives, which profile, how to
/// print.
#[derive(Debug)]
pub struct Context {
    pub home: MoatHome,
    pub profile: Option<Profile>,
    pub json: bool,
    pub verbose: bool,
}

impl Context {
    fn from_global(global: &GlobalArgs) -> Result<Self> {
        let home = MoatHome::from_env().context(
            "cannot locate moat's state directory: neither MOAT_HOME nor HOME is set. \
             Set MOAT_HOME=/path/to/dir",
        )?;
        let profile = match global.profile.as_deref().map(str::trim) {
            None | Some("") | Some("default") => None,
            Some(name) => Some(Profile::new(name)?),
        };
        Ok(Context {
            home,
            profile,
            json: global.json,
            verbose: global.verbose,
        })
    }

    /// The profile's display name.
    pub fn profile_name(&self) -> &str {
        self.profile
            .as_ref()
            .map(Profile::as_str)
            .unwrap_or("default")
    }
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Version => {
            outln!("moat {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Grant(args) => grant::grant(&Context::from_global(&cli.global)?, args),
        Command::Revoke(args) => grant::revoke(&Context::from_global(&cli.global)?, args),
        Command::Run(args) => run::run(&Context::from_global(&cli.global)?, args),
        Command::Claude(args) => agent::agent(&Context::from_global(&cli.global)?, "claude", args),
        Command::Codex(args) => agent::agent(&Context::from_global(&cli.global)?, "codex", args),
        Command::Gemini(args) => agent::agent(&Context::from_global(&cli.global)?, "gemini", args),
        Command::Wt(args) => wt::wt(&Context::from_global(&cli.global)?, args),
        Command::Proxy(args) => proxy::proxy(&Context::from_global(&cli.global)?, args),
        Command::Deps(args) => deps::deps(&Context::from_global(&cli.global)?, args),
        Command::Daemon => proxy::daemon(&Context::from_global(&cli.global)?, None, None),
        Command::SshConnect { host, port } => ssh::connect(&host, port),
        Command::AwaitGuard { command } => {
            match moat_runtime_docker::await_guard_then_exec(&command) {
                Ok(code) => Ok(ExitCode::from(code)),
                Err(failed) => {
                    let _ = std::io::Write::write_fmt(
                        &mut std::io::stderr(),
                        format_args!("moat: {failed}\n"),
                    );
                    Ok(ExitCode::from(failed.exit_code()))
                }
            }
        }
        Command::CaptureRelay {
            proxy,
            relay_port,
            dns_port,
            endpoint_socket,
            endpoint_ports,
        } => {
            let authorization = std::env::var("MOAT_CAPTURE_AUTHORIZATION")
                .map(moat_capture::ProxyAuthorization::new)
                .map_err(|_| anyhow::anyhow!("MOAT_CAPTURE_AUTHORIZATION is not set: __capture-relay is started by moat in a container's network guard"))?;
            let ready = || {
                // The line moat waits for before it starts the workload.
                let mut stdout = std::io::stdout().lock();
                let _ = std::io::Write::write_all(
                    &mut stdout,
                    format!("{}\n", moat_runtime_docker::GUARD_READY).as_bytes(),
                );
                let _ = std::io::Write::flush(&mut stdout);
            };
            let guard = moat_capture::GuardRelay {
                proxy,
                relay_port,
                dns_port,
                authorization,
                endpoints: endpoint_socket.map(|socket| (socket, endpoint_ports)),
            };
            moat_capture::serve_redirected(guard, ready)
                .context("the capture relay could not start")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => status::status(&Context::from_global(&cli.global)?),
        Command::List => runs::list(&Context::from_global(&cli.global)?),
        Command::Logs(args) => runs::logs(&Context::from_global(&cli.global)?, args),
        Command::Stop(args) => runs::stop(&Context::from_global(&cli.global)?, args),
        Command::Destroy(args) => runs::destroy(&Context::from_global(&cli.global)?, args),
        Command::Clean(args) => runs::clean(&Context::from_global(&cli.global)?, args),
        Command::Trace(args) => trace::trace(&Context::from_global(&cli.global)?, args),
        Command::Open {
            run,
            endpoint,
            print,
        } => {
            let home = Context::from_global(&cli.global)?.home;
            let url = block_on(moat_run::open_url(&home, run, endpoint, !print))??;
            outln!("{url}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => doctor::doctor(&Context::from_global(&cli.global)?, args),
        Command::Audit(args) => audit::audit(&Context::from_global(&cli.global)?, args),
        Command::Trust(args) => trust::trust(&Context::from_global(&cli.global)?, args),
        Command::Snapshot(args) => snapshot::snapshot(&Context::from_global(&cli.global)?, args),
        Command::Exec(args) => runs::exec(&Context::from_global(&cli.global)?, args),
        Command::Join(args) => runs::join(&Context::from_global(&cli.global)?, args),
        Command::Allow(a) => live(&cli.global, &a.run, Change(Allow, a.host, a.rules)),
        Command::Deny(a) => live(&cli.global, &a.run, Change(Deny, a.host, a.rules)),
        Command::Policy { run } => live(&cli.global, &run, moat_run::PolicyAction::Show),
        Command::Diff { run, apply } => {
            let ctx = Context::from_global(&cli.global)?;
            let done = moat_run::diff_run(&ctx.home, &run, apply, ctx.json)?;
            out!("{}", done.text);
            for notice in done.notices {
                errln!("moat: {notice}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `moat allow`, `moat deny`, `moat policy`: the work is moat-run's.
fn live(global: &GlobalArgs, run: &str, action: moat_run::PolicyAction) -> Result<ExitCode> {
    let ctx = Context::from_global(global)?;
    out!(
        "{}",
        moat_run::live_policy(&ctx.home, run, action, ctx.json)?
    );
    Ok(ExitCode::SUCCESS)
}

/// A current-thread runtime for commands that do a little network I/O.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok(runtime.block_on(future))
}

/// The run plan of `flags` and moat.yaml, with what the environment says
/// (`MOAT_RUNTIME`, `MOAT_NO_SANDBOX`) and the context's profile: the one
/// way `moat run` and the agent commands plan a run.
pub fn plan_run(
    ctx: &Context,
    workspace: std::path::PathBuf,
    flags: &moat_run::RunFlags,
    config: Option<&moat_config::ProjectConfig>,
) -> Result<moat_run::RunPlan, moat_run::PlanError> {
    moat_run::RunPlan::from_flags(
        workspace,
        flags,
        config,
        std::env::var("MOAT_RUNTIME").ok(),
        moat_credentials::source::env_flag("MOAT_NO_SANDBOX"),
        ctx.profile.clone(),
    )
}
