//! The native runtime behind the sandbox interface of `moat-sandbox`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

use moat_sandbox::{
    terminal, CheckStatus, DoctorCheck, DriverError, ExecRequest, Leftover, OutputSinks, Prepared,
    ProxyRoute, RunningSandbox, SandboxControl, SandboxDriver, SandboxRequest, Stdio,
};

use crate::{CaptureSpec, NetworkMode, Sandbox, SandboxSpec, Signaller, StdioMode};

/// Ports whose connections are handed to the proxy from every native
/// sandbox, for clients that ignore the proxy variables.
const CAPTURED_PORTS: &[u16] = &[80, 443];

/// The native Linux sandbox as a [`SandboxDriver`]. Probing it costs
/// nothing: whether namespaces work is found out by the first start (or
/// by [`SandboxDriver::doctor`]), which keeps `moat run` fast.
#[derive(Debug, Default)]
pub struct NativeDriver;

impl NativeDriver {
    /// The driver; never fails.
    pub fn new() -> Self {
        NativeDriver
    }
}

impl SandboxDriver for NativeDriver {
    fn name(&self) -> &'static str {
        "native"
    }

    fn doctor(&mut self) -> Vec<DoctorCheck> {
        vec![match crate::check_support() {
            Ok(()) => DoctorCheck::ok(
                "native sandbox",
                format!("user namespaces work; {}", crate::protections()),
            ),
            Err(e) => DoctorCheck::problem(
                CheckStatus::Fail,
                "native sandbox",
                format!("not available: {e}"),
                "allow unprivileged user namespaces (the message names what blocks them), e.g.\n\
                 sudo sysctl -w user.max_user_namespaces=15000 kernel.apparmor_restrict_unprivileged_userns=0",
            ),
        }]
    }

    fn runs_as_caller(&self) -> bool {
        true
    }

    fn home_in_sandbox(&self) -> std::path::PathBuf {
        crate::SandboxSpec::new(std::path::PathBuf::new(), Vec::new()).home_in_sandbox()
    }

    fn uses_host_programs(&self) -> bool {
        true
    }

    fn proxy_route(&mut self) -> Result<ProxyRoute, DriverError> {
        // The sandbox's relay listens on its own loopback and forwards to
        // the proxy's Unix socket.
        Ok(ProxyRoute {
            listen: Vec::new(),
            host_in_sandbox: "127.0.0.1".into(),
        })
    }

    fn prepare(&mut self, request: &SandboxRequest) -> Result<Prepared, DriverError> {
        let services = request.container_services();
        if !services.is_empty() {
            return Err(DriverError::ServicesUnsupported {
                runtime: "native",
                services: services.join(", "),
            });
        }
        Ok(Prepared::default())
    }

    fn start(
        &mut self,
        request: &SandboxRequest,
        _prepared: &Prepared,
        output: OutputSinks,
    ) -> Result<Box<dyn RunningSandbox + '_>, DriverError> {
        let spec = sandbox_spec(request);
        let mut sandbox = crate::spawn(&spec).map_err(DriverError::runtime)?;
        let mut pumps = Vec::new();
        if let Some(out) = sandbox.take_stdout() {
            pumps.push(pump(out, output.stdout));
        }
        if let Some(err) = sandbox.take_stderr() {
            pumps.push(pump(err, output.stderr));
        }
        let (relay, winch) = match sandbox.take_pty() {
            Some(master) => {
                let winch = master.try_clone().ok();
                let relay = terminal::TerminalRelay::start(master)
                    .map_err(|e| DriverError::io("relaying the terminal", e))?;
                (Some(relay), winch)
            }
            None => (None, None),
        };
        let control = Arc::new(NativeControl {
            signaller: sandbox.signaller(),
            winch,
        });
        Ok(Box::new(NativeRunning {
            sandbox,
            pumps,
            relay,
            control,
            overlay_work: spec
                .workload
                .workspace_overlay
                .as_ref()
                .map(|c| c.join("work")),
        }))
    }

    fn exec(
        &mut self,
        request: &ExecRequest,
        output: OutputSinks,
    ) -> Result<Box<dyn RunningSandbox + '_>, DriverError> {
        crate::exec_driver::start(request, output)
    }

    fn leftovers(&mut self) -> Result<Vec<Leftover>, DriverError> {
        // A native sandbox dies with its supervisor: nothing outlives a run.
        Ok(Vec::new())
    }

    fn remove_leftover(&mut self, _leftover: &Leftover) -> Result<(), DriverError> {
        Ok(())
    }
}

fn sandbox_spec(request: &SandboxRequest) -> SandboxSpec {
    let relay_port = request.proxy.port.max(1);
    let mut spec = SandboxSpec::new(request.workspace.clone(), Vec::new());
    spec.workload = request.workload();
    spec.hostname = request.hostname.clone();
    // Every sandbox has a network of its own whatever the policy; its one
    // way out is the proxy, also for clients that ignore the proxy
    // variables (their connections to ports 80 and 443 are captured).
    spec.network = NetworkMode::Isolated {
        relay_port,
        proxy_socket: request.proxy.socket.clone(),
        capture: Some(CaptureSpec {
            proxy_authorization: request.proxy.authorization.clone(),
            ports: CAPTURED_PORTS
                .iter()
                .copied()
                .filter(|p| *p != relay_port)
                .collect(),
            host_ports: request.proxy.host_ports.clone(),
        }),
    };
    spec.limits.memory_bytes = request
        .limits
        .memory_mb
        .map(|mb| mb.saturating_mul(1 << 20));
    spec.limits.millicpus = request
        .limits
        .cpus
        .map(|cpus| (cpus * 1000.0).round().clamp(1.0, f64::from(u32::MAX)) as u32);
    spec.exec_socket = Some(request.exec_socket.clone());
    if !request.ports.is_empty() {
        spec.port_socket = Some(request.port_socket.clone());
        spec.ports = request.ports.values().copied().collect();
    }
    spec.stdio = match request.stdio {
        Stdio::Terminal => match terminal::size() {
            Some((rows, cols)) => StdioMode::Pty { rows, cols },
            // Not a terminal (a pipe, a file): nothing to relay.
            None => StdioMode::Inherit,
        },
        Stdio::Detached => StdioMode::Piped,
        Stdio::Logged => StdioMode::PipedOutput,
    };
    spec
}

/// Copies a sandbox stream to its sink as it arrives.
/// Gives the sink back once the stream ends.
pub(crate) fn pump<R>(
    mut from: R,
    mut to: Box<dyn Write + Send>,
) -> JoinHandle<Box<dyn Write + Send>>
where
    R: Read + Send + 'static,
{
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let _ = to.write_all(&buf[..n]);
            let _ = to.flush();
        }
        let _ = to.flush();
        to
    })
}

struct NativeControl {
    signaller: Signaller,
    /// The sandbox's terminal (master side), to copy window sizes onto.
    winch: Option<std::os::fd::OwnedFd>,
}

impl SandboxControl for NativeControl {
    fn signal(&self, sig: i32) {
        let _ = self.signaller.signal(sig);
    }

    fn window_changed(&self) {
        // The sandbox's terminal then signals its own foreground job.
        if let Some(master) = &self.winch {
            terminal::copy_size(master);
        }
    }
}

struct NativeRunning {
    sandbox: Sandbox,
    pumps: Vec<JoinHandle<Box<dyn Write + Send>>>,
    relay: Option<terminal::TerminalRelay>,
    control: Arc<NativeControl>,
    /// Volume mode: the overlay's `work/`, removed when the sandbox is gone.
    overlay_work: Option<std::path::PathBuf>,
}

impl RunningSandbox for NativeRunning {
    fn runtime_id(&self) -> Option<String> {
        None
    }

    fn control(&self) -> Arc<dyn SandboxControl> {
        self.control.clone()
    }

    fn wait(mut self: Box<Self>) -> Result<i32, DriverError> {
        let exit = self.sandbox.wait().map_err(DriverError::runtime)?;
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
        if let Some(relay) = self.relay.take() {
            relay.finish();
        }
        if let Some(work) = self.overlay_work.take() {
            crate::overlay::remove_work_dir(&work);
        }
        Ok(exit.code)
    }
}
