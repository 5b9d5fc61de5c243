//! A remote store that fails fast. After an operation the store did not
//! answer, every caller (sticky pins, the organization cache, refresh
//! coordination, sessions) skips it for [`BREAKER_COOLDOWN`]; then one
//! background `PING` decides whether to use it again. So a dead Redis costs
//! the requests in flight one timeout, not every request one timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::{LockToken, Store, StoreError};

/// How long the store is skipped after it failed, before a background probe.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);

/// A store behind a breaker.
#[derive(Debug)]
pub struct Guarded {
    inner: Arc<dyn Store>,
    breaker: Arc<Breaker>,
    /// Operations that failed (skipped ones not counted).
    errors: AtomicU64,
}

impl Guarded {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            breaker: Arc::new(Breaker::new()),
            errors: AtomicU64::new(0),
        }
    }

    /// Runs `op` on the inner store unless the breaker is open; an
    /// unanswered operation opens it.
    fn guard<'a, T: Send + 'a>(
        &'a self,
        op: impl FnOnce(&'a dyn Store) -> BoxFuture<'a, Result<T, StoreError>>,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        if !self.breaker.allows(&self.inner) {
            return Box::pin(async {
                Err(StoreError::Unavailable(
                    "skipped while the store is failing".to_owned(),
                ))
            });
        }
        let future = op(self.inner.as_ref());
        Box::pin(async move {
            let result = future.await;
            if let Err(error) = &result {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if error.is_unavailable() {
                    self.breaker.open(error);
                }
            }
            result
        })
    }
}

impl Store for Guarded {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let key = key.to_owned();
        self.guard(move |s| Box::pin(async move { s.get(&key).await }))
    }

    fn set(&self, key: &str, value: Bytes, ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        self.guard(move |s| Box::pin(async move { s.set(&key, value, ttl).await }))
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = key.to_owned();
        self.guard(move |s| Box::pin(async move { s.delete(&key).await }))
    }

    fn take(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let key = key.to_owned();
        self.guard(move |s| Box::pin(async move { s.take(&key).await }))
    }

    fn try_lock(
        &self,
        key: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<LockToken>, StoreError>> {
        let key = key.to_owned();
        self.guard(move |s| Box::pin(async move { s.try_lock(&key, ttl).await }))
    }

    fn unlock(&self, key: &str, token: &LockToken) -> BoxFuture<'_, Result<bool, StoreError>> {
        // Never skipped: a lock left held would block other replicas until its lease ends.
        self.inner.unlock(key, token)
    }

    fn incr(&self, key: &str, by: i64, ttl: Duration) -> BoxFuture<'_, Result<i64, StoreError>> {
        let key = key.to_owned();
        self.guard(move |s| Box::pin(async move { s.incr(&key, by, ttl).await }))
    }

    fn touch(&self, key: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = key.to_owned();
        self.guard(move |s| Box::pin(async move { s.touch(&key, ttl).await }))
    }

    /// Always asks the store (readiness and `chatgate check` want the truth),
    /// and closes or opens the breaker by the answer.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let result = self.inner.ping().await;
            match &result {
                Ok(()) => self.breaker.close(),
                Err(error) => self.breaker.open(error),
            }
            result
        })
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn degraded(&self) -> bool {
        !self.breaker.is_closed()
    }

    fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Skips the store for [`BREAKER_COOLDOWN`] after an unanswered operation;
/// then one background `PING` decides whether requests use it again.
/// Requests never wait on the probe.
#[derive(Debug)]
struct Breaker {
    epoch: Instant,
    /// Milliseconds after `epoch` until which the store is skipped; 0 when closed.
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 keeps 0 free to mean "closed".
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn is_closed(&self) -> bool {
        self.open_until.load(Ordering::Acquire) == 0
    }

    /// Whether this request may use the store. Once the cooldown is over, starts one probe.
    fn allows(self: &Arc<Self>, store: &Arc<dyn Store>) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.now_ms() >= until && !self.probing.swap(true, Ordering::AcqRel) {
            let (breaker, store) = (self.clone(), store.clone());
            tokio::spawn(async move {
                match store.ping().await {
                    Ok(()) => breaker.close(),
                    Err(error) => breaker.open(&error),
                }
                breaker.probing.store(false, Ordering::Release);
            });
        }
        false
    }

    /// Skips the store for the next [`BREAKER_COOLDOWN`].
    fn open(&self, error: &StoreError) {
        let until = self.now_ms() + BREAKER_COOLDOWN.as_millis() as u64;
        if self.open_until.swap(until, Ordering::AcqRel) == 0 {
            tracing::warn!(%error, "store failed: skipped until it answers (sticky pins fall back to hashing)");
        }
    }

    fn close(&self) {
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("store answers again");
        }
    }
}
