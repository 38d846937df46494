//! `moat audit [RUN] [--export FILE]` and `moat audit verify FILE`: check a
//! run's hash-chained audit log and its signatures, or an exported bundle.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use moat_audit::{verify_bundle_pinned, verify_run_log, Bundle, LogReport, VerifyOptions};
use moat_report::{audit_json, audit_sections, audit_verdict, first_problem, RULE};
use moat_storage::RunStore;

use super::Context;
use crate::cli::{AuditArgs, AuditCommand};

pub fn audit(ctx: &Context, args: AuditArgs) -> Result<ExitCode> {
    if let Some(AuditCommand::Verify { file, key, trusted }) = args.command {
        return verify_file(ctx, &file, key.as_deref(), trusted);
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
    let expected = moat_audit::installation_key(&ctx.home.audit_dir())?;
    // A run whose supervisor is gone has ended, whatever its metadata
    // says (read-only: the metadata is not rewritten here).
    let finished = !run.state.is_active() || !moat_storage::supervisor_alive(&run);
    let report = verify_run_log(
        &log,
        &VerifyOptions {
            expected_key: expected.as_deref(),
            run_id: Some(run.id.as_str()),
            finished,
        },
    )
    .with_context(|| format!("reading the audit log of run {}", run.id))?;

    match args.export {
        Some(file) => export(&run.id, &log, &report, &file),
        None => {
            print_report(ctx, run.id.as_str(), &report, expected.is_some());
            Ok(exit(&report))
        }
    }
}

/// `moat audit RUN --export FILE`: an intact log and its attestations as
/// a bundle anyone can verify.
fn export(
    run: &moat_storage::RunId,
    log: &Path,
    report: &LogReport,
    file: &Path,
) -> Result<ExitCode> {
    if !report.intact() {
        return Err(crate::hints::failure(
            format!(
                "the audit log of run {run} fails verification ({}); it is not exported",
                first_problem(report)
            ),
            format!("See the details with: moat audit {run}"),
        ));
    }
    let entries = moat_audit::read_log(log)?
        .into_iter()
        .filter_map(|(_, e)| e.ok())
        .collect::<Vec<_>>();
    let bundle = Bundle::new(entries, moat_audit::read_attestations(log)?);
    bundle
        .write(file)
        .with_context(|| format!("writing {}", file.display()))?;
    outln!(
        "Exported {} entries and {} attestation(s) of run {run} to {}",
        bundle.entries.len(),
        bundle.attestations.len(),
        file.display()
    );
    outln!(
        "Verify it anywhere with: moat audit verify {}",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A run's verification, as text or JSON. `pinned` says whether the
/// installation's public key was there to check the signers against.
fn print_report(ctx: &Context, run: &str, report: &LogReport, pinned: bool) {
    if ctx.json {
        outln!("{}", audit_json(run, report));
        return;
    }
    let mut out = format!("Auditing run: {run}\n{RULE}\n");
    let (key_note, whose) = if pinned {
        (None, "this installation's key")
    } else {
        (
            Some("installation public key not found; signatures checked against their own keys"),
            "not pinned: this installation's signing.pub is missing",
        )
    };
    out.push_str(&audit_sections(report, "Local Signatures", key_note, whose));
    out.push_str("\nExternal Attestations (Sigstore/Rekor)\n  - No Rekor proofs found\n");
    out.push_str(&audit_verdict(report));
    out!("{out}");
}

fn verify_file(ctx: &Context, file: &Path, key: Option<&str>, trusted: bool) -> Result<ExitCode> {
    let bundle = Bundle::read(file)?;
    let (pinned, whose) = moat_audit::pinned_key(&ctx.home.audit_dir(), key, trusted)?;
    let report = verify_bundle_pinned(&bundle, pinned.as_deref());
    if ctx.json {
        outln!("{}", audit_json(&file.display().to_string(), &report));
        return Ok(exit(&report));
    }
    let mut out = format!("Verifying bundle: {}\n{RULE}\n", file.display());
    if let Some(run) = &report.run_id {
        let _ = writeln!(out, "Run: {run}");
    }
    out.push_str(&audit_sections(&report, "Signatures", None, whose));
    // A forged bundle signed by another key: name the key that signed.
    if let Some(moat_audit::SignatureError::UnknownKey { key, .. }) = &report.signature {
        let _ = writeln!(out, "  - Signed by {key}, not by the pinned key");
    }
    out.push_str(&audit_verdict(&report));
    out!("{out}");
    Ok(exit(&report))
}

fn exit(report: &LogReport) -> ExitCode {
    if report.intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
