//! The access log: one structured line per request (`logging::access`). It
//! names the path but never the query (a hand-off `token` may be there), and
//! never a header value (cookies and `Authorization` live there).

use http::Response;

use crate::context::{RequestContext, RequestLine};
use crate::error::ProxyError;
use crate::logging::{self, AccessLine};

pub fn access<B>(ctx: &RequestContext, line: &RequestLine, response: &Response<B>) {
    logging::access(&AccessLine {
        request_id: ctx.request_id_str(),
        peer: ctx.conn.peer.ip(),
        method: &line.method,
        path: line.uri.path(),
        version: line.version,
        status: response.status().as_u16(),
        upstream: ctx.upstream.as_ref().map(|u| u.url.as_str()),
        attempts: ctx.attempts,
        duration: ctx.started.elapsed(),
        user_id: ctx.identity.as_ref().map(|i| i.user_id()),
        organization_id: ctx.identity.as_ref().map(|i| i.organization().id.as_str()),
        identified_by: ctx.identified_by,
    });
}

/// The line next to a refused or failed request's access line: the whole
/// reason (the client's message plus what chatgate knows of the cause;
/// never a token, a secret or a header value), with the request id.
pub fn error(ctx: &RequestContext, error: &ProxyError) {
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
}
