//! The `moat` command: parses arguments and hands each command to the
//! library crate that owns it. Nothing here holds state or policy.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Must come first: `moat run` re-executes this binary as the sandbox's
    // init, and that process must not parse arguments or start threads.
    moat_runtime_native::init::maybe_run_init();
    let cli = cli::Cli::parse();
    // Inside a sandbox (the ssh ProxyCommand) there is no MOAT_HOME to log to.
    if !matches!(cli.command, cli::Command::SshConnect { .. }) {
        output::init_logging(cli.global.verbose);
    }
    tracing::debug!(command = ?std::env::args().nth(1), pid = std::process::id(), "moat started");
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            output::print_error(&err);
            ExitCode::FAILURE
        }
    }
}
