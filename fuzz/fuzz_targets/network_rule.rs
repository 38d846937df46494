//! `network.rules` entries come from moat.yaml and `--allow-host`: parsing
//! and deciding must never panic, whatever the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_policy::{HostPattern, HostRules, NetworkPolicy, Policy, Rule};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let rule = parts.next().unwrap_or_default();
    let host = parts.next().unwrap_or_default();
    let request = parts.next().unwrap_or_default();
    let parsed_rule = Rule::parse(rule);
    let parsed_host = HostPattern::parse(host);
    if let (Ok(rule), Ok(host)) = (parsed_rule, parsed_host) {
        let mut policy = NetworkPolicy::new(Policy::Strict);
        policy.hosts.push(HostRules {
            host,
            rules: vec![rule],
        });
        let (method, path) = request.split_once(' ').unwrap_or(("GET", request));
        let _ = policy.host_decision(request);
        let _ = policy.decide(request, method, path);
        if let moat_policy::Decision::Deny(reason) = policy.decide("h", method, path) {
            let _ = reason.message();
        }
    }
});
