//! Tiny driver for the benchmark: `docker-run [runc|runsc] IMAGE CMD...`
//! runs CMD in IMAGE through this crate (create, start, output, wait,
//! remove) with the current directory as the workspace, and exits with the
//! command's exit code.

use std::process::ExitCode;

use moat_runtime_docker::{ContainerSpec, DockerRuntime, SandboxRuntime};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (runtime, image, command) = match args.as_slice() {
        [rt, image, command @ ..] if !command.is_empty() => {
            let runtime = match rt.as_str() {
                "runc" => SandboxRuntime::Runc,
                "runsc" => SandboxRuntime::gvisor(),
                other => {
                    eprintln!("unknown runtime {other:?}: use runc or runsc");
                    return ExitCode::from(2);
                }
            };
            (runtime, image.clone(), command.to_vec())
        }
        _ => {
            eprintln!("usage: docker-run runc|runsc IMAGE CMD [ARGS...]");
            return ExitCode::from(2);
        }
    };
    let workspace = match std::env::current_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("current directory: {e}");
            return ExitCode::from(2);
        }
    };
    let result = async {
        let rt = DockerRuntime::connect().await?;
        let run_id = format!("bench-{}", std::process::id());
        let mut spec = ContainerSpec::new(run_id, image, workspace, command);
        spec.runtime = runtime;
        rt.run(&spec, &mut tokio::io::stdout(), &mut tokio::io::stderr())
            .await
    }
    .await;
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(125)
        }
    }
}
