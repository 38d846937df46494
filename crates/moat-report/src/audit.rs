//! The sections and the verdict of `moat audit` and `moat audit verify`.

use std::fmt::Write as _;

use moat_audit::LogReport;

/// The rule under a report's heading and above its verdict.
pub const RULE: &str = "==================================================";

/// The "Log Integrity" and signature sections. `signatures` titles the
/// second, `whose` says whose key the signers were checked against, and
/// `key_note` adds a line when there was no key to check against.
pub fn audit_sections(
    report: &LogReport,
    signatures: &str,
    key_note: Option<&str>,
    whose: &str,
) -> String {
    let mut out = String::from("Log Integrity\n");
    match &report.chain {
        None => {
            let _ = writeln!(
                out,
                "  [ok] Hash chain: {} entries, no gaps, all hashes valid",
                report.entries
            );
        }
        Some(e) => {
            let _ = writeln!(out, "  [FAIL] Hash chain: {e}");
        }
    }
    let _ = write!(out, "\n{signatures}\n");
    signature_lines(&mut out, report);
    for signer in &report.signers {
        let _ = writeln!(out, "  - Signed by {signer} ({whose})");
    }
    if report.unbound {
        out.push_str(
            "  [warn] No record names its run (a log from an older moat): it cannot be \
             told apart from another run's log\n",
        );
    }
    if let Some(note) = key_note {
        let _ = writeln!(out, "  - {note}");
    }
    out
}

fn signature_lines(out: &mut String, report: &LogReport) {
    match &report.signature {
        Some(e) => {
            let _ = writeln!(out, "  [FAIL] {e}");
        }
        None if report.attestations == 0 => {
            out.push_str(
                "  [warn] No attestations: the log is sealed when its run ends; \
                 until then removing its last entries cannot be detected\n",
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  [ok] {} attestation(s), all signatures valid",
                report.attestations
            );
            if report.unsigned_after > 0 {
                let _ = writeln!(
                    out,
                    "  [warn] {} entries after the last attestation are not signed yet",
                    report.unsigned_after
                );
            }
        }
    }
}

/// The problem the verdict names: the first broken record, unless it is
/// a record cut short that the seal says was whole (then the seal's).
pub fn first_problem(report: &LogReport) -> String {
    let cut_short = matches!(
        report.chain,
        Some(moat_audit::ChainError::Incomplete { .. })
    );
    if cut_short && !report.incomplete() {
        if let Some(signature) = &report.signature {
            return signature.to_string();
        }
    }
    report
        .chain
        .as_ref()
        .map(ToString::to_string)
        .or_else(|| report.signature.as_ref().map(ToString::to_string))
        .unwrap_or_default()
}

/// The last lines: intact, incomplete (cut short while running) or
/// tampered, with the first problem.
pub fn audit_verdict(report: &LogReport) -> String {
    if report.intact() {
        format!("{RULE}\nVERDICT: [ok] INTACT - No tampering detected\n")
    } else if report.incomplete() {
        format!(
            "{RULE}\nVERDICT: [FAIL] INCOMPLETE - {}; the records before it verify\n",
            first_problem(report)
        )
    } else {
        format!(
            "{RULE}\nVERDICT: [FAIL] TAMPERED - {}\n",
            first_problem(report)
        )
    }
}

/// The `--json` form of a verification of `subject` (a run id or a
/// bundle's path).
pub fn audit_json(subject: &str, report: &LogReport) -> String {
    serde_json::json!({
        "subject": subject,
        "intact": report.intact(),
        "incomplete": report.incomplete(),
        "run_id": report.run_id,
        "signers": report.signers,
        "entries": report.entries,
        "last_hash": report.last_hash,
        "attestations": report.attestations,
        "unsigned_after": report.unsigned_after,
        "chain_error": report.chain.as_ref().map(ToString::to_string),
        "signature_error": report.signature.as_ref().map(ToString::to_string),
    })
    .to_string()
}
