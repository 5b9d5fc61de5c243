//! Listeners and connections (SPEC sections 1 and 12): `start` binds the
//! listeners and wires the pieces below together.
//!
//! - `listeners`: the accept loops and the hand-out of connections;
//! - `workers`: the serving threads, one single-threaded runtime each;
//! - `connection`: one connection's TLS handshake and hyper's HTTP/1.1 +
//!   HTTP/2 serving with upgrades;
//! - `park`: HTTP/1.1 over TLS, with idle keep-alive connections parked;
//! - `drain`: the graceful shutdown;
//! - `running`: the handle `start` returns (reload, shutdown, signals);
//! - `certificates`: reloading changed certificate files;
//! - `proxy_protocol`: the PROXY protocol header of `server.proxy_protocol`;
//! - `limits`: what one client may cost.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Options};
use crate::config::Config;
use crate::tls::{self, CertResolver};
use crate::upstream;

mod certificates;
mod connection;
mod drain;
mod limits;
mod listeners;
mod park;
pub mod proxy_protocol;
mod running;
mod workers;

pub use limits::HEADER_READ_TIMEOUT;
pub use running::{run_until_signalled, Running};

use certificates::watch_certificates;
use drain::drain_on_shutdown;
use listeners::Listeners;
use workers::spawn_workers;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot start a serving thread: {0}")]
    Worker(std::io::Error),
}

/// The App requests are served with; a reload swaps it whole, and each
/// request takes the current one.
pub type Apps = Arc<ArcSwap<App>>;

fn spawn_health_checks(app: &Arc<App>, interval: Duration) {
    tokio::spawn(upstream::health::run(
        app.pool.clone(),
        app.config.librechat.health_path.clone(),
        interval,
        app.background.clone(),
    ));
}

/// Binds the listeners and starts serving in the background.
pub async fn start(config: Config, options: Options) -> Result<Running, StartError> {
    tls::install_crypto_provider();
    if tls::ensure_certificate(&config.tls)? {
        tracing::warn!(
            cert = %config.tls.cert.display(),
            key = %config.tls.key.display(),
            "no certificate found: generated a self-signed development certificate for localhost"
        );
    }
    let resolver = Arc::new(CertResolver::new(tls::load_certified_key(&config.tls)?));
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(resolver.clone())));

    let tls_listener = bind("server.listen", config.server.listen).await?;
    let http_listener = match config.server.http_listen {
        Some(addr) => Some(bind("server.http_listen", addr).await?),
        None => None,
    };
    let tls_addr = local_addr("server.listen", &tls_listener)?;
    let http_addr = match &http_listener {
        Some(l) => Some(local_addr("server.http_listen", l)?),
        None => None,
    };

    let mut app = App::new(config).await.map_err(StartError::Config)?;
    app.usage = crate::usage::Meter::start(&app.config.usage, app.store.clone())
        .map_err(|e| StartError::Config(e.to_string()))?;
    let app = Arc::new(app);
    let max_header_bytes = app.config.server.max_header_bytes;
    let builder = Arc::new(limits::http_builder(
        max_header_bytes,
        options.header_read_timeout,
    ));
    let http1 = Arc::new(limits::http1_builder(
        max_header_bytes,
        options.header_read_timeout,
    ));
    let http2 = Arc::new(limits::http2_builder(max_header_bytes));
    let shutdown = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    spawn_health_checks(&app, options.health_interval);
    let apps: Apps = Arc::new(ArcSwap::new(app));
    tokio::spawn(watch_certificates(
        apps.clone(),
        resolver.clone(),
        shutdown.clone(),
    ));

    let accepting = TaskTracker::new();
    let workers_done = CancellationToken::new();
    let mut listeners = Listeners {
        apps: apps.clone(),
        builder,
        http1,
        http2,
        connections: connections.clone(),
        header_read_timeout: options.header_read_timeout,
        stop_accepting: stop_accepting.clone(),
        closing: closing.clone(),
        workers: Arc::new([]),
        turn: Arc::new(AtomicUsize::new(0)),
        index: 0,
    };
    apps.load().metrics.set_workers(options.workers);
    crate::upstream::set_serving_threads(options.workers);
    listeners.workers = spawn_workers(&listeners, options.workers, &workers_done)?.into();
    accepting.spawn(listeners.clone().accept(tls_listener, Some(acceptor)));
    if let Some(listener) = http_listener {
        accepting.spawn(listeners.accept(listener, None));
    }
    tracing::info!(%tls_addr, http_addr = ?http_addr, workers = options.workers.max(1), "chatgate listening");

    let task = tokio::spawn(drain_on_shutdown(
        apps.clone(),
        shutdown.clone(),
        stop_accepting,
        closing,
        connections,
        accepting,
        workers_done,
    ));
    Ok(Running {
        tls_addr,
        http_addr,
        apps,
        options,
        resolver,
        shutdown,
        task,
        reloading: tokio::sync::Mutex::new(()),
    })
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}

fn local_addr(key: &'static str, listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        key,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}
