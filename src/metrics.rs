//! Counters exported at `/metrics` in the Prometheus text format. Plain
//! atomics: the hot path pays one relaxed increment per request.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::upstream::{Health, Pool};

/// A per-instance metric family: name, type, help, value.
type UpstreamFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::upstream::Upstream) -> u64,
);

#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    responses: [AtomicU64; 5],
    upstream_errors: AtomicU64,
    retries: AtomicU64,
    /// HTTP/1.1 connections parked (`server::Listeners::serve_http1`).
    connections_parked: AtomicU64,
    /// Open client connections per serving thread (`server::start` sizes it).
    worker_connections: std::sync::OnceLock<Box<[AtomicU64]>>,
}

impl Metrics {
    pub fn record_response(&self, status: http::StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Sizes the per-worker connection gauges; the first call wins.
    pub fn set_workers(&self, workers: usize) {
        let _ = self
            .worker_connections
            .set((0..workers.max(1)).map(|_| AtomicU64::new(0)).collect());
    }

    pub fn connection_opened(&self, worker: usize) {
        if let Some(open) = self.open_on(worker) {
            open.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn connection_closed(&self, worker: usize) {
        if let Some(open) = self.open_on(worker) {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn open_on(&self, worker: usize) -> Option<&AtomicU64> {
        self.worker_connections.get()?.get(worker)
    }

    pub fn connection_parked(&self) {
        self.connections_parked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_unparked(&self) {
        self.connections_parked.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, pool: &Pool, draining: bool) -> String {
        let mut out = String::with_capacity(1024);
        out.push_str("# HELP chatgate_responses_total Responses sent, by status class.\n");
        out.push_str("# TYPE chatgate_responses_total counter\n");
        for (i, counter) in self.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "chatgate_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                counter.load(Ordering::Relaxed)
            );
        }
        single(
            &mut out,
            "chatgate_upstream_errors_total",
            "counter",
            "Requests that failed to reach or hear from an instance.",
            self.upstream_errors.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "chatgate_retries_total",
            "counter",
            "Requests retried on another instance.",
            self.retries.load(Ordering::Relaxed),
        );
        out.push_str("# HELP chatgate_upstream_healthy Whether an instance takes traffic.\n");
        out.push_str("# TYPE chatgate_upstream_healthy gauge\n");
        out.push_str("# HELP chatgate_upstream_in_flight Requests in flight per instance.\n");
        out.push_str("# TYPE chatgate_upstream_in_flight gauge\n");
        for upstream in &pool.upstreams {
            let healthy = u8::from(upstream.health() != Health::Unhealthy);
            let _ = writeln!(
                out,
                "chatgate_upstream_healthy{{upstream=\"{}\"}} {healthy}",
                upstream.url
            );
            let _ = writeln!(
                out,
                "chatgate_upstream_in_flight{{upstream=\"{}\"}} {}",
                upstream.url,
                upstream.in_flight()
            );
        }
        // One family at a time, each sample under its own HELP/TYPE.
        let families: [UpstreamFamily; 3] = [
            (
                "chatgate_upstream_ejected",
                "gauge",
                "Whether failed requests took an instance out of rotation (panic routing may still use it).",
                |u| u64::from(u.is_ejected()),
            ),
            (
                "chatgate_upstream_connection_waits_total",
                "counter",
                "Requests that waited for one of librechat.max_connections_per_instance.",
                |u| u.connection_waits.load(Ordering::Relaxed),
            ),
            (
                "chatgate_upstream_connection_wait_timeouts_total",
                "counter",
                "Requests answered 503 because every connection to the instance stayed in use.",
                |u| u.connection_wait_timeouts.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for upstream in &pool.upstreams {
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\"}} {}",
                    upstream.url,
                    value(upstream)
                );
            }
        }
        single(
            &mut out,
            "chatgate_pool_panic",
            "gauge",
            "1 while fewer than half of the instances are routable and passive ejections are ignored.",
            u64::from(pool.is_panicking()),
        );
        out.push_str(
            "# HELP chatgate_connections_open Client connections open, by serving thread.\n",
        );
        out.push_str("# TYPE chatgate_connections_open gauge\n");
        for (worker, open) in self
            .worker_connections
            .get()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "chatgate_connections_open{{worker=\"{worker}\"}} {}",
                open.load(Ordering::Relaxed)
            );
        }
        single(
            &mut out,
            "chatgate_connections_parked",
            "gauge",
            "Idle HTTP/1.1 connections whose buffers are freed until the client speaks again.",
            self.connections_parked.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "chatgate_draining",
            "gauge",
            "Whether shutdown has begun.",
            u64::from(draining),
        );
        out
    }
}

/// A metric family of one unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}
