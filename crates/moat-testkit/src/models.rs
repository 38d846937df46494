//! Fake model APIs for the real agent CLIs: Anthropic Messages, OpenAI
//! Responses and Gemini `generateContent`, streaming as the real services
//! do (server-sent events), served by an [`EchoUpstream`].
//!
//! Every model answers [`ANSWER`], except that a user turn containing
//! `MOAT-TOOL: <command>` makes the Anthropic model call its `Bash` tool
//! with that command; its next turn, given the tool's result, answers
//! `tool said: <result>`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde_json::{json, Value};

use crate::{EchoUpstream, Responder, Seen, TestCa};

/// What every fake model answers.
pub const ANSWER: &str = "The fake model says hello from 127.0.0.1.";

/// The hosts the fake models stand in for.
pub const HOSTS: &[&str] = &[
    // For running an agent straight at the fake (benchmarks).
    "localhost",
    "api.anthropic.com",
    "api.openai.com",
    "chatgpt.com",
    "generativelanguage.googleapis.com",
    // A streamable-HTTP MCP server at /mcp.
    "mcp.test",
];

/// Starts the three fake APIs on one upstream for [`HOSTS`].
pub fn start(ca: &TestCa) -> EchoUpstream {
    EchoUpstream::start_with(ca, HOSTS, responder())
}

/// The responder behind [`start`].
pub fn responder() -> Responder {
    Arc::new(|seen: &Seen, body: &[u8]| {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        if let Some(dir) = std::env::var_os("MOAT_FAKE_MODELS_DUMP") {
            // For writing tests against a new agent version: what it sent.
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let _ = std::fs::write(std::path::Path::new(&dir).join(format!("{n}.json")), body);
        }
        let path = seen.path.split('?').next().unwrap_or("");
        if seen.method == "POST" && path == "/v1/messages" {
            anthropic(&request)
        } else if seen.method == "POST" && path.ends_with("/responses") {
            openai(&request)
        } else if seen.method == "POST" && path.contains(":streamGenerateContent") {
            gemini(true)
        } else if seen.method == "POST" && path.contains(":generateContent") {
            gemini(false)
        } else if seen.method == "GET" && (path == "/v1/models" || path == "/v1beta/models") {
            // A credential check: any credential is accepted, none is not.
            let authed = ["x-api-key", "authorization", "x-goog-api-key"]
                .iter()
                .any(|h| seen.header(h).is_some());
            if authed {
                json_response(200, &json!({"data": [{"id": "fake-model"}], "models": []}))
            } else {
                json_response(
                    401,
                    &json!({"error": {"type": "authentication_error", "message": "no credential"}}),
                )
            }
        } else if seen.method == "POST" && path == "/mcp" {
            mcp(&request)
        } else if seen.method == "POST" && path.contains(":countTokens") {
            json_response(200, &json!({"totalTokens": 3}))
        } else {
            json_response(
                404,
                &json!({"error": {"type": "not_found_error", "message": format!("the fake API has no {path}")}}),
            )
        }
    })
}

/// A minimal MCP server over streamable HTTP: `initialize`, one tool.
fn mcp(request: &Value) -> Response<Full<Bytes>> {
    let id = request["id"].clone();
    let result = match request["method"].as_str().unwrap_or("") {
        "initialize" => json!({
            "protocolVersion": request["params"]["protocolVersion"].as_str().unwrap_or("2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "moat-fake-mcp", "version": "1.0.0"},
        }),
        "tools/list" => json!({"tools": [{
            "name": "fake_lookup",
            "description": "Looks something up",
            "inputSchema": {"type": "object", "properties": {}},
        }]}),
        _ if id.is_null() => {
            // A notification.
            return Response::builder()
                .status(202)
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
        _ => json!({}),
    };
    json_response(200, &json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn sse(events: &[(Option<&str>, Value)]) -> Response<Full<Bytes>> {
    let mut out = String::new();
    for (name, data) in events {
        if let Some(name) = name {
            out.push_str(&format!("event: {name}\n"));
        }
        out.push_str(&format!("data: {data}\n\n"));
    }
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Full::new(Bytes::from(out)))
        .expect("response")
}

/// Text of every block of a message's content, joined.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match b.get("content") {
                Some(inner) => text_of(inner),
                None => b
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn anthropic(request: &Value) -> Response<Full<Bytes>> {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    // Claude Code may append system messages after the user's turn.
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .cloned()
        .unwrap_or(Value::Null);
    let tool_result = last["content"].as_array().and_then(|blocks| {
        blocks
            .iter()
            .find(|b| b["type"] == "tool_result")
            .map(|b| text_of(&b["content"]))
    });
    let command = text_of(&last["content"])
        .split("MOAT-TOOL:")
        .nth(1)
        .map(|rest| rest.lines().next().unwrap_or("").trim().to_owned())
        .filter(|c| !c.is_empty());
    let model = request["model"].as_str().unwrap_or("claude-fake");
    let (block, delta, stop) = match (tool_result, command) {
        (Some(result), _) => text_block(&format!("tool said: {}", result.trim())),
        (None, Some(command)) => (
            json!({"type": "tool_use", "id": "toolu_moat1", "name": "Bash", "input": {}}),
            json!({"type": "input_json_delta", "partial_json": json!({"command": command, "description": "run the test command"}).to_string()}),
            "tool_use",
        ),
        (None, None) => text_block(ANSWER),
    };
    if request["stream"] != true {
        let mut full = block.clone();
        if full["type"] == "text" {
            full["text"] = delta["text"].clone();
        } else if let Ok(input) =
            serde_json::from_str::<Value>(delta["partial_json"].as_str().unwrap_or("{}"))
        {
            full["input"] = input;
        }
        return json_response(
            200,
            &json!({"id": "msg_moat", "type": "message", "role": "assistant", "model": model,
                    "content": [full], "stop_reason": stop, "stop_sequence": null,
                    "usage": {"input_tokens": 10, "output_tokens": 5}}),
        );
    }
    sse(&[
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": "msg_moat", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        ),
        (
            Some("content_block_start"),
            json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
        (
            Some("content_block_delta"),
            json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ),
        (
            Some("content_block_stop"),
            json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            Some("message_delta"),
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ),
        (Some("message_stop"), json!({"type": "message_stop"})),
    ])
}

fn text_block(text: &str) -> (Value, Value, &'static str) {
    (
        json!({"type": "text", "text": ""}),
        json!({"type": "text_delta", "text": text}),
        "end_turn",
    )
}

fn openai(request: &Value) -> Response<Full<Bytes>> {
    if request["stream"] != true {
        let events = openai_events(request);
        let done = events.last().cloned().unwrap_or(Value::Null);
        return json_response(200, &done["response"]);
    }
    let events = openai_events(request);
    let named: Vec<(Option<&str>, Value)> = events
        .iter()
        .map(|e| (e["type"].as_str(), e.clone()))
        .collect();
    sse(&named)
}

/// The events of one streamed Responses answer, in order.
fn openai_events(request: &Value) -> Vec<Value> {
    let model = request["model"].as_str().unwrap_or("gpt-fake");
    let message = json!({"type": "message", "id": "msg_moat", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": ANSWER, "annotations": []}]});
    let usage = json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15});
    let response = |status: &str, output: Value| {
        json!({"id": "resp_moat", "object": "response", "created_at": 1_700_000_000, "status": status,
               "model": model, "output": output, "usage": usage})
    };
    vec![
        json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress", json!([]))}),
        json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
            "item": {"type": "message", "id": "msg_moat", "role": "assistant", "status": "in_progress", "content": []}}),
        json!({"type": "response.content_part.added", "sequence_number": 2, "item_id": "msg_moat", "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": []}}),
        json!({"type": "response.output_text.delta", "sequence_number": 3, "item_id": "msg_moat", "output_index": 0, "content_index": 0, "delta": ANSWER}),
        json!({"type": "response.output_text.done", "sequence_number": 4, "item_id": "msg_moat", "output_index": 0, "content_index": 0, "text": ANSWER}),
        json!({"type": "response.content_part.done", "sequence_number": 5, "item_id": "msg_moat", "output_index": 0, "content_index": 0,
            "part": {"type": "output_text", "text": ANSWER, "annotations": []}}),
        json!({"type": "response.output_item.done", "sequence_number": 6, "output_index": 0, "item": message}),
        json!({"type": "response.completed", "sequence_number": 7, "response": response("completed", json!([message]))}),
    ]
}

fn gemini(stream: bool) -> Response<Full<Bytes>> {
    let chunk = json!({
        "candidates": [{"content": {"parts": [{"text": ANSWER}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        "modelVersion": "gemini-fake",
    });
    if stream {
        sse(&[(None, chunk)])
    } else {
        json_response(200, &chunk)
    }
}

/// The OpenAI Responses API over WebSocket (`GET /v1/responses` with an
/// upgrade), as Codex tries first: each `response.create` message gets the
/// events of [`openai`]'s stream as text frames. Other requests are given
/// back.
#[allow(clippy::result_large_err)] // the request is handed straight back
pub(crate) fn accept_websocket(
    seen: &Seen,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Request<hyper::body::Incoming>> {
    use base64::Engine as _;
    let wants = seen
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        && seen
            .path
            .split('?')
            .next()
            .is_some_and(|p| p.ends_with("/responses"));
    let Some(key) = seen.header("sec-websocket-key").filter(|_| wants) else {
        return Err(req);
    };
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let _ = websocket_session(hyper_util::rt::TokioIo::new(upgraded)).await;
        }
    });
    Ok(Response::builder()
        .status(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .expect("response"))
}

async fn websocket_session<IO>(mut io: IO) -> std::io::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        // One frame from the client (masked, as clients must).
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let opcode = head[0] & 0x0f;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut l = [0u8; 2];
            io.read_exact(&mut l).await?;
            len = u64::from(u16::from_be_bytes(l));
        } else if len == 127 {
            let mut l = [0u8; 8];
            io.read_exact(&mut l).await?;
            len = u64::from_be_bytes(l);
        }
        let mut mask = [0u8; 4];
        if head[1] & 0x80 != 0 {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; usize::try_from(len).unwrap_or(0)];
        io.read_exact(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        match opcode {
            0x8 => return Ok(()),
            0x9 => io.write_all(&frame(0xA, &payload)).await?,
            0x1 => {
                let request: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                if request["type"] != "response.create" {
                    continue;
                }
                let mut stream_request = request.clone();
                stream_request["stream"] = Value::Bool(true);
                for data in openai_events(&stream_request) {
                    io.write_all(&frame(0x1, data.to_string().as_bytes()))
                        .await?;
                }
            }
            _ => {}
        }
    }
}

/// An unmasked server frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}
