//! The SSH agent proxy reads frames from an untrusted sandbox: any bytes
//! must decode to messages or errors, never a panic or a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_ssh::wire;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while let Ok(Some(payload)) = wire::read_frame(&mut stream) {
        if let Ok(wire::Request::Extension { body, .. }) = wire::decode_request(&payload) {
            let _ = wire::decode_session_bind(body);
        }
        let _ = wire::decode_identities(&payload);
        let _ = wire::userauth_session_id(&payload);
    }
});
