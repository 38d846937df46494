//! Forwarding one request upstream: injection, policy, hop-by-hop
//! headers, the trace, response scrubbing.

use super::*;

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
    forward(&inner, run, uri, true, inject, req, binding).await
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
pub(super) async fn forward(
    inner: &Arc<Inner>,
    run: Arc<Run>,
    uri: Uri,
    check_policy: bool,
    inject: Injected,
    mut req: Request<ProxyBody>,
    binding: Option<&Binding>,
) -> Response<ProxyBody> {
    let limit = inner.config.trace_body_bytes;
    let method = req.method().clone();
    // Only what records requests, and error messages, need it as text.
    let url = || uri.to_string();
    // Every route here (absolute form, tunnels, the MCP relay) is
    // checked on the host in its one canonical form.
    let canonical = match canonical_host(uri.host().unwrap_or_default()) {
        Ok(host) => host,
        Err(e) => return error_response(&e),
    };
    let host = canonical.bare().to_owned();
    if check_policy {
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        // A value that is not text cannot name a method or path a rule
        // allows: it stands as one no rule matches.
        let claimed = |names: &[&str]| -> Vec<&str> {
            names
                .iter()
                .flat_map(|name| req.headers().get_all(*name))
                .map(|v| v.to_str().unwrap_or("\u{fffd}"))
                .collect()
        };
        let overrides = claimed(&METHOD_OVERRIDES);
        let paths = claimed(&PATH_OVERRIDES);
        if let Decision::Deny(reason) =
            run.policy
                .decide_request_for(&canonical, method.as_str(), &overrides, pq, &paths)
        {
            let message = reason.message();
            if let Some(ex) = Exchange::new(
                run.clone(),
                method.as_str(),
                &url(),
                false,
                (req.headers(), &[]),
                None,
                limit,
            ) {
                ex.set_error(407, "blocked by network policy");
                ex.set_body(Side::Response, message.as_bytes());
                ex.finish();
            }
            return blocked(&reason);
        }
    }

    // A credential only ever travels inside TLS: a plain-HTTP leg to a
    // host moat holds one for is refused whole (not sent without it, which
    // would hide the mistake). Loopback is excepted for local servers.
    let cleartext = uri.scheme_str() != Some("https");
    if cleartext
        && !inject.headers.is_empty()
        && !(inner.config.cleartext_loopback && is_loopback(&host))
    {
        let https = {
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
        };
        let url = url();
        let message = format!(
            "moat: refused to send the credential for {host} over plain HTTP ({url}): anyone on the path could read it.\n\
             Use {https} instead; moat injects credentials only into TLS connections.\n"
        );
        if let Some(ex) = Exchange::new(
            run.clone(),
            method.as_str(),
            &url,
            false,
            (req.headers(), &[]),
            inject.label,
            limit,
        ) {
            ex.set_error(403, "credential refused on plain HTTP");
            ex.set_body(Side::Response, message.as_bytes());
            ex.finish();
        }
        let mut resp = text(StatusCode::FORBIDDEN, message);
        mark(
            &mut resp,
            CLEARTEXT_REASON,
            "http_request_denied",
            &format!("a credential for {host} is only sent over https"),
        );
        return resp;
    }

    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade);
    headers.remove(header::HOST);
    join_cookies(&mut headers);
    let Injected {
        headers: inject,
        label,
        secrets,
    } = inject;
    let injected: Vec<&str> = inject.iter().map(|(n, _)| n.as_str()).collect();
    for (name, value) in &inject {
        headers.insert(name.clone(), value.clone());
    }
    if !secrets.is_empty() {
        // Only encodings the scrubber can read come back.
        let gzip = header_has_token(&headers, header::ACCEPT_ENCODING, "gzip");
        headers.remove(header::ACCEPT_ENCODING);
        if gzip {
            headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        }
    }
    let exchange = run.recorded().then(url).and_then(|url| {
        Exchange::new(
            run.clone(),
            method.as_str(),
            &url,
            true,
            (&headers, &injected),
            label,
            limit,
        )
    });

    let mut upstream_req =
        Request::new(Tapped::new(body, exchange.clone(), Side::Request).boxed_unsync());
    *upstream_req.method_mut() = method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = headers;

    let timeout = inner.config.upstream_timeout;
    let sent = inner.upstream.send(binding, upgrade, upstream_req);
    let mut resp = match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(resp)) => resp,
        Err(_) => {
            let err = ProxyError::new(
                ErrorKind::UpstreamTimeout,
                format!(
                    "moat: upstream {host} sent no response within {} s. \
                     Raise MOAT_UPSTREAM_TIMEOUT (seconds, read by the daemon) if it is just slow.",
                    timeout.as_secs()
                ),
            );
            if let Some(ex) = &exchange {
                ex.set_error(err.status().as_u16(), &err.detail());
                ex.finish();
            }
            return error_response(&err);
        }
        Ok(Err(err)) => {
            if let Some(ex) = &exchange {
                ex.set_error(err.status().as_u16(), &err.detail());
                ex.finish();
            }
            return error_response(&err);
        }
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let cancel = run.cancel.clone();
            tokio::spawn(async move {
                let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade)
                else {
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
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, switching);
    let body: ProxyBody = body;
    let body = if secrets.is_empty() || switching {
        body
    } else {
        let n = secrets.scrub_headers(&mut parts.headers);
        if n > 0 {
            if let Some(ex) = &exchange {
                ex.add_scrubbed(n);
            }
        }
        let encoding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase());
        let gzip = match encoding.as_deref() {
            None | Some("identity") => false,
            Some("gzip" | "x-gzip") => true,
            Some(other) => {
                let err = ProxyError::new(
                    ErrorKind::UpstreamProtocol,
                    format!(
                        "moat: upstream {host} answered with Content-Encoding {other:?}, which moat cannot check for \
                         echoed credentials; only gzip or none is accepted when a credential is injected"
                    ),
                );
                if let Some(ex) = &exchange {
                    ex.set_error(err.status().as_u16(), &err.detail());
                    ex.finish();
                }
                return error_response(&err);
            }
        };
        if gzip {
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        Scrubbed::new(body, secrets, gzip, exchange.clone()).boxed_unsync()
    };
    if let Some(ex) = &exchange {
        ex.set_response(parts.status.as_u16(), &parts.headers);
    }
    let body = Tapped::new(body, exchange, Side::Response).boxed_unsync();
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
