//! Test and benchmark harness for the native runtime (not shipped).
//!
//! `moat-native-harness SPEC.json` runs the JSON-serialized `SandboxSpec`
//! and exits with the command's exit code; `moat-native-harness --check`
//! runs `check_support`. Knobs, for the tests:
//! * `MOAT_HARNESS_PIPED=1`: pipe stdout/stderr and re-print each line
//!   prefixed with `out: ` / `err: `;
//! * `MOAT_HARNESS_SIGNAL=N` and `MOAT_HARNESS_SIGNAL_AFTER_MS=T`: send
//!   signal N to the sandbox after T milliseconds.

use std::io::{BufRead, BufReader, Read};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use moat_runtime_native::{SandboxSpec, StdioMode};

fn main() -> ExitCode {
    moat_runtime_native::init::maybe_run_init();

    let Some(arg) = std::env::args().nth(1) else {
        eprintln!("usage: moat-native-harness SPEC.json | --check");
        return ExitCode::from(2);
    };
    if arg == "--check" {
        return check();
    }
    let Some(spec) = read_spec(&arg) else {
        return ExitCode::from(2);
    };

    let mut sandbox = match moat_runtime_native::spawn(&spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("moat-harness: error: {e}");
            return ExitCode::from(120);
        }
    };

    let mut readers = Vec::new();
    if let Some(out) = sandbox.take_stdout() {
        readers.push(thread::spawn(move || relay_lines(out, "out", false)));
    }
    if let Some(err) = sandbox.take_stderr() {
        readers.push(thread::spawn(move || relay_lines(err, "err", true)));
    }

    signal_later(&sandbox);

    let exit = match sandbox.wait() {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("moat-harness: error: {e}");
            return ExitCode::from(121);
        }
    };
    for r in readers {
        let _ = r.join();
    }
    if std::env::var_os("MOAT_HARNESS_REPORT").is_some() {
        eprintln!(
            "moat-harness: code={} signal={}",
            exit.code,
            exit.signal.map_or("none".to_string(), |s| s.to_string())
        );
    }
    ExitCode::from(u8::try_from(exit.code).unwrap_or(255))
}

/// `--check`: whether this machine can run the native sandbox.
fn check() -> ExitCode {
    match moat_runtime_native::check_support() {
        Ok(()) => {
            println!("native sandbox: supported");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("native sandbox: {e}");
            ExitCode::from(1)
        }
    }
}

/// The spec in the JSON file `path`, piped when `MOAT_HARNESS_PIPED` asks;
/// `None` (said on stderr) when it cannot be read.
fn read_spec(path: &str) -> Option<SandboxSpec> {
    let read = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<SandboxSpec>(&b).map_err(|e| e.to_string()));
    let mut spec = match read {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("moat-harness: cannot read spec {path}: {e}");
            return None;
        }
    };
    if std::env::var_os("MOAT_HARNESS_PIPED").is_some() {
        spec.stdio = StdioMode::Piped;
    }
    Some(spec)
}

/// Sends `MOAT_HARNESS_SIGNAL` to the sandbox after
/// `MOAT_HARNESS_SIGNAL_AFTER_MS`, when asked.
fn signal_later(sandbox: &moat_runtime_native::Sandbox) {
    let signal = std::env::var("MOAT_HARNESS_SIGNAL")
        .ok()
        .and_then(|s| s.parse::<i32>().ok());
    let after = std::env::var("MOAT_HARNESS_SIGNAL_AFTER_MS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    if let Some(sig) = signal {
        let signaller = sandbox.signaller();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(after));
            if let Err(e) = signaller.signal(sig) {
                eprintln!("moat-harness: signal: {e}");
            }
        });
    }
}

fn relay_lines(stream: impl Read, prefix: &str, to_stderr: bool) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if to_stderr {
            eprintln!("{prefix}: {line}");
        } else {
            println!("{prefix}: {line}");
        }
    }
}
