//! Usage metering (SPEC section 11): what each organization's users send
//! and spend, counted from LibreChat's streams as they pass and written to
//! the dashboard's Postgres, exactly once, through outages and restarts.
//!
//! How a count travels:
//!
//! ```text
//!  upstream body ─▶ tap (sse → count) ─▶ client, unchanged and undelayed
//!                    │ observations (channel)
//!                    ▼
//!  intake task: replay check (store) → price → spool append (≤ 100 ms)
//!               → month counter (store incr); fsync every second
//!                    │ spool segments (usage.spool_dir)
//!                    ▼
//!  flush task, every flush_interval: rotate → per segment: aggregate →
//!               one transaction (batch id recorded) → remove the segment
//! ```
//!
//! Modules: `sse` (the incremental parser), `count` (the counting rules),
//! `tap` (the response-body wrapper and drains), `aggregate` (sums),
//! `spool` (the local append-only files), `postgres` (the writer).

pub mod aggregate;
pub mod count;
pub mod postgres;
pub mod spool;
pub mod sse;
pub mod tap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::aggregate::{Batch, Record};
use self::count::Tokens;
use self::postgres::{Applied, Db};
use self::spool::{Spool, SpoolError};
use crate::config::UsageConfig;
use crate::store::Store;

/// The spool's size limit; past it new counts are dropped (loudly).
pub const SPOOL_LIMIT_BYTES: u64 = 1024 * 1024 * 1024;
/// Streams read on after their client left, at once, per replica.
pub const MAX_DRAINS: usize = 256;
/// How long a replayed event is recognised (a resumed stream replays what
/// its generation produced, which lasts at most `drain_timeout`).
const REPLAY_WINDOW: Duration = Duration::from_secs(2 * 24 * 3600);
/// Lifetime of the month counter: the month and some days.
pub const QUOTA_TTL: Duration = Duration::from_secs(40 * 24 * 3600);
/// How often the spool is fsynced.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The store key of an organization's token counter for a UTC month
/// (`YYYY-MM`); its value is a decimal integer.
pub fn quota_key(org: &str, month: &str) -> String {
    crate::policy::quota::month_key(org, month)
}

/// The month counter of `org` for the current UTC month, the key the
/// organization policy's `max_tokens` check reads.
pub fn current_quota_key(org: &str) -> String {
    crate::policy::quota::quota_key(org, std::time::SystemTime::now())
}

fn stream_key(stream_id: &str) -> String {
    format!("chatgate:usage:stream:{stream_id}")
}

/// Who a count belongs to: the request's user and organization.
#[derive(Debug, Clone)]
pub struct Who {
    pub org: String,
    pub user: String,
}

/// What a tap saw: a message, tokens, or the names of a conversation.
#[derive(Debug, Clone)]
pub struct Observation {
    pub who: Who,
    pub conversation: Option<String>,
    /// The resumable stream it came from, to find the conversation by.
    pub stream_id: Option<String>,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub messages: u64,
    pub tokens: Option<Tokens>,
}

/// A resumable stream's conversation, from the POST's JSON answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Link {
    conversation: Option<String>,
    endpoint: Option<String>,
    model: Option<String>,
}

enum Intake {
    Count(Box<Observation>),
    Link { stream_id: String, link: Link },
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct UsageStats {
    pub batches_written: AtomicU64,
    pub batches_replayed: AtomicU64,
    pub records_spooled: AtomicU64,
    pub records_dropped: AtomicU64,
    pub replays_skipped: AtomicU64,
    pub events_rejected: AtomicU64,
    pub drains_running: AtomicU64,
    pub drains_refused: AtomicU64,
    pub flush_failures: AtomicU64,
}

/// The meter: one per process, shared by the Apps a reload swaps.
#[derive(Debug)]
pub struct Meter {
    prices: Vec<crate::config::ModelPrice>,
    drain_timeout: Duration,
    intake: mpsc::UnboundedSender<Intake>,
    spool: Arc<Spool>,
    pub stats: Arc<UsageStats>,
    /// Postgres did not answer the last write or ping; the error.
    degraded: Arc<Mutex<Option<String>>>,
    drains: Arc<Semaphore>,
    closing: CancellationToken,
    tasks: TaskTracker,
    runtime: tokio::runtime::Handle,
}

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Db(#[from] postgres::DbError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl Meter {
    /// Starts metering when `usage.postgres_url` is set (else `None`):
    /// opens the spool, and starts the intake and flush tasks on the
    /// current runtime. The first flush sends what the spool holds.
    pub fn start(
        config: &UsageConfig,
        store: Arc<dyn Store>,
    ) -> Result<Option<Arc<Meter>>, MeterError> {
        let Some(url) = &config.postgres_url else {
            return Ok(None);
        };
        let db = Db::new(url.expose())?;
        let spool = Arc::new(Spool::open(&config.spool_dir, SPOOL_LIMIT_BYTES)?);
        let pending = spool.pending().len();
        if pending > 0 {
            tracing::info!(segments = pending, dir = %spool.dir().display(), "usage: sending what the spool holds");
        }
        let (intake, receiver) = mpsc::unbounded_channel();
        let (rebuild_tx, rebuild_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(UsageStats::default());
        let degraded = Arc::new(Mutex::new(None));
        let closing = CancellationToken::new();
        let intake_done = CancellationToken::new();
        let tasks = TaskTracker::new();
        let replica = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        tasks.spawn(
            IntakeTask {
                store: store.clone(),
                spool: spool.clone(),
                prices: config.prices.clone(),
                stats: stats.clone(),
                rebuild: rebuild_tx,
                links: moka::sync::Cache::new(10_000),
                seen: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(REPLAY_WINDOW)
                    .build(),
                last_full_log: None,
            }
            .run(receiver, closing.clone(), intake_done.clone()),
        );
        tasks.spawn(
            FlushTask {
                db,
                store,
                spool: spool.clone(),
                stats: stats.clone(),
                degraded: degraded.clone(),
                replica,
            }
            .run(
                config.flush_interval,
                rebuild_rx,
                closing.clone(),
                intake_done,
            ),
        );
        Ok(Some(Arc::new(Meter {
            prices: config.prices.clone(),
            drain_timeout: config.drain_timeout,
            intake,
            spool,
            stats,
            degraded,
            drains: Arc::new(Semaphore::new(MAX_DRAINS)),
            closing,
            tasks,
            runtime: tokio::runtime::Handle::current(),
        })))
    }

    /// Hands a tap's observation to the intake task (never waits).
    pub fn observe(&self, observation: Observation) {
        if self
            .intake
            .send(Intake::Count(Box::new(observation)))
            .is_err()
        {
            self.stats.records_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("usage: a count arrived after the meter closed; it is lost");
        }
    }

    fn link(&self, stream_id: String, link: Link) {
        let _ = self.intake.send(Intake::Link { stream_id, link });
    }

    /// The price list (for taps; intake prices records itself).
    pub fn prices(&self) -> &[crate::config::ModelPrice] {
        &self.prices
    }

    /// Why Postgres is degraded, if it is (for `/readyz`).
    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// On shutdown: counts still queued reach the spool, then one last flush
    /// runs; whatever does not commit within `within` stays spooled for the
    /// next start.
    pub async fn close(&self, within: Duration) {
        self.closing.cancel();
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                bytes = self.spool.bytes(),
                "usage: the last flush did not finish within the grace; the spool keeps the counts"
            );
        }
    }

    /// The spool's size in bytes and when its oldest record was written
    /// (`/metrics`, read by `crate::metrics`).
    pub fn spool_state(&self) -> (u64, Option<SystemTime>) {
        (self.spool.bytes(), self.spool.oldest())
    }
}

struct IntakeTask {
    store: Arc<dyn Store>,
    spool: Arc<Spool>,
    prices: Vec<crate::config::ModelPrice>,
    stats: Arc<UsageStats>,
    rebuild: mpsc::UnboundedSender<(String, String)>,
    /// Stream links seen by this replica (the store has everyone's).
    links: moka::sync::Cache<String, Link>,
    /// Replay keys, when the store does not answer.
    seen: moka::sync::Cache<String, ()>,
    last_full_log: Option<std::time::Instant>,
}

impl IntakeTask {
    async fn run(
        mut self,
        mut receiver: mpsc::UnboundedReceiver<Intake>,
        closing: CancellationToken,
        done: CancellationToken,
    ) {
        let mut sync = tokio::time::interval(SYNC_EVERY);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = receiver.recv() => match message {
                    Some(message) => self.handle(message).await,
                    None => break,
                },
                _ = sync.tick() => self.sync(),
                _ = closing.cancelled() => {
                    while let Ok(message) = receiver.try_recv() {
                        self.handle(message).await;
                    }
                    break;
                }
            }
        }
        self.sync();
        done.cancel();
    }

    fn sync(&self) {
        if let Err(error) = self.spool.sync() {
            tracing::error!(%error, "usage: cannot fsync the spool");
        }
    }

    async fn handle(&mut self, message: Intake) {
        match message {
            Intake::Link { stream_id, link } => {
                if let Ok(json) = serde_json::to_vec(&link) {
                    let _ = self
                        .store
                        .set(&stream_key(&stream_id), json.into(), REPLAY_WINDOW)
                        .await;
                }
                self.links.insert(stream_id, link);
            }
            Intake::Count(observation) => self.count(*observation).await,
        }
    }

    async fn count(&mut self, mut obs: Observation) {
        if uuid::Uuid::parse_str(&obs.who.org).is_err()
            || uuid::Uuid::parse_str(&obs.who.user).is_err()
        {
            self.stats.records_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(org = %obs.who.org, user = %obs.who.user, "usage: organization or user id is not a UUID; not counted");
            return;
        }
        if let Some(stream_id) = obs.stream_id.clone() {
            if obs.conversation.is_none() || obs.endpoint.is_none() {
                if let Some(link) = self.find_link(&stream_id).await {
                    if obs.conversation.is_none() {
                        obs.conversation = link.conversation;
                    }
                    if obs.endpoint.is_none() {
                        obs.endpoint = link.endpoint;
                    }
                    if obs.model.is_none() {
                        obs.model = link.model;
                    }
                }
            }
            // LibreChat's stream id is the conversation id.
            if obs.conversation.is_none() {
                obs.conversation = Some(stream_id);
            }
        }
        let mut tokens = obs.tokens.take();
        if let Some(t) = &tokens {
            if let Some(replay_key) = &t.replay_key {
                let scope = obs.conversation.as_deref().unwrap_or("-");
                if !self
                    .first_time(&format!("chatgate:usage:seen:{scope}:{replay_key}"))
                    .await
                {
                    self.stats.replays_skipped.fetch_add(1, Ordering::Relaxed);
                    tokens = None;
                }
            }
        }
        let (token_count, cost_nanos, token_model) = match &tokens {
            Some(t) => (
                t.input + t.output,
                t.cost_nanos
                    .unwrap_or_else(|| count::priced(&self.prices, t)),
                t.model.clone(),
            ),
            None => (0, 0, None),
        };
        if obs.messages == 0 && token_count == 0 && cost_nanos == 0 && obs.endpoint.is_none() {
            return;
        }
        let record = Record {
            org: obs.who.org,
            user: obs.who.user,
            date: aggregate::today(),
            conv: obs.conversation,
            endpoint: obs.endpoint,
            model: obs.model.or(token_model),
            messages: obs.messages,
            tokens: token_count,
            cost_nanos,
        };
        match self.spool.append(&record) {
            Ok(()) => {
                self.stats.records_spooled.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.stats.records_dropped.fetch_add(1, Ordering::Relaxed);
                let now = std::time::Instant::now();
                if self
                    .last_full_log
                    .is_none_or(|last| now.duration_since(last) > Duration::from_secs(10))
                {
                    self.last_full_log = Some(now);
                    tracing::error!(%error, "USAGE COUNTS ARE BEING LOST: the spool cannot take them");
                }
                return;
            }
        }
        if token_count > 0 {
            let month = &record.date[..7];
            let key = quota_key(&record.org, month);
            let by = token_count as i64;
            match self.store.incr(&key, by, QUOTA_TTL).await {
                // A counter that starts with this count was missing: rebuild it.
                Ok(value) if value == by => {
                    let _ = self.rebuild.send((record.org.clone(), month.to_owned()));
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "usage: month counter not updated"),
            }
        }
    }

    async fn find_link(&self, stream_id: &str) -> Option<Link> {
        if let Some(link) = self.links.get(stream_id) {
            return Some(link);
        }
        let bytes = self.store.get(&stream_key(stream_id)).await.ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Whether `key` is seen for the first time, across replicas when the
    /// store answers, else in this replica.
    async fn first_time(&self, key: &str) -> bool {
        match self.store.try_lock(key, REPLAY_WINDOW).await {
            Ok(token) => {
                self.seen.insert(key.to_owned(), ());
                token.is_some()
            }
            Err(_) => {
                let fresh = !self.seen.contains_key(key);
                self.seen.insert(key.to_owned(), ());
                fresh
            }
        }
    }
}

struct FlushTask {
    db: Db,
    store: Arc<dyn Store>,
    spool: Arc<Spool>,
    stats: Arc<UsageStats>,
    degraded: Arc<Mutex<Option<String>>>,
    replica: String,
}

impl FlushTask {
    async fn run(
        self,
        every: Duration,
        mut rebuild: mpsc::UnboundedReceiver<(String, String)>,
        closing: CancellationToken,
        intake_done: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = closing.cancelled() => break,
            }
            while let Ok((org, month)) = rebuild.try_recv() {
                self.rebuild(&org, &month).await;
            }
            self.flush().await;
        }
        intake_done.cancelled().await;
        self.flush().await;
        let left = self.spool.pending().len();
        if left > 0 {
            tracing::warn!(
                segments = left,
                "usage: shutdown with counts still spooled; the next start sends them"
            );
        }
    }

    fn set_degraded(&self, error: Option<String>) {
        *self
            .degraded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// Sends every closed segment, oldest first; stops at the first failure
    /// (order matters only for the month counter's rebuild, but a database
    /// that failed one batch fails the next).
    async fn flush(&self) {
        if let Err(error) = self.spool.rotate() {
            tracing::error!(%error, "usage: cannot close the spool segment");
        }
        let pending = self.spool.pending();
        if pending.is_empty() {
            match self.db.ping().await {
                Ok(()) => self.set_degraded(None),
                Err(error) => self.set_degraded(Some(error.to_string())),
            }
            return;
        }
        for segment in pending {
            let (records, bad) = match self.spool.read(&segment) {
                Ok(read) => read,
                Err(SpoolError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    // Removed by hand: nothing left to send.
                    let _ = self.spool.remove(&segment);
                    continue;
                }
                Err(error) => {
                    tracing::error!(%error, "usage: cannot read a spool segment");
                    return;
                }
            };
            if bad > 0 {
                tracing::warn!(bad, segment = %segment.path.display(), "usage: skipped spool lines that are not whole records (a crash mid-write)");
            }
            let mut batch = Batch::default();
            for record in &records {
                batch.add(record);
            }
            if !batch.is_empty() {
                match self.db.apply(&segment.id, &self.replica, &batch).await {
                    Ok(Applied::Now) => {
                        self.stats.batches_written.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Applied::Before) => {
                        self.stats.batches_replayed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        self.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                        let first = self.degraded.lock().map(|d| d.is_none()).unwrap_or(true);
                        if first {
                            tracing::error!(%error, spooled_bytes = self.spool.bytes(), "usage: Postgres write failed; counts stay in the spool and are sent when it is back");
                        } else {
                            tracing::debug!(%error, "usage: Postgres write failed again");
                        }
                        self.set_degraded(Some(error.to_string()));
                        return;
                    }
                }
            }
            self.set_degraded(None);
            if let Err(error) = self.spool.remove(&segment) {
                tracing::error!(%error, "usage: cannot remove a committed spool segment (it will be sent again and skipped)");
                return;
            }
        }
    }

    /// A month counter was missing: add what Postgres holds for that month.
    async fn rebuild(&self, org: &str, month: &str) {
        let Some((from, to)) = month_bounds(month) else {
            return;
        };
        match self.db.tokens_between(org, &from, &to).await {
            Ok(0) => {}
            Ok(tokens) => {
                if let Err(error) = self
                    .store
                    .incr(&quota_key(org, month), tokens, QUOTA_TTL)
                    .await
                {
                    tracing::debug!(%error, "usage: month counter not rebuilt");
                }
            }
            Err(error) => tracing::debug!(%error, "usage: month counter not rebuilt"),
        }
    }
}

/// `2026-12` → (`2026-12-01`, `2027-01-01`).
fn month_bounds(month: &str) -> Option<(String, String)> {
    let (y, m) = month.split_once('-')?;
    let (y, m): (u32, u32) = (y.parse().ok()?, m.parse().ok()?);
    let (ny, nm) = if m >= 12 { (y + 1, 1) } else { (y, m + 1) };
    Some((format!("{y:04}-{m:02}-01"), format!("{ny:04}-{nm:02}-01")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_have_bounds() {
        assert_eq!(
            month_bounds("2026-12"),
            Some(("2026-12-01".into(), "2027-01-01".into()))
        );
        assert_eq!(
            month_bounds("2026-01"),
            Some(("2026-01-01".into(), "2026-02-01".into()))
        );
        assert_eq!(month_bounds("nope"), None);
    }
}
