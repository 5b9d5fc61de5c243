//! Shared state every request reads: the validated config, the upstream
//! pool, the drain flag and the counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AuthMode, Config};
use crate::error::ProxyError;
use crate::librechat::oidc::OidcProvider;
use crate::librechat::token::TokenIssuer;
use crate::metrics::Metrics;
use crate::policy::quota::QuotaReader;
use crate::policy::specs::SpecCache;
use crate::store::{self, Store};
use crate::supabase::Supabase;
use crate::upstream::sticky::StickyPins;
use crate::upstream::Pool;

/// Slowloris guard: how long an HTTP/1.1 request head may take to arrive
/// (the default of [`Options::header_read_timeout`]).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How chatgate was started, beyond `proxy.toml` itself.
#[derive(Debug, Clone)]
pub struct Options {
    /// SPEC section 9 fixes 5 s; tests shorten it.
    pub health_interval: Duration,
    /// The file SIGHUP re-reads; `None` when the config came from elsewhere.
    pub config_path: Option<std::path::PathBuf>,
    /// Threads that serve connections, each with a single-threaded runtime
    /// of its own; the caller's runtime is the first. The binary uses one
    /// per CPU; embedders and tests keep the default, 1.
    pub workers: usize,
    /// Slowloris guard: an HTTP/1.1 request head must arrive within this
    /// time or the connection is closed. 30 s; tests shorten it.
    pub header_read_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            health_interval: Duration::from_secs(5),
            config_path: None,
            workers: 1,
            header_read_timeout: HEADER_READ_TIMEOUT,
        }
    }
}

#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub pool: Arc<Pool>,
    pub store: Arc<dyn Store>,
    /// Stops this App's background tasks (health checks) when a reload
    /// replaces it or shutdown ends.
    pub background: CancellationToken,
    /// Which instance each user is held to (in `store`), and the fallback
    /// when the store does not answer.
    pub pins: StickyPins,
    /// Shared with the App a reload swaps in while `[supabase]` and
    /// `[store]` stay the same (its key and profile caches survive).
    pub supabase: Arc<Supabase>,
    /// `frame-ancestors 'self' <iframe.allowed_origins…>`, built once.
    pub frame_ancestors: String,
    /// The same as a ready header value (responses without a CSP of their own).
    pub frame_ancestors_header: http::HeaderValue,
    /// Mints and verifies the chatgate token (`librechat.jwt_secret`).
    pub librechat_tokens: TokenIssuer,
    /// The OpenID provider, in `auth_mode = "oidc"`.
    oidc: Option<OidcProvider>,
    /// Shared by the Apps a reload swaps, so counters continue.
    pub metrics: Arc<Metrics>,
    /// Upgraded connections (WebSocket) live outside hyper's connection
    /// tasks; shutdown waits for them here.
    pub tunnels: TaskTracker,
    /// The organizations' month counters behind `max_tokens` (SPEC 10).
    pub quota: QuotaReader,
    /// The pool's model specs, for chats that name one (SPEC 10).
    pub model_specs: SpecCache,
    /// Usage metering (SPEC section 11), when `usage.postgres_url` is set.
    /// Started by `server::start` and shared by the Apps a reload swaps.
    pub usage: Option<Arc<crate::usage::Meter>>,
    draining: AtomicBool,
}

impl App {
    pub async fn new(config: Config) -> Result<Self, String> {
        Self::build(config, None, Arc::new(Metrics::new())).await
    }

    /// The App a reload swaps in for `old`. What holds state worth keeping
    /// is carried over while its settings stay the same: the store (with
    /// the in-process store, its sticky pins, refresh results and month
    /// counters), Supabase's keys, verified tokens and profiles, and the
    /// pool's health and connections. A SIGHUP while Supabase is down must
    /// not empty caches that the outage would then keep empty.
    pub async fn reloaded(config: Config, old: &App) -> Result<Self, String> {
        // Counters belong to the process, not to one config.
        Self::build(config, Some(old), old.metrics.clone()).await
    }

    async fn build(
        config: Config,
        old: Option<&App>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let old_store = old.filter(|old| old.config.store == config.store);
        let store = match old_store {
            Some(old) => old.store.clone(),
            None => {
                let redis_url = config.store.redis_url.as_ref().map(|s| s.expose());
                store::connect(redis_url).await.map_err(|e| e.to_string())?
            }
        };
        let pool = match old.filter(|old| same_pool(&old.config, &config)) {
            Some(old) => old.pool.clone(),
            None => Arc::new(Pool::with_limit(
                &config.librechat.upstreams,
                &config.librechat.draining,
                config.librechat.max_connections_per_instance,
            )?),
        };
        let supabase = match old_store.filter(|old| old.config.supabase == config.supabase) {
            Some(old) => old.supabase.clone(),
            None => Arc::new(Supabase::new(
                &config.supabase,
                crate::http_client::build(),
                store.clone(),
                &metrics,
            )),
        };
        let oidc = match config.librechat.auth_mode {
            AuthMode::Oidc => Some(OidcProvider::new(&config).map_err(|e| e.to_string())?),
            AuthMode::Jwt => None,
        };
        let librechat_tokens = TokenIssuer::new(
            config.librechat.jwt_secret.as_ref().map(|s| s.expose()),
            config.librechat.token_ttl,
        );
        let frame_ancestors = frame_ancestors_directive(&config.iframe.allowed_origins);
        let pins = StickyPins::new(store.clone(), config.store.sticky_ttl)
            .with_counters(metrics.pins.clone());
        let frame_ancestors_header = http::HeaderValue::from_str(&frame_ancestors)
            .map_err(|_| "iframe.allowed_origins: not usable in a header".to_owned())?;
        let quota = QuotaReader::new(store.clone());
        let model_specs = SpecCache::new(config.supabase.tenant_cache_ttl);
        Ok(Self {
            frame_ancestors_header,
            config,
            pool,
            store,
            pins,
            supabase,
            frame_ancestors,
            librechat_tokens,
            oidc,
            metrics,
            background: CancellationToken::new(),
            tunnels: TaskTracker::new(),
            quota,
            model_specs,
            usage: None,
            draining: AtomicBool::new(false),
        })
    }

    /// The OpenID provider; only routed to in `auth_mode = "oidc"`.
    pub fn oidc(&self) -> Result<&OidcProvider, ProxyError> {
        self.oidc.as_ref().ok_or(ProxyError::NotFound)
    }

    /// After SIGTERM: `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The `frame-ancestors` directive for `iframe.allowed_origins`.
pub fn frame_ancestors_directive(allowed_origins: &[String]) -> String {
    let mut directive = String::from("frame-ancestors 'self'");
    for origin in allowed_origins {
        directive.push(' ');
        directive.push_str(origin);
    }
    directive
}

/// The pool is kept across a reload while its instances and limits stay.
fn same_pool(old: &Config, new: &Config) -> bool {
    let (old, new) = (&old.librechat, &new.librechat);
    old.upstreams == new.upstreams
        && old.draining == new.draining
        && old.max_connections_per_instance == new.max_connections_per_instance
}
