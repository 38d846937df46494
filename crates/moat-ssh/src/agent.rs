//! The filtering agent proxy, and a small client of the user's agent.
//!
//! One thread per sandbox connection: agent traffic is a handful of
//! messages per `ssh` invocation, and blocking I/O keeps the decision code
//! plain. Each connection gets its own connection to the user's agent, so
//! one misbehaving client cannot interleave with another's answers.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use ssh_key::{PublicKey, Signature};

use crate::grants::{fingerprint, SshGrant};
use crate::wire::{self, msg, Identity, Request, RequestError};
use crate::SshError;

/// How long the user's agent may take to answer (a hardware key may wait
/// for a touch).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// The user's agent socket from `SSH_AUTH_SOCK`.
pub fn agent_socket_from_env() -> Result<PathBuf, SshError> {
    match std::env::var_os("SSH_AUTH_SOCK") {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(SshError::NoAgent),
    }
}

fn connect(path: &Path) -> Result<UnixStream, SshError> {
    let stream = UnixStream::connect(path).map_err(|source| SshError::AgentUnreachable {
        path: path.to_path_buf(),
        error: source,
    })?;
    // Timeouts bound a wedged agent; setting them cannot fail on a fresh
    // socket with a non-zero duration.
    let _ = stream.set_read_timeout(Some(UPSTREAM_TIMEOUT));
    let _ = stream.set_write_timeout(Some(UPSTREAM_TIMEOUT));
    Ok(stream)
}

fn call(stream: &mut UnixStream, path: &Path, payload: &[u8]) -> Result<Vec<u8>, SshError> {
    let protocol = |detail: String| SshError::AgentProtocol {
        path: path.to_path_buf(),
        detail,
    };
    wire::write_frame(stream, payload).map_err(|e| protocol(e.to_string()))?;
    match wire::read_frame(stream) {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err(protocol("it closed the connection".into())),
        Err(e) => Err(protocol(e.to_string())),
    }
}

/// The keys the agent at `path` holds.
pub fn list_identities(path: &Path) -> Result<Vec<Identity>, SshError> {
    let mut stream = connect(path)?;
    let answer = call(&mut stream, path, &[msg::REQUEST_IDENTITIES])?;
    wire::decode_identities(&answer).map_err(|e| SshError::AgentProtocol {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// How many keys the agent at `path` holds, for `moat doctor`: one
/// `REQUEST_IDENTITIES` and only the answer's header (length, type, count)
/// read, so a large or odd key list cannot make the check fail. Short
/// timeouts, unlike [`list_identities`]: doctor reports a wedged agent
/// instead of waiting for it.
pub fn agent_key_count(path: &Path) -> std::io::Result<u32> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(&[0, 0, 0, 1, msg::REQUEST_IDENTITIES])?;
    // u32 frame length, u8 type, u32 key count.
    let mut header = [0u8; 9];
    s.read_exact(&mut header)?;
    if header[4] != msg::IDENTITIES_ANSWER {
        return Err(std::io::Error::other(format!(
            "unexpected answer type {}",
            header[4]
        )));
    }
    Ok(u32::from_be_bytes([
        header[5], header[6], header[7], header[8],
    ]))
}

/// What the proxy did with a request, for the run's audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SshAction {
    /// Keys were listed (filtered).
    List,
    /// A signature was made.
    SignAllowed,
    /// A signature was refused.
    SignDenied,
    /// A request that would change the agent was refused.
    Refused,
}

/// One audited agent operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshEvent {
    /// What happened.
    pub action: SshAction,
    /// The granted host the signature was for, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The key's fingerprint, when a key was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Why it was refused, or what was listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone)]
struct GrantedKey {
    blob: Vec<u8>,
    fingerprint: String,
    host: String,
    host_keys: Vec<Vec<u8>>,
}

/// The keys and hosts one run may use.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    keys: Vec<GrantedKey>,
}

impl AgentFilter {
    /// A filter allowing `grants`.
    pub fn new(grants: &[SshGrant]) -> Result<Self, SshError> {
        let mut keys = Vec::new();
        for g in grants {
            let blob = g.key_blob()?;
            keys.push(GrantedKey {
                fingerprint: fingerprint(&blob)?,
                blob,
                host: g.host.clone(),
                host_keys: g.host_key_blobs(),
            });
        }
        Ok(AgentFilter { keys })
    }

    fn allows_key(&self, blob: &[u8]) -> bool {
        self.keys.iter().any(|k| k.blob == blob)
    }

    /// The granted host whose pinned host keys include `host_key`, for
    /// signing with `key`.
    fn host_for(&self, key: &[u8], host_key: &[u8]) -> Option<&GrantedKey> {
        self.keys
            .iter()
            .find(|k| k.blob == key && k.host_keys.iter().any(|h| h == host_key))
    }
}

type AuditFn = dyn Fn(&SshEvent) + Send + Sync;

struct Shared {
    upstream: PathBuf,
    filter: AgentFilter,
    audit: Box<AuditFn>,
}

/// A running agent proxy; dropping it stops it and removes its socket.
pub struct AgentProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    /// A second handle on the listening socket, to wake the accept loop.
    waker: UnixListener,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AgentProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProxy")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl AgentProxy {
    /// Serves a filtered view of the agent at `upstream` on a new socket
    /// at `socket` (mode 0600; the parent directory should be private).
    /// `audit` sees every list, sign and refusal.
    pub fn start(
        socket: &Path,
        upstream: PathBuf,
        filter: AgentFilter,
        audit: impl Fn(&SshEvent) + Send + Sync + 'static,
    ) -> Result<Self, SshError> {
        let listen_err = |source| SshError::Listen {
            path: socket.to_path_buf(),
            error: source,
        };
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(listen_err)?;
        // The sandbox user is the caller (or its mapped uid): 0600 lets it
        // in and keeps other users out.
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        let shared = Arc::new(Shared {
            upstream,
            filter,
            audit: Box::new(audit),
        });
        let waker = listener.try_clone().map_err(listen_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("moat-ssh-agent".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        match conn {
                            Ok(conn) => {
                                let shared = shared.clone();
                                let _ = std::thread::Builder::new()
                                    .name("moat-ssh-conn".into())
                                    .spawn(move || serve(conn, &shared));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "accepting an SSH agent connection")
                            }
                        }
                    }
                })
                .map_err(listen_err)?
        };
        Ok(AgentProxy {
            socket: socket.to_path_buf(),
            stop,
            waker,
            accept: Some(accept),
        })
    }

    /// The socket clients connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Shutting a listening socket down wakes a blocked accept(2) on
        // Linux, even when the socket file is already gone.
        let _ = rustix::net::shutdown(&self.waker, rustix::net::Shutdown::Both);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Per-connection state: the session the client bound to, if any.
struct Session {
    bound: Option<(Vec<u8>, Vec<u8>)>,
    upstream: Option<UnixStream>,
}

fn serve(mut conn: UnixStream, shared: &Shared) {
    let mut session = Session {
        bound: None,
        upstream: None,
    };
    loop {
        let payload = match wire::read_frame(&mut conn) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "closing an SSH agent connection from the sandbox: malformed frame");
                return;
            }
        };
        let request = match wire::decode_request(&payload) {
            Ok(r) => r,
            Err(RequestError::UnknownType(t)) => {
                tracing::warn!(
                    message_type = t,
                    "closing an SSH agent connection from the sandbox: unknown message type"
                );
                return;
            }
            Err(RequestError::Malformed(e)) => {
                tracing::warn!(error = %e, "closing an SSH agent connection from the sandbox: malformed message");
                return;
            }
        };
        let answer = handle(&request, &payload, &mut session, shared);
        if let Err(e) = wire::write_frame(&mut conn, &answer) {
            tracing::debug!(error = %e, "SSH agent client went away");
            return;
        }
    }
}

fn failure() -> Vec<u8> {
    wire::status(msg::FAILURE)
}

fn upstream_call(session: &mut Session, shared: &Shared, payload: &[u8]) -> Option<Vec<u8>> {
    if session.upstream.is_none() {
        match connect(&shared.upstream) {
            Ok(s) => session.upstream = Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "SSH agent proxy");
                return None;
            }
        }
    }
    let stream = session.upstream.as_mut()?;
    match call(stream, &shared.upstream, payload) {
        Ok(answer) => Some(answer),
        Err(e) => {
            tracing::warn!(error = %e, "SSH agent proxy");
            session.upstream = None;
            None
        }
    }
}

/// The answer to one request from the sandbox: listing and signing go
/// through the grant filter, the session binding is verified, and
/// anything that would change the agent is refused.
fn handle(
    request: &Request<'_>,
    payload: &[u8],
    session: &mut Session,
    shared: &Shared,
) -> Vec<u8> {
    match request {
        Request::RequestIdentities => list_identities_filtered(payload, session, shared),
        Request::Sign { key, data, .. } => sign(key, data, payload, session, shared),
        Request::Extension { name, body } if *name == wire::SESSION_BIND => {
            bind_session(body, session)
        }
        Request::Extension { name, .. } => {
            tracing::debug!(extension = %name, "refused an SSH agent extension");
            failure()
        }
        Request::Legacy(_) => failure(),
        Request::Mutation(_) => {
            tracing::info!(
                request = request.kind(),
                "refused an SSH agent request from the sandbox"
            );
            (shared.audit)(&SshEvent {
                action: SshAction::Refused,
                host: None,
                fingerprint: None,
                detail: Some(request.kind().into()),
            });
            failure()
        }
    }
}

/// The agent's keys that are granted to this run, and only those.
fn list_identities_filtered(payload: &[u8], session: &mut Session, shared: &Shared) -> Vec<u8> {
    let Some(answer) = upstream_call(session, shared, payload) else {
        return failure();
    };
    let Ok(ids) = wire::decode_identities(&answer) else {
        return failure();
    };
    let shown: Vec<Identity> = ids
        .into_iter()
        .filter(|id| shared.filter.allows_key(&id.key))
        .collect();
    (shared.audit)(&SshEvent {
        action: SshAction::List,
        host: None,
        fingerprint: None,
        detail: Some(format!("{} key(s) listed", shown.len())),
    });
    wire::encode_identities(&shown)
}

/// A signature, only with a granted key, only for a session bound to a
/// pinned host key of a host granted that key, and only over that
/// session's user authentication.
fn sign(
    key: &[u8],
    data: &[u8],
    payload: &[u8],
    session: &mut Session,
    shared: &Shared,
) -> Vec<u8> {
    let filter = &shared.filter;
    let key_fp = fingerprint(key).ok();
    let deny = |detail: String, host: Option<String>| {
        tracing::info!(fingerprint = ?key_fp, host = ?host, "refused an SSH signature: {detail}");
        (shared.audit)(&SshEvent {
            action: SshAction::SignDenied,
            host,
            fingerprint: key_fp.clone(),
            detail: Some(detail),
        });
        failure()
    };
    if !filter.allows_key(key) {
        return deny("key is not granted to this run".into(), None);
    }
    let Some((host_key, session_id)) = &session.bound else {
        return deny(
            "the client did not bind the session to a host key (OpenSSH 8.9 or later is needed)"
                .into(),
            None,
        );
    };
    let Some(granted) = filter.host_for(key, host_key) else {
        let seen = fingerprint(host_key).unwrap_or_else(|_| "unparsable".into());
        return deny(
            format!("server host key {seen} is not pinned for any host granted this key"),
            None,
        );
    };
    let host = Some(granted.host.clone());
    if wire::userauth_session_id(data) != Some(session_id.as_slice()) {
        return deny(
            "data to sign is not a user authentication for the bound session".into(),
            host,
        );
    }
    let Some(answer) = upstream_call(session, shared, payload) else {
        return deny("the SSH agent did not answer".into(), host);
    };
    if answer.first() != Some(&msg::SIGN_RESPONSE) {
        return deny("the SSH agent refused to sign".into(), host);
    }
    (shared.audit)(&SshEvent {
        action: SshAction::SignAllowed,
        host,
        fingerprint: Some(granted.fingerprint.clone()),
        detail: None,
    });
    answer
}

/// `session-bind@openssh.com`: remembers the server's host key and
/// session once its signature checks out; forwarding out of the sandbox
/// is refused.
fn bind_session(body: &[u8], session: &mut Session) -> Vec<u8> {
    match wire::decode_session_bind(body) {
        Ok(bind) if bind.forwarding => {
            tracing::warn!("refused agent forwarding out of the sandbox");
            failure()
        }
        Ok(bind) => match verify_bind(bind.host_key, bind.session_id, bind.signature) {
            Ok(()) => {
                session.bound = Some((bind.host_key.to_vec(), bind.session_id.to_vec()));
                wire::status(msg::SUCCESS)
            }
            Err(detail) => {
                tracing::warn!("refused an SSH session binding: {detail}");
                failure()
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "malformed session-bind");
            failure()
        }
    }
}

/// Checks that `host_key` signed `session_id`: without this a client could
/// claim any server's host key.
fn verify_bind(host_key: &[u8], session_id: &[u8], signature: &[u8]) -> Result<(), String> {
    use signature::Verifier;
    let key = PublicKey::from_bytes(host_key).map_err(|e| format!("host key: {e}"))?;
    let signature = Signature::try_from(signature).map_err(|e| format!("signature: {e}"))?;
    Verifier::verify(&key, session_id, &signature)
        .map_err(|_| "the host key's signature over the session does not verify".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent that answers one request with `answer`, in a temp dir.
    fn fake_agent(answer: &'static [u8]) -> (tempfile::TempDir, PathBuf, JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 5];
            stream.read_exact(&mut request).expect("request");
            // The probe may give up first on a bad answer: that is fine.
            let _ = stream.write_all(answer);
            request.to_vec()
        });
        (dir, path, handle)
    }

    #[test]
    fn key_count_reads_the_identities_answer_header() {
        // Two keys; the key blobs after the count are never read.
        let (_dir, path, agent) = fake_agent(&[0, 0, 0, 5, 12, 0, 0, 0, 2]);
        assert_eq!(agent_key_count(&path).expect("count"), 2);
        assert_eq!(agent.join().expect("agent"), [0, 0, 0, 1, 11]);
    }

    #[test]
    fn key_count_reports_a_wrong_answer_type_and_a_short_answer() {
        let (_dir, path, agent) = fake_agent(&[0, 0, 0, 1, 5, 0, 0, 0, 0]);
        let err = agent_key_count(&path).expect_err("failure answer");
        assert_eq!(err.to_string(), "unexpected answer type 5");
        agent.join().expect("agent");

        let (_dir, path, agent) = fake_agent(&[0, 0]);
        let err = agent_key_count(&path).expect_err("short answer");
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        agent.join().expect("agent");
    }
}
