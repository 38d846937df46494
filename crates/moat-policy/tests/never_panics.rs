//! Feeds many odd and random inputs to every parser and to the decision
//! functions. The only assertions are "returns" and the consistency
//! contract between `host_decision` and `decide`.

use moat_policy::{Decision, HostDecision, HostPattern, HostRules, NetworkPolicy, Policy, Rule};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const PIECES: &[&str] = &[
    "allow", "deny", "Allow", "DENY", "alow", " ", "\t", "\n", "GET", "get", "*", "**", "***", "/",
    "//", "/a", "/*", "/**", "a", "b", ".", "..", "%", "%2", "%2e", "%2F", "%ff", "%C3%A9", "?",
    "#", ":", ":443", "[", "]", "[::1]", "*.", "example", ".com", "-", "_", "é", "ß", "\u{0}",
    "\u{202e}", "💥", "xn--", "9", "65535", "\\", "'", "\"", "::",
];

fn random_string(rng: &mut Rng) -> String {
    let n = rng.below(12);
    (0..n).map(|_| rng.pick(PIECES)).collect()
}

fn random_bytes_string(rng: &mut Rng) -> String {
    let n = rng.below(40);
    let bytes: Vec<u8> = (0..n).map(|_| (rng.next() & 0xff) as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn parsers_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..50_000 {
        let s = if i % 3 == 0 {
            random_bytes_string(&mut rng)
        } else {
            random_string(&mut rng)
        };
        let _ = Rule::parse(&s);
        let _ = HostPattern::parse(&s);
        let _ = s.parse::<Policy>();
    }
}

#[test]
fn byte_permutations_of_valid_rules_never_panic() {
    let seeds = [
        "allow GET /repos/*/issues",
        "deny * /admin/**",
        "deny DELETE /**",
        "*.example.com",
        "[::1]",
    ];
    for seed in seeds {
        let bytes = seed.as_bytes();
        for cut in 0..=bytes.len() {
            let s = String::from_utf8_lossy(&bytes[..cut]);
            let _ = Rule::parse(&s);
            let _ = HostPattern::parse(&s);
        }
        for i in 0..bytes.len() {
            for j in 0..bytes.len() {
                let mut b = bytes.to_vec();
                b.swap(i, j);
                b[i] ^= 0x20;
                let s = String::from_utf8_lossy(&b);
                let _ = Rule::parse(&s);
                let _ = HostPattern::parse(&s);
            }
        }
    }
}

fn random_policy(rng: &mut Rng) -> NetworkPolicy {
    let hosts = ["a.com", "*.a.com", "b.a.com", "[::1]", "127.0.0.1", "c.org"];
    let rules = [
        "allow GET /x/**",
        "deny * /x/*/y",
        "deny DELETE /**",
        "allow * /",
        "deny POST /**/z",
        "allow * /**",
    ];
    let mut policy = NetworkPolicy::new(if rng.below(2) == 0 {
        Policy::Permissive
    } else {
        Policy::Strict
    });
    for _ in 0..rng.below(4) {
        let Ok(host) = HostPattern::parse(rng.pick(&hosts)) else {
            continue;
        };
        let rules = (0..rng.below(3))
            .filter_map(|_| Rule::parse(rng.pick(&rules)).ok())
            .collect();
        policy.hosts.push(HostRules { host, rules });
    }
    policy
}

#[test]
fn decisions_never_panic_and_agree_with_host_decision() {
    let mut rng = Rng(42);
    let hosts = [
        "a.com",
        "b.a.com",
        "x.b.a.com",
        "A.COM:443",
        "[::1]:80",
        "127.0.0.1",
        "c.org",
        "",
        ":",
        "[",
        "a.com.",
        ".a.com",
        "💥.a.com",
    ];
    let methods = ["GET", "get", "POST", "DELETE", "", "💥"];
    let paths = [
        "/",
        "",
        "/x",
        "/x/q/y",
        "/x/y/z",
        "/z",
        "/%2e%2e/x/a",
        "/x?y",
        "//x//y",
        "/a/../x/1/y",
        "%",
        "/%zz",
    ];
    for _ in 0..3_000 {
        let policy = random_policy(&mut rng);
        for _ in 0..20 {
            let host = if rng.below(4) == 0 {
                random_string(&mut rng)
            } else {
                rng.pick(&hosts).to_owned()
            };
            let hd = policy.host_decision(&host);
            for _ in 0..5 {
                let method = rng.pick(&methods);
                let path = if rng.below(4) == 0 {
                    random_string(&mut rng)
                } else {
                    rng.pick(&paths).to_owned()
                };
                let d = policy.decide(&host, method, &path);
                match (&hd, &d) {
                    (HostDecision::Allowed, Decision::Deny(r)) => {
                        panic!(
                            "{policy:?}: host {host:?} Allowed but {method} {path:?} denied: {r:?}"
                        )
                    }
                    (HostDecision::Denied(_), Decision::Allow) => {
                        panic!("{policy:?}: host {host:?} Denied but {method} {path:?} allowed")
                    }
                    (HostDecision::Denied(a), Decision::Deny(b)) => assert_eq!(a, b),
                    _ => {}
                }
                if let Decision::Deny(r) = d {
                    assert_eq!(r.message().lines().count(), 3);
                }
            }
        }
    }
}
