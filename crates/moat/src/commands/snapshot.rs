//! `moat snapshot`: the work is moat-snapshot's.

use std::process::ExitCode;

use anyhow::Result;
use moat_snapshot::Action;

use super::Context;
use crate::cli::{SnapshotAction as A, SnapshotArgs};

pub fn snapshot(ctx: &Context, args: SnapshotArgs) -> Result<ExitCode> {
    let (run, action) = match args.action {
        None => (
            args.run.unwrap_or_default(),
            Action::Take {
                label: args.label,
                json: ctx.json,
            },
        ),
        Some(A::List { run }) => (run, Action::List { json: ctx.json }),
        Some(A::Restore { run, id, to }) => (run, Action::Restore { id, to }),
        Some(A::Prune { run, keep, dry_run }) => (run, Action::Prune { keep, dry_run }),
    };
    out!("{}", moat_snapshot::perform(&ctx.home, &run, action)?);
    Ok(ExitCode::SUCCESS)
}
