//! The access log: one structured line per request (`logging::access`). It
//! names the path but never the query (a hand-off `token` may be there), and
//! never a header value (cookies and `Authorization` live there).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{BoxError, ProxyBody};
use crate::trace::export::{self, Span};

use crate::context::{RequestContext, RequestLine};
use crate::error::ProxyError;
use crate::logging::{self, AccessLine};

/// Hands the response out with its access line attached: the line is
/// written when the body has been sent (or the client left), so it carries
/// the bytes sent and the whole duration. Nothing is attached while access
/// lines are off.
pub fn when_sent(
    ctx: RequestContext,
    line: RequestLine,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let exporting = export::enabled() && ctx.trace.sampled();
    if !(logging::access_enabled() || exporting) {
        return response;
    }
    let status = response.status().as_u16();
    response.map(|body| {
        Logged {
            body,
            record: Some(Record {
                ctx,
                line,
                status,
                bytes_out: 0,
                stream_error: None,
            }),
        }
        .boxed_unsync()
    })
}

/// A response body that counts what it passes on.
struct Logged {
    body: ProxyBody,
    /// Taken when the body is dropped (see [`deferred`]).
    record: Option<Record>,
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            deferred::push(Done {
                record,
                ended: Instant::now(),
                at: SystemTime::now(),
            });
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(record) = self.record.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        record.bytes_out += data.len() as u64;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    record.stream_error = Some(format!("the response stream failed: {error}"));
                }
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What the access line needs, written out when the response is done with.
struct Record {
    ctx: RequestContext,
    line: RequestLine,
    status: u16,
    bytes_out: u64,
    stream_error: Option<String>,
}

/// A record whose response was done with, and when (monotonic for the
/// duration, wall clock for the timestamp): what waits to be written.
struct Done {
    record: Record,
    ended: Instant,
    at: SystemTime,
}

impl Done {
    /// Writes the access line and exports the span.
    fn finish(self) {
        self.log();
        if export::enabled() && self.record.ctx.trace.sampled() {
            self.export();
        }
    }

    fn duration(&self) -> std::time::Duration {
        self.ended
            .saturating_duration_since(self.record.ctx.started)
    }

    fn export(&self) {
        let (record, end) = (&self.record, self.at);
        let ctx = &record.ctx;
        export::record(Span {
            trace_id: ctx.trace.trace_id().to_owned(),
            span_id: ctx.trace.span_id().to_owned(),
            parent_span_id: ctx.trace.parent_span_id().map(str::to_owned),
            method: record.line.method.clone(),
            path: record.line.uri.path().to_owned(),
            status: record.status,
            request_id: ctx.request_id_str().to_owned(),
            upstream: ctx.upstream.as_ref().map(|u| u.url.to_string()),
            start: end.checked_sub(self.duration()).unwrap_or(end),
            end,
        });
    }

    fn log(&self) {
        let record = &self.record;
        let ctx = &record.ctx;
        let from_instance = (record.status >= 500 && ctx.upstream.is_some())
            .then_some("the instance answered with this status");
        logging::access(
            self.at,
            &AccessLine {
                request_id: ctx.request_id_str(),
                peer: ctx.conn.peer.ip(),
                method: &record.line.method,
                path: record.line.uri.path(),
                version: record.line.version,
                status: record.status,
                upstream: ctx.upstream.as_ref().map(|u| u.url.as_str()),
                attempts: ctx.attempts,
                duration: self.duration(),
                user_id: ctx.identity.as_ref().map(|i| i.user_id()),
                organization_id: ctx.identity.as_ref().map(|i| i.organization().id.as_str()),
                identified_by: ctx.identified_by,
                bytes_in: ctx
                    .bytes_in
                    .as_ref()
                    .map_or(0, |seen| seen.load(Ordering::Relaxed)),
                bytes_out: record.bytes_out,
                trace_id: ctx.trace.trace_id(),
                reason: record
                    .stream_error
                    .as_deref()
                    .or(ctx.failure.as_deref())
                    .or(from_instance),
            },
        );
    }
}

/// The line next to a refused or failed request's access line: the whole
/// reason (the client's message plus what chatgate knows of the cause;
/// never a token, a secret or a header value), with the request id.
pub fn error(ctx: &RequestContext, error: &ProxyError) -> String {
    let mut chain = crate::error::error_chain(error);
    if let Some(detail) = error.detail() {
        chain.push_str(": ");
        chain.push_str(&detail);
    }
    if error.is_policy_refusal() {
        tracing::info!(request_id = ctx.request_id_str(), code = error.code(), reason = %chain, "refused by the organization's policy");
    } else if error.status().is_server_error() {
        tracing::warn!(request_id = ctx.request_id_str(), error = %chain, "request failed");
    } else {
        tracing::debug!(request_id = ctx.request_id_str(), error = %chain, "request refused");
    }
    chain
}

/// Access lines wait until their thread is about to sleep: a response's
/// line was formatted between reading the instance's answer and writing it
/// to the client (4 % of a forwarded request's instructions), so it added
/// to the latency of every request; nginx, too, logs after the write.
///
/// Only threads whose runtime calls [`flush_deferred`] before parking (the
/// serving threads) defer; anywhere else a line is written at once. A
/// thread holds at most [`DEFERRED_MAX`] lines: a thread that never sleeps,
/// under load, writes them in batches.
mod deferred {
    use std::cell::{Cell, RefCell};

    use super::Done;

    pub(super) const DEFERRED_MAX: usize = 32;

    thread_local! {
        /// Set by this thread's first [`super::flush_deferred`]: it has a
        /// park hook.
        static DEFERS: Cell<bool> = const { Cell::new(false) };
        static WAITING: RefCell<Vec<Done>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn push(done: Done) {
        if !DEFERS.with(Cell::get) {
            done.finish();
            return;
        }
        let full = WAITING.with_borrow_mut(|waiting| {
            waiting.push(done);
            waiting.len() >= DEFERRED_MAX
        });
        if full {
            flush();
        }
    }

    pub(super) fn flush() {
        // Taken out first: writing a line must not hold the list. Put back
        // empty afterwards, so a thread that parks after every response does
        // not allocate the list anew each time.
        let mut waiting = WAITING.with_borrow_mut(std::mem::take);
        for done in waiting.drain(..) {
            done.finish();
        }
        WAITING.with_borrow_mut(|list| {
            if list.is_empty() {
                *list = waiting;
            }
        });
    }

    pub(super) fn start(defers: bool) {
        DEFERS.with(|d| d.set(defers));
    }

    #[cfg(test)]
    pub(super) fn waiting() -> usize {
        WAITING.with_borrow(Vec::len)
    }
}

/// The serving runtimes' park hook (`on_thread_park`): writes the access
/// lines this thread deferred, and from now on lets it defer them.
pub fn flush_deferred() {
    deferred::start(true);
    deferred::flush();
}

/// Writes what this thread deferred and stops deferring: for a serving
/// thread whose runtime is ending (its connections' bodies, dropped with
/// the runtime, log at once).
pub fn stop_deferring() {
    deferred::start(false);
    deferred::flush();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::context::ConnInfo;

    fn record() -> Done {
        let conn = Arc::new(ConnInfo {
            peer: "192.0.2.7:4000".parse().unwrap(),
            tls: true,
        });
        let request = http::Request::get("/c/new").body(()).unwrap();
        let ctx = RequestContext::new(conn, None, None);
        Done {
            ended: ctx.started,
            at: SystemTime::now(),
            record: Record {
                ctx,
                line: RequestLine::of(&request),
                status: 200,
                bytes_out: 0,
                stream_error: None,
            },
        }
    }

    #[test]
    fn lines_wait_only_on_threads_with_the_park_hook_and_never_past_the_cap() {
        std::thread::spawn(|| {
            // No hook yet: written at once.
            deferred::push(record());
            assert_eq!(deferred::waiting(), 0);
            // A park hook ran: lines wait for the next one.
            flush_deferred();
            deferred::push(record());
            deferred::push(record());
            assert_eq!(deferred::waiting(), 2);
            flush_deferred();
            assert_eq!(deferred::waiting(), 0);
            // Never more than the cap.
            for _ in 0..deferred::DEFERRED_MAX - 1 {
                deferred::push(record());
            }
            assert_eq!(deferred::waiting(), deferred::DEFERRED_MAX - 1);
            deferred::push(record());
            assert_eq!(deferred::waiting(), 0);
            // A runtime ending stops it.
            deferred::push(record());
            stop_deferring();
            assert_eq!(deferred::waiting(), 0);
            deferred::push(record());
            assert_eq!(deferred::waiting(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_serving_runtime_writes_the_lines_when_it_parks() {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(flush_deferred)
                .build()
                .unwrap();
            runtime.block_on(async {
                // The first park marks the thread.
                tokio::time::sleep(Duration::from_millis(1)).await;
                deferred::push(record());
                assert_eq!(deferred::waiting(), 1);
                tokio::time::sleep(Duration::from_millis(1)).await;
                assert_eq!(deferred::waiting(), 0);
            });
        })
        .join()
        .unwrap();
    }
}
