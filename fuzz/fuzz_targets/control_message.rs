//! The daemon's control socket decodes one JSON line per request: any bytes
//! must give a request or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_daemon::protocol::{decode, Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Request>(data);
    let _ = decode::<Response>(data);
});
