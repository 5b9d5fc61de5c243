//! The routes load balancers and monitoring use: `/healthz` (liveness),
//! `/readyz` (readiness, with reasons) and `/metrics` (SPEC section 4). They
//! need no authentication and never reach an upstream.

mod scrape;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use prometheus_client::encoding::prometheus_text;

use crate::app::App;
use crate::body::{self, ProxyBody};
use crate::upstream::sticky::PinState;

/// Answers the admin routes; `None` for every other request.
pub async fn route(app: &App, method: &Method, path: &str) -> Option<Response<ProxyBody>> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    match path {
        "/healthz" => Some(text(
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"ok"),
        )),
        "/readyz" => Some(readyz(app).await),
        "/metrics" => {
            let out = scrape::render(app);
            Some(text(
                StatusCode::OK,
                prometheus_text::CONTENT_TYPE,
                Bytes::from(out),
            ))
        }
        _ => None,
    }
}

async fn readyz(app: &App) -> Response<ProxyBody> {
    let healthy = app.pool.healthy_count();
    let total = app.pool.upstreams.len();
    let mut reasons = Vec::new();
    if app.is_draining() {
        reasons.push("draining: shutdown in progress".to_owned());
    }
    if healthy == 0 {
        reasons.push(format!("upstreams: none of {total} is healthy"));
    }
    // SPEC section 4: a Redis or Postgres that does not answer is named but
    // keeps 200: requests still succeed (pins fall back to hashing, counts
    // wait in the spool), and a 503 would take every replica out of the
    // load balancer at once.
    let mut degraded = Vec::new();
    if app.config.store.redis_url.is_some() {
        if let Err(error) = app.store.ping().await {
            degraded.push(format!("store: {error}"));
        }
    }
    if let Some(error) = app.usage.as_ref().and_then(|meter| meter.degraded()) {
        degraded.push(format!("usage postgres: {error}"));
    }
    let upstreams: Vec<_> = app
        .pool
        .upstreams
        .iter()
        .map(|u| {
            serde_json::json!({
                "url": u.url.as_str(),
                "health": format!("{:?}", u.health()).to_lowercase(),
                "draining": u.draining,
            })
        })
        .collect();
    let (status, word) = if reasons.is_empty() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let sticky_pins = match app.pins.state() {
        PinState::Pinning => "pinning",
        PinState::Hashing => "hashing",
    };
    let body = serde_json::json!({
        "status": word,
        "reasons": reasons,
        "degraded": degraded,
        "healthy_upstreams": healthy,
        "upstreams": upstreams,
        "store": { "kind": app.store.kind(), "sticky_pins": sticky_pins },
    });
    text(status, "application/json", Bytes::from(body.to_string()))
}

fn text(status: StatusCode, content_type: &'static str, bytes: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
