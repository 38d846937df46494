//! `snapbench HOME WORKSPACE [LABEL]`: one snapshot of WORKSPACE in the
//! store under HOME, timed; prints one JSON line. For bench/snapshot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use moat_home::MoatHome;
use moat_snapshot::{Store, TakeOptions, Trigger};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (home, ws) = (&args[1], &args[2]);
    let t = Instant::now();
    let store = Store::open(&MoatHome::at(home), std::path::Path::new(ws)).expect("store");
    let r = store
        .take(&TakeOptions {
            run_id: Some("run_000000000bench".into()),
            label: args.get(3).cloned(),
            trigger: Trigger::Manual,
            exclude: Vec::new(),
        })
        .expect("snapshot");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{{\"ms\":{ms:.1},\"files\":{},\"bytes\":{},\"files_read\":{},\"new_files\":{},\"new_objects\":{},\"new_bytes\":{}}}",
        r.files, r.bytes, r.files_read, r.new_files, r.new_objects, r.new_bytes
    );
}
