//! What the organization policy (SPEC section 10) costs a chat request:
//! reading a typical chat body (1 KiB, and 16 KiB with an `addedConvo`)
//! and deciding on it under a restrictive policy, with and without custom
//! instructions spliced in; the route check every other request pays; and
//! filtering `GET /api/models`.
//!
//! `cargo bench --bench policy`.

use chatgate::policy::chat_body::ChatBody;
use chatgate::policy::config::LibreChatConfig;
use chatgate::policy::{decide, route, rules};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::Method;
use serde_json::{json, Value};

fn restrictive() -> LibreChatConfig {
    LibreChatConfig::from_json(Some(&json!({
        "allowed_endpoints": ["openAI", "anthropic", "agents"],
        "enabled_models": ["gpt-4o", "gpt-4", "claude-3-5", "o1*"],
        "mcp_servers": ["github"],
        "knowledge_bases": ["kb-1"],
        "custom_instructions": "Answer in the user's language. Cite internal documents by title.",
        "features": {"code_interpreter": false, "image_generation": false}
    })))
}

/// A chat body shaped as LibreChat 0.8's client posts it, padded with
/// message text to about `size` bytes.
fn chat_body(size: usize, added_convo: bool) -> Vec<u8> {
    let mut body = json!({
        "text": "",
        "sender": "User",
        "clientTimestamp": "2026-12-01T10:00:00.000Z",
        "isCreatedByUser": true,
        "parentMessageId": "00000000-0000-0000-0000-000000000000",
        "messageId": "5a0f1c1e-0000-4000-8000-000000000001",
        "error": false,
        "endpoint": "openAI",
        "model": "gpt-4o",
        "promptPrefix": "Be brief.",
        "temperature": 0.7,
        "resendFiles": true,
        "imageDetail": "auto",
        "isTemporary": false,
        "isRegenerate": false,
        "isContinued": false,
        "ephemeralAgent": {"mcp": ["github"], "web_search": false, "file_search": false, "execute_code": false},
        "timezone": "UTC",
        "clientRequestId": "c0ffee00-0000-4000-8000-000000000001"
    });
    if added_convo {
        body["addedConvo"] = json!({
            "conversationId": "new", "title": "", "endpoint": "anthropic",
            "model": "claude-3-5-sonnet-20241022", "promptPrefix": "Second opinion.",
            "temperature": 1, "maxOutputTokens": 8192
        });
    }
    let base = body.to_string().len();
    body["text"] = Value::String("lorem ipsum ".repeat(size.saturating_sub(base) / 12));
    body.to_string().into_bytes()
}

fn decide_chat(config: &LibreChatConfig, bytes: &[u8]) -> usize {
    let chat = ChatBody::parse(bytes).expect("a valid body");
    decide::check_chat(config, &chat, None, false).expect("allowed");
    chat.with_instructions(
        bytes,
        config.custom_instructions.as_deref().unwrap_or(""),
        decide::takes_instructions,
    )
    .map_or(0, |b| b.len())
}

fn bench(c: &mut Criterion) {
    let config = restrictive();
    let no_instructions = LibreChatConfig {
        custom_instructions: None,
        ..restrictive()
    };
    for (name, bytes) in [
        ("1KiB", chat_body(1024, false)),
        ("16KiB_addedConvo", chat_body(16 * 1024, true)),
    ] {
        c.bench_function(&format!("chat_check_{name}"), |b| {
            b.iter(|| decide_chat(&no_instructions, std::hint::black_box(&bytes)))
        });
        c.bench_function(&format!("chat_check_and_instructions_{name}"), |b| {
            b.iter(|| decide_chat(&config, std::hint::black_box(&bytes)))
        });
    }
    c.bench_function("route_of_another_request", |b| {
        b.iter(|| {
            route::classify(
                &Method::GET,
                std::hint::black_box("/api/convos?pageSize=25"),
            )
        })
    });
    c.bench_function("route_of_a_page_asset", |b| {
        b.iter(|| route::classify(&Method::GET, std::hint::black_box("/assets/index-Bx3f.js")))
    });
    let models = json!({
        "openAI": ["gpt-4o", "gpt-4o-mini", "gpt-4-turbo", "gpt-4", "gpt-3.5-turbo", "o1", "o1-mini", "o3-mini"],
        "anthropic": ["claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022", "claude-3-opus-20240229"],
        "google": ["gemini-1.5-pro", "gemini-1.5-flash", "gemini-2.0-flash"],
        "agents": [], "assistants": ["gpt-4o"]
    });
    let text = models.to_string();
    c.bench_function("filter_models_list", |b| {
        b.iter_batched(
            || text.clone(),
            |text| {
                let mut list: Value = serde_json::from_str(&text).unwrap();
                rules::filter_models(&config, &mut list);
                list.to_string()
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
