//! The shared key/value store: sticky pins, sessions, single-use codes, locks and counters that
//! every chatgate replica must agree on.
//!
//! The contract is deliberately tiny (like oauth2-proxy's session store): byte values under string
//! keys, each with a TTL, plus the four atomic operations the product needs — `take` (single-use
//! OIDC codes and hand-off tokens), `try_lock`/`unlock` (one Supabase refresh across replicas),
//! `incr` (counters) and `touch` (sticky pins renewed on use). Every key has a TTL, so nothing the
//! store holds outlives its purpose. One contract test suite (`tests/store_contract.rs`) runs
//! against every implementation:
//!
//! - [`MemoryStore`]: in-process, for a single replica (`store.redis_url = ""`).
//! - [`RedisStore`]: Redis ≥ 6.2 (`redis://`, `rediss://`, `redis+unix://`) or a Redis Cluster
//!   (`redis+cluster://host:port,host:port`, `rediss+cluster://…`); every operation is single-key,
//!   so all of them are cluster-safe.
//!
//! The store is used as `Arc<dyn Store>`, so methods return boxed futures rather than `async fn`.

pub mod guard;
mod memory;
mod redis;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// How long a Redis operation may take before it answers [`StoreError::Unavailable`]: short,
/// because a request waiting on a dead Redis is worse than one that degrades at once.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest TTL a store accepts; longer ones are clamped. Keeps `Instant + ttl` and Redis'
/// `PX` argument far from overflow.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A shared key/value store with per-key TTLs. Keys are chosen by callers
/// (`chatgate:sticky:<user>`, `chatgate:refresh:{<hash>}:result`); values are opaque bytes.
///
/// TTLs below one millisecond count as one millisecond, and TTLs above [`MAX_TTL`] as `MAX_TTL`.
/// A counter written by [`Store::incr`] reads back through [`Store::get`] as its decimal ASCII
/// form. `Debug` (so shared state holding a store can derive it) never shows values or passwords.
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// The value under `key`, or `None` when absent or expired.
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>>;

    /// Writes `value` under `key` with a fresh `ttl`, replacing any previous value and TTL.
    fn set(&self, key: &str, value: Bytes, ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes `key`; removing an absent key is not an error.
    fn delete(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Atomically returns the value and removes it (single-use codes, hand-off tokens): of N
    /// concurrent takers exactly one gets `Some`.
    fn take(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>>;

    /// Set-if-absent with TTL (a lock). Returns the owner's token on success, `None` when someone
    /// else holds it. The TTL is the lock's lease: a holder that dies frees it by expiry.
    fn try_lock(
        &self,
        key: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<LockToken>, StoreError>>;

    /// Releases the lock only if `token` still holds it, and says whether it did: a lock that
    /// expired and was taken by another owner is left alone.
    fn unlock(&self, key: &str, token: &LockToken) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Atomically adds `by` to the integer under `key` and returns the new value. An absent key
    /// starts at 0 and gets `ttl`; later increments do not extend it (a fixed window).
    fn incr(&self, key: &str, by: i64, ttl: Duration) -> BoxFuture<'_, Result<i64, StoreError>>;

    /// Resets the TTL of `key` if it exists (sticky pins are renewed on use); says whether it did.
    fn touch(&self, key: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Health probe for `/readyz` and `chatgate check`.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// `"memory"` or `"redis"` (a Redis Cluster is `"redis"` too), for logs and health output.
    fn kind(&self) -> &'static str;

    /// Whether the store is being skipped because it failed lately
    /// ([`guard::Guarded`]); `/readyz` reports it.
    fn degraded(&self) -> bool {
        false
    }

    /// Operations the store did not answer (or refused) since it was
    /// opened; `/metrics` shows it.
    fn errors(&self) -> u64 {
        0
    }
}

/// Proof of holding a lock taken by [`Store::try_lock`]; hand it back to [`Store::unlock`].
///
/// It is 122 random bits (a UUID v4), so one owner cannot release another's lock by accident.
/// Dropping it does not release the lock; the lock's TTL does.
#[derive(PartialEq, Eq)]
pub struct LockToken(String);

impl LockToken {
    /// A fresh random owner id.
    pub(crate) fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The bytes the store keeps under the lock's key.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for LockToken {
    // Whoever knows the token can release the lock, so it stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockToken(..)")
    }
}

/// Why a store operation failed. Messages never contain values, and never a Redis URL (it may
/// carry a password).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer: connection refused or lost, timeout, cluster down, Redis loading.
    /// Callers degrade (e.g. rendezvous hashing instead of sticky pins) or answer 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered but refused the operation: the key holds a non-integer for `incr`,
    /// an overflow, a wrong type, a failed authentication.
    #[error("store error: {0}")]
    Backend(String),
    /// `store.redis_url` cannot be used (bad syntax, unknown scheme, TLS not compiled in).
    #[error("invalid store.redis_url: {0}")]
    InvalidUrl(String),
}

impl StoreError {
    /// Whether the store could not be reached, as opposed to refusing the operation.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Opens the store that `store.redis_url` names: the in-process store when it is absent or empty,
/// Redis (or Redis Cluster) otherwise, with [`DEFAULT_OP_TIMEOUT`].
///
/// A Redis that is down does not fail this call: the connection is made on first use and
/// retried after, so call [`Store::ping`] to learn whether Redis answers now.
pub async fn connect(redis_url: Option<&str>) -> Result<Arc<dyn Store>, StoreError> {
    match redis_url.map(str::trim).filter(|url| !url.is_empty()) {
        None => Ok(Arc::new(MemoryStore::new())),
        Some(url) => {
            let redis = RedisStore::connect(url, DEFAULT_OP_TIMEOUT).await?;
            Ok(Arc::new(guard::Guarded::new(Arc::new(redis))))
        }
    }
}

/// The TTL clamped to what every store accepts.
fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_millis(1), MAX_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped_to_one_millisecond_and_max() {
        assert_eq!(clamp_ttl(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(clamp_ttl(Duration::MAX), MAX_TTL);
        assert_eq!(clamp_ttl(Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[test]
    fn lock_tokens_are_unique_and_not_printed() {
        let (a, b) = (LockToken::generate(), LockToken::generate());
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "LockToken(..)");
    }

    #[tokio::test]
    async fn empty_url_means_memory() {
        let store = connect(Some("  ")).await.expect("memory store");
        assert_eq!(store.kind(), "memory");
        let store = connect(None).await.expect("memory store");
        assert_eq!(store.kind(), "memory");
    }
}
