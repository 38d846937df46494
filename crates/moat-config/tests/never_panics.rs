//! Mutated versions of a valid moat.yaml must give `Ok` or `Err`, never a
//! panic, a hang or a stack overflow.

use std::path::Path;

const FULL: &str = include_str!("fixtures/full.yaml");

fn check(text: &str) {
    let _ = moat_config::parse(text, Path::new("moat.yaml"), Path::new("/ws"));
}

#[test]
fn truncated_at_every_byte() {
    let bytes = FULL.as_bytes();
    for cut in 0..=bytes.len() {
        check(&String::from_utf8_lossy(&bytes[..cut]));
    }
}

#[test]
fn every_byte_replaced_by_yaml_punctuation() {
    let bytes = FULL.as_bytes();
    let replacements = [
        b':', b'-', b'[', b'{', b'"', b'\'', b'\n', b' ', b'\t', b'*', b'&', b'!', b'#', b'|',
        b'>', b'?', b'%', b'@', b'`', b',', b']', b'}', b'\\', 0,
    ];
    for i in 0..bytes.len() {
        for r in replacements {
            let mut b = bytes.to_vec();
            b[i] = r;
            check(&String::from_utf8_lossy(&b));
        }
    }
}

#[test]
fn lines_dropped_duplicated_and_reindented() {
    let lines: Vec<&str> = FULL.lines().collect();
    for i in 0..lines.len() {
        let mut dropped = lines.clone();
        dropped.remove(i);
        check(&dropped.join("\n"));

        let mut doubled = lines.clone();
        doubled.insert(i, lines[i]);
        check(&doubled.join("\n"));

        for indent in ["", " ", "    ", "\t"] {
            let mut shifted: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
            shifted[i] = format!("{indent}{}", lines[i].trim_start());
            check(&shifted.join("\n"));
        }
    }
}

#[test]
fn random_byte_flips() {
    // xorshift64: deterministic, so a failure reproduces.
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let bytes = FULL.as_bytes();
    for _ in 0..5_000 {
        let mut b = bytes.to_vec();
        for _ in 0..(next() % 8 + 1) {
            let i = (next() % b.len() as u64) as usize;
            b[i] = (next() & 0xff) as u8;
        }
        check(&String::from_utf8_lossy(&b));
    }
}

#[test]
fn pathological_inputs() {
    check(&"[".repeat(100_000));
    check(&"{a: ".repeat(10_000));
    check(&"- ".repeat(10_000));
    check(&format!("name: {}", "x".repeat(1_000_000)));
    check(&"a: 1\n".repeat(2_000));
    check("\u{feff}name: bom\n");
    check("name: a\r\ngrants: [b]\r\n");
}
