//! A run's network trace (`network.jsonl`): the record of one request as
//! the proxy writes it, reading the file back, and its HTTP Archive (HAR
//! 1.2) form. The proxy writes its lines directly, for speed; its tests
//! check that every line it writes reads back as a [`TraceRecord`], so
//! this type is the schema both sides share.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// One request, as one line of `network.jsonl`. Secrets are redacted by
/// the proxy before the line is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// When the request arrived (written with milliseconds, `Z`).
    #[serde(serialize_with = "ts_millis")]
    pub ts: DateTime<Utc>,
    /// `GET`, `CONNECT`...
    pub method: String,
    /// The URL (`host:port` for a tunnel).
    pub url: String,
    /// The status answered, if any (`null` when none was).
    #[serde(default)]
    pub status_code: Option<u16>,
    /// From the request's arrival to the end of its response.
    #[serde(default)]
    pub duration_ms: f64,
    /// What went wrong, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The network policy's decision (`deny` when blocked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Request headers (sensitive ones redacted).
    #[serde(default)]
    pub req_headers: BTreeMap<String, String>,
    /// Response headers (sensitive ones redacted).
    #[serde(default)]
    pub resp_headers: BTreeMap<String, String>,
    /// The request body, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req_body: Option<String>,
    /// The response body, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_body: Option<String>,
    /// Whether a body was cut at the recording limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// How many times an injected secret was masked in the response
    /// before it reached the sandbox.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scrubbed: u64,
    /// The injection's label (host pattern) when a credential was injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_used: Option<String>,
    /// `inbound` for a request the daemon's routing took into the run
    /// (`ports:`); absent for the run's own requests out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
}

fn ts_millis<S: serde::Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TraceRecord {
    /// Whether the network policy refused it.
    pub fn blocked(&self) -> bool {
        self.policy.as_deref() == Some("deny")
    }

    /// The policy's reason for a refusal: the second line of moat's deny
    /// message (`Host "x" is not in the allow list.`), and the `moat allow`
    /// command its last line names, if any.
    pub fn block_reason(&self) -> String {
        let body = self.resp_body.as_deref();
        let reason = body
            .and_then(|b| b.lines().nth(1))
            .map(str::to_owned)
            .or_else(|| self.error.clone())
            .unwrap_or_else(|| "blocked by network policy".into());
        let command = body.and_then(|b| {
            b.lines()
                .find_map(|l| l.strip_prefix("Or allow it for this run now: "))
        });
        match command {
            Some(command) => format!("{reason} Allow it now: {command}"),
            None => reason,
        }
    }
}

/// What a trace file holds.
#[derive(Debug, Default)]
pub struct Trace {
    /// The requests, each with its line as written.
    pub records: Vec<(String, TraceRecord)>,
    /// Lines moat wrote for itself (records lost, a daemon replaced),
    /// with their line numbers, in words.
    pub notes: Vec<(usize, String)>,
    /// Lines that are neither (a torn write...), with their line numbers
    /// and why.
    pub damaged: Vec<(usize, String)>,
}

/// Reads a trace file; a missing one is an empty trace.
pub fn read_trace(path: &Path) -> Result<Trace, StorageError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Trace::default()),
        Err(source) => {
            return Err(StorageError::Home(moat_home::HomeError::Io {
                action: "reading",
                path: path.to_path_buf(),
                error: source,
            }))
        }
    };
    let mut trace = Trace::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<TraceRecord>(line) {
            Ok(r) => trace.records.push((line.to_owned(), r)),
            Err(e) => match trace_note(line) {
                Some(note) => trace.notes.push((i + 1, note)),
                None => trace.damaged.push((i + 1, e.to_string())),
            },
        }
    }
    Ok(trace)
}

/// What a line written by moat rather than for a request says:
/// `{"dropped": N, "reason"}` (records the trace writer could not write)
/// or `{"event": "daemon_restarted", ...}` (the proxy daemon was replaced).
fn trace_note(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if let Some(n) = value.get("dropped").and_then(|d| d.as_u64()) {
        let reason = value
            .get("reason")
            .and_then(|r| r.as_str())
            .unwrap_or("write error");
        return Some(format!(
            "{n} request record(s) could not be written here ({reason})"
        ));
    }
    match value.get("event").and_then(|e| e.as_str())? {
        "daemon_restarted" => Some(format!(
            "the proxy daemon stopped at {} and was replaced; requests made meanwhile were \
             refused and are not recorded",
            value
                .get("lost_at")
                .and_then(|t| t.as_str())
                .unwrap_or("an unknown time")
        )),
        "trace_truncated" => Some(format!(
            "trace truncated at {} bytes (MOAT_MAX_TRACE_BYTES); later requests of the run \
             are not recorded",
            value
                .get("max_bytes")
                .and_then(|b| b.as_u64())
                .map_or_else(|| "its cap of".to_owned(), |b| b.to_string())
        )),
        other => Some(format!("moat event {other:?}")),
    }
}

/// An HTTP Archive 1.2 document, as browser devtools import it.
#[derive(Debug, Serialize)]
pub struct Har {
    /// The archive.
    pub log: HarLog,
}

/// `log` of a [`Har`].
#[derive(Debug, Serialize)]
pub struct HarLog {
    /// `1.2`.
    pub version: &'static str,
    /// moat and its version.
    pub creator: HarCreator,
    /// Always empty: a run has no pages.
    pub pages: Vec<()>,
    /// One per request.
    pub entries: Vec<HarEntry>,
}

/// `creator` of a [`HarLog`].
#[derive(Debug, Serialize)]
pub struct HarCreator {
    /// `moat`.
    pub name: &'static str,
    /// moat's version.
    pub version: &'static str,
}

/// One request and its response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HarEntry {
    /// When it started, RFC 3339 with milliseconds.
    pub started_date_time: String,
    /// Total time, ms.
    pub time: f64,
    /// The request.
    pub request: HarRequest,
    /// The response.
    pub response: HarResponse,
    /// Always empty.
    pub cache: BTreeMap<String, String>,
    /// All of it is `wait`: the proxy measures the whole exchange.
    pub timings: HarTimings,
    /// What moat knows beyond HAR.
    #[serde(rename = "_moat")]
    pub moat: HarMoat,
}

/// A name and a value (headers, query parameters).
#[derive(Debug, Serialize)]
pub struct HarPair {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `request` of a [`HarEntry`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HarRequest {
    /// Method.
    pub method: String,
    /// Absolute URL (`https://host:port/` for a tunnel).
    pub url: String,
    /// `HTTP/1.1`.
    pub http_version: &'static str,
    /// Always empty (cookies are redacted in headers).
    pub cookies: Vec<HarPair>,
    /// Headers.
    pub headers: Vec<HarPair>,
    /// The URL's query parameters.
    pub query_string: Vec<HarPair>,
    /// -1: unknown.
    pub headers_size: i64,
    /// Body length, 0 without one.
    pub body_size: i64,
    /// The body, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_data: Option<HarPostData>,
}

/// `postData` of a [`HarRequest`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HarPostData {
    /// Its content type.
    pub mime_type: String,
    /// The body.
    pub text: String,
}

/// `response` of a [`HarEntry`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HarResponse {
    /// Status; 0 when none was answered.
    pub status: u16,
    /// Always empty.
    pub status_text: &'static str,
    /// `HTTP/1.1`.
    pub http_version: &'static str,
    /// Always empty.
    pub cookies: Vec<HarPair>,
    /// Headers.
    pub headers: Vec<HarPair>,
    /// The body.
    pub content: HarContent,
    /// The `Location` header, or empty.
    #[serde(rename = "redirectURL")]
    pub redirect_url: String,
    /// -1: unknown.
    pub headers_size: i64,
    /// -1: unknown.
    pub body_size: i64,
}

/// `content` of a [`HarResponse`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HarContent {
    /// Length of `text`.
    pub size: usize,
    /// Its content type.
    pub mime_type: String,
    /// The body as recorded.
    pub text: String,
}

/// `timings` of a [`HarEntry`].
#[derive(Debug, Serialize)]
pub struct HarTimings {
    /// 0.
    pub send: f64,
    /// The whole exchange.
    pub wait: f64,
    /// 0.
    pub receive: f64,
}

/// `_moat` of a [`HarEntry`].
#[derive(Debug, Serialize)]
pub struct HarMoat {
    /// The policy's decision.
    pub policy: Option<String>,
    /// What went wrong.
    pub error: Option<String>,
    /// The injection's label.
    pub credential_used: Option<String>,
    /// Whether a body was cut.
    pub truncated: bool,
    /// How many times an injected secret was masked in the response.
    pub scrubbed: u64,
}

impl Har {
    /// The archive of `records`.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a TraceRecord>) -> Har {
        Har {
            log: HarLog {
                version: "1.2",
                creator: HarCreator {
                    name: "moat",
                    version: env!("CARGO_PKG_VERSION"),
                },
                pages: Vec::new(),
                entries: records.into_iter().map(HarEntry::from_record).collect(),
            },
        }
    }
}

fn pairs(headers: &BTreeMap<String, String>) -> Vec<HarPair> {
    headers
        .iter()
        .map(|(k, v)| HarPair {
            name: k.clone(),
            value: v.clone(),
        })
        .collect()
}

fn mime(headers: &BTreeMap<String, String>) -> String {
    headers
        .get("content-type")
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".into())
}

impl HarEntry {
    fn from_record(r: &TraceRecord) -> HarEntry {
        // A tunnel is recorded as host:port; HAR wants a URL.
        let url = if r.method == "CONNECT" && !r.url.contains("://") {
            format!("https://{}/", r.url)
        } else {
            r.url.clone()
        };
        let query_string = url
            .split_once('?')
            .map(|(_, q)| q.split('#').next().unwrap_or_default())
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                HarPair {
                    name: k.to_owned(),
                    value: v.to_owned(),
                }
            })
            .collect();
        let resp_body = r.resp_body.clone().unwrap_or_default();
        HarEntry {
            started_date_time: r.ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            time: r.duration_ms,
            request: HarRequest {
                method: r.method.clone(),
                url,
                http_version: "HTTP/1.1",
                cookies: Vec::new(),
                headers: pairs(&r.req_headers),
                query_string,
                headers_size: -1,
                body_size: r
                    .req_body
                    .as_ref()
                    .map_or(0, |b| i64::try_from(b.len()).unwrap_or(i64::MAX)),
                post_data: r.req_body.as_ref().map(|body| HarPostData {
                    mime_type: mime(&r.req_headers),
                    text: body.clone(),
                }),
            },
            response: HarResponse {
                status: r.status_code.unwrap_or(0),
                status_text: "",
                http_version: "HTTP/1.1",
                cookies: Vec::new(),
                headers: pairs(&r.resp_headers),
                content: HarContent {
                    size: resp_body.len(),
                    mime_type: mime(&r.resp_headers),
                    text: resp_body,
                },
                redirect_url: r.resp_headers.get("location").cloned().unwrap_or_default(),
                headers_size: -1,
                body_size: -1,
            },
            cache: BTreeMap::new(),
            timings: HarTimings {
                send: 0.0,
                wait: r.duration_ms,
                receive: 0.0,
            },
            moat: HarMoat {
                policy: r.policy.clone(),
                error: r.error.clone(),
                credential_used: r.credential_used.clone(),
                truncated: r.truncated,
                scrubbed: r.scrubbed,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"credential_used":"api.github.com","duration_ms":12.5,"method":"GET","policy":"allow","req_body":"{\"a\":1}","req_headers":{"authorization":"[REDACTED]","content-type":"application/json"},"resp_headers":{"location":"/next"},"status_code":302,"truncated":false,"ts":"2026-11-30T10:00:00.123Z","url":"https://api.github.com/user?x=1&y"}"#;

    #[test]
    fn records_notes_and_damage_are_told_apart() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("network.jsonl");
        let text =
            format!("{LINE}\n{{\"dropped\":3,\"reason\":\"disk full\"}}\n{{\"method\":\"GET\"\n\n");
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        let trace = read_trace(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(trace.records.len(), 1);
        assert_eq!(trace.records[0].0, LINE);
        assert_eq!(trace.records[0].1.status_code, Some(302));
        assert_eq!(trace.notes.len(), 1);
        assert_eq!(trace.notes[0].0, 2);
        assert!(trace.notes[0].1.contains("3 request record(s)"));
        assert_eq!(trace.damaged.len(), 1);
        assert_eq!(trace.damaged[0].0, 3);
        assert!(read_trace(&dir.path().join("none"))
            .unwrap_or_else(|e| panic!("{e}"))
            .records
            .is_empty());
    }

    #[test]
    fn har_of_a_record() {
        let record: TraceRecord = serde_json::from_str(LINE).unwrap_or_else(|e| panic!("{e}"));
        let har =
            serde_json::to_value(Har::from_records([&record])).unwrap_or_else(|e| panic!("{e}"));
        let entry = &har["log"]["entries"][0];
        assert_eq!(har["log"]["version"], "1.2");
        assert_eq!(entry["startedDateTime"], "2026-11-30T10:00:00.123Z");
        assert_eq!(entry["request"]["queryString"][0]["name"], "x");
        assert_eq!(entry["request"]["queryString"][1]["value"], "");
        assert_eq!(entry["request"]["postData"]["mimeType"], "application/json");
        assert_eq!(entry["response"]["status"], 302);
        assert_eq!(entry["response"]["redirectURL"], "/next");
        assert_eq!(entry["_moat"]["credential_used"], "api.github.com");
        let tunnel = TraceRecord {
            method: "CONNECT".into(),
            url: "example.com:443".into(),
            ..record
        };
        let har =
            serde_json::to_value(Har::from_records([&tunnel])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            har["log"]["entries"][0]["request"]["url"],
            "https://example.com:443/"
        );
    }
}
