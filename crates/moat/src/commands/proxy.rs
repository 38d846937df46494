//! `moat proxy start|stop|status|restart` and the hidden `moat __daemon`.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use moat_daemon::{DaemonClient, DaemonConfig, StartOptions};

use super::{block_on, Context};
use crate::cli::{ProxyArgs, ProxyCommand};

pub fn proxy(ctx: &Context, args: ProxyArgs) -> Result<ExitCode> {
    match args.command.unwrap_or(ProxyCommand::Status) {
        ProxyCommand::Start {
            port,
            foreground,
            routing_listen,
        } => {
            let mut opts = StartOptions::from_env()?;
            if port.is_some() {
                opts.port = port;
            }
            opts.routing_listen = routing_listen.or(opts.routing_listen);
            if routing_listen.is_some_and(|a| !a.ip().is_loopback()) {
                errln!("moat: warning: the runs' endpoints are reachable from other hosts on this address");
            }
            if foreground {
                return daemon(ctx, opts.port, opts.routing_listen);
            }
            let client = block_on(DaemonClient::connect_or_start(&ctx.home, &opts))??;
            outln!(
                "Proxy daemon running (pid {}, port {}).",
                client.info.pid,
                client.info.port
            );
            Ok(ExitCode::SUCCESS)
        }
        ProxyCommand::Stop => {
            match block_on(DaemonClient::connect_existing(&ctx.home))?? {
                Some(client) => {
                    block_on(client.stop())??;
                    outln!("Proxy daemon stopped (pid {}).", client.info.pid);
                }
                None => outln!("No proxy daemon is running."),
            }
            Ok(ExitCode::SUCCESS)
        }
        ProxyCommand::Restart => {
            let port = match block_on(DaemonClient::connect_existing(&ctx.home))?? {
                Some(client) => {
                    let port = client.info.port;
                    block_on(client.stop())??;
                    Some(port)
                }
                None => None,
            };
            let mut opts = StartOptions::from_env()?;
            if opts.port.is_none() {
                opts.port = port;
            }
            let client = block_on(DaemonClient::connect_or_start(&ctx.home, &opts))??;
            outln!(
                "Proxy daemon restarted (pid {}, port {}). Runs registered with the old daemon must be restarted.",
                client.info.pid, client.info.port
            );
            Ok(ExitCode::SUCCESS)
        }
        ProxyCommand::Status => status(ctx),
    }
}

fn status(ctx: &Context) -> Result<ExitCode> {
    let not_running = || {
        if ctx.json {
            outln!("{}", serde_json::json!({ "running": false }));
        } else {
            outln!("Proxy daemon: not running (it starts with the next run).");
        }
        Ok(ExitCode::SUCCESS)
    };
    let Some(client) = block_on(DaemonClient::connect_existing(&ctx.home))?? else {
        return not_running();
    };
    let status = match block_on(client.status())? {
        Ok(status) => status,
        // A daemon at the end of its idle time may exit between the
        // connection and the answer: then it is simply not running.
        Err(e) => match block_on(DaemonClient::connect_existing(&ctx.home))?? {
            None => return not_running(),
            Some(_) => return Err(e.into()),
        },
    };
    if ctx.json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        out!("{}", status.render(chrono::Utc::now()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon process itself (`moat __daemon`, or `moat proxy start
/// --foreground`).
pub fn daemon(ctx: &Context, port: Option<u16>, routing: Option<SocketAddr>) -> Result<ExitCode> {
    let mut config = DaemonConfig::from_env(ctx.home.clone())?;
    config.port = port.unwrap_or(config.port);
    config.routing_listen = routing.unwrap_or(config.routing_listen);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the daemon's async runtime")?;
    runtime.block_on(moat_daemon::serve(config))?;
    Ok(ExitCode::SUCCESS)
}
