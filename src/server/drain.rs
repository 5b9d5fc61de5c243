//! The graceful shutdown of SPEC section 12.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Apps;

/// SPEC section 12: `/readyz` turns 503 at once, listeners close after a
/// third of the grace, and open requests, streams and tunnels get the rest.
pub(super) async fn drain_on_shutdown(
    apps: Apps,
    shutdown: CancellationToken,
    stop_accepting: CancellationToken,
    closing: CancellationToken,
    connections: TaskTracker,
    accepting: TaskTracker,
    workers_done: CancellationToken,
) {
    shutdown.cancelled().await;
    let app = apps.load_full();
    let grace = app.config.server.shutdown_grace;
    app.start_draining();
    tracing::info!(?grace, "shutdown: draining");
    tokio::time::sleep(grace / 3).await;

    stop_accepting.cancel();
    accepting.close();
    accepting.wait().await;
    tracing::info!(open = connections.len(), "shutdown: listeners closed");
    closing.cancel();
    connections.close();
    app.tunnels.close();
    let rest = grace - grace / 3;
    let deadline = tokio::time::Instant::now() + rest;
    let finished = tokio::time::timeout(rest, async {
        connections.wait().await;
        app.tunnels.wait().await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            connections = connections.len(),
            tunnels = app.tunnels.len(),
            "shutdown: grace over, closing what is left"
        );
    }
    // SPEC section 11: the last counts are flushed (or stay spooled) within the grace.
    if let Some(meter) = &apps.load_full().usage {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        meter.close(left.max(Duration::from_secs(1))).await;
    }
    apps.load_full().background.cancel();
    workers_done.cancel();
    tracing::info!("shutdown: done");
}
