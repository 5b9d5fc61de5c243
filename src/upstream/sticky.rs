//! Sticky pins: the LibreChat instance each signed-in user is held to, kept in the store so every
//! replica sends the user to the same one (SPEC section 9). LibreChat keeps a running
//! generation's stream in the memory of the instance that started it, so a user who moves
//! mid-generation loses it.
//!
//! A pin is `chatgate:sticky:<user id>` → the instance's URL, with TTL `store.sticky_ttl`,
//! renewed on use — in the background, and at most once per [`RENEW_INTERVAL`] per user and
//! replica, because the TTL is hours and one page load makes dozens of requests. One key per user and no multi-key operation, so it needs no hash tag on a Redis
//! Cluster. The rules, in order:
//!
//! 1. A pin to an instance that is configured, routable and not the one a retry is leaving is
//!    used. A pin to a draining instance is used but not renewed, so the drain ends at most
//!    `sticky_ttl` after the last pin to it was written.
//! 2. Otherwise a new instance is chosen by rendezvous hashing ([`select`](super::select)) over
//!    the routable instances that are not draining, and pinned. Rendezvous rather than least
//!    loaded, because it is the same answer the store-less fallback gives: a user keeps one
//!    instance through a store outage, and through the store coming back empty, and two replicas
//!    pinning a new user at once write the same pin.
//! 3. The store does not answer: the same rendezvous choice, without a pin. The store itself
//!    fails fast while it is failing ([`crate::store::guard`]), so a dead Redis costs one
//!    timeout, not one per request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Pool, Upstream};
use crate::metrics::{PinCounters, PinOutcome};
use crate::store::Store;

/// The prefix of every pin's key; the Supabase user id follows.
pub const KEY_PREFIX: &str = "chatgate:sticky:";

/// A pin in use is renewed at most this often by one replica.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(60);

/// Users whose pins this replica renewed within [`RENEW_INTERVAL`], at most; past it, a user
/// is merely renewed again.
const RENEWED_CAPACITY: u64 = 100_000;

/// The store key of `user_id`'s pin.
pub fn key(user_id: &str) -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + user_id.len());
    key.push_str(KEY_PREFIX);
    key.push_str(user_id);
    key
}

/// Whether pins are being read, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinState {
    /// The store answers (or has not failed yet): users follow their pins.
    Pinning,
    /// The store failed lately: users go by rendezvous hashing until it answers.
    Hashing,
}

/// The pins of every user.
#[derive(Debug)]
pub struct StickyPins {
    store: Arc<dyn Store>,
    ttl: Duration,
    /// User ids whose pin was renewed lately.
    renewed: moka::sync::Cache<String, ()>,
    counters: PinCounters,
}

impl StickyPins {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            renewed: moka::sync::Cache::builder()
                .max_capacity(RENEWED_CAPACITY)
                .time_to_live(RENEW_INTERVAL)
                .build(),
            counters: PinCounters::detached(),
        }
    }

    /// Counts decisions into `counters` (`/metrics`).
    pub fn with_counters(mut self, counters: PinCounters) -> Self {
        self.counters = counters;
        self
    }

    pub fn state(&self) -> PinState {
        if self.store.degraded() {
            PinState::Hashing
        } else {
            PinState::Pinning
        }
    }

    /// The instance for `user_id`, never `failed` (the instance a retry is leaving); `None`
    /// when no instance is routable — answered before the store is asked, so at once.
    pub async fn pick(
        &self,
        pool: &Pool,
        user_id: &str,
        failed: Option<&Arc<Upstream>>,
    ) -> Option<Arc<Upstream>> {
        let usable =
            |u: &Arc<Upstream>| pool.routable(u) && failed.is_none_or(|f| !Arc::ptr_eq(f, u));
        if !pool.upstreams.iter().any(usable) {
            return None;
        }
        let key = key(user_id);
        let outcome = match self.store.get(&key).await {
            Ok(Some(pinned)) => {
                if let Some(upstream) = pool.find(&pinned).filter(|u| usable(u)) {
                    if !upstream.draining && !self.renewed.contains_key(user_id) {
                        self.renewed.insert(user_id.to_owned(), ());
                        self.renew(key);
                    }
                    self.counters.record(PinOutcome::Hit);
                    return Some(upstream.clone());
                }
                PinOutcome::Moved
            }
            Ok(None) => PinOutcome::New,
            Err(error) => {
                tracing::debug!(%error, "pin not read: rendezvous decides");
                self.counters.record(PinOutcome::Fallback);
                return pool.choose_new(user_id, failed).cloned();
            }
        };
        self.counters.record(outcome);
        let chosen = pool.choose_new(user_id, failed)?;
        // Every instance left is draining: serve, but give it no new pin.
        if !chosen.draining {
            let value = Bytes::copy_from_slice(chosen.url.as_str().as_bytes());
            if let Err(error) = self.store.set(&key, value, self.ttl).await {
                tracing::debug!(%error, "pin not written");
            }
            tracing::debug!(user_id, upstream = %chosen.url, "pinned");
        }
        Some(chosen.clone())
    }

    /// Renews the pin's TTL without making the request wait for it.
    #[cold]
    fn renew(&self, key: String) {
        let store = self.store.clone();
        let ttl = self.ttl;
        tokio::spawn(async move {
            if let Err(error) = store.touch(&key, ttl).await {
                tracing::debug!(%error, "pin not renewed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures_util::future::BoxFuture;

    use crate::store::StoreError;

    use super::*;
    use crate::store::MemoryStore;

    const URLS: [&str; 3] = [
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        "http://127.0.0.1:3",
    ];

    fn pool(draining: &[usize]) -> Pool {
        let urls: Vec<url::Url> = URLS.iter().map(|u| u.parse().unwrap()).collect();
        let draining: Vec<url::Url> = draining.iter().map(|&i| urls[i].clone()).collect();
        Pool::new(&urls, &draining).unwrap()
    }

    fn pins() -> (StickyPins, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        (
            StickyPins::new(store.clone(), Duration::from_secs(60)),
            store,
        )
    }

    async fn pinned(store: &MemoryStore, user: &str) -> Option<String> {
        let value = store.get(&key(user)).await.unwrap()?;
        Some(String::from_utf8(value.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_new_user_is_pinned_where_rendezvous_says() {
        let (pins, store) = pins();
        let pool = pool(&[]);
        let picked = pins.pick(&pool, "ada", None).await.unwrap();
        let expected = super::super::select::rendezvous("ada", &pool.upstreams).unwrap();
        assert!(Arc::ptr_eq(&picked, expected));
        assert_eq!(
            pinned(&store, "ada").await.as_deref(),
            Some(picked.url.as_str())
        );
    }

    #[tokio::test]
    async fn a_pin_wins_over_rendezvous_while_its_instance_is_routable() {
        let (pins, store) = pins();
        let pool = pool(&[]);
        let other = pool
            .upstreams
            .iter()
            .find(|u| !Arc::ptr_eq(u, pool.choose_new("ada", None).unwrap()))
            .unwrap();
        let value = Bytes::copy_from_slice(other.url.as_str().as_bytes());
        store
            .set(&key("ada"), value, Duration::from_secs(60))
            .await
            .unwrap();
        let picked = pins.pick(&pool, "ada", None).await.unwrap();
        assert!(Arc::ptr_eq(&picked, other));

        other.record_failure(true);
        let moved = pins.pick(&pool, "ada", None).await.unwrap();
        assert!(!Arc::ptr_eq(&moved, other));
        assert_eq!(
            pinned(&store, "ada").await.as_deref(),
            Some(moved.url.as_str())
        );
    }

    #[tokio::test]
    async fn a_retry_leaves_the_failed_instance_and_re_pins() {
        let (pins, store) = pins();
        let pool = pool(&[]);
        let first = pins.pick(&pool, "ada", None).await.unwrap();
        let second = pins.pick(&pool, "ada", Some(&first)).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(
            pinned(&store, "ada").await.as_deref(),
            Some(second.url.as_str())
        );
    }

    #[tokio::test]
    async fn a_draining_instance_keeps_its_pins_and_gets_no_new_ones() {
        let (pins, store) = pins();
        let pool = pool(&[0]);
        let drained = &pool.upstreams[0];
        let value = Bytes::copy_from_slice(drained.url.as_str().as_bytes());
        store
            .set(&key("kept"), value, Duration::from_secs(60))
            .await
            .unwrap();
        let picked = pins.pick(&pool, "kept", None).await.unwrap();
        assert!(Arc::ptr_eq(&picked, drained));
        for i in 0..200 {
            let user = format!("new-{i}");
            let picked = pins.pick(&pool, &user, None).await.unwrap();
            assert!(!Arc::ptr_eq(&picked, drained), "{user}");
        }
    }

    #[tokio::test]
    async fn when_every_instance_drains_users_are_served_without_pins() {
        let (pins, store) = pins();
        let pool = pool(&[0, 1, 2]);
        assert!(pins.pick(&pool, "ada", None).await.is_some());
        assert_eq!(pinned(&store, "ada").await, None);
    }

    #[tokio::test]
    async fn a_pin_to_an_instance_no_longer_configured_moves() {
        let (pins, store) = pins();
        let pool = pool(&[]);
        let gone = Bytes::from_static(b"http://127.0.0.1:9/");
        store
            .set(&key("ada"), gone, Duration::from_secs(60))
            .await
            .unwrap();
        let picked = pins.pick(&pool, "ada", None).await.unwrap();
        assert_eq!(
            pinned(&store, "ada").await.as_deref(),
            Some(picked.url.as_str())
        );
    }

    #[tokio::test]
    async fn no_routable_instance_is_no_answer() {
        let (pins, _) = pins();
        let pool = pool(&[]);
        for upstream in &pool.upstreams {
            upstream.record_failure(true);
        }
        assert!(pins.pick(&pool, "ada", None).await.is_none());
    }

    /// A store that can be switched off: then every operation answers `Unavailable`.
    #[derive(Debug, Default)]
    struct Switchable {
        inner: MemoryStore,
        down: AtomicBool,
        /// Reads and writes asked of it (probes not counted).
        calls: std::sync::atomic::AtomicUsize,
        touched: std::sync::Mutex<Vec<String>>,
    }

    impl Switchable {
        fn answer(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::Relaxed) {
                Err(StoreError::Unavailable("switched off".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Store for Switchable {
        fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match self.answer() {
                Ok(()) => self.inner.get(key),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }
        fn set(
            &self,
            key: &str,
            value: Bytes,
            ttl: Duration,
        ) -> BoxFuture<'_, Result<(), StoreError>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match self.answer() {
                Ok(()) => self.inner.set(key, value, ttl),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }
        fn touch(&self, key: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, StoreError>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.touched.lock().unwrap().push(key.to_owned());
            match self.answer() {
                Ok(()) => self.inner.touch(key, ttl),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }
        fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            let answer = self.answer();
            Box::pin(async move { answer })
        }
        fn delete(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.delete(key)
        }
        fn take(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
            self.inner.take(key)
        }
        fn try_lock(
            &self,
            key: &str,
            ttl: Duration,
        ) -> BoxFuture<'_, Result<Option<crate::store::LockToken>, StoreError>> {
            self.inner.try_lock(key, ttl)
        }
        fn unlock(
            &self,
            key: &str,
            token: &crate::store::LockToken,
        ) -> BoxFuture<'_, Result<bool, StoreError>> {
            self.inner.unlock(key, token)
        }
        fn incr(
            &self,
            key: &str,
            by: i64,
            ttl: Duration,
        ) -> BoxFuture<'_, Result<i64, StoreError>> {
            self.inner.incr(key, by, ttl)
        }
        fn kind(&self) -> &'static str {
            "switchable"
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_store_is_skipped_until_a_probe_finds_it_again() {
        let store = Arc::new(Switchable::default());
        let guarded = Arc::new(crate::store::guard::Guarded::new(store.clone()));
        let pins = StickyPins::new(guarded, Duration::from_secs(60));
        let pool = pool(&[]);
        let by_hash = pool.choose_new("ada", None).unwrap().clone();
        store.down.store(true, Ordering::Relaxed);

        let picked = pins.pick(&pool, "ada", None).await.unwrap();
        assert!(Arc::ptr_eq(&picked, &by_hash), "rendezvous decides");
        assert_eq!(pins.state(), PinState::Hashing);
        let calls = store.calls.load(Ordering::Relaxed);
        for _ in 0..100 {
            let picked = pins.pick(&pool, "ada", None).await.unwrap();
            assert!(Arc::ptr_eq(&picked, &by_hash));
        }
        assert_eq!(
            store.calls.load(Ordering::Relaxed),
            calls,
            "an open breaker skips the store"
        );

        // Still down at the probe: the breaker stays open for another cooldown.
        tokio::time::advance(crate::store::guard::BREAKER_COOLDOWN).await;
        pins.pick(&pool, "ada", None).await.unwrap();
        settle().await;
        assert_eq!(pins.state(), PinState::Hashing);

        store.down.store(false, Ordering::Relaxed);
        tokio::time::advance(crate::store::guard::BREAKER_COOLDOWN).await;
        pins.pick(&pool, "ada", None).await.unwrap();
        settle().await;
        assert_eq!(pins.state(), PinState::Pinning);
        let picked = pins.pick(&pool, "ada", None).await.unwrap();
        assert!(
            Arc::ptr_eq(&picked, &by_hash),
            "the new pin is the hashing choice"
        );
        assert_eq!(
            pinned(&store.inner, "ada").await.as_deref(),
            Some(by_hash.url.as_str())
        );
    }

    /// Lets spawned tasks (the probe, renewals) run.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_pin_in_use_is_renewed_unless_its_instance_drains() {
        let store = Arc::new(Switchable::default());
        let pins = StickyPins::new(store.clone(), Duration::from_secs(60));
        let pool = pool(&[0]);
        for (user, upstream) in [
            ("drained", &pool.upstreams[0]),
            ("kept", &pool.upstreams[1]),
        ] {
            let value = Bytes::copy_from_slice(upstream.url.as_str().as_bytes());
            store
                .inner
                .set(&key(user), value, Duration::from_secs(5))
                .await
                .unwrap();
            let picked = pins.pick(&pool, user, None).await.unwrap();
            assert!(Arc::ptr_eq(&picked, upstream), "{user} follows its pin");
        }
        settle().await;
        assert_eq!(*store.touched.lock().unwrap(), [key("kept")]);

        // Within RENEW_INTERVAL, more requests do not renew it again.
        for _ in 0..10 {
            pins.pick(&pool, "kept", None).await.unwrap();
        }
        settle().await;
        assert_eq!(store.touched.lock().unwrap().len(), 1);
    }
}
