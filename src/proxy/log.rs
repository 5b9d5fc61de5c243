//! The access log: one structured line per request (`logging::access`). It
//! names the path but never the query (a hand-off `token` may be there), and
//! never a header value (cookies and `Authorization` live there).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::SystemTime;

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
            record: Record {
                ctx,
                line,
                status,
                bytes_out: 0,
                stream_error: None,
            },
        }
        .boxed_unsync()
    })
}

/// A response body that counts what it passes on.
struct Logged {
    body: ProxyBody,
    record: Record,
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.record.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(error))) => {
                self.record.stream_error = Some(format!("the response stream failed: {error}"));
            }
            _ => {}
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

impl Drop for Record {
    fn drop(&mut self) {
        self.log();
        if export::enabled() && self.ctx.trace.sampled() {
            self.export();
        }
    }
}

impl Record {
    fn export(&self) {
        let ctx = &self.ctx;
        let end = SystemTime::now();
        export::record(Span {
            trace_id: ctx.trace.trace_id().to_owned(),
            span_id: ctx.trace.span_id().to_owned(),
            parent_span_id: ctx.trace.parent_span_id().map(str::to_owned),
            method: self.line.method.clone(),
            path: self.line.uri.path().to_owned(),
            status: self.status,
            request_id: ctx.request_id_str().to_owned(),
            upstream: ctx.upstream.as_ref().map(|u| u.url.to_string()),
            start: end.checked_sub(ctx.started.elapsed()).unwrap_or(end),
            end,
        });
    }

    fn log(&self) {
        let ctx = &self.ctx;
        let from_instance = (self.status >= 500 && ctx.upstream.is_some())
            .then_some("the instance answered with this status");
        logging::access(&AccessLine {
            request_id: ctx.request_id_str(),
            peer: ctx.conn.peer.ip(),
            method: &self.line.method,
            path: self.line.uri.path(),
            version: self.line.version,
            status: self.status,
            upstream: ctx.upstream.as_ref().map(|u| u.url.as_str()),
            attempts: ctx.attempts,
            duration: ctx.started.elapsed(),
            user_id: ctx.identity.as_ref().map(|i| i.user_id()),
            organization_id: ctx.identity.as_ref().map(|i| i.organization().id.as_str()),
            identified_by: ctx.identified_by,
            bytes_in: ctx
                .bytes_in
                .as_ref()
                .map_or(0, |seen| seen.load(Ordering::Relaxed)),
            bytes_out: self.bytes_out,
            trace_id: ctx.trace.trace_id(),
            reason: self
                .stream_error
                .as_deref()
                .or(ctx.failure.as_deref())
                .or(from_instance),
        });
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
