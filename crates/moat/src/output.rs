//! Everything the CLI prints that is not a command's own result: errors
//! and debug logs.

use std::borrow::Cow;
use std::io::Write;

pub use moat_report::{escape_controls, table};

/// Logging for every moat process: JSON lines at debug level into
/// `MOAT_HOME/debug/YYYY-MM-DD.jsonl` (mode 0600, files older than 14 days
/// removed, a day capped at 64 MiB and the directory at 256 MiB), and
/// human-readable lines on stderr — debug with `--verbose`, otherwise
/// warnings only. A debug directory that cannot be written never
/// stops the command.
pub fn init_logging(verbose: bool) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let stderr_filter =
        tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(if verbose { QUIET_LIBRARIES } else { "warn" })
        });
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(stderr_filter);
    let file_layer = moat_home::MoatHome::from_env()
        .and_then(|home| moat_home::open_debug_log(&home))
        .map(|file| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::sync::Mutex::new(file))
                .with_filter(tracing_subscriber::EnvFilter::new(QUIET_LIBRARIES))
        });
    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init();
}

/// Debug level for moat, info for the libraries: their debug output is
/// noise, and bollard's carries the bodies of Engine API requests, whose
/// container environments hold the run's proxy token and service
/// passwords.
const QUIET_LIBRARIES: &str =
    "debug,bollard=info,hyper=info,hyper_util=info,rustls=info,h2=info,reqwest=info";

/// Writes a command's result to standard output (the `out!` and `outln!`
/// macros). A reader that went away (`moat list | head -0`) ends the
/// command quietly with status 0, as other Unix tools do; any other write
/// error (a full disk behind a redirection) is reported and ends it with
/// status 1. Never panics, unlike `println!`.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    let text = args
        .as_str()
        .map_or_else(|| Cow::Owned(args.to_string()), Cow::Borrowed);
    let result = {
        let mut out = std::io::stdout().lock();
        out.write_all(escape_controls(&text).as_bytes())
    };
    if let Err(err) = result {
        stdout_failed(&err);
    }
}

/// Writes a note, warning or prompt to standard error (the `errln!` and
/// `err!` macros), escaped as [`write_stdout`] does; a closed standard
/// error is ignored.
pub fn write_stderr(args: std::fmt::Arguments<'_>) {
    let text = args
        .as_str()
        .map_or_else(|| Cow::Owned(args.to_string()), Cow::Borrowed);
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(escape_controls(&text).as_bytes());
    let _ = stderr.flush();
}

/// Ends the process after standard output failed: quietly with status 0
/// when the reader closed the pipe, else with the error and status 1.
pub fn stdout_failed(err: &std::io::Error) -> ! {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "Error: writing to standard output: {err}");
    std::process::exit(1);
}

/// Whether `err` comes from writing to a closed pipe: the command ends
/// with status 0 and no message.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints an error, its causes and their fixes: `Error: outer: cause: root`,
/// then each fix after a blank line.
pub fn print_error(err: &anyhow::Error) {
    let text = moat_hint::render(&error_line(err), &crate::hints::fixes(err));
    write_stderr(format_args!("Error: {text}\n"));
}

/// An error and its causes joined by `: `. Each error in moat either shows
/// its cause or returns it as its source, never both; debug builds (every
/// end-to-end test) check that no cause repeats its wrapper's words.
fn error_line(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        debug_assert!(
            !text.contains(&cause),
            "an error repeats its source: {text:?} already holds {cause:?}"
        );
        text.push_str(": ");
        text.push_str(&cause);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_joins_each_cause_once() {
        let home = moat_home::HomeError::Io {
            action: "reading",
            path: "/x/credentials".into(),
            error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let err = anyhow::Error::new(home).context("loading the grants");
        assert_eq!(
            error_line(&err),
            "loading the grants: reading /x/credentials: permission denied"
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "an error repeats its source")]
    fn a_cause_repeated_by_its_wrapper_is_caught_in_debug_builds() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = anyhow::Error::new(io).context("reading /x: permission denied");
        error_line(&err);
    }
}
