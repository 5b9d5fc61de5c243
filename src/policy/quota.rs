//! `max_tokens` (SPEC sections 10 and 11): the organization's tokens this
//! UTC month, read from the store's counter `chatgate:quota:<org>:<YYYY-MM>`,
//! which usage metering adds to. This side only reads it; a reading is kept
//! for a second per organization so a burst of chats costs one store call.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::Store;

/// How long a counter reading is reused on this replica.
const READ_TTL: Duration = Duration::from_secs(1);

/// The store key of an organization's counter for the month holding `now`.
pub fn quota_key(organization_id: &str, now: SystemTime) -> String {
    let (year, month, _) = utc_date(now);
    format!("chatgate:quota:{organization_id}:{year:04}-{month:02}")
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
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    (start - secs).max(1) as u64
}

/// The UTC calendar date of `now`: (year, month 1–12, day 1–31).
pub fn utc_date(now: SystemTime) -> (i64, u32, u32) {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    civil_from_days(secs.div_euclid(86_400))
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to a date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse: a date to days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    use super::*;
    use crate::store::MemoryStore;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc_date(at(0)), (1970, 1, 1));
        // 2024-02-29T23:59:59Z, a leap day.
        assert_eq!(utc_date(at(1_709_251_199)), (2024, 2, 29));
        assert_eq!(utc_date(at(1_709_251_200)), (2024, 3, 1));
        // 2026-12-31T12:00:00Z.
        assert_eq!(utc_date(at(1_798_718_400)), (2026, 12, 31));
        for days in [0, 59, 365, 11_016, 20_000, 47_482] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
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
