#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The log written by the writer, its seal, and what tampering looks like
//! to verification.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moat_audit::{
    read_attestations, read_log, sig_path, verify_bundle, verify_bundle_pinned, verify_log,
    verify_run_log, AuditWriter, Bundle, ChainError, Entry, SignatureError, SigningKey,
    VerifyOptions, RUN_ID_FIELD,
};
use serde_json::json;

struct Fixture {
    _tmp: tempfile::TempDir,
    log: PathBuf,
    key: Arc<SigningKey>,
}

/// A sealed log of `n` entries.
fn sealed(n: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("runs/run_0123456789ab/audit.jsonl");
    let key = Arc::new(SigningKey::load_or_create(&tmp.path().join("audit")).unwrap());
    let w = AuditWriter::open(&log, 64).unwrap();
    for i in 0..n {
        w.append(
            "network",
            json!({"method": "GET", "url": format!("https://x/{i}"), "status_code": 200}),
        );
    }
    let att = w.close(Some(key.clone())).unwrap().unwrap();
    assert_eq!(att.seq, n as u64);
    Fixture {
        _tmp: tmp,
        log,
        key,
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn verify(f: &Fixture) -> moat_audit::LogReport {
    verify_log(&f.log, Some(f.key.public_key())).unwrap()
}

#[test]
fn written_log_verifies_and_is_private() {
    let f = sealed(5);
    let report = verify(&f);
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.entries, 5);
    assert_eq!(report.attestations, 1);
    assert_eq!(report.unsigned_after, 0);
    let mode = std::fs::metadata(&f.log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mode = std::fs::metadata(sig_path(&f.log))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let entries: Vec<Entry> = read_log(&f.log)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.unwrap())
        .collect();
    assert_eq!(entries[0].seq, 1);
    assert_eq!(entries[0].prev, "");
    assert_eq!(entries[1].prev, entries[0].hash);
    assert!(entries[0].ts.ends_with('Z'));
}

#[test]
fn reopening_continues_the_chain_and_adds_an_attestation() {
    let f = sealed(2);
    let w = AuditWriter::open(&f.log, 8).unwrap();
    w.append("ssh", json!({"action": "list"}));
    w.flush().unwrap();
    let report = verify(&f);
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.unsigned_after, 1);
    w.close(Some(f.key.clone())).unwrap();
    let report = verify(&f);
    assert_eq!(
        (report.entries, report.attestations, report.unsigned_after),
        (3, 2, 0)
    );
}

#[test]
fn editing_any_single_byte_of_any_record_is_detected() {
    let f = sealed(3);
    let original = std::fs::read(&f.log).unwrap();
    for i in 0..original.len() {
        if original[i] == b'\n' {
            continue;
        }
        let mut bytes = original.clone();
        // Flip a bit that keeps ASCII ASCII (and may keep the JSON valid).
        bytes[i] ^= 0x01;
        std::fs::write(&f.log, &bytes).unwrap();
        let report = verify(&f);
        assert!(!report.intact(), "byte {i} edited but the log verifies");
    }
}

#[test]
fn editing_data_names_the_record() {
    let f = sealed(4);
    let mut l = lines(&f.log);
    l[2] = l[2].replace("https://x/2", "https://x/9");
    write_lines(&f.log, &l);
    assert_eq!(verify(&f).chain, Some(ChainError::InvalidHash { seq: 3 }));
}

#[test]
fn rehashing_an_edited_record_breaks_the_chain_after_it() {
    let f = sealed(4);
    let mut entries: Vec<Entry> = read_log(&f.log)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.unwrap())
        .collect();
    let forged = Entry::new(
        2,
        entries[1].ts.clone(),
        "network",
        entries[1].prev.clone(),
        json!({"forged": true}),
    );
    entries[1] = forged;
    let l: Vec<String> = entries
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    write_lines(&f.log, &l);
    assert_eq!(verify(&f).chain, Some(ChainError::BrokenChain { seq: 3 }));
}

#[test]
fn deleting_a_record_is_a_sequence_gap() {
    let f = sealed(4);
    let mut l = lines(&f.log);
    l.remove(1);
    write_lines(&f.log, &l);
    assert_eq!(
        verify(&f).chain,
        Some(ChainError::SequenceGap {
            expected: 2,
            got: 3
        })
    );
    let f = sealed(2);
    let mut l = lines(&f.log);
    l.remove(0);
    write_lines(&f.log, &l);
    assert_eq!(
        verify(&f).chain,
        Some(ChainError::SequenceGap {
            expected: 1,
            got: 2
        })
    );
}

#[test]
fn truncation_is_caught_by_the_attestation() {
    let f = sealed(4);
    let mut l = lines(&f.log);
    l.truncate(3);
    write_lines(&f.log, &l);
    let report = verify(&f);
    assert_eq!(report.chain, None);
    assert_eq!(
        report.signature,
        Some(SignatureError::MissingEntry {
            index: 1,
            seq: 4,
            last: 3
        })
    );
    // A torn last line: cut short, but the seal says it was whole, so
    // this is not merely a crash while writing.
    let f = sealed(3);
    let bytes = std::fs::read(&f.log).unwrap();
    std::fs::write(&f.log, &bytes[..bytes.len() - 20]).unwrap();
    let report = verify(&f);
    assert_eq!(
        report.chain,
        Some(ChainError::Incomplete { line: 3 }),
        "{report:?}"
    );
    assert!(!report.incomplete(), "{report:?}");
    // And the writer refuses to append to it.
    let err = AuditWriter::open(&f.log, 4).unwrap_err();
    assert!(err.to_string().contains("damaged at line 3"), "{err}");
    assert!(
        err.to_string().ends_with("); moat will not append to it."),
        "{err}"
    );
    assert_eq!(
        moat_hint::Hint::hint(&err).unwrap().as_str(),
        "Check it with: moat audit <run>, then move it away to start a new log"
    );
}

#[test]
fn wrong_or_foreign_signatures_fail() {
    let f = sealed(2);
    let sig = sig_path(&f.log);
    let text = std::fs::read_to_string(&sig).unwrap();
    let att = &read_attestations(&f.log).unwrap()[0];
    // Corrupt the signature.
    let mut bad = att.signature.clone().into_bytes();
    bad[0] = if bad[0] == b'0' { b'1' } else { b'0' };
    std::fs::write(
        &sig,
        text.replace(&att.signature, &String::from_utf8(bad).unwrap()),
    )
    .unwrap();
    assert_eq!(
        verify(&f).signature,
        Some(SignatureError::InvalidSignature { index: 1, seq: 2 })
    );
    // A valid signature by another key.
    let other_dir = tempfile::tempdir().unwrap();
    let other = SigningKey::load_or_create(other_dir.path()).unwrap();
    std::fs::write(&sig, &text).unwrap();
    let report = verify_log(&f.log, Some(other.public_key())).unwrap();
    assert!(matches!(
        report.signature,
        Some(SignatureError::UnknownKey { index: 1, .. })
    ));
    // Garbage.
    std::fs::write(&sig, "{").unwrap();
    assert!(matches!(
        verify(&f).signature,
        Some(SignatureError::Unreadable(_))
    ));
}

#[test]
fn bundle_round_trip_and_tampering() {
    let f = sealed(3);
    let entries: Vec<Entry> = read_log(&f.log)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.unwrap())
        .collect();
    let bundle = Bundle::new(entries, read_attestations(&f.log).unwrap());
    let path = f.log.with_file_name("bundle.json");
    bundle.write(&path).unwrap();
    let back = Bundle::read(&path).unwrap();
    assert!(verify_bundle(&back).intact());

    let mut b = back.clone();
    b.entries[1].data = json!({"edited": 1});
    assert_eq!(
        verify_bundle(&b).chain,
        Some(ChainError::InvalidHash { seq: 2 })
    );

    let mut b = back.clone();
    b.entries.pop();
    let r = verify_bundle(&b);
    assert_eq!(r.chain, Some(ChainError::LastHashMismatch { seq: 2 }));
    assert!(matches!(
        r.signature,
        Some(SignatureError::MissingEntry { .. })
    ));

    let mut b = back.clone();
    b.attestations[0].root_hash = b.entries[0].hash.clone();
    assert!(matches!(
        verify_bundle(&b).signature,
        Some(SignatureError::InvalidSignature { .. })
    ));

    std::fs::write(&path, b"{\"version\": 1").unwrap();
    let err = Bundle::read(&path).unwrap_err().to_string();
    assert!(err.contains("is not a valid moat audit bundle"), "{err}");
    std::fs::write(
        &path,
        serde_json::to_vec(&Bundle { version: 9, ..back }).unwrap(),
    )
    .unwrap();
    let err = Bundle::read(&path).unwrap_err().to_string();
    assert!(err.contains("version 9 is not supported"), "{err}");
}

#[test]
fn a_full_queue_drops_and_records_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let w = AuditWriter::open(&log, 1).unwrap();
    for i in 0..2000 {
        w.append("console", json!({"line": i}));
    }
    let dropped = w.dropped();
    w.close(None).unwrap();
    let entries: Vec<Entry> = read_log(&log)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.unwrap())
        .collect();
    let recorded: u64 = entries
        .iter()
        .filter(|e| e.kind == "audit")
        .map(|e| e.data["count"].as_u64().unwrap())
        .sum();
    assert_eq!(recorded, dropped);
    assert_eq!(
        entries.iter().filter(|e| e.kind == "console").count() as u64 + dropped,
        2000
    );
    assert!(verify_log(&log, None).unwrap().intact());
}

#[test]
fn missing_log_is_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let err = verify_log(&tmp.path().join("nope.jsonl"), None).unwrap_err();
    assert!(err.is_not_found());
}

/// A log of run `run_id` with `n` records, sealed when `key` is given.
fn run_log(dir: &Path, run_id: &str, n: usize, key: Option<Arc<SigningKey>>) -> PathBuf {
    let log = dir.join(run_id).join("audit.jsonl");
    let w = AuditWriter::open_for_run(&log, run_id, 64).unwrap();
    for i in 0..n {
        w.append("network", json!({"url": format!("https://x/{i}")}));
    }
    w.close(key).unwrap();
    log
}

fn opts<'a>(key: &'a SigningKey, run_id: &'a str, finished: bool) -> VerifyOptions<'a> {
    VerifyOptions {
        expected_key: Some(key.public_key()),
        run_id: Some(run_id),
        finished,
    }
}

#[test]
fn records_name_their_run_and_a_transplanted_log_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::load_or_create(&tmp.path().join("audit")).unwrap());
    let log = run_log(tmp.path(), "run_aaaaaaaaaaaa", 3, Some(key.clone()));
    for (_, e) in read_log(&log).unwrap() {
        assert_eq!(e.unwrap().data[RUN_ID_FIELD], "run_aaaaaaaaaaaa");
    }
    let ok = verify_run_log(&log, &opts(&key, "run_aaaaaaaaaaaa", true)).unwrap();
    assert!(ok.intact(), "{ok:?}");
    assert_eq!(ok.signers, vec![key.public_key_hex()]);
    let moved = verify_run_log(&log, &opts(&key, "run_bbbbbbbbbbbb", true)).unwrap();
    assert_eq!(
        moved.chain,
        Some(ChainError::ForeignRun {
            seq: 1,
            run: "run_aaaaaaaaaaaa".into()
        })
    );
}

#[test]
fn a_finished_run_needs_a_seal_over_its_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::load_or_create(&tmp.path().join("audit")).unwrap());
    let run = "run_cccccccccccc";
    // Never sealed (the daemon died): fine while running, not once ended.
    let log = run_log(tmp.path(), run, 2, None);
    assert!(verify_run_log(&log, &opts(&key, run, false))
        .unwrap()
        .intact());
    let ended = verify_run_log(&log, &opts(&key, run, true)).unwrap();
    assert_eq!(ended.signature, Some(SignatureError::Unsealed));
    // Sealed, then a record appended after the end.
    std::fs::remove_dir_all(tmp.path().join(run)).unwrap();
    let log = run_log(tmp.path(), run, 2, Some(key.clone()));
    let w = AuditWriter::open_for_run(&log, run, 8).unwrap();
    w.append("network", json!({"url": "https://late"}));
    w.close(None).unwrap();
    let late = verify_run_log(&log, &opts(&key, run, true)).unwrap();
    assert_eq!(
        late.signature,
        Some(SignatureError::UnsignedTail { count: 1, seq: 2 })
    );
}

#[test]
fn a_record_cut_short_is_incomplete_not_tampered() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::load_or_create(&tmp.path().join("audit")).unwrap());
    let run = "run_dddddddddddd";
    let log = run_log(tmp.path(), run, 3, None);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.truncate(bytes.len() - 20);
    std::fs::write(&log, &bytes).unwrap();
    let report = verify_run_log(&log, &opts(&key, run, true)).unwrap();
    assert_eq!(report.chain, Some(ChainError::Incomplete { line: 3 }));
    assert!(report.incomplete(), "{report:?}");
    // The same damage with a newline after it is not a crash.
    bytes.push(b'\n');
    std::fs::write(&log, &bytes).unwrap();
    let report = verify_run_log(&log, &opts(&key, run, true)).unwrap();
    assert!(matches!(
        report.chain,
        Some(ChainError::Unreadable { line: 3, .. })
    ));
    assert!(!report.incomplete());
}

#[test]
fn a_pinned_bundle_refuses_another_signer() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::load_or_create(&tmp.path().join("audit")).unwrap());
    let other = SigningKey::load_or_create(&tmp.path().join("other")).unwrap();
    let log = run_log(tmp.path(), "run_eeeeeeeeeeee", 2, Some(key.clone()));
    let entries: Vec<Entry> = read_log(&log)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.unwrap())
        .collect();
    let bundle = Bundle::new(entries.clone(), read_attestations(&log).unwrap());
    assert!(verify_bundle_pinned(&bundle, Some(key.public_key())).intact());
    let resigned = Bundle::new(
        entries.clone(),
        vec![moat_audit::Attestation::sign(
            entries.last().unwrap(),
            &other,
        )],
    );
    assert!(verify_bundle(&resigned).intact());
    assert!(matches!(
        verify_bundle_pinned(&resigned, Some(key.public_key())).signature,
        Some(SignatureError::UnknownKey { .. })
    ));
    let unsigned = Bundle::new(entries, Vec::new());
    assert_eq!(
        verify_bundle(&unsigned).signature,
        Some(SignatureError::Unsealed)
    );
}

/// A capped log: events past the cap are dropped behind one `capped`
/// entry, the run's own entries are kept, the chain verifies, and a
/// reopened log stays capped without a second marker.
#[test]
fn a_capped_log_stops_with_one_entry_and_keeps_the_runs_end() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("audit.jsonl");
    let event = |i: usize| json!({"method": "GET", "url": format!("https://x/{i}")});
    for _ in 0..2 {
        let w = AuditWriter::open_for_run_capped(&log, "run_0123456789ab", 1024, 2000).unwrap();
        w.append("run", json!({"action": "started"}));
        for i in 0..100 {
            w.append("network", event(i));
        }
        w.append("run", json!({"action": "stopped"}));
        w.close(None).unwrap();
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() < 4000, "{} bytes", text.len());
    let entries: Vec<Entry> = read_log(&log)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.unwrap())
        .collect();
    let capped = entries
        .iter()
        .filter(|e| e.data["action"] == "capped")
        .count();
    assert_eq!(capped, 1, "{text}");
    assert_eq!(entries.last().unwrap().data["action"], "stopped");
    let report = verify_log(&log, None).unwrap();
    assert!(report.chain.is_none(), "{:?}", report.chain);
}
