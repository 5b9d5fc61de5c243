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
use crate::app::App;
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
    app: &App,
    ctx: &RequestContext,
    method: &Method,
    path: &str,
    headers: &mut HeaderMap,
) -> Option<Metered> {
    let meter = app.usage.as_ref()?;
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
        Some(Mode::Sse(SseParser::default()))
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

struct Tap {
    metered: Metered,
    mode: Mode,
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
            metered,
            mode: Mode::None,
            state,
            message_pending,
        }
    }

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

    fn feed(&mut self, bytes: &[u8]) {
        match &mut self.mode {
            Mode::Sse(parser) => {
                let mut seen = Vec::new();
                parser.feed(bytes, &mut |event| {
                    if let Some(s) = count::read_event(event) {
                        seen.push(s);
                    }
                });
                for s in seen {
                    self.apply(s);
                }
            }
            Mode::Json(buffer) => {
                if buffer.len() + bytes.len() <= JSON_CAP {
                    buffer.extend_from_slice(bytes);
                } else {
                    buffer.clear();
                    self.mode = Mode::None;
                }
            }
            Mode::None => {}
        }
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

    /// The body ended (or was given up): the message is counted if it was
    /// not yet, and a JSON answer is read.
    fn finish(&mut self) {
        match std::mem::replace(&mut self.mode, Mode::None) {
            Mode::Sse(mut parser) => parser.finish(),
            Mode::Json(buffer) => self.read_json(&buffer),
            Mode::None => {}
        }
        if self.message_pending {
            self.emit(None, true);
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
        if self.draining {
            tap.finish();
            return;
        }
        // The client left before the end: read on, if a drain is free.
        let meter = tap.metered.meter.clone();
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
