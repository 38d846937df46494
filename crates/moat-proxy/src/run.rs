//! Runs: what the daemon registers, and the proxy's view of them.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use base64::Engine;
use http::{HeaderMap, HeaderName, Uri};
use moat_policy::{HostPattern, NetworkPolicy};
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorKind, ProxyError};
use crate::scrub::Secrets;
use crate::secret::{RunToken, SecretValue, TokenDigest};
use crate::trace::{Redactor, RequestObserver, TraceSink};

/// Headers set on every request of a run to hosts matching `host`,
/// replacing whatever the client sent (clients send placeholders).
#[derive(Debug, Clone)]
pub struct Injection {
    /// The hosts this applies to.
    pub host: HostPattern,
    /// Header names and their secret values.
    pub headers: Vec<(HeaderName, SecretValue)>,
}

/// An MCP server the sandbox reaches through the proxy as
/// `http://<proxy>/mcp/<name>[/rest]`.
#[derive(Debug, Clone)]
pub struct McpRoute {
    /// The route name (letters, digits, `-` and `_`).
    pub name: moat_policy::McpServerName,
    /// The upstream URL (`https://...` or `http://...`); `/mcp/<name>/rest`
    /// maps to `<url>/rest`, the query string is kept.
    pub url: Uri,
    /// Headers injected on every relayed request (replacing the client's).
    pub headers: Vec<(HeaderName, SecretValue)>,
}

/// Everything the proxy needs to serve one run.
///
/// Hosts covered by `injections` are NOT allowed implicitly: under a strict
/// policy the caller must also add them to `policy` with
/// [`NetworkPolicy::grant_host`] (the daemon does this for granted
/// credentials). MCP routes obey the policy like any other request (the
/// daemon grants the host of an MCP server whose credential the run
/// holds). Whatever the policy, a credential is injected only on a TLS
/// leg (plain HTTP to loopback excepted, see
/// [`ProxyConfig::cleartext_loopback`](crate::ProxyConfig)).
#[derive(Debug, Clone)]
pub struct RunRegistration {
    /// The run id (unique among registered runs).
    pub run_id: String,
    /// The run's name, for the `moat allow <name> <host>` a blocked
    /// request's message names (the id when empty).
    pub name: String,
    /// Credentials to inject.
    pub injections: Vec<Injection>,
    /// The run's network policy.
    pub policy: NetworkPolicy,
    /// MCP servers to relay.
    pub mcp: Vec<McpRoute>,
    /// Where to append the run's `network.jsonl`; `None` disables traces.
    pub trace: Option<PathBuf>,
    /// Endpoints whose `CONNECT` is spliced byte for byte instead of
    /// intercepted (SSH to granted hosts), allowed whatever the policy.
    pub tunnels: Vec<TcpTunnel>,
}

/// A `host:port` the run may open a raw TCP tunnel to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpTunnel {
    /// Host name as the client sends it in `CONNECT` (lower case).
    pub host: String,
    /// Port.
    pub port: u16,
}

pub(crate) struct ParsedMcp {
    pub(crate) name: String,
    pub(crate) base: Uri,
    pub(crate) headers: Vec<(HeaderName, SecretValue)>,
    /// What responses are scrubbed of (from `headers`).
    pub(crate) secrets: Secrets,
}

/// What every request an [`Injection`] applies to needs, made once per
/// run rather than per request.
pub(crate) struct PreparedInjection {
    /// The trace label (`credential_used`): the host pattern.
    pub(crate) label: String,
    /// What responses are scrubbed of.
    pub(crate) secrets: Secrets,
}

impl PreparedInjection {
    fn of(injection: &Injection) -> Self {
        PreparedInjection {
            label: injection.host.to_string(),
            secrets: Secrets::of(injection.headers.iter().map(|(_, v)| v.expose())),
        }
    }
}

/// A registered run, as the request handlers see it.
pub(crate) struct Run {
    pub(crate) id: String,
    pub(crate) digest: TokenDigest,
    pub(crate) injections: Vec<Injection>,
    /// One per injection, in the same order.
    pub(crate) prepared: Vec<PreparedInjection>,
    /// The policy in force: replaced whole by [`Proxy::set_policy`]
    /// (`moat allow`/`moat deny`); every request reads it afresh, so a
    /// change applies to the next request of an open connection too.
    ///
    /// [`Proxy::set_policy`]: crate::Proxy::set_policy
    policy: RwLock<Arc<NetworkPolicy>>,
    /// What `moat allow` is given to name this run.
    pub(crate) name: String,
    pub(crate) tunnels: Vec<TcpTunnel>,
    pub(crate) mcp: Vec<ParsedMcp>,
    pub(crate) trace: Option<TraceSink>,
    /// Cancelled on unregister: open tunnels of the run close.
    pub(crate) cancel: CancellationToken,
    /// Every secret of the run (injected values, MCP header values, the run
    /// token), for redacting traces.
    pub(crate) secrets: Vec<String>,
    /// `secrets` in one automaton. Like the injected header values hyper
    /// copies, its copy of them is not zeroed on drop.
    pub(crate) redactor: Redactor,
    /// Told of every finished request.
    pub(crate) observer: Option<Arc<dyn RequestObserver>>,
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for s in &mut self.secrets {
            s.zeroize();
        }
    }
}

impl Run {
    /// The policy in force now.
    pub(crate) fn policy(&self) -> Arc<NetworkPolicy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            // A writer panicked mid-swap: the Arc inside is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_policy(&self, policy: NetworkPolicy) {
        let policy = Arc::new(policy);
        match self.policy.write() {
            Ok(mut p) => *p = policy,
            Err(poisoned) => *poisoned.into_inner() = policy,
        }
    }

    #[cfg(test)]
    pub(crate) fn set_policy_for_test(&self, policy: NetworkPolicy) {
        self.set_policy(policy);
    }

    /// A denial's message: the reason's lines, then the `moat allow`
    /// command that would let the request through in this run.
    pub(crate) fn deny_message(&self, reason: &moat_policy::DenyReason) -> String {
        let mut message = reason.message();
        if let Some(command) = reason.allow_command(&self.name) {
            message.push_str("\nOr allow it for this run now: ");
            message.push_str(&command);
        }
        message
    }

    pub(crate) fn is_active(&self) -> bool {
        !self.cancel.is_cancelled()
    }

    /// The injections whose host pattern matches `host`.
    pub(crate) fn injections_for<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = (&'a Injection, &'a PreparedInjection)> + 'a {
        self.injections
            .iter()
            .zip(&self.prepared)
            .filter(move |(i, _)| i.host.matches(host))
    }

    /// Whether finished requests are written down (trace or observer).
    pub(crate) fn recorded(&self) -> bool {
        self.trace.is_some() || self.observer.is_some()
    }
}

fn parse_route(route: McpRoute) -> Result<ParsedMcp, ProxyError> {
    let base = route.url;
    if !matches!(base.scheme_str(), Some("http" | "https")) || base.host().is_none() {
        return Err(ProxyError::config(format!(
            "the MCP URL for {:?} must be an absolute http(s) URL",
            route.name
        )));
    }
    if let Some((name, _)) = route.headers.iter().find(|(n, _)| frames_or_routes(n)) {
        return Err(ProxyError::config(format!(
            "the MCP route {:?} would send its credential as {name}, which frames or routes the \
             request; use a header such as Authorization",
            route.name
        )));
    }
    Ok(ParsedMcp {
        name: route.name.as_str().to_owned(),
        base,
        secrets: Secrets::of(route.headers.iter().map(|(_, v)| v.expose())),
        headers: route.headers,
    })
}

/// Whether a credential sent as `name` would decide where or how a
/// request goes rather than ride along: `Host`, body framing, hop-by-hop
/// and proxy headers, method and path overrides. moat.yaml refuses these
/// for MCP servers already; the proxy holds to it whoever registers.
fn frames_or_routes(name: &HeaderName) -> bool {
    let name = name.as_str();
    matches!(
        name,
        "host"
            | "content-length"
            | "transfer-encoding"
            | "content-encoding"
            | "expect"
            | "trailer"
            | "connection"
            | "upgrade"
            | "te"
            | "keep-alive"
            | "forwarded"
            | "x-original-url"
            | "x-rewrite-url"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
    ) || name.starts_with("proxy-")
        || name.starts_with("x-forwarded-")
}

/// Builds the proxy's view of a run. With `strict`, an invalid MCP route is
/// an error; otherwise it is skipped with a warning.
pub(crate) fn build_run(
    reg: RunRegistration,
    token: &RunToken,
    trace: Option<TraceSink>,
    parent: &CancellationToken,
    strict: bool,
) -> Result<Run, ProxyError> {
    if strict && reg.run_id.is_empty() {
        return Err(ProxyError::config("a run id must not be empty"));
    }
    let mut mcp = Vec::new();
    for route in reg.mcp {
        match parse_route(route) {
            Ok(route) => mcp.push(route),
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::warn!(run = %reg.run_id, error = %e, "skipping an MCP route");
            }
        }
    }
    let mut secrets: Vec<String> = reg
        .injections
        .iter()
        .flat_map(|i| i.headers.iter())
        .chain(mcp.iter().flat_map(|m| m.headers.iter()))
        .map(|(_, v)| v.expose().to_owned())
        .collect();
    // "Bearer abc" also hides a bare "abc" written elsewhere.
    let bare: Vec<String> = secrets
        .iter()
        .filter_map(|s| s.split_once(' ').map(|(_, rest)| rest.trim().to_owned()))
        .collect();
    secrets.extend(bare);
    secrets.push(token.expose().to_owned());
    secrets.retain(|s| s.len() >= 4);
    // Longest first, so a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let redactor = Redactor::new(&secrets);
    let name = if reg.name.is_empty() {
        reg.run_id.clone()
    } else {
        reg.name
    };
    Ok(Run {
        id: reg.run_id,
        digest: token.digest(),
        prepared: reg.injections.iter().map(PreparedInjection::of).collect(),
        injections: reg.injections,
        policy: RwLock::new(Arc::new(reg.policy)),
        name,
        tunnels: reg.tunnels,
        mcp,
        trace,
        cancel: parent.child_token(),
        secrets,
        redactor,
        observer: None,
    })
}

/// Why a request was refused before any run was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No credentials at all: `Proxy authentication required`.
    Missing,
    /// Credentials that match no run: `Invalid proxy token`.
    Invalid,
}

/// The registered runs, keyed by the SHA-256 of their token.
#[derive(Default)]
pub(crate) struct Registry {
    by_digest: RwLock<HashMap<TokenDigest, Arc<Run>>>,
}

impl Registry {
    pub(crate) fn insert(&self, run: Run) -> Result<(), ProxyError> {
        let mut map = self
            .by_digest
            .write()
            .map_err(|_| ProxyError::new(ErrorKind::Internal, "run registry poisoned"))?;
        if map.values().any(|r| r.id == run.id) {
            return Err(ProxyError::new(
                ErrorKind::DuplicateRun,
                format!("run {:?} is already registered", run.id),
            ));
        }
        map.insert(run.digest, Arc::new(run));
        Ok(())
    }

    pub(crate) fn remove(&self, run_id: &str) -> Option<Arc<Run>> {
        let mut map = self.by_digest.write().ok()?;
        let digest = map.iter().find(|(_, r)| r.id == run_id).map(|(d, _)| *d)?;
        let run = map.remove(&digest)?;
        run.cancel.cancel();
        Some(run)
    }

    /// Replaces the policy of run `run_id`; false when it is not
    /// registered.
    pub(crate) fn set_policy(&self, run_id: &str, policy: NetworkPolicy) -> bool {
        let Ok(map) = self.by_digest.read() else {
            return false;
        };
        match map.values().find(|r| r.id == run_id) {
            Some(run) => {
                run.set_policy(policy);
                true
            }
            None => false,
        }
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .by_digest
            .read()
            .map(|m| m.values().map(|r| r.id.clone()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub(crate) fn drain(&self) -> Vec<Arc<Run>> {
        self.by_digest
            .write()
            .map(|mut m| m.drain().map(|(_, r)| r).collect())
            .unwrap_or_default()
    }

    fn lookup(&self, token: &[u8]) -> Option<Arc<Run>> {
        let digest = TokenDigest::of(token);
        let map = self.by_digest.read().ok()?;
        let run = map.get(&digest)?;
        // The map lookup compares digests, not tokens; confirm in constant
        // time anyway.
        (run.digest.ct_eq(&digest) && run.is_active()).then(|| run.clone())
    }

    /// Finds the run of `Proxy-Authorization: Basic base64(moat:<token>)`
    /// (any user name) or `Proxy-Authorization: Bearer <token>`; with
    /// `allow_authorization`, `Authorization: Bearer <token>` too (MCP
    /// clients that ignore proxies).
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        allow_authorization: bool,
    ) -> Result<Arc<Run>, AuthFailure> {
        let mut presented = false;
        let mut candidates = Vec::new();
        for value in headers.get_all(http::header::PROXY_AUTHORIZATION) {
            presented = true;
            candidates.extend(token_from(value.as_bytes(), true));
        }
        if allow_authorization {
            for value in headers.get_all(http::header::AUTHORIZATION) {
                if let Some(token) = token_from(value.as_bytes(), false) {
                    presented = true;
                    candidates.push(token);
                }
            }
        }
        if !presented {
            return Err(AuthFailure::Missing);
        }
        candidates
            .iter()
            .find_map(|t| self.lookup(t))
            .ok_or(AuthFailure::Invalid)
    }
}

/// The token inside an authorization header value.
fn token_from(value: &[u8], basic: bool) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.as_bytes().to_vec());
    }
    if basic && scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        return Some(match decoded.iter().position(|b| *b == b':') {
            Some(i) => decoded[i + 1..].to_vec(),
            None => decoded,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn registry_with(token: &RunToken) -> Registry {
        let reg = RunRegistration {
            run_id: "r1".into(),
            name: String::new(),
            injections: vec![],
            policy: NetworkPolicy::default(),
            mcp: vec![],
            trace: None,
            tunnels: vec![],
        };
        let registry = Registry::default();
        registry
            .insert(build_run(reg, token, None, &CancellationToken::new(), true).unwrap())
            .unwrap();
        registry
    }

    #[test]
    fn an_mcp_credential_cannot_frame_or_route_the_request() {
        let route = |header: &str| McpRoute {
            name: moat_policy::McpServerName::parse("docs").unwrap(),
            url: Uri::from_static("https://mcp.example.com/mcp"),
            headers: vec![(
                HeaderName::from_bytes(header.as_bytes()).unwrap(),
                SecretValue::new("tok").unwrap(),
            )],
        };
        for bad in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Proxy-Authorization",
            "X-Forwarded-Host",
        ] {
            let e = parse_route(route(bad)).err().map(|e| e.detail());
            assert!(
                e.as_deref().is_some_and(|e| e.contains("Authorization")),
                "{bad}: {e:?}"
            );
        }
        for ok in ["Authorization", "X-Api-Key"] {
            assert!(parse_route(route(ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn an_mcp_route_must_be_an_absolute_http_url() {
        let route = |url: &'static str| McpRoute {
            name: moat_policy::McpServerName::parse("brave-search_2").unwrap(),
            url: Uri::from_static(url),
            headers: Vec::new(),
        };
        assert!(parse_route(route("https://mcp.example.com/mcp")).is_ok());
        for bad in ["/mcp", "ftp://mcp.example.com/"] {
            let e = parse_route(route(bad)).err().map(|e| e.detail());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("must be an absolute http(s) URL")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn authenticates_basic_and_bearer() {
        let token = RunToken::generate();
        let registry = registry_with(&token);
        let mut h = HeaderMap::new();
        assert_eq!(
            registry.authenticate(&h, true).err(),
            Some(AuthFailure::Missing)
        );
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("moat:{}", token.expose()));
        h.insert(
            http::header::PROXY_AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(registry.authenticate(&h, false).unwrap().id, "r1");
        h.insert(
            http::header::PROXY_AUTHORIZATION,
            format!("bearer {}", token.expose()).parse().unwrap(),
        );
        assert_eq!(registry.authenticate(&h, false).unwrap().id, "r1");
        h.insert(
            http::header::PROXY_AUTHORIZATION,
            "Basic bW9hdDp3cm9uZw==".parse().unwrap(),
        );
        assert_eq!(
            registry.authenticate(&h, false).err(),
            Some(AuthFailure::Invalid)
        );
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {}", token.expose()).parse().unwrap(),
        );
        assert_eq!(
            registry.authenticate(&h, false).err(),
            Some(AuthFailure::Missing)
        );
        assert_eq!(registry.authenticate(&h, true).unwrap().id, "r1");
        for garbage in ["", "Basic", "Basic %%%", "Digest x", "\u{7f}"] {
            let mut h = HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(garbage) {
                h.insert(http::header::PROXY_AUTHORIZATION, v);
                assert_eq!(
                    registry.authenticate(&h, true).err(),
                    Some(AuthFailure::Invalid)
                );
            }
        }
        assert!(registry.remove("r1").is_some());
        let mut h = HeaderMap::new();
        h.insert(
            http::header::PROXY_AUTHORIZATION,
            format!("Bearer {}", token.expose()).parse().unwrap(),
        );
        assert_eq!(
            registry.authenticate(&h, false).err(),
            Some(AuthFailure::Invalid)
        );
    }
}
