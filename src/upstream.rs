//! The LibreChat instances chatgate forwards to: one pooled keep-alive
//! client each, their health, and the choice of instance for a request
//! (`sticky` pins a user, `select` hashes one when no pin can be read).

pub mod health;
pub mod select;
pub mod sticky;

use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::body::ProxyBody;

/// SPEC section 8: connecting to an upstream gives up after 3 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// One LibreChat instance.
#[derive(Debug)]
pub struct Upstream {
    /// The configured URL, as written in `librechat.upstreams`.
    pub url: Url,
    scheme: Scheme,
    authority: Authority,
    /// One connection pool per thread: each serving thread runs its own
    /// runtime, and a connection stays with the thread that opened it.
    clients: thread_local::ThreadLocal<UpstreamClient>,
    pub draining: bool,
    health: AtomicU8,
    successes: AtomicU32,
    failures: AtomicU32,
    in_flight: AtomicUsize,
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
        Ok(Self {
            url,
            scheme,
            authority,
            clients: thread_local::ThreadLocal::new(),
            draining,
            health: AtomicU8::new(Health::Unknown as u8),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// This thread's client for the instance.
    pub fn client(&self) -> &UpstreamClient {
        self.clients.get_or(build_client)
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

    pub fn is_routable(&self) -> bool {
        self.health() != Health::Unhealthy
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight on this instance until the guard drops.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A successful check (or request). The first result after start-up
    /// decides at once; later changes need `HEALTHY_AFTER` in a row.
    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        let n = self.successes.fetch_add(1, Ordering::Relaxed) + 1;
        match self.health() {
            Health::Unknown => self.set_health(Health::Healthy),
            Health::Unhealthy if n >= HEALTHY_AFTER => self.set_health(Health::Healthy),
            _ => {}
        }
    }

    /// A failed check or a failed request. `refused` (nothing listens) marks
    /// the instance unhealthy at once.
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

/// Holds one unit of an instance's in-flight count.
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn build_client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// All configured instances.
#[derive(Debug)]
pub struct Pool {
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Pool {
    pub fn new(urls: &[Url], draining: &[Url]) -> Result<Self, String> {
        let upstreams = urls
            .iter()
            .map(|url| Upstream::new(url.clone(), draining.contains(url)).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { upstreams })
    }

    pub fn healthy_count(&self) -> usize {
        self.upstreams.iter().filter(|u| u.is_routable()).count()
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
            |u: &&Arc<Upstream>| u.is_routable() && exclude.is_none_or(|e| !Arc::ptr_eq(e, u));
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
            .filter(|u| u.is_routable())
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
    fn https_upstreams_are_refused_until_supported() {
        let err = Upstream::new("https://example.com".parse().unwrap(), false).unwrap_err();
        assert!(err.contains("librechat.upstreams"), "{err}");
    }
}
