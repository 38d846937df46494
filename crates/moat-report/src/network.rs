//! One line per proxied request, and its headers and bodies with `-v`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use moat_storage::TraceRecord;

use crate::{clock, duration};

/// `[HH:MM:SS.mmm] METHOD URL STATUS (DUR)`, then `BLOCKED: reason` or
/// `error: ...` when it applies; `<-` before the method marks a request
/// routed into the run (`ports:`).
pub fn request_line(r: &TraceRecord) -> String {
    let status = r
        .status_code
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-".into());
    let inbound = if r.direction.as_deref() == Some("inbound") {
        "<- "
    } else {
        ""
    };
    let mut out = format!(
        "[{}] {inbound}{} {} {status} ({})",
        clock(&r.ts),
        r.method,
        r.url,
        duration(r.duration_ms)
    );
    if r.blocked() {
        let _ = write!(out, " BLOCKED: {}", r.block_reason());
    } else if let Some(e) = &r.error {
        let _ = write!(out, " error: {e}");
    }
    out.push('\n');
    out
}

/// The injected credential's name, the headers and the (redacted) bodies
/// of a request, indented under its line.
pub fn request_details(r: &TraceRecord) -> String {
    let mut out = String::new();
    if let Some(c) = &r.credential_used {
        let _ = writeln!(out, "  Credential injected: {c}");
    }
    headers(&mut out, "Request Headers", &r.req_headers);
    body(&mut out, "Request Body", r.req_body.as_deref(), r.truncated);
    headers(&mut out, "Response Headers", &r.resp_headers);
    body(
        &mut out,
        "Response Body",
        r.resp_body.as_deref(),
        r.truncated,
    );
    out
}

fn headers(out: &mut String, title: &str, headers: &BTreeMap<String, String>) {
    if !headers.is_empty() {
        let _ = writeln!(out, "  {title}:");
        for (k, v) in headers {
            let _ = writeln!(out, "    {k}: {v}");
        }
    }
}

fn body(out: &mut String, title: &str, body: Option<&str>, truncated: bool) {
    if let Some(b) = body.filter(|b| !b.is_empty()) {
        let suffix = if truncated { " (truncated)" } else { "" };
        let _ = writeln!(out, "  {title}{suffix}:");
        for l in b.lines() {
            let _ = writeln!(out, "    {l}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(json: &str) -> TraceRecord {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_request_is_one_line_and_a_blocked_one_says_why() {
        let r = record(
            r#"{"ts":"2025-01-02T03:04:05.678Z","method":"GET","url":"https://api.github.com/user","status_code":200,"duration_ms":89.2,"policy":"allow"}"#,
        );
        assert_eq!(
            request_line(&r),
            "[03:04:05.678] GET https://api.github.com/user 200 (89ms)\n"
        );
        let r = record(
            r#"{"ts":"2025-01-02T03:04:05.678Z","method":"CONNECT","url":"blocked.test:443","status_code":407,"duration_ms":0.1,"policy":"deny","error":"blocked by network policy","resp_body":"Moat: request blocked by network policy.\nHost \"blocked.test\" is not in the allow list.\nAdd it."}"#,
        );
        assert_eq!(
            request_line(&r),
            "[03:04:05.678] CONNECT blocked.test:443 407 (0ms) BLOCKED: Host \"blocked.test\" is not in the allow list.\n"
        );
        let r = record(
            r#"{"ts":"2025-01-02T03:04:05.678Z","method":"CONNECT","url":"blocked.test:443","status_code":407,"duration_ms":0.1,"policy":"deny","resp_body":"Moat: request blocked by network policy.\nHost \"blocked.test\" is not in the allow list.\nAdd it.\nOr allow it for this run now: moat allow web-1 blocked.test"}"#,
        );
        assert!(request_line(&r).ends_with(
            "BLOCKED: Host \"blocked.test\" is not in the allow list. Allow it now: moat allow web-1 blocked.test\n"
        ));
    }

    #[test]
    fn a_request_routed_into_the_run_is_marked_inbound() {
        let r = record(
            r#"{"ts":"2025-01-02T03:04:05.678Z","method":"GET","url":"https://web.a.localhost/x","status_code":null,"duration_ms":1.2,"direction":"inbound"}"#,
        );
        assert_eq!(
            request_line(&r),
            "[03:04:05.678] <- GET https://web.a.localhost/x - (1ms)\n"
        );
    }

    #[test]
    fn details_indent_headers_and_bodies() {
        let r = record(
            r#"{"ts":"2025-01-02T03:04:05.678Z","method":"POST","url":"u","credential_used":"github","req_headers":{"accept":"*/*"},"req_body":"a\nb","truncated":true}"#,
        );
        assert_eq!(
            request_details(&r),
            "  Credential injected: github\n  Request Headers:\n    accept: */*\n  \
             Request Body (truncated):\n    a\n    b\n"
        );
    }
}
