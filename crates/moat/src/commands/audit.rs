//! `moat audit [RUN] [--export FILE]` and `moat audit verify FILE`: check a
//! run's hash-chained audit log and its signatures, or an exported bundle.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use moat_audit::{verify_bundle, verify_log, Bundle, LogReport};
use moat_storage::RunStore;

use super::Context;
use crate::cli::{AuditArgs, AuditCommand};

const RULE: &str = "==================================================";

pub fn audit(ctx: &Context, args: AuditArgs) -> Result<ExitCode> {
    if let Some(AuditCommand::Verify { file }) = args.command {
        return verify_file(ctx, &file);
    }
    let store = RunStore::new(ctx.home.clone());
    let run = store.find(args.run.as_deref(), |_| true)?;
    let log = store.dir(&run.id).join(moat_audit::LOG_FILE);
    if !log.exists() {
        bail!(
            "run {} has no audit log ({} does not exist). The proxy daemon writes it while \
             the run is registered; a run that failed before registering has none",
            run.id,
            log.display()
        );
    }
    let expected = installation_key(ctx)?;
    let report = verify_log(&log, expected.as_deref())
        .with_context(|| format!("reading the audit log of run {}", run.id))?;

    if let Some(file) = args.export {
        if !report.intact() {
            bail!(
                "the audit log of run {} fails verification ({}); it is not exported. \
                 See the details with: moat audit {}",
                run.id,
                first_problem(&report),
                run.id
            );
        }
        let entries = moat_audit::read_log(&log)?
            .into_iter()
            .filter_map(|(_, e)| e.ok())
            .collect::<Vec<_>>();
        let bundle = Bundle::new(entries, moat_audit::read_attestations(&log)?);
        bundle
            .write(&file)
            .with_context(|| format!("writing {}", file.display()))?;
        outln!(
            "Exported {} entries and {} attestation(s) of run {} to {}",
            bundle.entries.len(),
            bundle.attestations.len(),
            run.id,
            file.display()
        );
        outln!(
            "Verify it anywhere with: moat audit verify {}",
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }

    if ctx.json {
        outln!("{}", report_json(run.id.as_str(), &report));
    } else {
        let mut out = format!("Auditing run: {}\n{RULE}\n", run.id);
        let key_note = if expected.is_none() {
            Some("installation public key not found; signatures checked against their own keys")
        } else {
            None
        };
        out.push_str(&sections(&report, "Local Signatures", key_note));
        out.push_str("\nExternal Attestations (Sigstore/Rekor)\n  - No Rekor proofs found\n");
        out.push_str(&verdict(&report));
        out!("{out}");
    }
    Ok(exit(&report))
}

fn verify_file(ctx: &Context, file: &Path) -> Result<ExitCode> {
    let bundle = Bundle::read(file)?;
    let report = verify_bundle(&bundle);
    if ctx.json {
        outln!("{}", report_json(&file.display().to_string(), &report));
        return Ok(exit(&report));
    }
    let mut out = format!("Verifying bundle: {}\n{RULE}\n", file.display());
    let key_note = bundle
        .attestations
        .first()
        .map(|a| format!("public key {}", a.public_key));
    out.push_str(&sections(&report, "Signatures", key_note.as_deref()));
    out.push_str(&verdict(&report));
    out!("{out}");
    Ok(exit(&report))
}

/// This installation's public key (`MOAT_HOME/audit/signing.pub`).
fn installation_key(ctx: &Context) -> Result<Option<Vec<u8>>> {
    let path = moat_audit::SigningKey::pub_path(&ctx.home.audit_dir());
    let Some(bytes) = moat_home::read_if_exists(&path)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    match hex::decode(text.trim()) {
        Ok(key) if key.len() == 32 => Ok(Some(key)),
        _ => bail!(
            "{} is damaged (expected 64 hex digits). Moat rewrites it from signing.key: \
             remove it and run: moat doctor",
            path.display()
        ),
    }
}

fn sections(report: &LogReport, signatures: &str, key_note: Option<&str>) -> String {
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
    if let Some(note) = key_note {
        let _ = writeln!(out, "  - {note}");
    }
    out
}

fn first_problem(report: &LogReport) -> String {
    report
        .chain
        .as_ref()
        .map(ToString::to_string)
        .or_else(|| report.signature.as_ref().map(ToString::to_string))
        .unwrap_or_default()
}

fn verdict(report: &LogReport) -> String {
    if report.intact() {
        format!("{RULE}\nVERDICT: [ok] INTACT - No tampering detected\n")
    } else {
        format!(
            "{RULE}\nVERDICT: [FAIL] TAMPERED - {}\n",
            first_problem(report)
        )
    }
}

fn report_json(subject: &str, report: &LogReport) -> String {
    serde_json::json!({
        "subject": subject,
        "intact": report.intact(),
        "entries": report.entries,
        "last_hash": report.last_hash,
        "attestations": report.attestations,
        "unsigned_after": report.unsigned_after,
        "chain_error": report.chain.as_ref().map(ToString::to_string),
        "signature_error": report.signature.as_ref().map(ToString::to_string),
    })
    .to_string()
}

fn exit(report: &LogReport) -> ExitCode {
    if report.intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
