//! SPEC section 12: certificate files that change on disk are reloaded.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Apps;
use crate::app::App;
use crate::tls::CertResolver;

/// SPEC section 12: a change of the certificate files reloads them. Polled,
/// because an inotify watch misses files replaced by rename on some systems.
pub(super) async fn watch_certificates(
    apps: Apps,
    resolver: Arc<CertResolver>,
    stop: CancellationToken,
) {
    let stamp = |app: &App| {
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (
            modified(&app.config.tls.cert),
            modified(&app.config.tls.key),
        )
    };
    let mut seen = stamp(&apps.load());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CERT_POLL) => {}
        }
        let app = apps.load_full();
        let now = stamp(&app);
        if now == seen {
            continue;
        }
        seen = now;
        match resolver.reload(&app.config.tls) {
            Ok(()) => tracing::info!("certificate files changed: reloaded"),
            // Often a half-written pair: the next change retries.
            Err(error) => {
                tracing::warn!(%error, "certificate files changed but do not load; keeping the old one")
            }
        }
    }
}

/// How often the certificate files' modification times are compared.
const CERT_POLL: Duration = Duration::from_secs(5);
