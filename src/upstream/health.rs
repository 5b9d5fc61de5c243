//! Active health checks: `GET <health_path>` on every instance at a fixed
//! interval (SPEC section 9). Results feed `Upstream::record_*`, which
//! `/readyz` and the upstream pick read.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use tokio_util::sync::CancellationToken;

use super::{Pool, Upstream};
use crate::body;
use crate::error::error_chain;

/// How long one check may take before it counts as a failure.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs checks until `stop` is cancelled. The first round runs at once.
pub async fn run(
    pool: Arc<Pool>,
    health_path: String,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let checks = pool
            .upstreams
            .iter()
            .map(|upstream| check_and_record(upstream, &health_path));
        futures_util::future::join_all(checks).await;
    }
}

async fn check_and_record(upstream: &Arc<Upstream>, health_path: &str) {
    match check(upstream, health_path).await {
        Ok(()) => upstream.record_success(),
        Err(failure) => {
            tracing::debug!(upstream = %upstream.url, %failure.reason, "health check failed");
            upstream.record_failure(failure.refused);
        }
    }
}

#[derive(Debug)]
pub struct CheckFailure {
    pub reason: String,
    pub refused: bool,
}

/// One health check: a 2xx answer within `CHECK_TIMEOUT` is healthy.
pub async fn check(upstream: &Upstream, health_path: &str) -> Result<(), CheckFailure> {
    let uri = upstream.uri_for(health_path.parse().map_err(|_| CheckFailure {
        reason: format!("bad health path {health_path}"),
        refused: false,
    })?);
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(http::header::USER_AGENT, "chatgate-health")
        .body(body::empty())
        .map_err(|e| CheckFailure {
            reason: e.to_string(),
            refused: false,
        })?;
    match tokio::time::timeout(CHECK_TIMEOUT, upstream.client().request(request)).await {
        Err(_) => Err(CheckFailure {
            reason: format!("no answer within {CHECK_TIMEOUT:?}"),
            refused: false,
        }),
        Ok(Err(e)) => Err(CheckFailure {
            refused: is_refused(&e),
            reason: error_chain(&e),
        }),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(CheckFailure {
            reason: format!("status {}", response.status()),
            refused: false,
        }),
    }
}

/// Whether an error was caused by a refused TCP connection.
pub fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}
