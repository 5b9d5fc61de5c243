//! What choosing the LibreChat instance costs a request, side by side: a sticky hit in the
//! in-process store (the steady state: the pin was renewed within the last minute), the first hit
//! in a minute (which also spawns the renewal), the store-less rendezvous fallback, and the
//! least-loaded pick of anonymous requests.
//!
//! `cargo bench --bench pick`. The pick futures are polled directly (the in-process store answers
//! at once), inside a multi-threaded tokio runtime whose workers run the spawned renewals, so the
//! figures are the pick's, not an executor's.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use chatgate::store::{MemoryStore, Store};
use chatgate::upstream::sticky::{self, StickyPins};
use chatgate::upstream::Pool;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use tokio::runtime::Runtime;

const USER: &str = "6f1d1c1e-0000-4000-8000-000000000001";

/// Polls a future that must be ready at once.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the in-process store answers at once"),
    }
}

fn pool(n: usize) -> Pool {
    let urls: Vec<url::Url> = (0..n)
        .map(|i| format!("http://10.0.0.{}:3080", i + 1).parse().unwrap())
        .collect();
    Pool::new(&urls, &[]).unwrap()
}

fn pinned(pool: &Pool) -> StickyPins {
    let store = Arc::new(MemoryStore::new());
    let url = pool.upstreams[1].url.as_str().as_bytes();
    let ttl = Duration::from_secs(3600);
    ready(store.set(&sticky::key(USER), Bytes::copy_from_slice(url), ttl)).unwrap();
    StickyPins::new(store, ttl)
}

fn pick(c: &mut Criterion) {
    let runtime = Runtime::new().expect("tokio runtime");
    let _context = runtime.enter();
    let mut group = c.benchmark_group("pick");
    for n in [3, 10] {
        let live = pool(n);
        let pins = pinned(&live);
        group.bench_function(format!("sticky_hit_memory_store/{n}_instances"), |b| {
            b.iter(|| ready(pins.pick(&live, USER, None)).expect("an instance"))
        });
        group.bench_function(format!("sticky_hit_and_renewal/{n}_instances"), |b| {
            b.iter_batched_ref(
                || pinned(&live),
                |fresh| ready(fresh.pick(&live, USER, None)).expect("an instance"),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("rendezvous_store_down/{n}_instances"), |b| {
            b.iter(|| live.choose_new(USER, None).expect("an instance").clone())
        });
        group.bench_function(format!("least_loaded_anonymous/{n}_instances"), |b| {
            b.iter(|| live.least_loaded(None).expect("an instance"))
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
