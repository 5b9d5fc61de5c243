//! SPEC section 11's tap: the response body of a chat request, wrapped so
//! that its bytes are read by the meter as they pass to the client —
//! forwarded unchanged, never waited for — and, when the client leaves
//! mid-stream, read on to the end (at most `usage.drain_timeout`, at most
//! [`super::MAX_DRAINS`] at once) so that LibreChat's answer is counted.
//!
//! Only chat routes are tapped, and only when metering is on: every other
//! response keeps its body as it was.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::count::{self, ChatRoute, StreamState};
use super::sse::SseParser;
use super::{Link, Meter, Observation, Who};
use crate::body::{self, ProxyBody};
use crate::context::{ChatRequest, RequestContext};
use crate::error::BoxError;

/// The largest JSON answer (`{streamId, conversationId, …}`) read.
const JSON_CAP: usize = 64 * 1024;

/// A chat request on its way: what the tap needs once the answer comes.
#[derive(Debug)]
pub struct Metered {
    meter: Arc<Meter>,
    who: Who,
    route: ChatRoute,
    chat: Option<ChatRequest>,
}

/// Decides whether this request is metered, before it is forwarded; asks
/// the instance for an uncompressed answer when it is. `None` (and nothing
/// done) when metering is off, the request is not a chat, or nobody is
/// signed in.
pub fn begin(
    meter: Option<&Arc<Meter>>,
    ctx: &RequestContext,
    method: &Method,
    path: &str,
    headers: &mut HeaderMap,
) -> Option<Metered> {
    let meter = meter?;
    let route = count::classify(method, path)?;
    let identity = ctx.identity.as_ref()?;
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    Some(Metered {
        meter: meter.clone(),
        who: Who {
            org: identity.organization().id.clone(),
            user: identity.user_id().to_owned(),
        },
        route,
        chat: ctx.chat.clone(),
    })
}

/// Wraps the answer's body with the tap. A chat POST that LibreChat did not
/// accept (not 2xx) counts nothing.
pub fn wrap(metered: Option<Metered>, response: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(metered) = metered else {
        return response;
    };
    if !response.status().is_success() {
        return response;
    }
    let headers = response.headers();
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mode = if encoded {
        None
    } else if content_type.starts_with("text/event-stream") {
        Some(Mode::Sse(SseParser::default().keeping(count::may_matter)))
    } else if content_type.starts_with("application/json") && metered.route == ChatRoute::Post {
        Some(Mode::Json(Vec::new()))
    } else {
        None
    };
    let mut tap = Tap::new(metered);
    let Some(mode) = mode else {
        // Nothing to read: a POST still counts as a message.
        tap.finish();
        return response;
    };
    tap.mode = mode;
    response.map(|inner| {
        TapBody {
            inner,
            tap: Some(Box::new(tap)),
            draining: false,
        }
        .boxed_unsync()
    })
}

enum Mode {
    None,
    Sse(SseParser),
    Json(Vec<u8>),
}

/// What a tapped body reads with (`mode`) and what it has counted.
struct Tap {
    mode: Mode,
    count: Count,
}

/// One chat request's count so far; apart from [`Mode`] so that the
/// parser can hand each event straight to it.
struct Count {
    metered: Metered,
    state: StreamState,
    /// The POST's message is still to be counted.
    message_pending: bool,
}

impl Tap {
    fn new(metered: Metered) -> Tap {
        let mut state = StreamState::default();
        if let Some(chat) = &metered.chat {
            state.conversation.clone_from(&chat.conversation_id);
            state.endpoint.clone_from(&chat.endpoint);
            state.model.clone_from(&chat.model);
        }
        let message_pending = metered.route == ChatRoute::Post;
        Tap {
            mode: Mode::None,
            count: Count {
                metered,
                state,
                message_pending,
            },
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        let Tap { mode, count } = self;
        match mode {
            Mode::Sse(parser) => parser.feed(bytes, &mut |event| {
                if let Some(seen) = count::read_event(event) {
                    count.apply(seen);
                }
            }),
            Mode::Json(buffer) => {
                if buffer.len() + bytes.len() <= JSON_CAP {
                    buffer.extend_from_slice(bytes);
                } else {
                    buffer.clear();
                    *mode = Mode::None;
                }
            }
            Mode::None => {}
        }
    }

    /// The body ended (or was given up): the message is counted if it was
    /// not yet, and a JSON answer is read.
    fn finish(&mut self) {
        match std::mem::replace(&mut self.mode, Mode::None) {
            Mode::Sse(mut parser) => parser.finish(),
            Mode::Json(buffer) => self.count.read_json(&buffer),
            Mode::None => {}
        }
        if self.count.message_pending {
            self.count.emit(None, true);
        }
    }
}

impl Count {
    fn stream_id(&self) -> Option<String> {
        match &self.metered.route {
            ChatRoute::Stream { stream_id } => Some(stream_id.clone()),
            ChatRoute::Post => None,
        }
    }

    fn emit(&mut self, tokens: Option<count::Tokens>, with_message: bool) {
        let messages = u64::from(with_message && std::mem::take(&mut self.message_pending));
        self.metered.meter.observe(Observation {
            who: self.metered.who.clone(),
            conversation: self.state.conversation.clone(),
            stream_id: self.stream_id(),
            endpoint: self.state.endpoint.clone(),
            model: self.state.model.clone(),
            messages,
            tokens,
        });
    }

    fn apply(&mut self, seen: count::Seen) {
        let is_final = matches!(seen, count::Seen::Final { .. });
        if matches!(seen, count::Seen::Rejected(_)) {
            self.metered
                .meter
                .stats
                .events_rejected
                .fetch_add(1, Ordering::Relaxed);
            if let count::Seen::Rejected(why) = &seen {
                tracing::warn!(reason = why, "usage: event rejected");
            }
        }
        let counted = self.state.apply(seen);
        if is_final {
            // The final event names the conversation: the message (and any
            // fallback tokens) go with it.
            self.emit(counted.map(|c| c.tokens), true);
        } else if let Some(count) = counted {
            self.emit(Some(count.tokens), false);
        }
    }

    /// `{streamId, conversationId, status}`: a resumed generation is the
    /// same chat request again, not a new message.
    fn read_json(&mut self, buffer: &[u8]) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(buffer) else {
            return;
        };
        let text = |name: &str| {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        if let Some(conversation) = text("conversationId") {
            self.state.conversation = Some(conversation);
        }
        if text("status").as_deref() == Some("resumed") {
            self.message_pending = false;
        }
        if let Some(stream_id) = text("streamId") {
            self.metered.meter.link(
                stream_id,
                Link {
                    conversation: self.state.conversation.clone(),
                    endpoint: self.state.endpoint.clone(),
                    model: self.state.model.clone(),
                },
            );
        }
    }
}

/// The tapped body. Frames pass through as they come; the tap reads them
/// on the way.
struct TapBody {
    inner: ProxyBody,
    tap: Option<Box<Tap>>,
    /// Already read on after its client left: dropping it ends the count.
    draining: bool,
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => {
                // A body that says it has ended may not be polled again: its
                // count is finished when it is dropped (see `Drop`).
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), frame.data_ref()) {
                    tap.feed(data);
                }
            }
            Poll::Ready(Some(Err(_)) | None) => {
                if let Some(mut tap) = this.tap.take() {
                    tap.finish();
                }
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TapBody {
    fn drop(&mut self) {
        let Some(mut tap) = self.tap.take() else {
            return;
        };
        if self.draining || self.inner.is_end_stream() {
            tap.finish();
            return;
        }
        // The client left before the end: read on, if a drain is free.
        let meter = tap.count.metered.meter.clone();
        let Ok(permit) = meter.drains.clone().try_acquire_owned() else {
            meter.stats.drains_refused.fetch_add(1, Ordering::Relaxed);
            tap.finish();
            return;
        };
        let body = TapBody {
            inner: std::mem::replace(&mut self.inner, body::empty()),
            tap: Some(tap),
            draining: true,
        };
        let timeout = meter.drain_timeout;
        let runtime =
            tokio::runtime::Handle::try_current().unwrap_or_else(|_| meter.runtime.clone());
        meter.stats.drains_running.fetch_add(1, Ordering::Relaxed);
        let stats = meter.stats.clone();
        runtime.spawn(async move {
            let mut body = body;
            let read_on = async {
                while let Some(frame) = body.frame().await {
                    if frame.is_err() {
                        break;
                    }
                }
            };
            if tokio::time::timeout(timeout, read_on).await.is_err() {
                tracing::warn!(?timeout, "usage: a stream whose client left ran past usage.drain_timeout; counted as far as read");
            }
            drop(body);
            drop(permit);
            stats.drains_running.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use http_body_util::StreamBody;

    use super::*;
    use crate::config::{Secret, UsageConfig};
    use crate::usage::aggregate::Record;
    use crate::usage::spool::Spool;

    /// A meter whose Postgres never answers: counts stay in its spool,
    /// where the test reads them.
    fn meter(spool: &std::path::Path) -> Arc<Meter> {
        meter_draining_for(spool, Duration::from_secs(60))
    }

    fn meter_draining_for(spool: &std::path::Path, drain_timeout: Duration) -> Arc<Meter> {
        let config = UsageConfig {
            postgres_url: Some(Secret::new("postgres://127.0.0.1:1/none?connect_timeout=1")),
            flush_interval: Duration::from_secs(3600),
            spool_dir: spool.to_owned(),
            drain_timeout,
            prices: Vec::new(),
        };
        let store: Arc<dyn crate::store::Store> = Arc::new(crate::store::MemoryStore::new());
        Meter::start(&config, store).unwrap().unwrap()
    }

    fn metered(meter: &Arc<Meter>, route: ChatRoute) -> Metered {
        Metered {
            meter: meter.clone(),
            who: Who {
                org: "6f1c1a52-1f2e-4a47-9c1b-2b1e1d6c0a01".into(),
                user: "0b5e8a3e-52c8-4c1e-8d6c-6d2f1f0e9b02".into(),
            },
            route,
            chat: None,
        }
    }

    fn sse_response(body: ProxyBody) -> Response<ProxyBody> {
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
    }

    async fn spooled(dir: &std::path::Path, want: usize) -> Vec<Record> {
        for _ in 0..500 {
            let spool = Spool::open(dir, u64::MAX).unwrap();
            let mut records = Vec::new();
            for segment in spool.pending() {
                records.extend(spool.read(&segment).unwrap().0);
            }
            if records.len() >= want {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {want} records were spooled");
    }

    /// The recorded stream with bad input mixed in: a non-JSON `data:`
    /// line, a negative count, a comment and `\r\n` endings.
    fn stream_with_bad_input() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"data: not json, mentions on_token_usage and \"final\"\r\n\r\n");
        bytes.extend_from_slice(b": a comment\n\nevent: message\ndata: {\"event\":\"on_token_usage\",\"data\":{\"input_tokens\":-40,\"output_tokens\":5,\"runId\":\"r\",\"seq\":9}}\n\n");
        bytes.extend_from_slice(count::RECORDED.as_bytes());
        bytes
    }

    #[tokio::test]
    async fn the_client_gets_every_byte_unchanged_and_the_stream_is_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let meter = meter(dir.path());
        let bytes = stream_with_bad_input();
        let pieces: Vec<Result<Frame<Bytes>, BoxError>> = bytes
            .chunks(7)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(pieces)).boxed_unsync();
        let response = wrap(Some(metered(&meter, ChatRoute::Post)), sse_response(body));
        let received = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(received, bytes, "the client receives the stream unchanged");

        let records = spooled(dir.path(), 3).await;
        let tokens: u64 = records.iter().map(|r| r.tokens).sum();
        let messages: u64 = records.iter().map(|r| r.messages).sum();
        let cost: i64 = records.iter().map(|r| r.cost_nanos).sum();
        assert_eq!((tokens, messages, cost), (812 + 95 + 40 + 8, 1, 3_000_000));
        assert!(records.iter().all(|r| r.conv.as_deref() == Some("conv-1")));
        assert!(records
            .iter()
            .any(|r| r.endpoint.as_deref() == Some("openAI")));
        assert_eq!(meter.stats.events_rejected.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_stream_whose_client_left_is_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let meter = meter(dir.path());
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let frames = tokio_stream_of(receiver).map(|b| Ok::<_, BoxError>(Frame::data(b)));
        let body = StreamBody::new(frames).boxed_unsync();
        let response = wrap(
            Some(metered(
                &meter,
                ChatRoute::Stream {
                    stream_id: "conv-1".into(),
                },
            )),
            sse_response(body),
        );
        let mut body = response.into_body();
        let (first, rest) = count::RECORDED.as_bytes().split_at(100);
        sender.send(Bytes::copy_from_slice(first)).unwrap();
        body.frame().await.unwrap().unwrap();
        drop(body); // the client leaves
        assert_eq!(meter.stats.drains_running.load(Ordering::Relaxed), 1);
        sender.send(Bytes::copy_from_slice(rest)).unwrap();
        drop(sender);

        let records = spooled(dir.path(), 3).await;
        let tokens: u64 = records.iter().map(|r| r.tokens).sum();
        assert_eq!(tokens, 812 + 95 + 40 + 8);
        assert_eq!(
            records.iter().map(|r| r.messages).sum::<u64>(),
            0,
            "a GET is no new message"
        );
        drains_end(&meter).await;
    }

    #[tokio::test]
    async fn a_resumable_chat_s_json_answer_is_one_message_unless_it_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let meter = meter(dir.path());
        for status in ["resumed", "started"] {
            let json = format!(
                r#"{{"streamId":"c-{status}","conversationId":"c-{status}","status":"{status}"}}"#
            );
            let mut response = Response::new(body::full(json.clone()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            let response = wrap(Some(metered(&meter, ChatRoute::Post)), response);
            let received = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(received, json.as_bytes());
        }
        assert_eq!(
            meter.stats.drains_running.load(Ordering::Relaxed)
                + meter.stats.drains_refused.load(Ordering::Relaxed),
            0,
            "a body read to its end needs no drain"
        );
        let records = spooled(dir.path(), 1).await;
        assert_eq!(records.len(), 1, "{records:?}");
        assert_eq!(records[0].messages, 1);
        assert_eq!(records[0].conv.as_deref(), Some("c-started"));
    }

    /// The first part of the recorded stream: `created` and the first
    /// `on_token_usage` event (812 + 95 tokens), nothing after.
    fn first_part() -> Bytes {
        let recorded = count::RECORDED.as_bytes();
        let end = memchr::memmem::find(recorded, b"retry: 1000").unwrap();
        Bytes::copy_from_slice(&recorded[..end])
    }

    /// An upstream stream that sends `first` and then stays open.
    fn stalled_after(first: Bytes) -> (tokio::sync::mpsc::UnboundedSender<Bytes>, ProxyBody) {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        sender.send(first).unwrap();
        let frames = tokio_stream_of(receiver).map(|b| Ok::<_, BoxError>(Frame::data(b)));
        (sender, StreamBody::new(frames).boxed_unsync())
    }

    async fn drains_end(meter: &Meter) {
        for _ in 0..500 {
            if meter.stats.drains_running.load(Ordering::Relaxed) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the drain never ended");
    }

    #[tokio::test]
    async fn a_drain_ends_at_the_drain_timeout_with_what_it_read_counted() {
        let dir = tempfile::tempdir().unwrap();
        let meter = meter_draining_for(dir.path(), Duration::from_millis(200));
        let (_upstream_stays_open, body) = stalled_after(first_part());
        let response = wrap(Some(metered(&meter, ChatRoute::Post)), sse_response(body));
        drop(response); // the client leaves before reading anything
        assert_eq!(meter.stats.drains_running.load(Ordering::Relaxed), 1);
        drains_end(&meter).await;
        let records = spooled(dir.path(), 2).await;
        assert_eq!(records.iter().map(|r| r.tokens).sum::<u64>(), 812 + 95);
        assert_eq!(
            records.iter().map(|r| r.messages).sum::<u64>(),
            1,
            "the POST is a message"
        );
    }

    #[tokio::test]
    async fn past_the_drain_cap_a_stream_is_counted_as_far_as_it_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let meter = meter(dir.path());
        let _all_drains_busy = meter
            .drains
            .clone()
            .acquire_many_owned(crate::usage::MAX_DRAINS as u32)
            .await
            .unwrap();
        let (_upstream_stays_open, body) = stalled_after(first_part());
        let response = wrap(Some(metered(&meter, ChatRoute::Post)), sse_response(body));
        let mut body = response.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(meter.stats.drains_refused.load(Ordering::Relaxed), 1);
        assert_eq!(meter.stats.drains_running.load(Ordering::Relaxed), 0);
        let records = spooled(dir.path(), 2).await;
        assert_eq!(records.iter().map(|r| r.tokens).sum::<u64>(), 812 + 95);
        assert_eq!(records.iter().map(|r| r.messages).sum::<u64>(), 1);
    }

    fn tokio_stream_of(
        mut receiver: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    ) -> impl futures_util::Stream<Item = Bytes> {
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }
}
