use std::path::PathBuf;

/// What went wrong with SSH grants or the agent, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// No agent to sign with.
    #[error(
        "SSH grants require SSH_AUTH_SOCK to be set\n\
         Start your SSH agent with: eval \"$(ssh-agent -s)\" && ssh-add"
    )]
    NoAgent,
    /// `SSH_AUTH_SOCK` names a socket nobody answers on.
    #[error(
        "cannot reach the SSH agent at {path}: {error}\n\
         Start your SSH agent with: eval \"$(ssh-agent -s)\" && ssh-add"
    )]
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
    #[error(
        "no SSH keys configured for hosts: [{}]\nGrant SSH access first:\n{}",
        .0.join(", "),
        .0.iter().map(|h| format!("  moat grant ssh --host {h}")).collect::<Vec<_>>().join("\n")
    )]
    NoKeysForHosts(Vec<String>),
    /// The agent holds no keys.
    #[error("the SSH agent holds no keys\nAdd one with: ssh-add ~/.ssh/id_ed25519 (or the key you use for this host)")]
    AgentEmpty,
    /// `--key` names a key the agent does not hold.
    #[error("the SSH agent holds no key matching {0}\nKeys it holds:\n{1}\nAdd the key with: ssh-add PATH, or pass --key with one of the fingerprints above")]
    KeyNotInAgent(String, String),
    /// Several keys and no way to ask which.
    #[error("the SSH agent holds several keys; choose the one for this host with --key FINGERPRINT:\n{0}")]
    SeveralKeys(String),
    /// No host key to pin.
    #[error(
        "no host key known for {host} (port {port}): moat pins the server's host key when granting, \
         so the sandbox can sign only for the real server.\n\
         Connect once with `ssh -p {port} {host}` and check the fingerprint, so it is recorded in ~/.ssh/known_hosts,\n\
         or pass the key: moat grant ssh --host {host} --host-key \"ssh-ed25519 AAAA...\" (or a .pub file)"
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
    #[error(
        "{} is not a valid SSH grants file ({detail})\n\
         Fix: remove it and grant again with: moat grant ssh --host HOST",
        path.display()
    )]
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
    /// Reading or writing `MOAT_HOME`.
    #[error(transparent)]
    Home(#[from] moat_home::HomeError),
}
