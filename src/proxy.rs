//! The request path. Every request walks these phases, in this order; the
//! order lives here and nowhere else (see the chart in `lib.rs`).
//!
//! 1. `check_request`    — refuse what no phase should see (oversized headers)
//! 2. `admin::route`     — chatgate's own unauthenticated routes
//!    `routes::answer`   — chatgate's own routes (seed API, OpenID provider)
//! 3. `identify`         — who is asking; fails closed
//!    `user_switch`      — LibreChat's session belongs to that user
//!    `policy::apply`    — what the user's organization allows (SPEC 10)
//! 4. `rewrite_request`  — the headers and URI LibreChat receives
//! 5. `forward`          — pick an instance, send, retry once when safe
//!    `usage::tap`       — chat answers are counted as they pass (SPEC 11)
//! 6. `rewrite_response` — the headers the browser receives; lists narrowed
//!    to the organization's policy
//! 7. `log`              — one access-log line

pub mod forward;
mod log;
pub mod policy;
pub mod rewrite_request;
pub mod rewrite_response;

use std::convert::Infallible;
use std::sync::Arc;

pub use log::{flush_deferred, stop_deferring};

use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::admin;
use crate::app::App;
use crate::body::{self, ProxyBody};
use crate::context::{ConnInfo, RequestContext, RequestLine};
use crate::error::ProxyError;
use crate::identify::{self, user_switch};
use crate::metrics::RouteClass;
use crate::routes;
use crate::trace::TRACEPARENT;
use crate::usage;

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// hyper's service function: never fails, every error becomes a response.
pub async fn handle(
    app: Arc<App>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut ctx = RequestContext::new(
        conn,
        request.headers().get(&X_REQUEST_ID),
        request.headers().get(&TRACEPARENT),
    );
    let line = RequestLine::of(&request);
    // Boxed: hyper moves the handler's future (HTTP/2 copies it three
    // times to spawn a stream's task); boxed, what moves is 1 KiB, not 3.6.
    let mut response = match Box::pin(phases(&app, &mut ctx, &line, request)).await {
        Ok(response) => response,
        Err(error) => {
            let reason = log::error(&ctx, &error);
            if error.status().is_server_error() {
                ctx.failure = Some(reason);
            }
            if error.is_policy_refusal() {
                app.metrics.record_policy_refusal(error.code());
            }
            refusal(&app, &ctx, &line, error)
        }
    };
    let headers = response.headers_mut();
    // Sensitive: a value no other response repeats is never put in an
    // HTTP/2 client's HPACK table, where each new one would be compared
    // against the ids before it and push out entries worth keeping.
    let mut request_id = ctx.request_id.clone();
    request_id.set_sensitive(true);
    headers.insert(X_REQUEST_ID.clone(), request_id);
    if !ctx.set_cookies.is_empty() {
        // A response that writes a session must never be cached (SPEC section 6).
        for cookie in ctx.set_cookies.drain(..) {
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                headers.append(header::SET_COOKIE, value);
            }
        }
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-store"),
        );
    }
    rewrite_response::finish_headers(&app, &ctx, headers);
    let route = route_class(&ctx, &line, &response);
    app.metrics
        .record_response(route, response.status(), ctx.started.elapsed());
    Ok(log::when_sent(ctx, line, response))
}

async fn phases(
    app: &App,
    ctx: &mut RequestContext,
    line: &RequestLine,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    check_request(app, request.headers())?;
    if let Some(response) = admin::route(app, request.method(), request.uri().path()).await {
        ctx.route = Some(RouteClass::ChatgateOwn);
        return Ok(response);
    }
    if let Some(route) = routes::own_route(app, request.method(), request.uri().path()) {
        ctx.route = Some(RouteClass::ChatgateOwn);
        // Boxed: chatgate's own routes are rare next to forwarded requests,
        // and their futures would make every request's future larger.
        return Box::pin(routes::answer(app, ctx, line, route, request)).await;
    }
    let mut request = request;
    let identity = identify::identify(app, ctx, line, request.headers()).await?;
    user_switch::check(ctx, line, &identity, request.headers_mut())?;
    let (request, filter) = policy::apply(app, ctx, &identity, request).await?;
    let mut upstream_request = rewrite_request::rewrite(app, ctx, &identity, request)?;
    ctx.identity = Some(identity);
    let metered = usage::tap::begin(
        app.usage.as_ref(),
        ctx,
        &upstream_request.method,
        upstream_request.path_and_query.path(),
        &mut upstream_request.headers,
    );
    app.metrics.record_added_latency(ctx.started.elapsed());
    let response = forward::forward(app, ctx, upstream_request).await?;
    let response = usage::tap::wrap(metered, response);
    filter
        .apply(rewrite_response::rewrite(app, ctx, response))
        .await
}

/// The `route` label of a response (SPEC section 14).
fn route_class<B>(ctx: &RequestContext, line: &RequestLine, response: &Response<B>) -> RouteClass {
    if let Some(route) = ctx.route {
        route
    } else if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        RouteClass::WebSocket
    } else if response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    {
        RouteClass::Stream
    } else if line.page_load {
        RouteClass::Page
    } else {
        RouteClass::Api
    }
}

/// The answer to a request chatgate refuses. An unauthenticated page load
/// goes to the dashboard's login with `redirect_to` pointing back here —
/// always on `public_url`'s origin, whatever `Host` the request named.
fn refusal(
    app: &App,
    ctx: &RequestContext,
    line: &RequestLine,
    error: ProxyError,
) -> Response<ProxyBody> {
    if matches!(error, ProxyError::Unauthenticated) && line.page_load {
        if let Some(location) = login_redirect(app, line) {
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::FOUND;
            let headers = response.headers_mut();
            headers.insert(header::LOCATION, location);
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return response;
        }
    }
    error.into_response(ctx.request_id_str())
}

fn login_redirect(app: &App, line: &RequestLine) -> Option<HeaderValue> {
    let mut login = app.config.dashboard.login_url.clone()?;
    let path = rewrite_request::without_token_param(&line.uri).ok()?;
    let mut back = app.config.server.public_url.clone();
    // Only the path and query are taken from the request; `set_path` keeps a
    // `//evil` path on our own origin.
    back.set_path(path.path());
    back.set_query(path.query());
    login
        .query_pairs_mut()
        .append_pair("redirect_to", back.as_str());
    HeaderValue::from_str(login.as_str()).ok()
}

/// SPEC section 8: requests whose headers exceed `server.max_header_bytes`
/// get 431. hyper enforces a buffer limit on HTTP/1.1 and a header-list limit
/// on HTTP/2; this check makes the limit exact on both.
fn check_request(app: &App, headers: &HeaderMap) -> Result<(), ProxyError> {
    let limit = app.config.server.max_header_bytes;
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > limit {
        return Err(ProxyError::HeadersTooLarge { limit });
    }
    Ok(())
}
