//! A run's SSH access: its grants checked before anything starts, the
//! filtering agent proxy on a private socket while it runs, and the files
//! that point the sandbox's `ssh` at both the proxy's agent and moat's
//! proxy (a `ProxyCommand` tunnel, so granted hosts are reachable under a
//! strict policy and no other SSH host is).

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use moat_credentials::GrantName;
use moat_daemon::{DaemonClient, SshHostSpec};
use moat_home::{MoatHome, Profile};
use moat_sandbox::{BindMount, InjectedFile, SshAdditions};
use moat_ssh::{AgentFilter, AgentProxy, SshEvent, SshGrant, SshGrantStore};

use crate::RunError;

/// The directory holding the agent socket inside the sandbox.
pub const AGENT_DIR_IN_SANDBOX: &str = "/run/moat/ssh-agent";
/// `SSH_AUTH_SOCK` inside the sandbox (unless the sandbox runs as another
/// host uid: then the socket's name is random).
pub const AGENT_SOCKET_IN_SANDBOX: &str = "/run/moat/ssh-agent/agent.sock";
/// The moat binary inside the sandbox (the `ProxyCommand`).
pub const MOAT_IN_SANDBOX: &str = "/run/moat/bin/moat";

/// The SSH grants of a run, checked.
#[derive(Debug, Clone)]
pub(crate) struct SshAccess {
    grants: Vec<SshGrant>,
    upstream: PathBuf,
}

impl SshAccess {
    /// `None` when the run has no SSH grant; else the grants, or the seed's
    /// errors: hosts without a grant, then a missing agent.
    pub(crate) fn resolve(
        home: &MoatHome,
        profile: Option<&Profile>,
        grants: &[GrantName],
    ) -> Result<Option<Self>, RunError> {
        let hosts: Vec<String> = grants
            .iter()
            .filter_map(|g| match g {
                GrantName::Ssh(host) => Some(host.clone()),
                _ => None,
            })
            .collect();
        if hosts.is_empty() {
            return Ok(None);
        }
        let store = SshGrantStore::in_dir(&home.credentials_dir(profile));
        let grants = store.resolve(&hosts)?;
        let upstream = moat_ssh::agent_socket_from_env()?;
        Ok(Some(SshAccess { grants, upstream }))
    }

    /// The endpoints the proxy must tunnel for this run.
    pub(crate) fn host_specs(&self) -> Vec<SshHostSpec> {
        self.grants
            .iter()
            .map(|g| SshHostSpec {
                host: g.host.clone(),
                port: g.port,
            })
            .collect()
    }

    /// Starts the agent proxy for `run_id`; its events go to the run's
    /// audit log through the daemon. `foreign_uid`: the sandbox's processes
    /// run as another host uid than ours (a root caller's containers).
    pub(crate) fn start(
        &self,
        run_id: &str,
        client: &DaemonClient,
        foreign_uid: bool,
    ) -> Result<RunningSsh, RunError> {
        let dir = std::env::temp_dir().join(format!("moat-ssh-{run_id}"));
        moat_home::ensure_private_dir(&dir)?;
        // Normally the socket is ours, 0600, in our 0700 directory. When the
        // sandbox runs as another uid, handing it the socket would hand it
        // to every host process of that uid too; instead the directory
        // becomes traversable but not listable (0711) and the socket,
        // open to all (0666), gets a random name only the sandbox is told.
        let name = if foreign_uid {
            format!("agent-{}.sock", random_hex()?)
        } else {
            "agent.sock".to_string()
        };
        let audit = spawn_audit_forwarder(client.clone(), run_id.to_string());
        let proxy = AgentProxy::start(
            &dir.join(&name),
            self.upstream.clone(),
            AgentFilter::new(&self.grants)?,
            move |event: &SshEvent| {
                // The forwarder may have stopped with the run; nothing to do.
                let _ = audit.send(event.clone());
            },
        )?;
        if foreign_uid {
            let chmod = |p: &Path, mode: u32| {
                std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .map_err(|source| RunError::Io {
                        context: format!(
                            "opening the SSH agent socket {} to the sandbox user",
                            p.display()
                        ),
                        error: source,
                    })
            };
            chmod(&dir, 0o711)?;
            chmod(proxy.socket(), 0o666)?;
        }
        Ok(RunningSsh { proxy, dir, name })
    }

    /// The system-wide `ssh_config` and `ssh_known_hosts` of the sandbox:
    /// system files (root-owned, 0644, public data only) work for every
    /// sandbox user and every runtime, where a file in a home would need
    /// the right owner.
    pub(crate) fn files(&self) -> Vec<InjectedFile> {
        let mut config = String::from(
            "# Written by moat for this run. Granted hosts are reached through\n\
             # moat's proxy and must present the host key pinned by `moat grant ssh`.\n\
             Include /etc/ssh/ssh_config.d/*.conf\n",
        );
        let mut known = String::new();
        for g in &self.grants {
            config.push_str(&format!(
                "\nHost {host}\n    Port {port}\n    ProxyCommand {MOAT_IN_SANDBOX} __ssh-connect %h %p\n    \
                 StrictHostKeyChecking yes\n",
                host = g.host,
                port = g.port,
            ));
            for line in g.known_hosts_lines() {
                known.push_str(&line);
                known.push('\n');
            }
        }
        vec![
            InjectedFile {
                path_in_sandbox: PathBuf::from("/etc/ssh/ssh_config"),
                contents: config.into_bytes(),
                mode: 0o644,
            },
            InjectedFile {
                path_in_sandbox: PathBuf::from("/etc/ssh/ssh_known_hosts"),
                contents: known.into_bytes(),
                mode: 0o644,
            },
        ]
    }
}

impl SshAccess {
    /// What the sandbox needs for the run's SSH access, whatever the
    /// runtime: the agent socket's directory, the moat binary (the
    /// `ProxyCommand`), `SSH_AUTH_SOCK` and the ssh configuration files.
    pub(crate) fn sandbox(&self, running: &RunningSsh) -> Result<SshAdditions, RunError> {
        let moat = std::env::current_exe().map_err(|e| RunError::Io {
            context: "finding the moat executable for the sandbox".into(),
            error: e,
        })?;
        Ok(SshAdditions {
            mounts: vec![
                BindMount {
                    source: running.dir().to_path_buf(),
                    target: AGENT_DIR_IN_SANDBOX.into(),
                    read_only: false,
                    exclude: Vec::new(),
                },
                BindMount {
                    source: moat,
                    target: MOAT_IN_SANDBOX.into(),
                    read_only: true,
                    exclude: Vec::new(),
                },
            ],
            env: vec![(
                "SSH_AUTH_SOCK".into(),
                format!("{AGENT_DIR_IN_SANDBOX}/{}", running.name),
            )],
            files: self.files(),
        })
    }
}

/// 128 random bits, hex.
fn random_hex() -> Result<String, RunError> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| RunError::Io {
            context: "reading /dev/urandom".into(),
            error: source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Sends agent events to the daemon from a thread of its own: the agent
/// proxy's threads never wait on the daemon.
fn spawn_audit_forwarder(client: DaemonClient, run_id: String) -> mpsc::Sender<SshEvent> {
    let (tx, rx) = mpsc::channel::<SshEvent>();
    let spawned = std::thread::Builder::new()
        .name("moat-ssh-audit".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            for event in rx {
                let data = serde_json::to_value(&event).unwrap_or_default();
                if let Err(e) = runtime.block_on(client.audit(&run_id, "ssh", data)) {
                    tracing::warn!(error = %e, "recording an SSH agent event in the audit log");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "starting the SSH audit forwarder");
    }
    tx
}

/// The agent proxy of a running run; dropping it stops the proxy and
/// removes its socket directory.
pub(crate) struct RunningSsh {
    proxy: AgentProxy,
    dir: PathBuf,
    /// The socket's file name in `dir`.
    name: String,
}

impl RunningSsh {
    /// The host directory holding the socket (mounted at
    /// [`AGENT_DIR_IN_SANDBOX`]).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RunningSsh {
    fn drop(&mut self) {
        tracing::debug!(socket = %self.proxy.socket().display(), "stopping the SSH agent proxy");
        let _ = std::fs::remove_file(self.proxy.socket());
        let _ = std::fs::remove_dir(&self.dir);
    }
}
