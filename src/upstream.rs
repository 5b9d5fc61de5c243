//! The LibreChat instances chatgate forwards to: one pooled keep-alive
//! client each, their health, and the choice of instance for a request
//! (`sticky` pins a user, `select` hashes one when no pin can be read).
//!
//! Health has two sources (SPEC section 9). Active checks (`health`) decide
//! whether an instance is up. Failed requests (passive) eject an instance
//! until it answers again — but passive failures never take the last
//! instances out: when fewer than half of the instances are routable,
//! every instance the active checks pass is used (Envoy's "panic" routing),
//! so a burst of errors caused by load does not become an outage.

mod client;
pub mod health;
mod limit;
pub mod select;
pub mod sticky;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use url::Url;

/// SPEC section 8: connecting to an upstream gives up after 3 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub use self::client::{SendError, UpstreamClient};

pub use self::limit::is_own_limit;

/// One LibreChat instance.
#[derive(Debug)]
pub struct Upstream {
    /// The configured URL, as written in `librechat.upstreams`.
    pub url: Url,
    scheme: Scheme,
    authority: Authority,
    /// The `Host` LibreChat receives, made once (the host, and the port
    /// unless 80); `UpstreamClient` writes it into each request.
    host: HeaderValue,
    /// One connection pool per thread: each serving thread runs its own
    /// runtime, and a connection stays with the thread that opened it.
    clients: thread_local::ThreadLocal<UpstreamClient>,
    pub draining: bool,
    /// From active checks only.
    health: AtomicU8,
    successes: AtomicU32,
    failures: AtomicU32,
    /// Consecutive failed requests, and whether they ejected the instance.
    request_failures: AtomicU32,
    ejected: AtomicBool,
    in_flight: AtomicUsize,
    /// `librechat.max_connections_per_instance`, shared out among the
    /// serving threads: each thread keeps its own connection pool, which
    /// never holds more connections than the requests it ran at once, so
    /// bounding each thread's requests bounds the replica's connections.
    slots: thread_local::ThreadLocal<Arc<tokio::sync::Semaphore>>,
    max_connections: usize,
    /// Requests that had to wait for a connection, and those that waited in vain.
    pub(crate) connection_waits: AtomicU64,
    pub(crate) connection_wait_timeouts: AtomicU64,
}

/// Health as last observed. `Unknown` (before the first check) routes like
/// `Healthy`, so a fresh chatgate serves at once; the first check settles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
}

/// Health changes happen after this many consecutive results (SPEC section 9).
const HEALTHY_AFTER: u32 = 2;
const UNHEALTHY_AFTER: u32 = 3;

impl Upstream {
    pub fn new(url: Url, draining: bool) -> Result<Self, String> {
        Self::with_limit(url, draining, DEFAULT_MAX_CONNECTIONS)
    }

    /// An instance that gets at most `max_connections` requests at once from this replica.
    pub fn with_limit(url: Url, draining: bool, max_connections: usize) -> Result<Self, String> {
        let max_connections = max_connections.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        let uri: Uri = url
            .as_str()
            .parse()
            .map_err(|e| format!("librechat.upstreams: {url}: {e}"))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        if scheme != Scheme::HTTP {
            // TLS to upstreams is not built yet; refuse rather than send plain text.
            return Err(format!(
                "librechat.upstreams: {url}: only http:// upstreams are supported"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("librechat.upstreams: {url}: no host"))?;
        let host = match authority.port_u16() {
            Some(port) if port != 80 => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let host =
            HeaderValue::from_str(&host).map_err(|e| format!("librechat.upstreams: {url}: {e}"))?;
        Ok(Self {
            url,
            scheme,
            authority,
            host,
            clients: thread_local::ThreadLocal::new(),
            draining,
            health: AtomicU8::new(Health::Unknown as u8),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            request_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            slots: thread_local::ThreadLocal::new(),
            max_connections,
            connection_waits: AtomicU64::new(0),
            connection_wait_timeouts: AtomicU64::new(0),
        })
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// A connection slot on this instance, waiting for one up to `wait`
    /// when all are taken. `None` after waiting in vain: chatgate's own
    /// limit, never the instance's fault.
    pub async fn connection_slot(&self, wait: Duration) -> Option<ConnectionSlot> {
        let slots = self
            .slots
            .get_or(|| Arc::new(tokio::sync::Semaphore::new(self.thread_share())));
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(ConnectionSlot(permit));
        }
        self.connection_waits.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(wait, slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Some(ConnectionSlot(permit)),
            _ => {
                self.connection_wait_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// This thread's client for the instance, which opens at most this
    /// thread's share of `max_connections_per_instance` connections.
    pub fn client(&self) -> &UpstreamClient {
        self.clients.get_or(|| {
            UpstreamClient::new(
                &self.authority,
                self.host.clone(),
                self.thread_share(),
                CONNECT_TIMEOUT,
            )
        })
    }

    /// This thread's share of `max_connections_per_instance`.
    fn thread_share(&self) -> usize {
        let threads = SERVING_THREADS.load(Ordering::Relaxed).max(1);
        (self.max_connections / threads).max(1)
    }

    /// The URI of `path_and_query` on this instance.
    pub fn uri_for(&self, path_and_query: PathAndQuery) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"))
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            0 => Health::Unknown,
            1 => Health::Healthy,
            _ => Health::Unhealthy,
        }
    }

    /// Routable by every count: the active checks pass and no run of
    /// failed requests ejected it. [`Pool::routable`] may route to an
    /// ejected instance (panic routing).
    pub fn is_routable(&self) -> bool {
        self.health() != Health::Unhealthy && !self.is_ejected()
    }

    /// Whether failed requests took the instance out of rotation.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    /// A request failed at the instance (connect error, 502/503/504 or no
    /// answer). `refused` (nothing listens) ejects at once; otherwise
    /// `UNHEALTHY_AFTER` in a row do.
    pub fn record_request_failure(&self, refused: bool) {
        let n = self.request_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if (refused || n >= UNHEALTHY_AFTER) && !self.ejected.swap(true, Ordering::Relaxed) {
            tracing::warn!(upstream = %self.url, failures = n, refused, "upstream ejected after failed requests");
        }
    }

    /// A request the instance answered: it is back in rotation.
    pub fn record_request_success(&self) {
        // Read first: the common case writes nothing (no cache-line traffic).
        if self.request_failures.load(Ordering::Relaxed) != 0 {
            self.request_failures.store(0, Ordering::Relaxed);
        }
        if self.ejected.load(Ordering::Relaxed) {
            self.ejected.store(false, Ordering::Relaxed);
            tracing::info!(upstream = %self.url, "upstream answered again: back in rotation");
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight on this instance until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A successful active check. The first result after start-up decides
    /// at once; later changes need `HEALTHY_AFTER` in a row. A passing
    /// check also readmits an ejected instance: the next failures eject it
    /// again.
    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.record_request_success();
        let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
        match self.health() {
            Health::Unknown => self.set_health(Health::Healthy),
            Health::Unhealthy if n >= HEALTHY_AFTER => self.set_health(Health::Healthy),
            _ => {}
        }
    }

    /// A failed active check. `refused` (nothing listens) marks the
    /// instance unhealthy at once.
    pub fn record_failure(&self, refused: bool) {
        self.successes.store(0, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let health = self.health();
        if health != Health::Unhealthy
            && (refused || n >= UNHEALTHY_AFTER || health == Health::Unknown)
        {
            self.set_health(Health::Unhealthy);
        }
    }

    fn set_health(&self, health: Health) {
        let old = self.health.swap(health as u8, Ordering::Relaxed);
        if old != health as u8 {
            tracing::warn!(upstream = %self.url, ?health, "upstream health changed");
        }
    }
}

/// The default of `librechat.max_connections_per_instance`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Threads that serve connections, each with its own upstream pools; the
/// connection limit is shared out among them.
static SERVING_THREADS: AtomicUsize = AtomicUsize::new(1);

/// Called once at start-up by the server with its number of serving threads.
pub fn set_serving_threads(threads: usize) {
    SERVING_THREADS.store(threads.max(1), Ordering::Relaxed);
}

/// One of an instance's `max_connections_per_instance` slots, held until the
/// response body ends.
#[derive(Debug)]
pub struct ConnectionSlot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// Holds one unit of an instance's in-flight count.
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All configured instances.
#[derive(Debug)]
pub struct Pool {
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Pool {
    pub fn new(urls: &[Url], draining: &[Url]) -> Result<Self, String> {
        Self::with_limit(urls, draining, DEFAULT_MAX_CONNECTIONS)
    }

    /// Instances that each get at most `max_connections` requests at once.
    pub fn with_limit(
        urls: &[Url],
        draining: &[Url],
        max_connections: usize,
    ) -> Result<Self, String> {
        let upstreams = urls
            .iter()
            .map(|url| {
                Upstream::with_limit(url.clone(), draining.contains(url), max_connections)
                    .map(Arc::new)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { upstreams })
    }

    /// Whether requests may go to `upstream` now: routable by every count,
    /// or, while the pool panics, passing its active checks.
    pub fn routable(&self, upstream: &Upstream) -> bool {
        upstream.is_routable() || (upstream.health() != Health::Unhealthy && self.is_panicking())
    }

    /// Fewer than half of the instances are routable by every count: passive
    /// ejections are ignored until that changes.
    pub fn is_panicking(&self) -> bool {
        let routable = self.upstreams.iter().filter(|u| u.is_routable()).count();
        routable * 2 < self.upstreams.len()
    }

    pub fn healthy_count(&self) -> usize {
        self.upstreams.iter().filter(|u| self.routable(u)).count()
    }

    /// The instance configured as `url` (a pin's value), if any. A missing
    /// trailing `/` is tolerated, so an operator can move a user by hand
    /// (`SET chatgate:sticky:<id> http://lc2:3080`).
    pub fn find(&self, url: &[u8]) -> Option<&Arc<Upstream>> {
        let url = url.strip_suffix(b"/").unwrap_or(url);
        self.upstreams.iter().find(|u| {
            let own = u.url.as_str().as_bytes();
            own.strip_suffix(b"/").unwrap_or(own) == url
        })
    }

    /// Where `user_id` goes when no pin decides: rendezvous hashing over the
    /// routable instances that are not draining, skipping `exclude`; when
    /// all of those drain, over the draining ones (served, never pinned).
    pub fn choose_new(
        &self,
        user_id: &str,
        exclude: Option<&Arc<Upstream>>,
    ) -> Option<&Arc<Upstream>> {
        let usable =
            |u: &&Arc<Upstream>| self.routable(u) && exclude.is_none_or(|e| !Arc::ptr_eq(e, u));
        select::rendezvous(
            user_id,
            self.upstreams.iter().filter(usable).filter(|u| !u.draining),
        )
        .or_else(|| select::rendezvous(user_id, self.upstreams.iter().filter(usable)))
    }

    /// The least-loaded routable instance, skipping `exclude` (the one a
    /// retry is moving away from). For requests without a user to pin.
    pub fn least_loaded(&self, exclude: Option<&Arc<Upstream>>) -> Option<Arc<Upstream>> {
        self.upstreams
            .iter()
            .filter(|u| self.routable(u))
            .filter(|u| exclude.is_none_or(|e| !Arc::ptr_eq(e, u)))
            .min_by_key(|u| u.in_flight())
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream::new("http://127.0.0.1:1".parse().unwrap(), false).unwrap()
    }

    #[tokio::test]
    async fn first_result_decides_then_thresholds_apply() {
        let u = upstream();
        assert_eq!(u.health(), Health::Unknown);
        u.record_success();
        assert_eq!(u.health(), Health::Healthy);
        u.record_failure(false);
        u.record_failure(false);
        assert_eq!(u.health(), Health::Healthy, "two failures are not enough");
        u.record_failure(false);
        assert_eq!(u.health(), Health::Unhealthy);
        u.record_success();
        assert_eq!(u.health(), Health::Unhealthy, "one success is not enough");
        u.record_success();
        assert_eq!(u.health(), Health::Healthy);
        u.record_failure(true);
        assert_eq!(
            u.health(),
            Health::Unhealthy,
            "a refused connection is enough"
        );
    }

    #[tokio::test]
    async fn least_loaded_skips_unhealthy_and_excluded() {
        let urls: Vec<Url> = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let pool = Pool::new(&urls, &[]).unwrap();
        let busy = pool.upstreams[0].begin_request();
        let pick = pool.least_loaded(None).unwrap();
        assert_eq!(pick.url, urls[1]);
        let other = pool.least_loaded(Some(&pick)).unwrap();
        assert_eq!(other.url, urls[0]);
        pool.upstreams[1].record_failure(true);
        assert_eq!(pool.least_loaded(None).unwrap().url, urls[0]);
        drop(busy);
        pool.upstreams[0].record_failure(true);
        assert!(pool.least_loaded(None).is_none());
    }

    #[test]
    fn the_host_header_is_what_the_client_would_write() {
        let host = |url: &str| {
            let upstream = Upstream::new(url.parse().unwrap(), false).unwrap();
            upstream.host.to_str().unwrap().to_owned()
        };
        assert_eq!(host("http://127.0.0.1:3080"), "127.0.0.1:3080");
        assert_eq!(host("http://librechat"), "librechat");
        assert_eq!(host("http://librechat:80/"), "librechat");
        assert_eq!(host("http://[::1]:3080"), "[::1]:3080");
    }

    fn pool_of(n: usize) -> Pool {
        let urls: Vec<Url> = (1..=n)
            .map(|i| format!("http://127.0.0.1:{i}").parse().unwrap())
            .collect();
        Pool::new(&urls, &[]).unwrap()
    }

    #[test]
    fn failed_requests_never_take_the_last_instance_out() {
        let pool = pool_of(1);
        let only = &pool.upstreams[0];
        only.record_success();
        for _ in 0..100 {
            only.record_request_failure(true);
        }
        assert!(only.is_ejected());
        assert!(pool.is_panicking());
        assert!(pool.routable(only), "passive failures alone: still served");
        assert_eq!(pool.least_loaded(None).unwrap().url, only.url);
        only.record_failure(true);
        assert!(!pool.routable(only), "the active check decides it is down");
        assert!(pool.least_loaded(None).is_none());
    }

    #[test]
    fn ejection_moves_traffic_while_half_the_pool_is_routable() {
        let pool = pool_of(4);
        for u in &pool.upstreams {
            u.record_success();
        }
        pool.upstreams[0].record_request_failure(true);
        assert!(!pool.routable(&pool.upstreams[0]));
        pool.upstreams[1].record_request_failure(false);
        pool.upstreams[1].record_request_failure(false);
        pool.upstreams[1].record_request_failure(false);
        assert!(!pool.is_panicking(), "2 of 4 routable is half");
        assert_eq!(pool.healthy_count(), 2);
        pool.upstreams[2].record_request_failure(true);
        assert!(pool.is_panicking(), "1 of 4");
        assert_eq!(
            pool.healthy_count(),
            4,
            "every actively healthy instance serves"
        );
        pool.upstreams[0].record_request_success();
        assert!(!pool.upstreams[0].is_ejected());
    }

    #[tokio::test]
    async fn requests_beyond_the_connection_limit_wait_then_give_up() {
        let u = Upstream::with_limit("http://127.0.0.1:1".parse().unwrap(), false, 2).unwrap();
        let a = u.connection_slot(Duration::from_millis(1)).await.unwrap();
        let _b = u.connection_slot(Duration::from_millis(1)).await.unwrap();
        assert!(u.connection_slot(Duration::from_millis(20)).await.is_none());
        assert_eq!(u.connection_wait_timeouts.load(Ordering::Relaxed), 1);
        let waiter = u.connection_slot(Duration::from_secs(30));
        let release = async {
            tokio::task::yield_now().await;
            drop(a);
        };
        let (slot, ()) = tokio::join!(waiter, release);
        assert!(slot.is_some(), "a freed slot goes to the waiting request");
        assert_eq!(u.connection_waits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn https_upstreams_are_refused_until_supported() {
        let err = Upstream::new("https://example.com".parse().unwrap(), false).unwrap_err();
        assert!(err.contains("librechat.upstreams"), "{err}");
    }
}
