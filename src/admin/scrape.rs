//! What `/metrics` reads when it is asked: the instances, the store, usage
//! metering and the drain, whose figures live in their own modules; the
//! request path's recorded families come from `crate::metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::app::App;
use crate::upstream::{Health, Upstream};

/// A label set with one value known only at run time (an instance's URL).
type Named = [(&'static str, String); 1];
/// A per-instance family: name, help, how to read the value.
type PerInstance<T> = (&'static str, &'static str, fn(&Upstream) -> T);

/// The whole `/metrics` text.
pub fn render(app: &App) -> String {
    let mut out = String::with_capacity(16 * 1024);
    app.metrics.encode(&mut out);
    let _ = prometheus_text::encode(&mut out, &read_now(app));
    out
}

/// Families whose values live elsewhere, read at scrape time.
fn read_now(app: &App) -> Registry {
    let mut registry = Registry::default();
    let pool = &app.pool;
    let draining = app.is_draining();
    let per_instance: [PerInstance<i64>; 3] = [
        ("chatgate_upstream_healthy", "Whether an instance takes traffic", |u| {
            i64::from(u.health() != Health::Unhealthy)
        }),
        ("chatgate_upstream_in_flight", "Requests in flight per instance", |u| {
            i64::try_from(u.in_flight()).unwrap_or(i64::MAX)
        }),
        (
            "chatgate_upstream_ejected",
            "Whether failed requests took an instance out of rotation (panic routing may still use it)",
            |u| i64::from(u.is_ejected()),
        ),
    ];
    for (name, help, value) in per_instance {
        let family = Family::<Named, Gauge>::default();
        for upstream in &pool.upstreams {
            family
                .get_or_create(&[("upstream", upstream.url.to_string())])
                .set(value(upstream));
        }
        registry.register(name, help, family);
    }
    let waits: [PerInstance<u64>; 2] = [
        (
            "chatgate_upstream_connection_waits",
            "Requests that waited for one of librechat.max_connections_per_instance",
            |u| u.connection_waits.load(Ordering::Relaxed),
        ),
        (
            "chatgate_upstream_connection_wait_timeouts",
            "Requests answered 503 because every connection to the instance stayed in use",
            |u| u.connection_wait_timeouts.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in waits {
        let family = Family::<Named, Counter>::default();
        for upstream in &pool.upstreams {
            family
                .get_or_create(&[("upstream", upstream.url.to_string())])
                .inc_by(value(upstream));
        }
        registry.register(name, help, family);
    }
    gauge(
        &mut registry,
        "chatgate_pool_panic",
        "1 while fewer than half of the instances are routable and passive ejections are ignored",
        i64::from(pool.is_panicking()),
    );
    gauge(
        &mut registry,
        "chatgate_draining",
        "Whether shutdown has begun",
        i64::from(draining),
    );
    gauge(
        &mut registry,
        "chatgate_connections_draining",
        "Client connections still open after shutdown began (0 before)",
        if draining {
            app.metrics.open_connections()
        } else {
            0
        },
    );
    counter(
        &mut registry,
        "chatgate_store_errors",
        "Store operations that failed (Redis did not answer or refused)",
        app.store.errors(),
    );
    gauge(
        &mut registry,
        "chatgate_store_breaker_open",
        "1 while the store is skipped after failing (sticky pins fall back to hashing)",
        i64::from(app.store.degraded()),
    );
    if let Some(meter) = app.usage.as_deref() {
        usage_families(&mut registry, meter);
    }
    registry
}

/// Usage metering's own counters (SPEC section 11), read-only.
fn usage_families(registry: &mut Registry, meter: &crate::usage::Meter) {
    let stats = &meter.stats;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let counters = [
        (
            "chatgate_usage_batches_written",
            "Usage batches committed to Postgres",
            load(&stats.batches_written),
        ),
        (
            "chatgate_usage_batches_replayed",
            "Usage batches found already committed (sent again after a lost commit)",
            load(&stats.batches_replayed),
        ),
        (
            "chatgate_usage_flush_failures",
            "Usage flushes that failed (Postgres unreachable or refusing)",
            load(&stats.flush_failures),
        ),
        (
            "chatgate_usage_records_spooled",
            "Counted records written to the usage spool",
            load(&stats.records_spooled),
        ),
        (
            "chatgate_usage_records_dropped",
            "Counted records lost (spool full or unwritable)",
            load(&stats.records_dropped),
        ),
        (
            "chatgate_usage_replays_skipped",
            "Replayed usage events (resumed streams) not counted again",
            load(&stats.replays_skipped),
        ),
        (
            "chatgate_usage_events_rejected",
            "Usage events rejected for impossible counts",
            load(&stats.events_rejected),
        ),
        (
            "chatgate_usage_drains_refused",
            "Streams whose client left while the drain cap was reached (counted as far as seen)",
            load(&stats.drains_refused),
        ),
    ];
    for (name, help, value) in counters {
        counter(registry, name, help, value);
    }
    let (bytes, oldest) = meter.spool_state();
    let age = oldest
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(0, |d| d.as_secs());
    let gauges = [
        (
            "chatgate_usage_spool_bytes",
            "Bytes of counted records waiting in the usage spool",
            bytes,
        ),
        (
            "chatgate_usage_spool_oldest_seconds",
            "Age of the oldest record in the usage spool (0 = empty)",
            age,
        ),
        (
            "chatgate_usage_drains_running",
            "Streams read on after their client left, to count them",
            load(&stats.drains_running),
        ),
        (
            "chatgate_usage_postgres_up",
            "Whether the last write or ping reached Postgres",
            u64::from(meter.degraded().is_none()),
        ),
    ];
    for (name, help, value) in gauges {
        gauge(
            registry,
            name,
            help,
            i64::try_from(value).unwrap_or(i64::MAX),
        );
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}
