use std::path::PathBuf;

/// What went wrong with SSH grants or the agent, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// No agent to sign with.
    #[error("SSH grants require SSH_AUTH_SOCK to be set")]
    NoAgent,
    /// `SSH_AUTH_SOCK` names a socket nobody answers on.
    #[error("cannot reach the SSH agent at {path}: {error}")]
    AgentUnreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The agent answered with something that is not the protocol.
    #[error("the SSH agent at {path} answered unexpectedly: {detail}")]
    AgentProtocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A run asks for hosts that have no grant.
    #[error("no SSH keys configured for hosts: [{}]", .0.join(", "))]
    NoKeysForHosts(Vec<String>),
    /// The agent holds no keys.
    #[error("the SSH agent holds no keys")]
    AgentEmpty,
    /// `--key` names a key the agent does not hold.
    #[error("the SSH agent holds no key matching {0}\nKeys it holds:\n{1}")]
    KeyNotInAgent(String, String),
    /// Several keys and no way to ask which.
    #[error("the SSH agent holds several keys:\n{0}")]
    SeveralKeys(String),
    /// No host key to pin.
    #[error(
        "no host key known for {host} (port {port}): moat pins the server's host key when granting, \
         so the sandbox can sign only for the real server."
    )]
    NoHostKey {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// A public key that does not parse.
    #[error("not an OpenSSH public key: {key} ({detail})")]
    BadPublicKey {
        /// The offending text, shortened.
        key: String,
        /// Parser message.
        detail: String,
    },
    /// `ssh.json` is damaged.
    #[error("{} is not a valid SSH grants file ({detail})", path.display())]
    CorruptGrants {
        /// The file.
        path: PathBuf,
        /// Parser message.
        detail: String,
    },
    /// Binding the sandbox's agent socket failed.
    #[error("creating the sandbox's SSH agent socket {}: {error}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A `--key` file whose public half cannot be read.
    #[error("reading the public key {}: {error}", path.display())]
    PublicKeyFile {
        /// The `.pub` file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// `--host-key` names a file that cannot be read.
    #[error("reading host keys from {}: {error}", path.display())]
    HostKeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A `--host-key` line that is no key.
    #[error("not a host key: {0:?}")]
    NotAHostKey(String),
    /// `--host-key` holds no key line at all.
    #[error("no host key in {0:?}")]
    NoHostKeyGiven(String),
    /// Reading or writing `MOAT_HOME`.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),
}

const START_AGENT: &str = "Start your SSH agent with: eval \"$(ssh-agent -s)\" && ssh-add";

impl moat_hint::Hint for SshError {
    fn hint(&self) -> Option<moat_hint::Fix> {
        let fix = match self {
            SshError::NoAgent | SshError::AgentUnreachable { .. } => START_AGENT.to_owned(),
            SshError::NoKeysForHosts(hosts) => format!(
                "Grant SSH access first:\n{}",
                hosts
                    .iter()
                    .map(|h| format!("  moat grant ssh --host {h}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            SshError::AgentEmpty => {
                "Add one with: ssh-add ~/.ssh/id_ed25519 (or the key you use for this host)"
                    .to_owned()
            }
            SshError::KeyNotInAgent(..) => "Add the key with: ssh-add PATH, or pass --key with \
                                           one of the fingerprints above"
                .to_owned(),
            SshError::SeveralKeys(_) => {
                "Choose the one for this host with --key FINGERPRINT.".to_owned()
            }
            SshError::NoHostKey { host, port } => format!(
                "Connect once with `ssh -p {port} {host}` and check the fingerprint, so it is \
                 recorded in ~/.ssh/known_hosts,\nor pass the key: moat grant ssh --host {host} \
                 --host-key \"ssh-ed25519 AAAA...\" (or a .pub file)"
            ),
            SshError::CorruptGrants { .. } => {
                "Fix: remove it and grant again with: moat grant ssh --host HOST".to_owned()
            }
            SshError::PublicKeyFile { .. } => {
                "moat never reads private keys: pass the .pub file or a fingerprint.".to_owned()
            }
            SshError::NotAHostKey(_) | SshError::NoHostKeyGiven(_) => {
                "Pass a line such as \"ssh-ed25519 AAAA...\" or a file of them (for example \
                 the server's /etc/ssh/ssh_host_ed25519_key.pub)"
                    .to_owned()
            }
            SshError::Home(error) => return error.hint(),
            SshError::AgentProtocol { .. }
            | SshError::BadPublicKey { .. }
            | SshError::Listen { .. }
            | SshError::HostKeyFile { .. } => return None,
        };
        Some(fix.into())
    }
}
