//! `max_tokens` (SPEC sections 10 and 11): the organization's tokens this
//! UTC month, read from the store's counter `chatgate:quota:<org>:<YYYY-MM>`,
//! which usage metering adds to. This side only reads it; a reading is kept
//! for a second per organization so a burst of chats costs one store call.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::calendar::{days_from_civil, unix_seconds, utc_date, utc_month};
use crate::store::Store;

/// How long a counter reading is reused on this replica.
const READ_TTL: Duration = Duration::from_secs(1);

/// The store key of an organization's counter for the month holding `now`.
pub fn quota_key(organization_id: &str, now: SystemTime) -> String {
    month_key(organization_id, &utc_month(now))
}

/// The store key of an organization's counter for `month` (`YYYY-MM`);
/// its value is a decimal integer of tokens.
pub fn month_key(organization_id: &str, month: &str) -> String {
    format!("chatgate:quota:{organization_id}:{month}")
}

/// Seconds from `now` to the start of the next UTC month (`Retry-After`).
pub fn seconds_to_next_month(now: SystemTime) -> u64 {
    let (year, month, _) = utc_date(now);
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let start = days_from_civil(next_year, next_month, 1) * 86_400;
    (start - unix_seconds(now)).max(1) as u64
}

/// Whether the organization's month is used up (SPEC 10): `Some(retry
/// after, in seconds)` when the counter has reached `max_tokens`. A store
/// that does not answer counts as not reached: metering keeps counting, and
/// the overshoot is bounded by what runs meanwhile.
#[derive(Debug)]
pub struct QuotaReader {
    store: Arc<dyn Store>,
    recent: moka::future::Cache<String, u64>,
}

impl QuotaReader {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            recent: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(READ_TTL)
                .build(),
        }
    }

    /// Tokens counted this month for the organization.
    pub async fn used(&self, organization_id: &str, now: SystemTime) -> u64 {
        let key = quota_key(organization_id, now);
        if let Some(used) = self.recent.get(&key).await {
            return used;
        }
        let used = match self.store.get(&key).await {
            Ok(Some(bytes)) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .map_or(0, |n| n.max(0) as u64),
            Ok(None) => 0,
            Err(error) => {
                tracing::debug!(%error, "store unavailable: the token quota is not checked");
                return 0;
            }
        };
        self.recent.insert(key, used).await;
        used
    }

    /// `Some(seconds to next month)` when `max_tokens` is reached.
    pub async fn exceeded(&self, organization_id: &str, max_tokens: u64) -> Option<u64> {
        let now = SystemTime::now();
        (self.used(organization_id, now).await >= max_tokens).then(|| seconds_to_next_month(now))
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::store::MemoryStore;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn months_turn_at_utc_midnight() {
        // 2024-02-29T23:59:59Z, a leap day, then 2024-03-01.
        assert_eq!(utc_date(at(1_709_251_199)), (2024, 2, 29));
        assert_eq!(utc_date(at(1_709_251_200)), (2024, 3, 1));
        // 2026-12-31T12:00:00Z.
        assert_eq!(utc_date(at(1_798_718_400)), (2026, 12, 31));
    }

    #[test]
    fn keys_name_the_month() {
        assert_eq!(
            quota_key("org-1", at(1_709_251_199)),
            "chatgate:quota:org-1:2024-02"
        );
        assert_eq!(
            quota_key("org-1", at(1_709_251_200)),
            "chatgate:quota:org-1:2024-03"
        );
    }

    #[test]
    fn retry_after_reaches_the_first_of_next_month() {
        // 2026-12-31T12:00:00Z: 12 hours to 2027-01-01.
        assert_eq!(seconds_to_next_month(at(1_798_718_400)), 12 * 3600);
        // 2024-02-29T23:59:59Z: one second.
        assert_eq!(seconds_to_next_month(at(1_709_251_199)), 1);
    }

    #[tokio::test]
    async fn the_counter_is_read_from_the_store() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let reader = QuotaReader::new(store.clone());
        assert_eq!(reader.exceeded("org-a", 100).await, None);
        let key = quota_key("org-b", SystemTime::now());
        store
            .incr(&key, 150, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(reader.exceeded("org-b", 100).await.is_some());
        assert_eq!(reader.exceeded("org-b", 151).await, None);
    }
}
