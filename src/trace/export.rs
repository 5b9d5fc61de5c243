//! Spans to an OpenTelemetry collector over OTLP/HTTP with the JSON
//! encoding (`POST …/v1/traces`), when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. One span per sampled
//! request, chatgate's part of it, written when the response has been sent.
//! Unset, nothing is started and a request pays one relaxed load.
//!
//! Spans wait in a bounded queue and a thread of their own sends them in
//! batches; when the collector is slow or away, spans past the queue are
//! dropped rather than making requests wait.

use std::fmt::Write as _;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Method;

/// Spans queued beyond this are dropped.
const QUEUE: usize = 4096;
/// A batch goes out when this many spans wait…
const BATCH: usize = 512;
/// …or this long after its first span.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

static EXPORTER: OnceLock<SyncSender<Span>> = OnceLock::new();

/// One finished request as a span.
#[derive(Debug)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// The caller's span, when the request came with a `traceparent`.
    pub parent_span_id: Option<String>,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub request_id: String,
    pub upstream: Option<String>,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// Starts the exporter when the environment names a collector; the
/// endpoint it sends to, if any.
pub fn init_from_env() -> Option<String> {
    let endpoint = match std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let base = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
            if base.is_empty() {
                return None;
            }
            format!("{}/v1/traces", base.trim_end_matches('/'))
        }
    };
    if let Ok(protocol) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
        if protocol != "http/json" {
            tracing::warn!(%protocol, "chatgate exports OTLP over HTTP with JSON only; point the endpoint at the collector's OTLP/HTTP port (4318)");
        }
    }
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "chatgate".to_owned());
    let (sender, receiver) = mpsc::sync_channel(QUEUE);
    if EXPORTER.set(sender).is_err() {
        return None;
    }
    let url = endpoint.clone();
    let started = std::thread::Builder::new()
        .name("chatgate-otlp".to_owned())
        .spawn(move || send_batches(&receiver, &url, &service));
    if let Err(error) = started {
        tracing::warn!(%error, "the OTLP exporter could not start");
        return None;
    }
    Some(endpoint)
}

/// Whether spans are exported (a collector was named at start-up).
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Queues a span; dropped when the queue is full.
pub fn record(span: Span) {
    if let Some(sender) = EXPORTER.get() {
        let _ = sender.try_send(span);
    }
}

fn send_batches(receiver: &Receiver<Span>, url: &str, service: &str) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let client = crate::http_client::build();
    let mut failing = false;
    loop {
        let Ok(first) = receiver.recv() else { return };
        let mut batch = vec![first];
        let deadline = Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(span) => batch.push(span),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let body = Bytes::from(encode(service, &batch));
        let sent = runtime.block_on(crate::http_client::send(
            &client,
            Method::POST,
            url,
            &[("content-type", "application/json")],
            body,
            SEND_TIMEOUT,
        ));
        match sent {
            Ok(answer) if answer.status.is_success() => {
                if failing {
                    tracing::info!("OTLP collector accepts spans again");
                }
                failing = false;
            }
            Ok(answer) => {
                if !failing {
                    tracing::warn!(status = %answer.status, spans = batch.len(), "OTLP collector refused spans");
                }
                failing = true;
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, spans = batch.len(), "OTLP collector not reached: spans dropped");
                }
                failing = true;
            }
        }
    }
}

/// `ExportTraceServiceRequest` in OTLP's JSON encoding (ids as hex,
/// times as decimal strings of Unix nanoseconds).
pub fn encode(service: &str, spans: &[Span]) -> String {
    let spans: Vec<serde_json::Value> = spans.iter().map(span_json).collect();
    serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [attribute("service.name", service)]},
            "scopeSpans": [{
                "scope": {"name": "chatgate", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    })
    .to_string()
}

fn span_json(span: &Span) -> serde_json::Value {
    let mut attributes = vec![
        attribute("http.request.method", span.method.as_str()),
        attribute("url.path", &span.path),
        serde_json::json!({"key": "http.response.status_code", "value": {"intValue": span.status.to_string()}}),
        attribute("chatgate.request_id", &span.request_id),
    ];
    if let Some(upstream) = &span.upstream {
        attributes.push(attribute("chatgate.upstream", upstream));
    }
    let mut value = serde_json::json!({
        "traceId": span.trace_id,
        "spanId": span.span_id,
        "name": span.method.as_str(),
        "kind": 2, // SPAN_KIND_SERVER
        "startTimeUnixNano": nanos(span.start),
        "endTimeUnixNano": nanos(span.end),
        "attributes": attributes,
        // STATUS_CODE_ERROR for a 5xx, else UNSET.
        "status": {"code": if span.status >= 500 { 2 } else { 0 }},
    });
    if let Some(parent) = &span.parent_span_id {
        value["parentSpanId"] = parent.as_str().into();
    }
    value
}

fn attribute(key: &str, value: &str) -> serde_json::Value {
    serde_json::json!({"key": key, "value": {"stringValue": value}})
}

fn nanos(at: SystemTime) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{}",
        at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_is_encoded_as_otlp_json() {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001);
        let span = Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            span_id: "1111111111111111".to_owned(),
            parent_span_id: Some("00f067aa0ba902b7".to_owned()),
            method: Method::GET,
            path: "/api/convos".to_owned(),
            status: 502,
            request_id: "r-1".to_owned(),
            upstream: None,
            start,
            end: start + Duration::from_millis(3),
        };
        let json: serde_json::Value = serde_json::from_str(&encode("chatgate", &[span])).unwrap();
        let span = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(span["startTimeUnixNano"], "1700000000000000001");
        assert_eq!(span["endTimeUnixNano"], "1700000000003000001");
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(
            json["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "chatgate"
        );
    }
}
