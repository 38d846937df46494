//! The control protocol: one JSON object per line over the Unix socket
//! `MOAT_HOME/proxy/daemon.sock` (mode 0600).
//!
//! The socket's permissions are the authentication: only the user who owns
//! `MOAT_HOME` can connect. Secrets to inject travel in `Register`, so the
//! daemon never needs the credential store's key.

use std::fmt;
use std::io;

pub use moat_secret::Secret;
use serde::{Deserialize, Serialize};

/// Bumped whenever a request or response changes incompatibly. (Adding a
/// request, or a field with a serde default, is compatible: an older daemon
/// answers an unknown request with an error.)
pub const API_VERSION: u32 = 1;

/// Largest control message accepted, in bytes.
pub const MAX_MESSAGE: usize = 1 << 20;

/// A header to inject on requests to hosts matching `host`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InjectionSpec {
    /// Exact host or `*.` wildcard (crosses as written, parsed again when
    /// read).
    pub host: moat_policy::HostPattern,
    /// Header name.
    pub name: String,
    /// Header value (a secret).
    #[serde(with = "moat_secret::exposed")]
    pub value: Secret,
    /// The grant it comes from, for the trace and audit (`github`).
    #[serde(default)]
    pub grant: String,
}

impl fmt::Debug for InjectionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectionSpec")
            .field("host", &format_args!("{}", self.host))
            .field("name", &self.name)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

/// A header the MCP relay adds on requests to its server.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeaderSpec {
    /// Header name.
    pub name: String,
    /// Header value (a secret).
    #[serde(with = "moat_secret::exposed")]
    pub value: Secret,
    /// The grant it comes from, for the trace and audit (`github`).
    #[serde(default)]
    pub grant: String,
}

impl fmt::Debug for HeaderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderSpec")
            .field("name", &self.name)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

/// An MCP server the run may reach through `/mcp/<name>`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct McpSpec {
    /// Name in the relay path (crosses as written, parsed again when
    /// read).
    pub name: moat_policy::McpServerName,
    /// Upstream URL.
    pub url: url::Url,
    /// Headers to add (secrets).
    #[serde(default)]
    pub headers: Vec<HeaderSpec>,
}

/// Everything the daemon needs to serve a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSpec {
    /// Run id.
    pub run_id: String,
    /// Run name, for the `moat allow <name> <host>` a blocked request's
    /// message names and its routed hosts (`<endpoint>.<name>.localhost`);
    /// empty: the id, and no routing.
    #[serde(default)]
    pub name: String,
    /// The moat process supervising the run; when it dies, the daemon
    /// unregisters the run by itself.
    #[serde(default)]
    pub supervisor_pid: Option<u32>,
    /// `permissive` or `strict`.
    pub policy: moat_policy::Policy,
    /// Host entries and rules, as written in moat.yaml.
    #[serde(default)]
    pub rules: Vec<moat_policy::HostRules>,
    /// Extra allowed hosts (`--allow-host`).
    #[serde(default)]
    pub allow_hosts: Vec<moat_policy::HostPattern>,
    /// Headers to inject.
    #[serde(default)]
    pub injections: Vec<InjectionSpec>,
    /// MCP relays.
    #[serde(default)]
    pub mcp: Vec<McpSpec>,
    /// Where to append the request trace (`network.jsonl`).
    #[serde(default)]
    pub trace_path: Option<std::path::PathBuf>,
    /// Where to append the run's hash-chained audit log (`audit.jsonl`);
    /// sealed when the run unregisters.
    #[serde(default)]
    pub audit_path: Option<std::path::PathBuf>,
    /// Credential profile (informational).
    #[serde(default)]
    pub profile: Option<String>,
    /// Extra addresses the proxy must listen on for this run (the Docker
    /// bridge gateway), on the daemon's port.
    #[serde(default)]
    pub listen: Vec<String>,
    /// SSH endpoints of the run's SSH grants, reachable through raw
    /// tunnels whatever the policy.
    #[serde(default)]
    pub ssh_hosts: Vec<SshHostSpec>,
    /// Host TCP ports (`network.host`) the run may reach on the host's
    /// loopback through raw tunnels (`CONNECT 127.0.0.1:PORT`), whatever
    /// the policy: the user asked for exactly these.
    #[serde(default)]
    pub host_ports: Vec<u16>,
    /// `moat allow` / `moat deny` changes to apply again, in order: set
    /// when a run registers again with a new daemon after its daemon died
    /// (read back from the run's audit log), so they outlive the daemon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<moat_policy::LiveChange>,
    /// The token to keep: set when a run registers again with a new
    /// daemon after its daemon died, so its sandbox's proxy URL stays
    /// valid. `None`: the daemon makes a fresh one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "moat_secret::exposed_option"
    )]
    pub token: Option<Secret>,
    /// The run's endpoints (`ports:`), served by the daemon's routing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointSpec>,
}

/// One endpoint of a run and how the daemon reaches it: through the
/// run's port socket (native) or at an address only the host reaches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Endpoint name (a DNS label).
    pub name: String,
    /// The port inside the sandbox.
    pub port: u16,
    /// The run's port socket (`ports.sock`), native runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<std::path::PathBuf>,
    /// The address to connect to instead (a container's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<std::net::SocketAddr>,
}

/// An SSH endpoint the run may tunnel to (`CONNECT host:port`, spliced).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SshHostSpec {
    /// Granted host.
    pub host: String,
    /// Its SSH port.
    pub port: u16,
}

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Version handshake; also the health check.
    Hello {
        /// The client's API version.
        api: u32,
        /// The client's moat version.
        version: String,
    },
    /// Register a run; the answer carries its proxy token.
    Register {
        /// The run.
        run: Box<RunSpec>,
    },
    /// Unregister a run; its token stops working at once.
    Unregister {
        /// Run id.
        run_id: String,
    },
    /// Append an event to an active run's audit log (`ssh{...}` from the
    /// CLI's SSH agent proxy, for example).
    Audit {
        /// Run id.
        run_id: String,
        /// Entry type: lowercase letters, digits and `_`.
        kind: String,
        /// Entry data: a JSON object.
        data: serde_json::Value,
    },
    /// Change a registered run's network policy at once (`moat allow`,
    /// `moat deny`); recorded in its audit log. The answer is the policy
    /// now in force.
    PolicyChange {
        /// Run id.
        run_id: String,
        /// The change (every value parsed again when decoded).
        change: moat_policy::LiveChange,
    },
    /// The network policy in force for a registered run (`moat policy`).
    PolicyShow {
        /// Run id.
        run_id: String,
    },
    /// Daemon status.
    Status,
    /// Shut down now.
    Stop,
}

/// A registered run, as `status` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Policy.
    pub policy: moat_policy::Policy,
    /// Grants injected.
    pub grants: Vec<String>,
    /// When it registered.
    pub registered_at: chrono::DateTime<chrono::Utc>,
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Handshake answer.
    Hello {
        /// Daemon API version.
        api: u32,
        /// Daemon moat version.
        version: String,
        /// Daemon pid.
        pid: u32,
        /// Proxy TCP port.
        port: u16,
    },
    /// Registration succeeded.
    Registered {
        /// The run's proxy token (64 hex characters).
        #[serde(with = "moat_secret::exposed")]
        token: Secret,
        /// Proxy TCP port.
        port: u16,
        /// Unix socket serving the same proxy (for network-isolated
        /// sandboxes).
        proxy_socket: std::path::PathBuf,
        /// PEM of the interception CA.
        ca_cert_pem: String,
        /// The routing listener's port (`https://<endpoint>.<run>.localhost:<port>`),
        /// when it listens.
        #[serde(default)]
        routing_port: Option<u16>,
    },
    /// A request that needs no data succeeded.
    Ok,
    /// Status.
    Status {
        /// Daemon pid.
        pid: u32,
        /// Proxy port.
        port: u16,
        /// Daemon version.
        version: String,
        /// Start time.
        started_at: chrono::DateTime<chrono::Utc>,
        /// Registered runs.
        runs: Vec<RunSummary>,
        /// Seconds until the idle exit, when no run is registered.
        idle_exit_in_secs: Option<u64>,
        /// The routing listener's port, when it listens.
        #[serde(default)]
        routing_port: Option<u16>,
        /// The daemon's resident memory now, bytes.
        #[serde(default)]
        rss_bytes: u64,
        /// Its resident memory with no run registered, bytes.
        #[serde(default)]
        idle_rss_bytes: u64,
    },
    /// A run's policy in force (`PolicyChange`, `PolicyShow`).
    Policy {
        /// The policy and where each entry came from.
        view: crate::live::PolicyView,
    },
    /// The request failed.
    Error {
        /// What went wrong and what to do.
        message: String,
    },
}

impl Response {
    /// The answer's kind, as its `result` field names it on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Hello { .. } => "hello",
            Response::Registered { .. } => "registered",
            Response::Ok => "ok",
            Response::Status { .. } => "status",
            Response::Policy { .. } => "policy",
            Response::Error { .. } => "error",
        }
    }
}

/// A control message that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Longer than [`MAX_MESSAGE`].
    #[error("control message too large (over {MAX_MESSAGE} bytes)")]
    TooLarge,
    /// Not valid JSON for the expected type.
    #[error("malformed control message")]
    Malformed(#[source] serde_json::Error),
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Decodes one message from a line (without its newline).
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, ProtocolError> {
    if line.len() > MAX_MESSAGE {
        return Err(ProtocolError::TooLarge);
    }
    serde_json::from_slice(line).map_err(ProtocolError::Malformed)
}

/// Encodes one message as a line.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(message).unwrap_or_else(|e| {
        // Serialising our own enums cannot fail; answer with an error
        // rather than panic if it ever does.
        format!(r#"{{"result":"error","message":"encoding response: {e}"}}"#).into_bytes()
    });
    bytes.push(b'\n');
    bytes
}

/// Reads one line of at most [`MAX_MESSAGE`] bytes.
pub async fn read_line<R>(reader: &mut R) -> Result<Vec<u8>, ProtocolError>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::AsyncBufReadExt;
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return if line.is_empty() {
                Err(ProtocolError::Closed)
            } else {
                Ok(line)
            };
        }
        if let Some(pos) = available.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&available[..pos]);
            reader.consume(pos + 1);
            if line.len() > MAX_MESSAGE {
                return Err(ProtocolError::TooLarge);
            }
            return Ok(line);
        }
        let n = available.len();
        line.extend_from_slice(available);
        reader.consume(n);
        if line.len() > MAX_MESSAGE {
            return Err(ProtocolError::TooLarge);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_secret_debug() {
        let req = Request::Register {
            run: Box::new(RunSpec {
                run_id: "run_0123456789ab".into(),
                name: "web-1".into(),
                supervisor_pid: Some(1),
                policy: moat_policy::Policy::Strict,
                rules: vec![moat_policy::HostRules {
                    host: moat_policy::HostPattern::parse("api.example.com").unwrap(),
                    rules: vec![moat_policy::Rule::parse("allow GET /**").unwrap()],
                }],
                allow_hosts: vec![],
                injections: vec![InjectionSpec {
                    host: moat_policy::HostPattern::parse("api.github.com").unwrap(),
                    name: "Authorization".into(),
                    value: Secret::new("Bearer ghp_secret"),
                    grant: "github".into(),
                }],
                mcp: vec![],
                token: None,
                trace_path: None,
                audit_path: None,
                ssh_hosts: vec![],
                host_ports: vec![],
                changes: vec![],
                profile: None,
                listen: vec![],
                endpoints: vec![EndpointSpec {
                    name: "web".into(),
                    port: 3000,
                    socket: Some("/m/runs/run_0123456789ab/ports.sock".into()),
                    addr: None,
                }],
            }),
        };
        let line = encode(&req);
        let back: Request = decode(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, req);
        assert!(!format!("{req:?}").contains("ghp_secret"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{".to_vec(),
            b"null".to_vec(),
            b"{\"op\":\"nope\"}".to_vec(),
            b"{\"op\":\"register\",\"run\":1}".to_vec(),
            vec![0xff; 100],
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
        ];
        for case in cases {
            assert!(decode::<Request>(&case).is_err());
        }
        assert!(matches!(
            decode::<Request>(&vec![b' '; MAX_MESSAGE + 1]),
            Err(ProtocolError::TooLarge)
        ));
    }

    #[test]
    fn tampered_policy_values_are_refused() {
        let register = |rules: &str| {
            format!(
                r#"{{"op":"register","run":{{"run_id":"run_0123456789ab","policy":"strict","rules":{rules}}}}}"#
            )
        };
        assert!(decode::<Request>(
            register(r#"[{"host":"api.github.com","rules":["allow GET /**"]}]"#).as_bytes()
        )
        .is_ok());
        for rules in [
            r#"[{"host":"api.github.com","rules":["allow GET /a/../admin"]}]"#,
            r#"[{"host":"api.github.com","rules":["permit GET /"]}]"#,
            r#"[{"host":"*.","rules":[]}]"#,
            r#"[{"host":"api.github.com","rules":[{"action":"allow","method":"GET","path":"/"}]}]"#,
            r#"["api.github.com"]"#,
        ] {
            assert!(
                matches!(
                    decode::<Request>(register(rules).as_bytes()),
                    Err(ProtocolError::Malformed(_))
                ),
                "{rules}"
            );
        }
        let injection = |host: &str| {
            format!(
                r#"{{"op":"register","run":{{"run_id":"run_0123456789ab","policy":"strict","injections":[{{"host":{host},"name":"Authorization","value":"Bearer x"}}]}}}}"#
            )
        };
        assert!(decode::<Request>(injection(r#""*.github.com""#).as_bytes()).is_ok());
        for host in [r#""api.github.com:443""#, r#""https://x""#, r#""""#, "null"] {
            assert!(
                matches!(
                    decode::<Request>(injection(host).as_bytes()),
                    Err(ProtocolError::Malformed(_))
                ),
                "{host}"
            );
        }
        let mcp = |name: &str| {
            format!(
                r#"{{"op":"register","run":{{"run_id":"run_0123456789ab","policy":"strict","mcp":[{{"name":{name},"url":"https://mcp.example.com/mcp"}}]}}}}"#
            )
        };
        assert!(decode::<Request>(mcp(r#""linear""#).as_bytes()).is_ok());
        for name in [r#""..""#, r#""a/b""#, r#""""#, "7"] {
            assert!(
                matches!(
                    decode::<Request>(mcp(name).as_bytes()),
                    Err(ProtocolError::Malformed(_))
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn policy_requests_cross_parsed_and_tampered_ones_are_refused() {
        let change = r#"{"op":"policy_change","run_id":"run_0123456789ab","change":{"action":"allow","host":"api.example.com","rules":["allow GET /v1/**"]}}"#;
        match decode::<Request>(change.as_bytes()) {
            Ok(Request::PolicyChange { run_id, change }) => {
                assert_eq!(run_id, "run_0123456789ab");
                assert_eq!(change.action, moat_policy::LiveAction::Allow);
                assert_eq!(change.rules[0].to_string(), "allow GET /v1/**");
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            r#"{"op":"policy_change","run_id":"r","change":{"action":"allow","host":"*"}}"#,
            r#"{"op":"policy_change","run_id":"r","change":{"action":"permit","host":"a.test"}}"#,
            r#"{"op":"policy_change","run_id":"r","change":{"action":"deny","host":"a.test","rules":["deny GET /a/../b"]}}"#,
            r#"{"op":"policy_change","run_id":"r"}"#,
        ] {
            assert!(
                matches!(
                    decode::<Request>(bad.as_bytes()),
                    Err(ProtocolError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            decode::<Request>(br#"{"op":"policy_show","run_id":"r"}"#).unwrap(),
            Request::PolicyShow { run_id: "r".into() }
        );
    }

    #[tokio::test]
    async fn read_line_bounds_size() {
        let data = vec![b'a'; MAX_MESSAGE + 10];
        let mut reader = tokio::io::BufReader::new(&data[..]);
        assert!(matches!(
            read_line(&mut reader).await,
            Err(ProtocolError::TooLarge)
        ));
        let mut reader = tokio::io::BufReader::new(&b"{\"op\":\"status\"}\nrest"[..]);
        let line = read_line(&mut reader).await.unwrap();
        assert_eq!(decode::<Request>(&line).unwrap(), Request::Status);
    }
}
