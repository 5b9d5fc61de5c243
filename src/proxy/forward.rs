//! Phase 5: pick an instance, send the request, and retry once on another
//! instance when the first cannot have acted on it (SPEC section 9). The
//! response body streams back with an idle limit and no total limit; an
//! `Upgrade` becomes a tunnel.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::rewrite_request::UpstreamRequest;
use crate::app::App;
use crate::body::{self, ProxyBody};
use crate::context::RequestContext;
use crate::error::ProxyError;
use crate::logging::RedactedHeaders;
use crate::upstream::health::is_refused;
use crate::upstream::{is_own_limit, ConnectionSlot, InFlight, Upstream, CONNECT_TIMEOUT};

/// SPEC section 8: the upstream must send its response head within 60 s.
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// SPEC section 8: a streamed body may be silent for at most 300 s.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

pub async fn forward(
    app: &App,
    ctx: &mut RequestContext,
    mut request: UpstreamRequest,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut failed: Option<Arc<Upstream>> = None;
    loop {
        let upstream = pick_upstream(app, ctx, failed.as_ref()).await?;
        ctx.attempts += 1;
        ctx.upstream = Some(upstream.clone());
        // A request can be sent twice only if it has no body to lose.
        let may_retry = ctx.attempts == 1 && request.body.is_none() && app.pool.upstreams.len() > 1;
        let outgoing = build(&upstream, &mut request, may_retry, &mut ctx.bytes_in);
        tracing::trace!(
            request_id = ctx.request_id_str(),
            upstream = %upstream.url,
            headers = ?RedactedHeaders(outgoing.headers()),
            "forwarding"
        );
        // SPEC section 9: never more connections than the instance accepts;
        // waiting in vain is chatgate's limit, not the instance's failure.
        let Some(slot) = upstream.connection_slot(CONNECT_TIMEOUT).await else {
            return Err(ProxyError::UpstreamBusy {
                upstream: upstream.url.to_string(),
                limit: upstream.max_connections(),
            });
        };
        let in_flight = (upstream.begin_request(), slot);

        let result =
            tokio::time::timeout(RESPONSE_HEAD_TIMEOUT, upstream.client().request(outgoing)).await;
        let error = match result {
            Ok(Ok(response)) => {
                if matches!(
                    response.status(),
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) {
                    upstream.record_request_failure(false);
                } else {
                    upstream.record_request_success();
                }
                return Ok(finish(app, response, request.upgrade.take(), in_flight));
            }
            Ok(Err(error)) => error,
            Err(_elapsed) => {
                app.metrics.record_upstream_error();
                upstream.record_request_failure(false);
                return Err(ProxyError::UpstreamTimeout);
            }
        };
        app.metrics.record_upstream_error();
        // SPEC section 9's passive check: the instance failed us — unless
        // our own side did (the client's upload broke off or stalled).
        // … nor when the wait for a connection slot (chatgate's own limit) ran out.
        if !caused_by_client(&error) && !is_own_limit(&error) {
            upstream.record_request_failure(is_refused(&error));
        }
        // Connect failures never reached the instance; idempotent requests
        // that got no response head are safe to send again.
        let retry = may_retry && (error.is_connect() || is_idempotent(&request.method));
        if retry && app.pool.least_loaded(Some(&upstream)).is_some() {
            tracing::debug!(request_id = ctx.request_id_str(), upstream = %upstream.url, "retrying on another instance");
            app.metrics.record_retry();
            failed = Some(upstream);
            continue;
        }
        return Err(if error.is_connect() {
            ProxyError::UpstreamConnect(Box::new(error))
        } else {
            ProxyError::UpstreamFailed(Box::new(error))
        });
    }
}

/// The instance for this attempt (SPEC section 9): a signed-in user's
/// pinned instance, else a new pin (see `upstream::sticky`); a retry passes
/// the instance that failed, which moves the pin. Requests without a user
/// go to the least-loaded healthy instance.
async fn pick_upstream(
    app: &App,
    ctx: &RequestContext,
    failed: Option<&Arc<Upstream>>,
) -> Result<Arc<Upstream>, ProxyError> {
    let picked = match &ctx.identity {
        Some(identity) => app.pins.pick(&app.pool, identity.user_id(), failed).await,
        None => app.pool.least_loaded(failed),
    };
    picked.ok_or_else(|| {
        // Why: each instance's state, next to the request's 503.
        let states: Vec<String> = app
            .pool
            .upstreams
            .iter()
            .map(|u| {
                let state = if failed.is_some_and(|f| Arc::ptr_eq(f, u)) {
                    "failed this request".to_owned()
                } else {
                    format!("health {:?}, ejected {}", u.health(), u.is_ejected())
                };
                format!("{} ({state})", u.url)
            })
            .collect();
        tracing::warn!(request_id = ctx.request_id_str(), instances = %states.join(", "), "no LibreChat instance is routable");
        ProxyError::NoHealthyUpstream
    })
}

fn build(
    upstream: &Upstream,
    request: &mut UpstreamRequest,
    keep_copy: bool,
    bytes_in: &mut Option<Arc<AtomicU64>>,
) -> Request<ProxyBody> {
    let headers = if keep_copy {
        request.headers.clone()
    } else {
        std::mem::take(&mut request.headers)
    };
    let body = match request.body.take() {
        Some(client_body) => {
            let seen = bytes_in.get_or_insert_with(Arc::default).clone();
            client_body.into_upstream(BODY_IDLE_TIMEOUT, seen)
        }
        None => body::empty(),
    };
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = request.method.clone();
    *outgoing.uri_mut() = upstream.uri_for(request.path_and_query.clone());
    *outgoing.version_mut() = Version::HTTP_11;
    *outgoing.headers_mut() = headers;
    outgoing
}

/// Whether hyper blames its caller: the request body we streamed (the
/// client's) failed, which says nothing about the instance.
fn caused_by_client(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user)
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Wraps the upstream's answer for the client: a streamed body that keeps
/// the instance's in-flight count until it ends, or a tunnel after `101`.
fn finish(
    app: &App,
    mut response: Response<hyper::body::Incoming>,
    client_upgrade: Option<OnUpgrade>,
    in_flight: (InFlight, ConnectionSlot),
) -> Response<ProxyBody> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            app.tunnels
                .spawn(tunnel(client_upgrade, upstream_upgrade, in_flight));
            return response.map(|_| body::empty());
        }
    }
    response.map(|incoming| body::with_idle_timeout(incoming, BODY_IDLE_TIMEOUT, in_flight))
}

/// Copies bytes both ways between the client and the instance until either
/// side closes. WebSocket has no idle limit here: its own pings keep it alive.
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, _in_flight: (InFlight, ConnectionSlot)) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "tunnel closed with an error");
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    use super::*;
    use crate::error::BoxError;

    fn upstream(addr: std::net::SocketAddr) -> Upstream {
        Upstream::new(format!("http://{addr}").parse().unwrap(), false).unwrap()
    }

    #[tokio::test]
    async fn a_broken_client_upload_is_not_the_instance_s_fault() {
        // An instance that reads and never answers, so only the body can end the request.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut socket, &mut sink).await;
        });
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"first chunk"))),
            Err("the client went away".into()),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let upstream = upstream(addr);
        let request = Request::post(upstream.uri_for("/api/files".parse().unwrap()))
            .body(body)
            .unwrap();
        let error = upstream.client().request(request).await.unwrap_err();
        assert!(caused_by_client(&error), "{error:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_the_instance_s_fault() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let upstream = upstream(addr);
        let request = Request::get(upstream.uri_for("/".parse().unwrap()))
            .body(body::empty())
            .unwrap();
        let error = upstream.client().request(request).await.unwrap_err();
        assert!(!caused_by_client(&error), "{error:?}");
        assert!(is_refused(&error));
    }
}
