//! What metering costs per byte of a LibreChat stream (SPEC section 11):
//! the incremental SSE parser alone, and the parser with the counting rules
//! (`count::read_event` on every event, JSON parsing only for the few that
//! can carry usage), over a recorded-shape LibreChat 0.8.7 agents stream of
//! about 650 KiB fed in 16 KiB pieces, as hyper hands them over.
//!
//! `cargo bench --bench sse`; criterion reports MB/s (throughput in bytes).

use chatgate::usage::count::{may_matter, read_event, StreamState};
use chatgate::usage::sse::SseParser;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

/// created, then per model call 200 content deltas, a run step and its
/// `on_token_usage`, then the final event and a reconcile frame.
fn recorded_stream() -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |value: serde_json::Value| {
        out.extend_from_slice(format!("event: message\ndata: {value}\n\n").as_bytes());
    };
    push(
        json!({"created": true, "message": {"messageId": "u1", "conversationId": "c0ffee00-0000-4000-8000-000000000001", "text": "Explain SSE"}, "streamId": "c0ffee00-0000-4000-8000-000000000001"}),
    );
    for call in 0..25 {
        push(
            json!({"event": "on_run_step", "data": {"id": format!("step_{call}"), "runId": "run-1", "type": "message_creation"}}),
        );
        for word in 0..200 {
            push(
                json!({"event": "on_message_delta", "data": {"id": format!("step_{call}"), "delta": {"content": [{"type": "text", "text": format!("token{word} ")}]}}}),
            );
        }
        push(
            json!({"event": "on_token_usage", "data": {"input_tokens": 1200 + call, "output_tokens": 200, "total_tokens": 1400 + call, "input_token_details": {"cache_creation": 0, "cache_read": 0}, "model": "gpt-4o", "provider": "openAI", "runId": "run-1", "seq": call}}),
        );
    }
    push(
        json!({"final": true, "conversation": {"conversationId": "c0ffee00-0000-4000-8000-000000000001", "endpoint": "openAI", "model": "gpt-4o"}, "requestMessage": {"tokenCount": 12}, "responseMessage": {"messageId": "a1", "model": "gpt-4o", "tokenCount": 5000, "metadata": {"usage": {"input": 30300, "output": 5000}}}}),
    );
    push(json!({"final": true, "reconcile": true}));
    out
}

fn parse(c: &mut Criterion) {
    let stream = recorded_stream();
    let mut group = c.benchmark_group("sse");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("parser_only", |b| {
        b.iter(|| {
            let mut parser = SseParser::default();
            let mut events = 0u64;
            for piece in stream.chunks(16 * 1024) {
                parser.feed(piece, &mut |_| events += 1);
            }
            events
        })
    });
    group.bench_function("parser_and_counting", |b| {
        b.iter(|| {
            let mut parser = SseParser::default();
            let mut state = StreamState::default();
            let mut tokens = 0u64;
            for piece in stream.chunks(16 * 1024) {
                parser.feed(piece, &mut |event| {
                    if let Some(count) = read_event(event).and_then(|s| state.apply(s)) {
                        tokens += count.tokens.input + count.tokens.output;
                    }
                });
            }
            assert_eq!(tokens, 25 * 1400 + 300);
            tokens
        })
    });
    // What the relay hands over: one chunk per event (LibreChat flushes
    // each one), with the parser given the meter's first-line filter as the
    // tap gives it.
    let events: Vec<&[u8]> = stream
        .split_inclusive(|&b| b == b'\n')
        .collect::<Vec<_>>()
        .chunks(3)
        .map(|lines| {
            let start = lines[0].as_ptr() as usize - stream.as_ptr() as usize;
            let len: usize = lines.iter().map(|l| l.len()).sum();
            &stream[start..start + len]
        })
        .collect();
    group.bench_function("tap_one_chunk_per_event", |b| {
        b.iter(|| {
            let mut parser = SseParser::default().keeping(may_matter);
            let mut state = StreamState::default();
            let mut tokens = 0u64;
            for event in &events {
                parser.feed(event, &mut |event| {
                    if let Some(count) = read_event(event).and_then(|s| state.apply(s)) {
                        tokens += count.tokens.input + count.tokens.output;
                    }
                });
            }
            assert_eq!(tokens, 25 * 1400 + 300);
            tokens
        })
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
