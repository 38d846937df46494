//! Path rules must see the path the server will: whatever the bytes, a
//! request that `deny * /admin/**` lets through must not name `/admin` under
//! any reading a server may take. The reference below decodes the path
//! repeatedly (any depth of percent encoding), treats `\` as `/`, cuts at
//! a NUL, strips `;` parameters and resolves dot segments; if it lands on
//! `/admin`, the matcher must have denied the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_policy::{HostPattern, HostRules, NetworkPolicy, Policy, Rule};

fn decode_once(s: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Every reading of `path` a lenient server could take, as segment lists.
fn readings(path: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let cut = path
        .iter()
        .position(|b| *b == b'?' || *b == b'#')
        .unwrap_or(path.len());
    let mut current = path[..cut].to_vec();
    for _ in 0..4 {
        for strip_params in [false, true] {
            let mut bytes = current.clone();
            if let Some(nul) = bytes.iter().position(|b| *b == 0) {
                bytes.truncate(nul);
            }
            let mut segs: Vec<Vec<u8>> = Vec::new();
            for seg in bytes.split(|b| *b == b'/' || *b == b'\\') {
                let seg = if strip_params {
                    seg.split(|b| *b == b';').next().unwrap_or_default()
                } else {
                    seg
                };
                match seg {
                    b"" | b"." => {}
                    b".." => {
                        segs.pop();
                    }
                    _ => segs.push(seg.to_vec()),
                }
            }
            out.push(segs);
        }
        let next = decode_once(&current);
        if next == current {
            break;
        }
        current = next;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let path = format!("/{path}");
    let mut policy = NetworkPolicy::new(Policy::Permissive);
    let (Ok(host), Ok(rule)) = (HostPattern::parse("h.test"), Rule::parse("deny * /admin/**"))
    else {
        return;
    };
    policy.hosts.push(HostRules {
        host,
        rules: vec![rule],
    });
    let allowed = policy.decide("h.test", "GET", &path).is_allowed();
    let names_admin = readings(path.as_bytes())
        .iter()
        .any(|segs| segs.first().is_some_and(|s| s == b"admin"));
    assert!(
        !(allowed && names_admin),
        "{path:?} reaches /admin but was allowed"
    );
    // The canonical form itself never keeps what it claims to remove.
    if let Some(segs) = moat_policy::canonical_path(&path) {
        for s in &segs {
            assert!(!s.is_empty() && s != "." && s != "..", "{path:?}: {segs:?}");
            assert!(!s.contains(['/', '\\', ';', '\0']), "{path:?}: {segs:?}");
        }
    }
});
