//! End-to-end tests of the audit log through the real binary: a native run
//! through the proxy daemon leaves a sealed, hash-chained `audit.jsonl`;
//! `moat audit` verifies it, names the first broken record when it is
//! edited, exports a bundle that `moat audit verify` checks on its own;
//! and a client can append events to an active run over the control socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::TestEnv;

const GH_TOKEN: &str = "ghp_auditE2eSecret0123456789abcdefghij";

struct AuditEnv(common::ProxiedEnv);

impl std::ops::Deref for AuditEnv {
    type Target = common::ProxiedEnv;
    fn deref(&self) -> &common::ProxiedEnv {
        &self.0
    }
}

impl AuditEnv {
    fn new() -> Self {
        AuditEnv(common::ProxiedEnv::new(&["api.github.com"]))
    }

    /// A finished run that made one request with the github grant.
    fn audited_run(&self) -> String {
        self.grant_github(GH_TOKEN);
        let out = self.run(&[
            "run",
            "--name",
            "audited",
            "--grant",
            "github",
            "--",
            "sh",
            "-c",
            "curl -sS -o /dev/null -w 'status=%{http_code}\\n' https://api.github.com/user",
        ]);
        out.success();
        assert!(out.stdout.contains("status=200"), "{}", out.stderr);
        self.last_run_id()
    }

    fn last_run_id(&self) -> String {
        let list: serde_json::Value =
            serde_json::from_str(&self.run(&["list", "--json"]).stdout).unwrap();
        list[0]["id"].as_str().unwrap().to_owned()
    }

    fn log(&self, id: &str) -> PathBuf {
        self.env
            .moat_home()
            .join("runs")
            .join(id)
            .join("audit.jsonl")
    }

    fn entries(&self, id: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log(id))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn redact(&self, text: &str, id: &str) -> String {
        let key = std::fs::read_to_string(self.env.moat_home().join("audit/signing.pub"))
            .map(|k| k.trim().to_owned())
            .unwrap_or_default();
        let text = self.env.redact(text).replace(id, "[RUN]");
        if key.is_empty() {
            text
        } else {
            text.replace(&key, "[KEY]")
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_run_leaves_a_sealed_log_that_verifies() {
    let t = AuditEnv::new();
    let id = t.audited_run();
    let entries = t.entries(&id);
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"run"), "{entries:?}");
    assert_eq!(entries[0]["data"]["action"], "started");
    assert_eq!(entries[0]["data"]["grants"], serde_json::json!(["github"]));
    assert_eq!(entries[0]["data"]["policy"], "permissive");
    assert!(kinds.contains(&"credential"), "{kinds:?}");
    let net = entries
        .iter()
        .find(|e| e["type"] == "network" && e["data"]["method"] == "GET")
        .unwrap_or_else(|| panic!("no GET in {entries:?}"));
    assert_eq!(net["data"]["url"], "https://api.github.com/user");
    assert_eq!(net["data"]["status_code"], 200);
    assert_eq!(net["data"]["decision"], "allow");
    assert_eq!(net["data"]["credential_used"], "api.github.com");
    let last = entries.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["data"]["action"].as_str()),
        (Some("run"), Some("stopped"))
    );
    // Private files, and never the secret.
    let log = t.log(&id);
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!std::fs::read_to_string(&log).unwrap().contains(GH_TOKEN));
    let key = t.env.moat_home().join("audit/signing.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = t.run(&["audit", "audited"]);
    out.success();
    let n = entries.len();
    let text = t
        .redact(&out.stdout, &id)
        .replace(&format!(" {n} entries"), " N entries");
    insta::assert_snapshot!(text, @r"
    Auditing run: [RUN]
    ==================================================
    Log Integrity
      [ok] Hash chain: N entries, no gaps, all hashes valid

    Local Signatures
      [ok] 1 attestation(s), all signatures valid
      - Signed by [KEY] (this installation's key)

    External Attestations (Sigstore/Rekor)
      - No Rekor proofs found
    ==================================================
    VERDICT: [ok] INTACT - No tampering detected
    ");

    // Export, verify elsewhere, then tamper with the bundle.
    let bundle = t.env.dir.path().join("proof.json");
    let out = t.run(&["audit", &id, "--export", bundle.to_str().unwrap()]);
    out.success();
    assert!(
        out.stdout
            .contains("Verify it anywhere with: moat audit verify"),
        "{}",
        out.stdout
    );
    let other = TestEnv::new();
    let out = other.run(&["audit", "verify", bundle.to_str().unwrap()]);
    out.success();
    assert!(
        out.stdout.starts_with("Verifying bundle: "),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains("VERDICT: [ok] INTACT - No tampering detected"));

    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    json["entries"][1]["data"]["host"] = "evil.example".into();
    std::fs::write(&bundle, serde_json::to_vec(&json).unwrap()).unwrap();
    let out = other.run(&["audit", "verify", bundle.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("VERDICT: [FAIL] TAMPERED - invalid hash at seq 2"),
        "{}",
        out.stdout
    );
}

#[test]
fn tampering_with_the_log_names_the_first_broken_record() {
    let t = AuditEnv::new();
    let id = t.audited_run();
    let log = t.log(&id);
    let original = std::fs::read_to_string(&log).unwrap();

    // One edited byte in the second record.
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replacen("injected", "injectee", 1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = t.run(&["audit", &id]);
    assert_eq!(out.code, Some(1));
    insta::assert_snapshot!(t.redact(&out.stdout, &id), @r"
    Auditing run: [RUN]
    ==================================================
    Log Integrity
      [FAIL] Hash chain: invalid hash at seq 2

    Local Signatures
      [ok] 1 attestation(s), all signatures valid
      - Signed by [KEY] (this installation's key)

    External Attestations (Sigstore/Rekor)
      - No Rekor proofs found
    ==================================================
    VERDICT: [FAIL] TAMPERED - invalid hash at seq 2
    ");
    let out = t.run(&["audit", &id, "--export", "x.json"]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr
            .contains("fails verification (invalid hash at seq 2); it is not exported"),
        "{}",
        out.stderr
    );

    // A deleted record.
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    lines.remove(1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = t.run(&["audit", &id]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout
            .contains("VERDICT: [FAIL] TAMPERED - sequence gap: expected 2, got 3"),
        "{}",
        out.stdout
    );

    // The last record removed: only the seal notices.
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    let n = lines.len();
    lines.pop();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = t.run(&["audit", &id]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout.contains(&format!(
            "[FAIL] attestation 1: signs seq {n}, but the log ends at seq {} (records were removed from the end)",
            n - 1
        )),
        "{}",
        out.stdout
    );

    // A torn last line: cut short, but the seal says it was written
    // whole, so this is tampering, not a crash while writing.
    std::fs::write(&log, &original[..original.len() - 10]).unwrap();
    let out = t.run(&["audit", &id]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout.contains(&format!(
            "[FAIL] Hash chain: record at line {n} is incomplete"
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "VERDICT: [FAIL] TAMPERED - attestation 1: signs seq {n}, but the log ends at seq {}",
            n - 1
        )),
        "{}",
        out.stdout
    );
}

#[test]
fn clients_append_events_to_an_active_run() {
    let t = AuditEnv::new();
    let out = t.run(&["run", "-d", "--name", "bg", "--", "sleep", "30"]);
    out.success();
    let id = out.stdout.trim().to_owned();
    wait_for("the run to start", || t.log(&id).exists());
    let socket = t.env.moat_home().join("proxy/daemon.sock");
    let ask = |line: String| {
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        answer
    };
    let answer = ask(
        serde_json::json!({"op": "audit", "run_id": id, "kind": "ssh",
        "data": {"action": "sign_allowed", "host": "github.com", "fingerprint": "SHA256:abc"}})
        .to_string(),
    );
    assert_eq!(answer.trim(), r#"{"result":"ok"}"#);
    let answer = ask(r#"{"op":"audit","run_id":"run_000000000000","kind":"ssh","data":{}}"#.into());
    assert!(answer.contains("has no open audit log"), "{answer}");
    let answer = ask(format!(
        r#"{{"op":"audit","run_id":"{id}","kind":"Bad Kind","data":{{}}}}"#
    ));
    assert!(answer.contains("invalid audit entry type"), "{answer}");

    t.run(&["stop", "bg"]).success();
    wait_for("the seal", || {
        t.env
            .moat_home()
            .join("runs")
            .join(&id)
            .join("audit.sig.json")
            .exists()
    });
    let entries = t.entries(&id);
    assert!(
        entries
            .iter()
            .any(|e| e["type"] == "ssh" && e["data"]["action"] == "sign_allowed"),
        "{entries:?}"
    );
    let out = t.run(&["audit", "bg"]);
    out.success();
    assert!(
        out.stdout.contains("VERDICT: [ok] INTACT"),
        "{}",
        out.stdout
    );
}

#[test]
fn unknown_runs_and_missing_logs_are_clear_errors() {
    let t = AuditEnv::new();
    let out = t.run(&["audit", "nope"]);
    out.failure();
    insta::assert_snapshot!(out.stderr, @r#"
    Error: no run matches "nope"

    List runs with: moat list
    "#);
    let out = t.run(&["audit", "verify", "missing.json"]);
    out.failure();
    assert!(
        out.stderr.contains("reading missing.json"),
        "{}",
        out.stderr
    );
    std::fs::write(t.env.dir.path().join("project/bad.json"), "{\"version\":1").unwrap();
    let out = t.run(&["audit", "verify", "bad.json"]);
    out.failure();
    assert!(
        out.stderr
            .contains("Error: bad.json is not a valid moat audit bundle"),
        "{}",
        out.stderr
    );

    let id = t.audited_run();
    std::fs::remove_file(t.log(&id)).unwrap();
    let out = t.run(&["audit", &id]);
    out.failure();
    assert_eq!(
        t.redact(&out.stderr, &id),
        "Error: run [RUN] has no audit log ([TMP]/moat/runs/[RUN]/audit.jsonl does not exist). \
         The proxy daemon writes it while the run is registered; a run that failed before \
         registering has none\n"
    );
}
