//! What `/metrics` shows (SPEC section 14), through `prometheus-client`,
//! the Prometheus project's own Rust client.
//!
//! Every labelled series the request path records is created once, here,
//! and kept as a handle (an array indexed by an enum): recording is one
//! relaxed atomic add (a histogram: one uncontended lock), with no label
//! hashing and no allocation per request. What other parts already count
//! (instances, the store, usage) is read when `/metrics` is scraped
//! (`admin::scrape`).

use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set of static words, e.g. `[("outcome", "hit")]`.
type Words<const N: usize> = [(&'static str, &'static str); N];
/// A label set with one value known only at run time (an instance's URL).
type Named = [(&'static str, String); 1];

/// What kind of request a response answered (the `route` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// `/healthz`, `/readyz`, `/metrics`, the seed API, the OpenID provider.
    ChatgateOwn,
    /// A browser navigation (`GET` accepting HTML).
    Page,
    /// Any other request LibreChat answers.
    Api,
    /// A chat request (its body read by the policy phase).
    Chat,
    /// A response streamed as Server-Sent Events (not a chat request).
    Stream,
    /// A WebSocket upgrade.
    WebSocket,
}

const ROUTE_CLASSES: [&str; 6] = ["chatgate_own", "page", "api", "chat", "stream", "websocket"];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// How the Supabase session of a request read (the `outcome` label).
#[derive(Debug, Clone, Copy)]
pub enum AuthOutcome {
    Valid,
    Refreshed,
    Ended,
    Absent,
    Unavailable,
}
const AUTH_OUTCOMES: [&str; 5] = ["valid", "refreshed", "ended", "absent", "unavailable"];

/// How an organization lookup was answered.
#[derive(Debug, Clone, Copy)]
pub enum LookupOutcome {
    /// A fresh cached profile.
    Hit,
    /// Loaded (from the store or PostgREST).
    Miss,
    /// PostgREST failed or was slow: the previous profile was served.
    Stale,
    /// No profile could be served.
    Error,
}
const LOOKUP_OUTCOMES: [&str; 4] = ["hit", "miss", "stale", "error"];

/// What a sticky pin decided.
#[derive(Debug, Clone, Copy)]
pub enum PinOutcome {
    /// The user's pinned instance took the request.
    Hit,
    /// The user had no pin: one was made.
    New,
    /// The pinned instance was not routable: the user moved.
    Moved,
    /// The store did not answer: rendezvous hashing decided.
    Fallback,
}
const PIN_OUTCOMES: [&str; 4] = ["hit", "new", "moved", "fallback"];

/// The error codes of SPEC section 10's refusals (the `reason` label).
const POLICY_REASONS: [&str; 5] = [
    "model_not_allowed",
    "feature_disabled",
    "payload_too_large",
    "quota_exceeded",
    "bad_request",
];

/// Counters of one family, one per label value, indexed by the enum `E`
/// whose variants are the values (so a pin outcome cannot be counted as a
/// lookup's).
#[derive(Debug, Clone)]
pub struct Outcomes<E, const N: usize> {
    counters: [Counter; N],
    kind: PhantomData<fn(E)>,
}

impl<E: Into<usize>, const N: usize> Outcomes<E, N> {
    /// Registers `name{key=…}` with a series per word, all shown from the start.
    fn register(
        registry: &mut Registry,
        name: &str,
        help: &str,
        key: &'static str,
        words: [&'static str; N],
    ) -> Self {
        let family = Family::<Words<1>, Counter>::default();
        let counters = words.map(|word| family.get_or_create_owned(&[(key, word)]));
        registry.register(name, help, family);
        Self {
            counters,
            kind: PhantomData,
        }
    }

    /// Counters not shown anywhere (components built outside an `App`).
    pub fn detached() -> Self {
        Self {
            counters: std::array::from_fn(|_| Counter::default()),
            kind: PhantomData,
        }
    }

    pub fn record(&self, outcome: E) {
        self.counters[outcome.into()].inc();
    }
}

macro_rules! index_of_variant {
    ($($kind:ty),*) => {$(
        impl From<$kind> for usize {
            fn from(outcome: $kind) -> usize {
                outcome as usize
            }
        }
    )*};
}
index_of_variant!(AuthOutcome, LookupOutcome, PinOutcome);

/// A policy refusal's error code, by its place in `POLICY_REASONS`.
#[derive(Debug, Clone, Copy)]
struct PolicyReason(usize);

impl From<PolicyReason> for usize {
    fn from(reason: PolicyReason) -> usize {
        reason.0
    }
}

/// Sticky-pin decisions, recorded by `upstream::sticky`.
pub type PinCounters = Outcomes<PinOutcome, 4>;

/// Organization lookups, recorded by `supabase::tenant`.
pub type LookupCounters = Outcomes<LookupOutcome, 4>;

/// Session refreshes, recorded by `supabase::refresh`.
#[derive(Debug, Clone, Default)]
pub struct RefreshCounters {
    /// Calls to Supabase's token endpoint.
    pub refreshes: Counter,
    /// Requests that took another request's (or replica's) refresh.
    pub joined: Counter,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Responses by route class, then status class.
    responses: [[Counter; 5]; 6],
    durations: [[Histogram; 5]; 6],
    added: Histogram,
    upstream_errors: Counter,
    retries: Counter,
    auth: Outcomes<AuthOutcome, 5>,
    policy_refusals: Outcomes<PolicyReason, 5>,
    pub refresh: RefreshCounters,
    pub lookups: LookupCounters,
    pub pins: PinCounters,
    connections_parked: Gauge,
    workers: Family<Named, Gauge>,
    /// Open client connections per serving thread (`server::start` sizes it).
    worker_connections: OnceLock<Box<[Gauge]>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds, from 1 ms to about 33 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16)
}

/// Seconds, from 50 µs to about 0.8 s, doubling: chatgate's own work.
fn added_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 15)
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let responses_family = Family::<Words<2>, Counter>::default();
        let durations_family =
            Family::<Words<2>, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(latency_buckets())
            });
        let responses = ROUTE_CLASSES.map(|route| {
            STATUS_CLASSES.map(|class| {
                responses_family.get_or_create_owned(&[("class", class), ("route", route)])
            })
        });
        let durations = ROUTE_CLASSES.map(|route| {
            STATUS_CLASSES.map(|class| {
                durations_family.get_or_create_owned(&[("class", class), ("route", route)])
            })
        });
        registry.register(
            "chatgate_responses",
            "Responses sent, by status class and route class (chatgate's own routes included)",
            responses_family,
        );
        registry.register(
            "chatgate_response_duration_seconds",
            "Time from a request's arrival to its response's head, by status class and route class",
            durations_family,
        );
        let added = Histogram::new(added_buckets());
        registry.register(
            "chatgate_added_latency_seconds",
            "Time chatgate spent on a forwarded request before handing it to the forward phase (identify, policy, rewrite)",
            added.clone(),
        );
        let upstream_errors = Counter::default();
        registry.register(
            "chatgate_upstream_errors",
            "Requests that failed to reach or hear from an instance",
            upstream_errors.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "chatgate_retries",
            "Requests retried on another instance",
            retries.clone(),
        );
        let auth = Outcomes::register(
            &mut registry,
            "chatgate_auth",
            "Supabase sessions read, by outcome",
            "outcome",
            AUTH_OUTCOMES,
        );
        let refresh = RefreshCounters::default();
        registry.register(
            "chatgate_auth_refreshes",
            "Calls to Supabase to refresh an expired session",
            refresh.refreshes.clone(),
        );
        registry.register(
            "chatgate_auth_refresh_joins",
            "Requests that took a refresh another request or replica made",
            refresh.joined.clone(),
        );
        let lookups = Outcomes::register(
            &mut registry,
            "chatgate_org_lookups",
            "Organization (profile) lookups, by outcome",
            "outcome",
            LOOKUP_OUTCOMES,
        );
        let pins = Outcomes::register(
            &mut registry,
            "chatgate_sticky_pins",
            "Sticky-pin decisions for signed-in users' requests, by outcome",
            "outcome",
            PIN_OUTCOMES,
        );
        let policy_refusals = Outcomes::register(
            &mut registry,
            "chatgate_policy_refusals",
            "Requests refused by the organization's policy, by error code",
            "reason",
            POLICY_REASONS,
        );
        let connections_parked = Gauge::default();
        registry.register(
            "chatgate_connections_parked",
            "Idle HTTP/1.1 connections whose buffers are freed until the client speaks again",
            connections_parked.clone(),
        );
        let workers = Family::<Named, Gauge>::default();
        registry.register(
            "chatgate_connections_open",
            "Client connections open, by serving thread",
            workers.clone(),
        );
        Self {
            registry,
            responses,
            durations,
            added,
            upstream_errors,
            retries,
            auth,
            policy_refusals,
            refresh,
            lookups,
            pins,
            connections_parked,
            workers,
            worker_connections: OnceLock::new(),
        }
    }

    /// One response: counted and timed (to its head) by route and status class.
    pub fn record_response(&self, route: RouteClass, status: http::StatusCode, took: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.responses[route as usize][class].inc();
        self.durations[route as usize][class].observe(took.as_secs_f64());
    }

    /// The time a forwarded request spent in chatgate before being sent.
    pub fn record_added_latency(&self, took: Duration) {
        self.added.observe(took.as_secs_f64());
    }

    pub fn record_auth(&self, outcome: AuthOutcome) {
        self.auth.record(outcome);
    }

    /// A policy refusal, by its error code (other codes are not counted).
    pub fn record_policy_refusal(&self, code: &str) {
        if let Some(index) = POLICY_REASONS.iter().position(|r| *r == code) {
            self.policy_refusals.record(PolicyReason(index));
        }
    }

    pub fn record_upstream_error(&self) {
        self.upstream_errors.inc();
    }

    pub fn record_retry(&self) {
        self.retries.inc();
    }

    /// Sizes the per-worker connection gauges; the first call wins.
    pub fn set_workers(&self, workers: usize) {
        let _ = self.worker_connections.set(
            (0..workers.max(1))
                .map(|worker| {
                    self.workers
                        .get_or_create_owned(&[("worker", worker.to_string())])
                })
                .collect(),
        );
    }

    pub fn connection_opened(&self, worker: usize) {
        if let Some(open) = self.open_on(worker) {
            open.inc();
        }
    }

    pub fn connection_closed(&self, worker: usize) {
        if let Some(open) = self.open_on(worker) {
            open.dec();
        }
    }

    fn open_on(&self, worker: usize) -> Option<&Gauge> {
        self.worker_connections.get()?.get(worker)
    }

    pub fn connection_parked(&self) {
        self.connections_parked.inc();
    }

    pub fn connection_unparked(&self) {
        self.connections_parked.dec();
    }

    /// The recorded families, in the Prometheus text format.
    pub fn encode(&self, out: &mut String) {
        let _ = prometheus_text::encode(out, &self.registry);
    }

    /// Client connections open on every serving thread together.
    pub fn open_connections(&self) -> i64 {
        self.worker_connections
            .get()
            .map_or(0, |gauges| gauges.iter().map(Gauge::get).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_series_show_with_their_labels() {
        let metrics = Metrics::new();
        metrics.record_response(
            RouteClass::Chat,
            http::StatusCode::OK,
            Duration::from_millis(3),
        );
        metrics.record_auth(AuthOutcome::Refreshed);
        metrics.record_policy_refusal("quota_exceeded");
        metrics.record_policy_refusal("not_a_policy_code");
        metrics.pins.record(PinOutcome::Moved);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &metrics.registry).unwrap();
        for line in [
            "chatgate_responses_total{class=\"2xx\",route=\"chat\"} 1",
            "chatgate_responses_total{class=\"5xx\",route=\"websocket\"} 0",
            "chatgate_response_duration_seconds_count{class=\"2xx\",route=\"chat\"} 1",
            "chatgate_auth_total{outcome=\"refreshed\"} 1",
            "chatgate_policy_refusals_total{reason=\"quota_exceeded\"} 1",
            "chatgate_sticky_pins_total{outcome=\"moved\"} 1",
            "chatgate_sticky_pins_total{outcome=\"hit\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from\n{out}");
        }
    }
}
