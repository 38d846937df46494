//! Everything the CLI prints that is not a command's own result: errors
//! and debug logs.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;

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

/// `text` with every control character made visible, for a terminal.
///
/// Much of what moat prints comes from a sandbox: moat.yaml values in a
/// trust review, URLs and headers in a trace, error messages. An ESC, CR
/// or OSC sequence in it would be obeyed by the user's terminal (clear a
/// line, hide an added mount, set the title), and so would a C1 control
/// such as CSI (U+009B). All of them — C0 but `\n` and `\t`, DEL and C1 —
/// become `\u001b`-style escapes. JSON's form of escape, so the same pass
/// keeps JSON output valid and meaning the same: serde_json already
/// escapes C0 in strings, but writes DEL and C1 raw.
///
/// Every line the CLI prints goes through this (`out!`, `outln!`,
/// `err!`, `errln!`, errors); only a run's own output (`moat run`, the
/// replay of `moat logs`) reaches the terminal as the program wrote it.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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

/// Renders rows as an aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
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
    fn control_characters_are_escaped_visibly() {
        assert!(matches!(escape_controls("plain\tline\n"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\u{1b}[2K\rb\u{7}\u{7f}\u{9b}31m\n"),
            "a\\u001b[2K\\u000db\\u0007\\u007f\\u009b31m\n"
        );
        // JSON keeps its meaning.
        let json = serde_json::to_string("x\u{9b}\u{1b}").unwrap();
        let escaped = escape_controls(&json);
        let back: String = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, "x\u{9b}\u{1b}");
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
