//! Forwarding one request upstream: injection, policy, hop-by-hop
//! headers, the trace, response scrubbing.

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use moat_policy::{CanonicalHost, Decision};
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::config::ProxyConfig;
use crate::error::{ErrorKind, ProxyError};
use crate::run::{AuthFailure, Run};
use crate::scrub::body::Scrubbed;
use crate::scrub::Secrets;
use crate::trace::exchange::{Exchange, Side, Tapped};
use crate::upstream::{Binding, Upstream};

use super::responses::{auth_failure, blocked, error_response, mark, text, CLEARTEXT_REASON};
use super::shared::Inner;
use super::target::{canonical_host, path_and_query, Target};

/// Whether `host` (bare, lower case) names the loopback interface.
pub(super) fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Method-override headers some frameworks honour: the method they name
/// is what the server runs, so the policy checks it too.
pub(super) const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers some servers and frameworks (IIS, Symfony, Zend) route by
/// instead of the request line: the path they name is checked too.
pub(super) const PATH_OVERRIDES: [&str; 2] = ["x-original-url", "x-rewrite-url"];

/// What a request gets injected: headers, the trace label, and the forms
/// of the values its response is scrubbed of.
#[derive(Default)]
pub(super) struct Injected {
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) label: Option<String>,
    pub(super) secrets: Secrets,
}

/// The injections of `run` for `host`.
pub(super) fn injections(run: &Run, host: &str) -> Injected {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let mut out = Injected::default();
    let mut secrets = Vec::new();
    for (injection, prepared) in run.injections_for(bare) {
        out.label.get_or_insert_with(|| prepared.label.clone());
        out.headers.extend(
            injection
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.header_value().clone())),
        );
        secrets.push(&prepared.secrets);
    }
    out.secrets = Secrets::merge(&secrets);
    out
}

pub(super) async fn handle_inner(
    inner: Arc<Inner>,
    run: Arc<Run>,
    target: &Target,
    req: Request<ProxyBody>,
    binding: Option<&Binding>,
) -> Response<ProxyBody> {
    if !run.is_active() {
        return auth_failure(AuthFailure::Invalid);
    }
    let uri = match target.uri(&path_and_query(req.uri())) {
        Ok(u) => u,
        Err(e) => return error_response(&e),
    };
    let inject = injections(&run, target.host.bare());
    forward(&inner, run, uri, inject, req, binding).await
}

pub(super) fn is_upgrade(req: &Request<ProxyBody>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
}

pub(super) fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), those named in
/// `Connection` included. With `keep_upgrade`, `Upgrade` survives and
/// `Connection: upgrade` is set. `TE: trailers` survives (gRPC needs it).
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    let te_trailers = header_has_token(headers, header::TE, "trailers");
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        if let Some(upgrade) = upgrade {
            headers.insert(header::UPGRADE, upgrade);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
}

/// HTTP/2 clients may split `Cookie` across fields; HTTP/1.1 wants one.
pub(super) fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().count() < 2 {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Policy, injection, trace and forwarding of one request to `uri`.
///
/// A fixed sequence of phases (after pingora's): `request_filter` may
/// refuse the request, `upstream_request_filter` makes what goes upstream
/// and opens the trace, `send_upstream` waits for the response head,
/// `response_filter` makes what goes back (scrubbed of the injected
/// secrets). Each phase that ends the request early records why in the
/// trace (`record_refusal`, `record_failure`).
pub(super) async fn forward(
    inner: &Inner,
    run: Arc<Run>,
    uri: Uri,
    inject: Injected,
    req: Request<ProxyBody>,
    binding: Option<&Binding>,
) -> Response<ProxyBody> {
    let mut request = match Forwarding::new(&inner.config, run, uri, req.method().clone()) {
        Ok(request) => request,
        Err(e) => return error_response(&e),
    };
    if let Some(refusal) = request.request_filter(req.headers(), &inject) {
        return refusal;
    }
    let outbound = request.upstream_request_filter(req, inject);
    let upgrade = outbound.client_upgrade.is_some();
    let sent = request.send_upstream(
        &inner.upstream,
        binding,
        upgrade,
        outbound.request,
        outbound.trace.as_deref(),
    );
    let mut resp = match sent.await {
        Ok(resp) => resp,
        Err(answer) => return answer,
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client)) = (switching, outbound.client_upgrade) {
        relay_upgrade(client, &mut resp, request.run.cancel.clone());
    }
    request.response_filter(resp, switching, outbound.secrets, outbound.trace)
}

/// One request on its way upstream: what every phase of [`forward`] reads.
pub(super) struct Forwarding<'a> {
    config: &'a ProxyConfig,
    run: Arc<Run>,
    uri: Uri,
    /// The host in its one canonical form: every route here (absolute
    /// form, tunnels, the MCP relay) is checked on it.
    host: CanonicalHost,
    method: Method,
}

/// What [`Forwarding::upstream_request_filter`] hands on.
struct Outbound {
    request: Request<ProxyBody>,
    /// The client's side of an upgrade (WebSocket) it asked for.
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// What the response is scrubbed of.
    secrets: Secrets,
    /// The request's trace line, when the run records requests.
    trace: Option<Arc<Exchange>>,
}

impl<'a> Forwarding<'a> {
    /// Fails (`400`) on a host that names no destination unambiguously.
    fn new(
        config: &'a ProxyConfig,
        run: Arc<Run>,
        uri: Uri,
        method: Method,
    ) -> Result<Self, ProxyError> {
        let host = canonical_host(uri.host().unwrap_or_default())?;
        Ok(Forwarding {
            config,
            run,
            uri,
            host,
            method,
        })
    }

    /// Whether the request may go at all: the run's policy, then the rule
    /// that a credential travels only inside TLS. `Some` is the answer
    /// refusing it.
    fn request_filter(
        &self,
        headers: &HeaderMap,
        inject: &Injected,
    ) -> Option<Response<ProxyBody>> {
        self.policy_filter(headers)
            .or_else(|| self.cleartext_filter(headers, inject))
    }

    /// The run's policy on the method and path, and on those the override
    /// headers claim; the `407` of a denied request.
    fn policy_filter(&self, headers: &HeaderMap) -> Option<Response<ProxyBody>> {
        let path = self.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let methods = claimed(headers, &METHOD_OVERRIDES);
        let paths = claimed(headers, &PATH_OVERRIDES);
        let decision = self.run.policy().decide_request_for(
            &self.host,
            self.method.as_str(),
            &methods,
            path,
            &paths,
        );
        if let Decision::Deny(reason) = decision {
            let message = self.run.deny_message(&reason);
            self.record_refusal(headers, None, 407, "blocked by network policy", &message);
            return Some(blocked(&reason, &message));
        }
        None
    }

    /// A credential only ever travels inside TLS: a plain-HTTP leg to a
    /// host moat holds one for is refused whole (not sent without it, which
    /// would hide the mistake), `403`. Loopback is excepted for local
    /// servers when the configuration says so.
    fn cleartext_filter(
        &self,
        headers: &HeaderMap,
        inject: &Injected,
    ) -> Option<Response<ProxyBody>> {
        let host = self.host.bare();
        let cleartext = self.uri.scheme_str() != Some("https");
        if !cleartext
            || inject.headers.is_empty()
            || (self.config.cleartext_loopback && is_loopback(host))
        {
            return None;
        }
        let url = self.uri.to_string();
        let https = https_form(&self.uri, host);
        let message = format!(
            "moat: refused to send the credential for {host} over plain HTTP ({url}): anyone on the path could read it.\n\
             Use {https} instead; moat injects credentials only into TLS connections.\n"
        );
        let error = "credential refused on plain HTTP";
        self.record_refusal(headers, inject.label.clone(), 403, error, &message);
        let mut resp = text(StatusCode::FORBIDDEN, message);
        mark(
            &mut resp,
            CLEARTEXT_REASON,
            "http_request_denied",
            &format!("a credential for {host} is only sent over https"),
        );
        Some(resp)
    }

    /// The request as it goes upstream (see [`upstream_headers`]), its body
    /// tapped for the trace, which opens here when the run records requests.
    /// The URI goes with it (not copied): the phases after this one read
    /// `host`, never `uri`.
    fn upstream_request_filter(
        &mut self,
        mut req: Request<ProxyBody>,
        inject: Injected,
    ) -> Outbound {
        let upgrade = is_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let Injected {
            headers: injected,
            label,
            secrets,
        } = inject;
        upstream_headers(&mut headers, &injected, upgrade, !secrets.is_empty());
        let trace = self.open_trace(&headers, &injected, label);
        let mut request =
            Request::new(Tapped::new(body, trace.clone(), Side::Request).boxed_unsync());
        *request.method_mut() = parts.method;
        *request.uri_mut() = std::mem::take(&mut self.uri);
        *request.headers_mut() = headers;
        Outbound {
            request,
            client_upgrade,
            secrets,
            trace,
        }
    }

    /// Sends the request and waits for the response head, at most the
    /// configured upstream timeout; the error answer of a failure.
    async fn send_upstream(
        &self,
        upstream: &Upstream,
        binding: Option<&Binding>,
        upgrade: bool,
        request: Request<ProxyBody>,
        trace: Option<&Exchange>,
    ) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
        let timeout = self.config.upstream_timeout;
        match tokio::time::timeout(timeout, upstream.send(binding, upgrade, request)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(err)) => Err(record_failure(trace, &err)),
            Err(_) => {
                let err = ProxyError::new(
                    ErrorKind::UpstreamTimeout,
                    format!(
                        "moat: upstream {} sent no response within {} s. \
                         Raise MOAT_UPSTREAM_TIMEOUT (seconds, read by the daemon) if it is just slow.",
                        self.host.bare(),
                        timeout.as_secs()
                    ),
                );
                Err(record_failure(trace, &err))
            }
        }
    }

    /// The response as it goes back: hop-by-hop headers stripped, the
    /// injected secrets masked (unless the connection switched protocols),
    /// the head recorded and the body tapped for the trace.
    fn response_filter(
        &self,
        resp: Response<ProxyBody>,
        switching: bool,
        secrets: Secrets,
        trace: Option<Arc<Exchange>>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, switching);
        let body = if secrets.is_empty() || switching {
            body
        } else {
            match self.scrub_response(&mut parts.headers, body, secrets, trace.as_ref()) {
                Ok(body) => body,
                Err(err) => return record_failure(trace.as_deref(), &err),
            }
        };
        if let Some(ex) = &trace {
            ex.set_response(parts.status.as_u16(), &parts.headers);
        }
        let body = Tapped::new(body, trace, Side::Response).boxed_unsync();
        Response::from_parts(parts, body)
    }

    /// Masks `secrets` in the response headers now and in the body as it
    /// streams (a gzip body decoded on the way, so sent without
    /// `Content-Encoding` and `Content-Length`); fails on an encoding the
    /// scrubber cannot read.
    fn scrub_response(
        &self,
        headers: &mut HeaderMap,
        body: ProxyBody,
        secrets: Secrets,
        trace: Option<&Arc<Exchange>>,
    ) -> Result<ProxyBody, ProxyError> {
        let n = secrets.scrub_headers(headers);
        if let (true, Some(ex)) = (n > 0, trace) {
            ex.add_scrubbed(n);
        }
        let gzip = is_gzip(headers, self.host.bare())?;
        if gzip {
            headers.remove(header::CONTENT_ENCODING);
            headers.remove(header::CONTENT_LENGTH);
        }
        Ok(Scrubbed::new(body, secrets, gzip, trace.cloned()).boxed_unsync())
    }

    /// The trace line of an allowed request, when the run records
    /// requests; `injected` names the headers redacted whatever their value.
    fn open_trace(
        &self,
        headers: &HeaderMap,
        injected: &[(HeaderName, HeaderValue)],
        label: Option<String>,
    ) -> Option<Arc<Exchange>> {
        if !self.run.recorded() {
            return None;
        }
        let names: Vec<&str> = injected.iter().map(|(n, _)| n.as_str()).collect();
        Exchange::new(
            self.run.clone(),
            self.method.as_str(),
            &self.uri.to_string(),
            true,
            (headers, &names),
            label,
            self.config.trace_body_bytes,
        )
    }

    /// Records a request refused before it went anywhere: the trace line
    /// says why, with the message the client gets as its response body.
    fn record_refusal(
        &self,
        headers: &HeaderMap,
        label: Option<String>,
        status: u16,
        error: &str,
        message: &str,
    ) {
        if let Some(ex) = Exchange::new(
            self.run.clone(),
            self.method.as_str(),
            &self.uri.to_string(),
            false,
            (headers, &[]),
            label,
            self.config.trace_body_bytes,
        ) {
            ex.set_error(status, error);
            ex.set_body(Side::Response, message.as_bytes());
            ex.finish();
        }
    }
}

/// Records the failure of an allowed request in its trace line, and
/// answers it.
fn record_failure(trace: Option<&Exchange>, err: &ProxyError) -> Response<ProxyBody> {
    if let Some(ex) = trace {
        ex.set_error(err.status().as_u16(), &err.detail());
        ex.finish();
    }
    error_response(err)
}

/// The values of the headers `names`. A value that is not text cannot
/// name a method or path a rule allows: it stands as one no rule matches.
fn claimed<'h>(headers: &'h HeaderMap, names: &[&str]) -> Vec<&'h str> {
    names
        .iter()
        .flat_map(|name| headers.get_all(*name))
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect()
}

/// `uri` with `https` (and the default port dropped), for the message
/// refusing a credential over plain HTTP.
fn https_form(uri: &Uri, host: &str) -> String {
    let mut parts = uri.clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    if let Some(a) = &parts.authority {
        if a.port_u16() == Some(80) {
            parts.authority = a.host().parse().ok();
        }
    }
    Uri::from_parts(parts)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| format!("https://{host}/"))
}

/// The headers sent upstream: the client's without hop-by-hop ones (but
/// the upgrade it asked for) and `Host` (the URI carries it), cookies
/// joined, each injected header replacing whatever the client sent under
/// its name. When a response will be scrubbed, only the encodings the
/// scrubber can read are asked for.
fn upstream_headers(
    headers: &mut HeaderMap,
    inject: &[(HeaderName, HeaderValue)],
    upgrade: bool,
    scrubbing: bool,
) {
    strip_hop_by_hop(headers, upgrade);
    headers.remove(header::HOST);
    join_cookies(headers);
    for (name, value) in inject {
        headers.insert(name.clone(), value.clone());
    }
    if scrubbing {
        let gzip = header_has_token(headers, header::ACCEPT_ENCODING, "gzip");
        headers.remove(header::ACCEPT_ENCODING);
        if gzip {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        }
    }
}

/// Whether a response to be scrubbed is gzip (else it is plain); the
/// `502` of any other `Content-Encoding`, which the scrubber cannot read.
fn is_gzip(headers: &HeaderMap, host: &str) -> Result<bool, ProxyError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(false),
        Some("gzip" | "x-gzip") => Ok(true),
        Some(other) => Err(ProxyError::new(
            ErrorKind::UpstreamProtocol,
            format!(
                "moat: upstream {host} answered with Content-Encoding {other:?}, which moat cannot check for \
                 echoed credentials; only gzip or none is accepted when a credential is injected"
            ),
        )),
    }
}

/// Joins the client's and the upstream's upgraded connections (a
/// WebSocket) once both are handed over, until either ends or the run is
/// revoked.
fn relay_upgrade(
    client: hyper::upgrade::OnUpgrade,
    resp: &mut Response<ProxyBody>,
    cancel: CancellationToken,
) {
    let upstream = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) else {
            return;
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            () = cancel.cancelled() => {}
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::proxy::responses::{empty, full, BLOCKED_REASON};
    use crate::run::{build_run, RunRegistration};
    use crate::secret::RunToken;
    use crate::trace::{RequestEvent, RequestObserver};
    use moat_policy::{HostPattern, HostRules, NetworkPolicy, Policy, Rule};

    const SECRET: &str = "ghp_SECRETsecret0123456789";

    /// What an observer was told of each finished request: status,
    /// whether the policy allowed it, the error.
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<(Option<u16>, bool, String)>>);

    impl RequestObserver for Seen {
        fn on_request(&self, event: &RequestEvent<'_>) {
            self.0.lock().unwrap().push((
                event.status_code,
                event.allowed,
                event.error.unwrap_or_default().to_owned(),
            ));
        }
    }

    impl Seen {
        fn all(&self) -> Vec<(Option<u16>, bool, String)> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A run under `policy` holding a credential (`Authorization`) for
    /// api.example.com, telling `seen` of its requests.
    fn run_with(policy: NetworkPolicy, seen: &Arc<Seen>) -> Arc<Run> {
        let registration = RunRegistration {
            run_id: "r".into(),
            name: String::new(),
            injections: vec![crate::run::Injection {
                host: HostPattern::parse("api.example.com").unwrap(),
                headers: vec![(
                    header::AUTHORIZATION,
                    crate::SecretValue::new(format!("Bearer {SECRET}")).unwrap(),
                )],
            }],
            policy,
            mcp: vec![],
            trace: None,
            tunnels: vec![],
        };
        let token = RunToken::generate();
        let mut run =
            build_run(registration, &token, None, &CancellationToken::new(), true).unwrap();
        run.observer = Some(seen.clone());
        Arc::new(run)
    }

    fn permissive() -> NetworkPolicy {
        NetworkPolicy::new(Policy::Permissive)
    }

    /// Strict, allowing api.example.com under `rules` (none: all of it).
    fn strict(rules: &[&str]) -> NetworkPolicy {
        let mut policy = NetworkPolicy::new(Policy::Strict);
        policy.hosts.push(HostRules {
            host: HostPattern::parse("api.example.com").unwrap(),
            rules: rules.iter().map(|r| Rule::parse(r).unwrap()).collect(),
        });
        policy
    }

    fn request_to<'a>(
        config: &'a ProxyConfig,
        run: &Arc<Run>,
        method: Method,
        url: &str,
    ) -> Forwarding<'a> {
        Forwarding::new(config, run.clone(), url.parse().unwrap(), method).unwrap()
    }

    async fn body_text(resp: Response<ProxyBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn a_host_with_no_single_reading_is_refused_before_any_phase() {
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let config = ProxyConfig::default();
        let uri: Uri = "http://256.1.1.1/".parse().unwrap();
        let err = Forwarding::new(&config, run, uri, Method::GET)
            .err()
            .unwrap();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn the_policy_phase_refuses_a_host_a_strict_policy_does_not_allow() {
        let seen = Arc::new(Seen::default());
        let run = run_with(strict(&[]), &seen);
        let config = ProxyConfig::default();
        let headers = HeaderMap::new();
        let allowed = request_to(&config, &run, Method::GET, "https://api.example.com/x");
        assert!(allowed.policy_filter(&headers).is_none());
        let other = request_to(&config, &run, Method::GET, "https://other.example/x");
        let refusal = other.policy_filter(&headers).unwrap();
        assert_eq!(refusal.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        let reason = refusal.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(reason.unwrap().as_bytes(), BLOCKED_REASON.as_bytes());
        let status = refusal.headers()["proxy-status"].to_str().unwrap();
        assert!(
            status.contains("host other.example is not in the allow list"),
            "{status}"
        );
        let body = body_text(refusal).await;
        assert!(
            body.starts_with("Moat: request blocked by network policy.\n"),
            "{body}"
        );
        assert!(body.contains("\"other.example\""), "{body}");
        // Recorded as denied, with the status the client got.
        assert_eq!(
            seen.all(),
            vec![(Some(407), false, "blocked by network policy".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_policy_change_applies_to_the_next_request_of_a_run_already_held() {
        let seen = Arc::new(Seen::default());
        // The Arc<Run> a connection authenticated and keeps.
        let run = run_with(strict(&[]), &seen);
        let registry = crate::run::Registry::default();
        let config = ProxyConfig::default();
        let headers = HeaderMap::new();
        let refusal = request_to(&config, &run, Method::GET, "https://other.example/x")
            .policy_filter(&headers)
            .unwrap();
        let body = body_text(refusal).await;
        assert!(
            body.ends_with(
                "Add it to network.rules in moat.yaml or use policy: permissive.\n\
                 Or allow it for this run now: moat allow r other.example"
            ),
            "{body}"
        );
        assert!(!registry.set_policy("r", permissive()));
        let mut live = strict(&[]);
        live.apply(&moat_policy::LiveChange {
            action: moat_policy::LiveAction::Allow,
            host: HostPattern::parse("other.example").unwrap(),
            rules: vec![],
        });
        run.set_policy_for_test(live);
        assert!(
            request_to(&config, &run, Method::GET, "https://other.example/x")
                .policy_filter(&headers)
                .is_none()
        );
    }

    #[test]
    fn the_policy_phase_checks_the_method_an_override_header_claims() {
        let seen = Arc::new(Seen::default());
        let run = run_with(strict(&["allow GET /**"]), &seen);
        let config = ProxyConfig::default();
        let get = request_to(&config, &run, Method::GET, "https://api.example.com/repos");
        let mut headers = HeaderMap::new();
        assert!(get.policy_filter(&headers).is_none());
        headers.insert("x-http-method-override", "DELETE".parse().unwrap());
        assert!(get.policy_filter(&headers).is_some());
        // A value that is not text names no method a rule allows.
        let mut odd = HeaderMap::new();
        odd.insert(
            "x-method-override",
            HeaderValue::from_bytes(b"G\xffT").unwrap(),
        );
        assert!(get.policy_filter(&odd).is_some());
    }

    #[test]
    fn the_policy_phase_checks_the_path_an_override_header_claims() {
        let seen = Arc::new(Seen::default());
        let run = run_with(strict(&["allow GET /public/**"]), &seen);
        let config = ProxyConfig::default();
        let get = request_to(
            &config,
            &run,
            Method::GET,
            "https://api.example.com/public/a",
        );
        let mut headers = HeaderMap::new();
        assert!(get.policy_filter(&headers).is_none());
        headers.insert("x-original-url", "/admin/users".parse().unwrap());
        assert!(get.policy_filter(&headers).is_some());
    }

    #[tokio::test]
    async fn the_cleartext_phase_refuses_a_credential_over_plain_http() {
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let config = ProxyConfig::default();
        let headers = HeaderMap::new();
        let granted = injections(&run, "api.example.com");
        let plain = request_to(
            &config,
            &run,
            Method::GET,
            "http://api.example.com:80/v1?q=1",
        );
        let refusal = plain.cleartext_filter(&headers, &granted).unwrap();
        assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
        let reason = refusal.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(reason.unwrap().as_bytes(), CLEARTEXT_REASON.as_bytes());
        let body = body_text(refusal).await;
        assert!(
            body.contains("Use https://api.example.com/v1?q=1 instead"),
            "{body}"
        );
        assert_eq!(
            seen.all(),
            vec![(
                Some(403),
                false,
                "credential refused on plain HTTP".to_owned()
            )]
        );
        // Over TLS, or with nothing to inject, it goes.
        let tls = request_to(&config, &run, Method::GET, "https://api.example.com/v1");
        assert!(tls.cleartext_filter(&headers, &granted).is_none());
        let nothing = injections(&run, "other.example");
        let other = request_to(&config, &run, Method::GET, "http://other.example/");
        assert!(other.cleartext_filter(&headers, &nothing).is_none());
    }

    #[test]
    fn the_cleartext_phase_lets_loopback_through_only_when_configured() {
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let headers = HeaderMap::new();
        let inject = Injected {
            headers: vec![(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"))],
            ..Injected::default()
        };
        let mut config = ProxyConfig {
            cleartext_loopback: true,
            ..ProxyConfig::default()
        };
        let local = request_to(&config, &run, Method::GET, "http://127.0.0.1:8080/");
        assert!(local.cleartext_filter(&headers, &inject).is_none());
        config.cleartext_loopback = false;
        let local = request_to(&config, &run, Method::GET, "http://127.0.0.1:8080/");
        assert!(local.cleartext_filter(&headers, &inject).is_some());
    }

    #[test]
    fn injections_are_for_the_granted_host_only() {
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let granted = injections(&run, "api.example.com");
        assert_eq!(granted.headers.len(), 1);
        assert_eq!(granted.headers[0].0, header::AUTHORIZATION);
        assert_eq!(granted.headers[0].1, format!("Bearer {SECRET}").as_str());
        assert!(!granted.secrets.is_empty());
        let other = injections(&run, "other.example");
        assert!(other.headers.is_empty());
        assert!(other.label.is_none());
        assert!(other.secrets.is_empty());
    }

    #[test]
    fn upstream_headers_carry_the_credential_in_place_of_the_clients() {
        let inject = [(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {SECRET}")).unwrap(),
        )];
        let mut h = HeaderMap::new();
        h.append(header::AUTHORIZATION, "Bearer placeholder".parse().unwrap());
        h.append(header::AUTHORIZATION, "Bearer another".parse().unwrap());
        h.insert(header::HOST, "api.example.com".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic abc".parse().unwrap());
        h.insert(header::CONNECTION, "x-hop".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.append(header::COOKIE, "a=1".parse().unwrap());
        h.append(header::COOKIE, "b=2".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        upstream_headers(&mut h, &inject, false, false);
        let auth: Vec<_> = h.get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(auth, [format!("Bearer {SECRET}").as_str()]);
        for gone in ["host", "proxy-authorization", "connection", "x-hop"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        assert_eq!(h["x-keep"], "1");
    }

    #[test]
    fn upstream_headers_ask_only_for_encodings_the_scrubber_reads() {
        let narrowed = |accept: &str, scrubbing: bool| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, accept.parse().unwrap());
            upstream_headers(&mut h, &[], false, scrubbing);
            h.get(header::ACCEPT_ENCODING)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(narrowed("br, gzip", true).as_deref(), Some("gzip"));
        assert_eq!(narrowed("br, zstd", true), None);
        assert_eq!(narrowed("br, gzip", false).as_deref(), Some("br, gzip"));
    }

    #[test]
    fn the_upstream_request_goes_to_the_uri_with_the_injection_and_a_trace() {
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let config = ProxyConfig::default();
        let mut post = request_to(&config, &run, Method::POST, "https://api.example.com/v1");
        let mut req = Request::new(full("{}"));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = "/v1".parse().unwrap();
        req.headers_mut()
            .insert(header::AUTHORIZATION, "Bearer placeholder".parse().unwrap());
        let out = post.upstream_request_filter(req, injections(&run, "api.example.com"));
        assert_eq!(out.request.method(), Method::POST);
        assert_eq!(out.request.uri(), "https://api.example.com/v1");
        let auth = &out.request.headers()[header::AUTHORIZATION];
        assert_eq!(auth, format!("Bearer {SECRET}").as_str());
        assert!(out.client_upgrade.is_none());
        assert!(!out.secrets.is_empty());
        // The run has an observer: the request is recorded.
        assert!(out.trace.is_some());
    }

    #[tokio::test]
    async fn the_response_phase_masks_an_echoed_credential() {
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let config = ProxyConfig::default();
        let get = request_to(&config, &run, Method::GET, "https://api.example.com/echo");
        let secrets = injections(&run, "api.example.com").secrets;
        let echo = format!("{{\"token\":\"{SECRET}\"}}");
        let mut resp = Response::new(full(echo.clone()));
        resp.headers_mut()
            .insert("x-echo", format!("Bearer {SECRET}").parse().unwrap());
        resp.headers_mut()
            .insert(header::CONNECTION, "close".parse().unwrap());
        let resp = get.response_filter(resp, false, secrets, None);
        assert!(!resp.headers().contains_key(header::CONNECTION));
        let echoed = resp.headers()["x-echo"].to_str().unwrap().to_owned();
        // The whole value is a form of the secret (`Bearer <token>`).
        assert!(echoed.starts_with("[moat-scrubbed]"), "{echoed}");
        assert!(!echoed.contains(SECRET), "{echoed}");
        let body = body_text(resp).await;
        assert_eq!(body.len(), echo.len());
        assert!(!body.contains(SECRET), "{body}");
    }

    #[test]
    fn the_response_phase_refuses_an_encoding_it_cannot_scrub() {
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let config = ProxyConfig::default();
        let get = request_to(&config, &run, Method::GET, "https://api.example.com/");
        let secrets = injections(&run, "api.example.com").secrets;
        let trace = get.open_trace(&HeaderMap::new(), &[], None);
        let mut resp = Response::new(full("..."));
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        let resp = get.response_filter(resp, false, secrets, trace);
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        let events = seen.all();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, Some(502));
        assert!(events[0].1);
        assert!(
            events[0].2.contains("Content-Encoding \"br\""),
            "{events:?}"
        );
        // With nothing to scrub, any encoding passes untouched.
        let mut resp = Response::new(full("..."));
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        let resp = get.response_filter(resp, false, Secrets::default(), None);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "br");
    }

    #[test]
    fn a_gzip_response_to_scrub_loses_its_encoding_and_length() {
        let mut h = HeaderMap::new();
        assert!(!is_gzip(&h, "h").unwrap());
        h.insert(header::CONTENT_ENCODING, " X-Gzip ".parse().unwrap());
        assert!(is_gzip(&h, "h").unwrap());
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let config = ProxyConfig::default();
        let get = request_to(&config, &run, Method::GET, "https://api.example.com/");
        let secrets = injections(&run, "api.example.com").secrets;
        let mut resp = Response::new(full("not really gzip"));
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, "15".parse().unwrap());
        let resp = get.response_filter(resp, false, secrets, None);
        assert!(!resp.headers().contains_key(header::CONTENT_ENCODING));
        assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn a_switched_connection_is_not_scrubbed_and_keeps_its_upgrade() {
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let config = ProxyConfig::default();
        let get = request_to(&config, &run, Method::GET, "https://api.example.com/ws");
        let secrets = injections(&run, "api.example.com").secrets;
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(header::UPGRADE, "websocket".parse().unwrap());
        resp.headers_mut().insert("x-echo", SECRET.parse().unwrap());
        let resp = get.response_filter(resp, true, secrets, None);
        assert_eq!(resp.headers()[header::UPGRADE], "websocket");
        assert_eq!(resp.headers()[header::CONNECTION], "upgrade");
        assert_eq!(resp.headers()["x-echo"], SECRET);
    }

    #[test]
    fn a_failure_is_recorded_with_the_status_answered() {
        let seen = Arc::new(Seen::default());
        let run = run_with(permissive(), &seen);
        let config = ProxyConfig::default();
        let get = request_to(&config, &run, Method::GET, "https://api.example.com/");
        let trace = get.open_trace(&HeaderMap::new(), &[], None);
        let err = ProxyError::new(ErrorKind::UpstreamTimeout, "slow");
        let resp = record_failure(trace.as_deref(), &err);
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(seen.all(), vec![(Some(504), true, "slow".to_owned())]);
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Custom".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic abc".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        let mut a = h.clone();
        strip_hop_by_hop(&mut a, false);
        let mut names: Vec<_> = a.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "x-keep"]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(h.get(header::PROXY_AUTHORIZATION).is_none());
    }
}
