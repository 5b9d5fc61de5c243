//! The handle of a started chatgate: its addresses, reload (SIGHUP),
//! shutdown (SIGTERM) and the signal loop that drives them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{spawn_health_checks, Apps};
use crate::app::{App, Options};
use crate::config::Config;
use crate::tls::{self, CertResolver};

/// A started chatgate: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub tls_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub(super) apps: Apps,
    pub(super) options: Options,
    pub(super) resolver: Arc<CertResolver>,
    pub(super) shutdown: CancellationToken,
    pub(super) task: JoinHandle<()>,
    pub(super) reloading: tokio::sync::Mutex<()>,
}

impl Running {
    /// The App serving requests now.
    pub fn app(&self) -> Arc<App> {
        self.apps.load_full()
    }

    /// Begins the graceful shutdown (what SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the drain is over and every listener is closed.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Re-reads `tls.cert` / `tls.key`. Connections already open keep their
    /// certificate.
    pub fn reload_certificates(&self) -> Result<(), tls::TlsError> {
        self.resolver.reload(&self.app().config.tls)
    }

    /// What SIGHUP does (SPEC section 12): re-reads the config file and the
    /// certificate and swaps them in without dropping a connection. A bad
    /// new config or certificate changes nothing.
    pub async fn reload(&self) -> Result<(), String> {
        let path = self
            .options
            .config_path
            .as_ref()
            .ok_or("no config file to re-read")?;
        let config = Config::load(path).map_err(|e| e.to_string())?;
        self.reload_with(config).await
    }

    /// Swaps in `config` (see `reload`).
    pub async fn reload_with(&self, config: Config) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.apps.load_full();
        if old.is_draining() {
            return Err("shutting down".to_owned());
        }
        for (key, was, now) in [
            (
                "server.listen",
                Some(old.config.server.listen),
                Some(config.server.listen),
            ),
            (
                "server.http_listen",
                old.config.server.http_listen,
                config.server.http_listen,
            ),
        ] {
            if was != now {
                tracing::warn!(
                    key,
                    "a changed listen address takes effect at the next restart"
                );
            }
        }
        let key = tls::load_certified_key(&config.tls).map_err(|e| e.to_string())?;
        // Counters (App::reloaded carries them) and open tunnels belong to
        // the process, not to one config.
        let mut app = App::reloaded(config, &old).await?;
        app.tunnels = old.tunnels.clone();
        // The meter (its spool and tasks) belongs to the process as well.
        app.usage = old.usage.clone();
        if app.config.usage != old.config.usage {
            tracing::warn!("changed [usage] settings take effect at the next restart");
        }
        let app = Arc::new(app);
        spawn_health_checks(&app, self.options.health_interval);
        self.resolver.set(key);
        self.apps.store(app);
        old.background.cancel();
        tracing::info!("config reloaded");
        Ok(())
    }
}

/// Runs until SIGTERM or SIGINT has drained chatgate; SIGHUP reloads the
/// config and the certificate.
pub async fn run_until_signalled(running: Running) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match running.reload().await {
                Ok(()) => tracing::info!("SIGHUP: config and certificate reloaded"),
                Err(error) => tracing::error!(%error, "SIGHUP: reload refused, keeping the running config"),
            },
        }
    }
    running.shutdown();
    running.wait().await;
    Ok(())
}
