//! The stand-in LibreChat's chat routes (REFERENCE "Chat requests and
//! streams"): `POST /api/agents/chat/<endpoint>` answers with the SSE itself
//! (LibreChat ≤ 0.8.1) or with `{streamId, conversationId, status}` and the
//! stream at `GET /api/agents/chat/stream/<streamId>` (≥ 0.8.2), which
//! replays the whole generation to every reader (a resumed stream replays
//! what it missed). The generation runs whether or not anyone reads it.
//!
//! Only requests that opt in (header [`OPT_IN`]) are answered here; other
//! chat POSTs get the stand-in's echo, as before.
//!
//! The test decides what is generated: the POST's JSON body carries an
//! `x_plan` ([`Plan`]) next to LibreChat's own fields, so the test knows
//! exactly which tokens and costs were emitted.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

type ResBody = UnsyncBoxBody<Bytes, io::Error>;

/// One model call's usage, as an `on_token_usage` event reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub model: String,
    /// USD, when LibreChat sends a cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// What the stand-in generates for one chat request.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Plan {
    /// `true`: the POST answers JSON and the stream is a separate GET.
    pub resumable: bool,
    /// `on_token_usage` events (LibreChat ≥ 0.8.7); empty = an older one.
    pub usage: Vec<Usage>,
    /// The final event's `responseMessage.metadata.usage` `(input, output)`.
    pub final_usage: Option<(u64, u64)>,
    /// Content deltas between usage events.
    pub deltas: usize,
    /// Pause between events, in milliseconds.
    pub delay_ms: u64,
}

/// A chat request's JSON body, as LibreChat's client sends it, with a plan.
pub fn chat_body(endpoint: &str, model: &str, conversation: Option<&str>, plan: &Plan) -> String {
    json!({
        "text": "Hello there",
        "endpoint": endpoint,
        "model": model,
        "conversationId": conversation,
        "parentMessageId": "00000000-0000-0000-0000-000000000000",
        "messageId": uuid::Uuid::new_v4().to_string(),
        "x_plan": plan,
    })
    .to_string()
}

struct Generation {
    events: Vec<Bytes>,
    produced: watch::Sender<usize>,
}

fn generations() -> &'static Mutex<HashMap<String, Arc<Generation>>> {
    static MAP: OnceLock<Mutex<HashMap<String, Arc<Generation>>>> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// The header a test's chat POST carries to be answered here; without it
/// the instance echoes the request as for any other path (what tests of
/// the request rewriting read).
pub const OPT_IN: &str = "x-stand-in-chat";

/// Whether the request is for the chat routes served here: a chat POST
/// with [`OPT_IN`], or the stream of a generation started here.
pub fn is_chat(req: &Request<Incoming>) -> bool {
    let path = req.uri().path();
    if let Some(stream_id) = path.strip_prefix("/api/agents/chat/stream/") {
        return generations().lock().unwrap().contains_key(stream_id);
    }
    req.method() == http::Method::POST
        && path.starts_with("/api/agents/chat")
        && req.headers().contains_key(OPT_IN)
}

pub async fn handle(req: Request<Incoming>) -> Response<ResBody> {
    let path = req.uri().path().to_owned();
    if let Some(stream_id) = path.strip_prefix("/api/agents/chat/stream/") {
        let found = generations().lock().unwrap().get(stream_id).cloned();
        return match found {
            Some(generation) => sse(generation),
            None => json_response(StatusCode::NOT_FOUND, json!({"error": "stream not found"})),
        };
    }
    if req.method() != http::Method::POST {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "not found"}));
    }
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return json_response(StatusCode::BAD_REQUEST, json!({})),
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return json_response(StatusCode::BAD_REQUEST, json!({"error": "not JSON"}));
    };
    let plan: Plan = serde_json::from_value(body["x_plan"].clone()).unwrap_or_default();
    let conversation = body["conversationId"]
        .as_str()
        .filter(|c| *c != "new")
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let endpoint = body["endpoint"].as_str().unwrap_or("openAI").to_owned();
    let model = body["model"].as_str().unwrap_or("gpt-4o").to_owned();
    let generation = start(&plan, &conversation, &endpoint, &model);
    if plan.resumable {
        generations()
            .lock()
            .unwrap()
            .insert(conversation.clone(), generation);
        return json_response(
            StatusCode::OK,
            json!({
                "streamId": conversation,
                "conversationId": conversation,
                "generationCreatedAt": 1764547200000u64,
                "status": "started",
            }),
        );
    }
    sse(generation)
}

fn frame(value: Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {value}\n\n"))
}

/// Builds the generation's events and starts producing them.
fn start(plan: &Plan, conversation: &str, endpoint: &str, model: &str) -> Arc<Generation> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let user_message = uuid::Uuid::new_v4().to_string();
    let response_message = uuid::Uuid::new_v4().to_string();
    let mut events = vec![frame(json!({
        "created": true,
        "message": {"messageId": user_message, "conversationId": conversation, "text": "Hello there"},
        "streamId": conversation,
    }))];
    let delta = |n: usize| {
        frame(json!({
            "event": "on_message_delta",
            "data": {"id": "step_1", "delta": {"content": [{"type": "text", "text": format!("word{n} ")}]}},
        }))
    };
    let mut n = 0;
    let mut deltas = |events: &mut Vec<Bytes>| {
        for _ in 0..plan.deltas {
            events.push(delta(n));
            n += 1;
        }
    };
    deltas(&mut events);
    for (seq, usage) in plan.usage.iter().enumerate() {
        let mut data = json!({
            "input_tokens": usage.input,
            "output_tokens": usage.output,
            "total_tokens": usage.input + usage.output,
            "input_token_details": {"cache_creation": 0, "cache_read": 0},
            "model": usage.model,
            "provider": "openAI",
            "runId": run_id,
            "seq": seq,
        });
        if let Some(cost) = usage.cost {
            data["cost"] = json!(cost);
        }
        events.push(frame(json!({"event": "on_token_usage", "data": data})));
        events.push(Bytes::from_static(b": ping\n\n"));
        deltas(&mut events);
    }
    let mut response = json!({
        "messageId": response_message,
        "conversationId": conversation,
        "model": model,
        "tokenCount": 42,
        "text": "word0 word1",
    });
    if let Some((input, output)) = plan.final_usage {
        response["metadata"] = json!({"usage": {"input": input, "output": output}});
    }
    events.push(frame(json!({
        "final": true,
        "conversation": {"conversationId": conversation, "endpoint": endpoint, "model": model, "title": "Hello"},
        "requestMessage": {"messageId": user_message, "conversationId": conversation, "tokenCount": 7},
        "responseMessage": response,
    })));
    events.push(frame(json!({"final": true, "reconcile": true})));

    let generation = Arc::new(Generation {
        events,
        produced: watch::Sender::new(0),
    });
    let producer = generation.clone();
    let delay = Duration::from_millis(plan.delay_ms);
    tokio::spawn(async move {
        for n in 1..=producer.events.len() {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            producer.produced.send_replace(n);
        }
    });
    generation
}

/// The generation from its first event, following it as it is produced.
fn sse(generation: Arc<Generation>) -> Response<ResBody> {
    let produced = generation.produced.subscribe();
    let events = stream::unfold(
        (generation, produced, 0usize),
        |(g, mut rx, i)| async move {
            if i >= g.events.len() {
                return None;
            }
            rx.wait_for(|n| *n > i).await.ok()?;
            let event = g.events[i].clone();
            Some((Ok::<_, io::Error>(Frame::data(event)), (g, rx, i + 1)))
        },
    );
    let mut res = Response::new(BodyExt::boxed_unsync(StreamBody::new(events)));
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

fn json_response(status: StatusCode, value: Value) -> Response<ResBody> {
    let body = Full::new(Bytes::from(value.to_string()))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res
}
