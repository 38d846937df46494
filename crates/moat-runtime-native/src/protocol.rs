//! The two channels between [`crate::spawn`] and the sandbox init.
//!
//! * The *spec channel* (caller → init): an 8-byte little-endian length and
//!   the JSON spec, then one [`GO`] byte once the caller has put the init
//!   into the sandbox's cgroup (moving a process between cgroups waits for
//!   an RCU grace period, milliseconds: the init prepares meanwhile, and
//!   starts nothing that must be inside before the byte). The caller then
//!   keeps its end open for the life of the run: it doubles as a lifeline,
//!   and the init kills the sandbox when it reads end-of-file (the caller
//!   exited or dropped the handle).
//! * The *status channel* (init → caller): JSON lines of [`Status`]: first
//!   `Ready` or `Error`, later `Exit` with the command's precise status.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::spec::SandboxSpec;

/// Upper bound on the size of a serialized spec (injected files included).
const MAX_SPEC_BYTES: u64 = 64 * 1024 * 1024;

/// One record on the status channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Status {
    /// The sandbox is built; the command is being started.
    Ready,
    /// The sandbox could not be built; nothing was run.
    Error { message: String },
    /// The command finished: `code` is its exit code or 128+signal.
    Exit { code: i32, signal: Option<i32> },
}

/// The byte that lets the init start the sandbox's processes.
pub(crate) const GO: u8 = b'G';

/// Waits for [`GO`] on the spec channel.
pub(crate) fn read_go(mut r: impl Read) -> io::Result<()> {
    let mut byte = [0u8; 1];
    r.read_exact(&mut byte)?;
    if byte[0] == GO {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected byte on the spec channel",
        ))
    }
}

pub(crate) fn write_spec(mut w: impl Write, spec: &SandboxSpec) -> io::Result<()> {
    let json = serde_json::to_vec(spec).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(json.len() + 8);
    framed.extend_from_slice(&(json.len() as u64).to_le_bytes());
    framed.extend_from_slice(&json);
    w.write_all(&framed)?;
    w.flush()
}

pub(crate) fn read_spec(mut r: impl Read) -> io::Result<SandboxSpec> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_SPEC_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("spec of {len} bytes is larger than the {MAX_SPEC_BYTES}-byte limit"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    serde_json::from_slice(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub(crate) fn write_status(mut w: impl Write, status: &Status) -> io::Result<()> {
    let mut line = serde_json::to_vec(status).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)
}

pub(crate) fn parse_status(line: &str) -> Option<Status> {
    serde_json::from_str(line.trim_end()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips() {
        let spec = SandboxSpec::new("/w", vec!["echo".into(), "hi".into()]);
        let mut buf = Vec::new();
        assert!(write_spec(&mut buf, &spec).is_ok());
        let back = read_spec(&buf[..]);
        assert!(matches!(back, Ok(ref s) if *s == spec));
    }

    #[test]
    fn status_round_trips() {
        let mut buf = Vec::new();
        let st = Status::Exit {
            code: 137,
            signal: Some(9),
        };
        assert!(write_status(&mut buf, &st).is_ok());
        let line = String::from_utf8_lossy(&buf);
        assert_eq!(parse_status(&line), Some(st));
    }
}
