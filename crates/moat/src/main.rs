//! The `moat` command: parses arguments and hands each command to the
//! library crate that owns it. Nothing here holds state or policy.

/// `print!` for command results: a closed pipe ends the command quietly
/// with status 0 instead of panicking (see [`output::write_stdout`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` for command results: a closed pipe ends the command quietly
/// with status 0 instead of panicking (see [`output::write_stdout`]).
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for warnings and notes: a closed standard error is
/// ignored instead of panicking; control characters are escaped (see
/// [`output::escape_controls`]).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` for prompts and notes: a closed standard error is ignored
/// instead of panicking; control characters are escaped.
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!($($arg)*))
    };
}

mod cli;
mod commands;
mod hints;
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
        // `moat logs | head`: the reader is gone, nothing is wrong.
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            output::print_error(&err);
            ExitCode::FAILURE
        }
    }
}
