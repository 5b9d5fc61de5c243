//! The in-process store for a single replica: a mutex-guarded map of values with expiry instants.
//!
//! Every operation is synchronous under the lock (never held across an `.await`), which makes
//! `take`, `try_lock`, `unlock` and `incr` atomic for free. Expired entries are dropped when read,
//! and all of them at most every [`SWEEP_INTERVAL`] by whichever write comes next, so keys that are
//! never read again do not pile up. A plain map beats a cache crate here: TTLs are per entry and
//! change on `touch`, and nothing may be evicted before its TTL (a lock or a code must not vanish).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::{clamp_ttl, LockToken, Store, StoreError};

/// How often a write also purges every expired entry.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// In-process [`Store`]; state is lost on restart and not shared between replicas.
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

struct Inner {
    entries: HashMap<String, Entry>,
    next_sweep: Instant,
}

struct Entry {
    value: Bytes,
    expires_at: Instant,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    // Values are sessions and codes: show how many there are, never what they hold.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.lock().entries.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::new(Instant::now())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each operation leaves the map consistent before it could panic, so a poisoned lock
        // still guards valid data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn new(now: Instant) -> Self {
        Self {
            entries: HashMap::new(),
            next_sweep: now + SWEEP_INTERVAL,
        }
    }

    /// The live entry under `key`; an expired one is removed on the way.
    fn live(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(key).is_some_and(|e| e.expires_at <= now) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<Bytes> {
        // One lookup for a live entry (a pin is read per request).
        match self.entries.get(key) {
            Some(e) if e.expires_at > now => Some(e.value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn set(&mut self, key: &str, value: Bytes, ttl: Duration, now: Instant) {
        self.sweep(now);
        let expires_at = now + clamp_ttl(ttl);
        self.entries
            .insert(key.to_owned(), Entry { value, expires_at });
    }

    fn take(&mut self, key: &str, now: Instant) -> Option<Bytes> {
        self.entries
            .remove(key)
            .filter(|e| e.expires_at > now)
            .map(|e| e.value)
    }

    fn try_lock(&mut self, key: &str, ttl: Duration, now: Instant) -> Option<LockToken> {
        if self.live(key, now).is_some() {
            return None;
        }
        let token = LockToken::generate();
        self.set(key, Bytes::copy_from_slice(token.as_bytes()), ttl, now);
        Some(token)
    }

    fn unlock(&mut self, key: &str, token: &LockToken, now: Instant) -> bool {
        let held = self
            .live(key, now)
            .is_some_and(|e| e.value.as_ref() == token.as_bytes());
        if held {
            self.entries.remove(key);
        }
        held
    }

    fn incr(&mut self, key: &str, by: i64, ttl: Duration, now: Instant) -> Result<i64, StoreError> {
        let Some(entry) = self.live(key, now) else {
            self.set(key, Bytes::from(by.to_string()), ttl, now);
            return Ok(by);
        };
        let next = parse_counter(&entry.value)?
            .checked_add(by)
            .ok_or_else(|| StoreError::Backend("increment or decrement would overflow".into()))?;
        // The entry keeps its expiry: the window is fixed when the counter is created.
        entry.value = Bytes::from(next.to_string());
        Ok(next)
    }

    fn touch(&mut self, key: &str, ttl: Duration, now: Instant) -> bool {
        match self.live(key, now) {
            Some(entry) => {
                entry.expires_at = now + clamp_ttl(ttl);
                true
            }
            None => false,
        }
    }

    /// Drops every expired entry, at most once per [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.entries.retain(|_, e| e.expires_at > now);
            self.next_sweep = now + SWEEP_INTERVAL;
        }
    }
}

/// An already-computed answer as the trait's boxed future.
fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

/// Parses a counter the way Redis does: the decimal ASCII form of an `i64`.
fn parse_counter(value: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Backend("value is not an integer or out of range".into()))
}

impl Store for MemoryStore {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        ready(Ok(self.lock().get(key, Instant::now())))
    }

    fn set(&self, key: &str, value: Bytes, ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        self.lock().set(key, value, ttl, Instant::now());
        ready(Ok(()))
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        self.lock().entries.remove(key);
        ready(Ok(()))
    }

    fn take(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        ready(Ok(self.lock().take(key, Instant::now())))
    }

    fn try_lock(
        &self,
        key: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<LockToken>, StoreError>> {
        ready(Ok(self.lock().try_lock(key, ttl, Instant::now())))
    }

    fn unlock(&self, key: &str, token: &LockToken) -> BoxFuture<'_, Result<bool, StoreError>> {
        ready(Ok(self.lock().unlock(key, token, Instant::now())))
    }

    fn incr(&self, key: &str, by: i64, ttl: Duration) -> BoxFuture<'_, Result<i64, StoreError>> {
        ready(self.lock().incr(key, by, ttl, Instant::now()))
    }

    fn touch(&self, key: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, StoreError>> {
        ready(Ok(self.lock().touch(key, ttl, Instant::now())))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        ready(Ok(()))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The clock is a parameter of `Inner`, so these tests step it exactly and check the
    // boundaries that the contract suite (real clocks, real Redis) can only approximate.

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn entry_expires_exactly_at_its_ttl() {
        let t0 = Instant::now();
        let mut inner = Inner::new(t0);
        inner.set("k", Bytes::from_static(b"v"), 5 * SEC, t0);
        assert!(inner
            .get("k", t0 + 5 * SEC - Duration::from_millis(1))
            .is_some());
        assert!(inner.get("k", t0 + 5 * SEC).is_none());
        assert!(
            inner.entries.is_empty(),
            "an expired entry is dropped when read"
        );
    }

    #[test]
    fn writes_sweep_expired_entries_that_are_never_read() {
        let t0 = Instant::now();
        let mut inner = Inner::new(t0);
        for i in 0..100 {
            inner.set(&format!("old{i}"), Bytes::new(), SEC, t0);
        }
        inner.set("new", Bytes::new(), 60 * SEC, t0 + SEC);
        assert_eq!(inner.entries.len(), 101, "no sweep before the interval");
        inner.set("newer", Bytes::new(), 60 * SEC, t0 + SWEEP_INTERVAL);
        assert_eq!(inner.entries.len(), 2);
    }

    #[test]
    fn take_and_locks_ignore_expired_entries() {
        let t0 = Instant::now();
        let mut inner = Inner::new(t0);
        inner.set("code", Bytes::from_static(b"c"), SEC, t0);
        assert_eq!(inner.take("code", t0 + SEC), None);

        let first = inner.try_lock("lock", SEC, t0).expect("free");
        assert!(inner.try_lock("lock", SEC, t0 + SEC / 2).is_none());
        let second = inner
            .try_lock("lock", SEC, t0 + SEC)
            .expect("expired lock is free");
        assert!(!inner.unlock("lock", &first, t0 + SEC));
        assert!(inner.unlock("lock", &second, t0 + SEC));
    }

    #[test]
    fn incr_keeps_the_window_of_the_first_increment() {
        let t0 = Instant::now();
        let mut inner = Inner::new(t0);
        assert_eq!(inner.incr("c", 1, 10 * SEC, t0).expect("incr"), 1);
        assert_eq!(inner.incr("c", 1, 10 * SEC, t0 + 9 * SEC).expect("incr"), 2);
        assert_eq!(
            inner.incr("c", 1, 10 * SEC, t0 + 10 * SEC).expect("incr"),
            1
        );
    }

    #[test]
    fn touch_moves_the_expiry_both_ways() {
        let t0 = Instant::now();
        let mut inner = Inner::new(t0);
        inner.set("pin", Bytes::from_static(b"a"), SEC, t0);
        assert!(inner.touch("pin", 10 * SEC, t0));
        assert!(inner.get("pin", t0 + 9 * SEC).is_some());
        assert!(inner.touch("pin", SEC, t0 + 9 * SEC));
        assert!(inner.get("pin", t0 + 10 * SEC).is_none());
        assert!(!inner.touch("pin", SEC, t0 + 10 * SEC));
    }

    #[test]
    fn debug_shows_no_values() {
        let store = MemoryStore::new();
        store.lock().set(
            "session",
            Bytes::from_static(b"s3cret"),
            SEC,
            Instant::now(),
        );
        assert_eq!(format!("{store:?}"), "MemoryStore { entries: 1 }");
    }

    #[tokio::test]
    async fn incr_refuses_non_integers_and_overflow() {
        let store = MemoryStore::new();
        let ttl = 60 * SEC;
        for bad in [
            &b"abc"[..],
            b"",
            b" 1",
            b"+1",
            b"1.5",
            b"99999999999999999999",
        ] {
            store
                .set("c", Bytes::copy_from_slice(bad), ttl)
                .await
                .expect("set");
            let err = store.incr("c", 1, ttl).await.expect_err("not a counter");
            assert!(matches!(err, StoreError::Backend(_)), "{bad:?}: {err}");
        }
        store
            .set("c", Bytes::from(i64::MAX.to_string()), ttl)
            .await
            .expect("set");
        assert!(matches!(
            store.incr("c", 1, ttl).await,
            Err(StoreError::Backend(_))
        ));
        assert_eq!(
            store.incr("c", -1, ttl).await.expect("decrement"),
            i64::MAX - 1
        );
    }
}
