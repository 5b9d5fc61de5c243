//! SPEC section 11's aggregation: counted records gathered per
//! (organization, user, UTC date) for `usage_metrics` and per conversation
//! for `chat_sessions`. Pure: the spool holds the records, this sums them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One counted thing, as the spool stores it (one JSON line each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Organization id (a UUID).
    pub org: String,
    /// Supabase user id (a UUID).
    pub user: String,
    /// UTC date the count was made, `YYYY-MM-DD`.
    pub date: String,
    /// LibreChat conversation id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub tokens: u64,
    /// Cost in nano-USD (integer, so that sums are exact).
    #[serde(default)]
    pub cost_nanos: i64,
}

/// What one (organization, user, date) row gets added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricSums {
    pub tokens: u64,
    pub cost_nanos: i64,
    pub messages: u64,
}

/// What one conversation's `chat_sessions` row gets added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionSums {
    pub org: String,
    pub user: String,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub messages: u64,
    pub tokens: u64,
}

/// A batch: the sums of one spool segment, written in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Keyed by (organization, user, date).
    pub metrics: BTreeMap<(String, String, String), MetricSums>,
    /// Keyed by conversation id.
    pub sessions: BTreeMap<String, SessionSums>,
    /// Records summed.
    pub records: u64,
}

impl Batch {
    pub fn add(&mut self, record: &Record) {
        self.records += 1;
        let sums = self
            .metrics
            .entry((record.org.clone(), record.user.clone(), record.date.clone()))
            .or_default();
        sums.tokens += record.tokens;
        sums.cost_nanos += record.cost_nanos;
        sums.messages += record.messages;
        if let Some(conv) = &record.conv {
            let session = self
                .sessions
                .entry(conv.clone())
                .or_insert_with(|| SessionSums {
                    org: record.org.clone(),
                    user: record.user.clone(),
                    ..SessionSums::default()
                });
            session.messages += record.messages;
            session.tokens += record.tokens;
            // The latest known endpoint and model win.
            if record.endpoint.is_some() {
                session.endpoint.clone_from(&record.endpoint);
            }
            if record.model.is_some() {
                session.model.clone_from(&record.model);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}

/// `nanos` nano-USD as an exact decimal string for a `numeric` column.
pub fn nanos_to_decimal(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", abs / 1_000_000_000, abs % 1_000_000_000)
}

/// The UTC date of a Unix time in seconds, `YYYY-MM-DD` (proleptic
/// Gregorian; Howard Hinnant's `civil_from_days`).
pub fn utc_date(unix_seconds: i64) -> String {
    let (y, m, d) = crate::calendar::civil_from_days(unix_seconds.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Today's UTC date.
pub fn today() -> String {
    utc_date(crate::calendar::unix_seconds(std::time::SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(org: &str, user: &str, conv: Option<&str>, messages: u64, tokens: u64) -> Record {
        Record {
            org: org.into(),
            user: user.into(),
            date: "2026-12-01".into(),
            conv: conv.map(str::to_owned),
            endpoint: None,
            model: None,
            messages,
            tokens,
            cost_nanos: 7,
        }
    }

    #[test]
    fn records_sum_per_user_day_and_per_conversation() {
        let mut batch = Batch::default();
        batch.add(&record("o1", "u1", Some("c1"), 1, 0));
        batch.add(&record("o1", "u1", Some("c1"), 0, 100));
        batch.add(&record("o1", "u2", Some("c2"), 1, 50));
        batch.add(&record("o2", "u3", None, 1, 5));
        assert_eq!(batch.records, 4);
        let u1 = &batch.metrics[&("o1".into(), "u1".into(), "2026-12-01".into())];
        assert_eq!(
            *u1,
            MetricSums {
                tokens: 100,
                cost_nanos: 14,
                messages: 1
            }
        );
        assert_eq!(batch.sessions.len(), 2);
        assert_eq!(batch.sessions["c1"].tokens, 100);
        assert_eq!(batch.sessions["c1"].messages, 1);
    }

    #[test]
    fn dates_and_decimals_are_exact() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_796_083_199), "2026-11-30");
        assert_eq!(utc_date(1_796_083_200), "2026-12-01");
        assert_eq!(nanos_to_decimal(1_230_000), "0.001230000");
        assert_eq!(nanos_to_decimal(12_000_000_001), "12.000000001");
        assert_eq!(nanos_to_decimal(-5), "-0.000000005");
    }
}
