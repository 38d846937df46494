//! Prints a shell script that stages an agent's files and starts it, for
//! trying the staging by hand inside `moat run`:
//! `stage_script AGENT GRANT PLACEHOLDER HOME PROMPT`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let agent = moat_agents::by_name(&args[1]).expect("agent");
    let section = serde_json::Value::Null;
    let ctx = moat_agents::StageContext {
        program: agent.binary().to_owned(),
        workspace: Path::new("/workspace"),
        home: Path::new(&args[4]),
        host_home: None,
        grant: &args[2],
        placeholder: &args[3],
        placeholders: &[],
        mcp_relays: &[],
        section: &section,
    };
    let opts = moat_agents::LaunchOptions {
        prompt: Some(args[5].clone()),
        ..Default::default()
    };
    let launch = agent.stage(&ctx, &opts).expect("stage");
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    for f in &launch.files {
        let dir = f.path.parent().unwrap();
        println!("mkdir -p {}", quote(&dir.to_string_lossy()));
        println!(
            "printf %s {} > {}",
            quote(&String::from_utf8_lossy(&f.contents)),
            quote(&f.path.to_string_lossy())
        );
    }
    let env: Vec<String> = launch
        .env
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    let argv: Vec<String> = launch.argv.iter().map(|a| quote(a)).collect();
    println!("exec env {} {}", env.join(" "), argv.join(" "));
}
