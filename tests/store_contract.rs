//! One contract, every store: each case in `cases` runs against the in-process store, a real
//! `redis-server` and a real three-node Redis Cluster, so the backends cannot drift apart.
//! Redis-only stories (outage, recovery, a server that never answers) follow the cases.
//!
//! Timing: TTLs are short (100–300 ms). A key is asserted present right after a write only when
//! the write-then-read took less than its TTL, and asserted gone only after 3× the TTL, so a slow
//! machine can make a case weaker but never make it fail.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatgate::store::{LockToken, MemoryStore, RedisStore, Store, StoreError};
use support::redis::{RedisCluster, RedisServer};
use tokio::sync::Barrier;

/// Operation timeout for the Redis stores under test.
const OP_TIMEOUT: Duration = Duration::from_millis(300);

/// The short TTL used for expiry cases.
const TTL: Duration = Duration::from_millis(200);

/// Long enough that nothing expires during a case.
const LONG: Duration = Duration::from_secs(60);

/// Upper bound for anything that should finish promptly, so a bug hangs no test run.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// A key no other case (or run) uses, shaped like chatgate's keys.
fn key(name: &str) -> String {
    format!("chatgate:test:{name}:{}", uuid::Uuid::new_v4().simple())
}

fn bytes(value: &'static str) -> Bytes {
    Bytes::from_static(value.as_bytes())
}

async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// Runs `n` copies of `op` on separate tasks, released together by a barrier.
async fn concurrently<T, F, Fut>(n: usize, op: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let barrier = barrier.clone();
            let op = op();
            tokio::spawn(async move {
                barrier.wait().await;
                op.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for task in tasks {
        results.push(task.await.expect("task panicked"));
    }
    results
}

/// The contract: every function takes a fresh `Arc<dyn Store>` (or a shared one: keys are unique).
mod cases {
    use super::*;

    pub async fn ping_answers_and_kind_is_named(store: Arc<dyn Store>) {
        store.ping().await.expect("ping");
        assert!(
            ["memory", "redis"].contains(&store.kind()),
            "{}",
            store.kind()
        );
    }

    pub async fn get_of_a_missing_key_is_none(store: Arc<dyn Store>) {
        assert_eq!(store.get(&key("missing")).await.expect("get"), None);
    }

    pub async fn set_then_get_round_trips_any_bytes(store: Arc<dyn Store>) {
        let binary = Bytes::from((0..=255u8).chain([0, 0, 255]).collect::<Vec<_>>());
        let large = Bytes::from(vec![b'x'; 256 * 1024]);
        for value in [bytes("hello"), Bytes::new(), binary, large] {
            let k = key("roundtrip");
            store.set(&k, value.clone(), LONG).await.expect("set");
            assert_eq!(store.get(&k).await.expect("get"), Some(value));
        }
    }

    pub async fn set_replaces_the_value_and_the_ttl(store: Arc<dyn Store>) {
        let k = key("replace");
        store.set(&k, bytes("first"), TTL).await.expect("set");
        store.set(&k, bytes("second"), LONG).await.expect("set");
        sleep(3 * TTL).await;
        assert_eq!(store.get(&k).await.expect("get"), Some(bytes("second")));
    }

    pub async fn keys_expire_after_their_ttl(store: Arc<dyn Store>) {
        let k = key("expiry");
        let written = Instant::now();
        store.set(&k, bytes("v"), TTL).await.expect("set");
        let value = store.get(&k).await.expect("get");
        if written.elapsed() < TTL {
            assert_eq!(value, Some(bytes("v")), "present before its TTL");
        }
        sleep(3 * TTL).await;
        assert_eq!(
            store.get(&k).await.expect("get"),
            None,
            "gone after its TTL"
        );
    }

    pub async fn delete_removes_a_key_and_tolerates_a_missing_one(store: Arc<dyn Store>) {
        let k = key("delete");
        store.set(&k, bytes("v"), LONG).await.expect("set");
        store.delete(&k).await.expect("delete");
        assert_eq!(store.get(&k).await.expect("get"), None);
        store
            .delete(&k)
            .await
            .expect("deleting a missing key is fine");
    }

    pub async fn take_returns_the_value_once(store: Arc<dyn Store>) {
        let k = key("take");
        assert_eq!(store.take(&k).await.expect("take"), None);
        store.set(&k, bytes("code"), LONG).await.expect("set");
        assert_eq!(store.take(&k).await.expect("take"), Some(bytes("code")));
        assert_eq!(store.take(&k).await.expect("take"), None);
        assert_eq!(store.get(&k).await.expect("get"), None);
    }

    pub async fn take_is_exactly_once_among_50_concurrent_takers(store: Arc<dyn Store>) {
        for round in 0..5 {
            let k = key("take-race");
            store.set(&k, bytes("code"), LONG).await.expect("set");
            let results = concurrently(50, || {
                let (store, k) = (store.clone(), k.clone());
                async move { store.take(&k).await.expect("take") }
            })
            .await;
            let winners: Vec<_> = results.into_iter().flatten().collect();
            assert_eq!(winners, vec![bytes("code")], "round {round}");
        }
    }

    pub async fn take_ignores_an_expired_value(store: Arc<dyn Store>) {
        let k = key("take-expired");
        store.set(&k, bytes("code"), TTL).await.expect("set");
        sleep(3 * TTL).await;
        assert_eq!(store.take(&k).await.expect("take"), None);
    }

    pub async fn try_lock_is_exclusive_until_unlocked(store: Arc<dyn Store>) {
        let k = key("lock");
        let token = store.try_lock(&k, LONG).await.expect("lock").expect("free");
        assert!(store.try_lock(&k, LONG).await.expect("lock").is_none());
        assert!(store.unlock(&k, &token).await.expect("unlock"));
        assert!(
            !store.unlock(&k, &token).await.expect("unlock"),
            "already released"
        );
        let again = store.try_lock(&k, LONG).await.expect("lock");
        assert!(again.is_some(), "free again after unlock");
    }

    pub async fn try_lock_has_one_winner_among_50_contenders(store: Arc<dyn Store>) {
        for round in 0..5 {
            let k = key("lock-race");
            let results = concurrently(50, || {
                let (store, k) = (store.clone(), k.clone());
                async move { store.try_lock(&k, LONG).await.expect("lock") }
            })
            .await;
            let winners: Vec<_> = results.into_iter().flatten().collect();
            assert_eq!(winners.len(), 1, "round {round}");
            assert!(store.unlock(&k, &winners[0]).await.expect("unlock"));
        }
    }

    pub async fn unlock_by_a_former_owner_leaves_the_new_owner_alone(store: Arc<dyn Store>) {
        let k = key("lock-owner");
        let first = store.try_lock(&k, TTL).await.expect("lock").expect("free");
        sleep(3 * TTL).await;
        let second = store
            .try_lock(&k, LONG)
            .await
            .expect("lock")
            .expect("an expired lock is free");
        assert!(
            !store.unlock(&k, &first).await.expect("unlock"),
            "not the owner"
        );
        assert!(
            store.try_lock(&k, LONG).await.expect("lock").is_none(),
            "still held by the second owner"
        );
        assert!(store.unlock(&k, &second).await.expect("unlock"));
    }

    pub async fn incr_creates_counts_and_reads_back_as_decimal(store: Arc<dyn Store>) {
        let k = key("counter");
        assert_eq!(store.incr(&k, 1, LONG).await.expect("incr"), 1);
        assert_eq!(store.incr(&k, 5, LONG).await.expect("incr"), 6);
        assert_eq!(store.incr(&k, -10, LONG).await.expect("incr"), -4);
        assert_eq!(store.get(&k).await.expect("get"), Some(bytes("-4")));
        let fresh = key("counter-by-0");
        assert_eq!(store.incr(&fresh, 0, LONG).await.expect("incr"), 0);
    }

    pub async fn incr_is_atomic_among_100_concurrent_increments(store: Arc<dyn Store>) {
        let k = key("counter-race");
        let mut results = concurrently(100, || {
            let (store, k) = (store.clone(), k.clone());
            async move { store.incr(&k, 1, LONG).await.expect("incr") }
        })
        .await;
        results.sort_unstable();
        assert_eq!(
            results,
            (1..=100).collect::<Vec<i64>>(),
            "each saw a distinct value"
        );
        assert_eq!(store.get(&k).await.expect("get"), Some(bytes("100")));
    }

    pub async fn incr_sets_the_ttl_once_and_never_extends_it(store: Arc<dyn Store>) {
        let k = key("counter-window");
        let ttl = 2 * TTL;
        let created = Instant::now();
        assert_eq!(store.incr(&k, 1, ttl).await.expect("incr"), 1);
        let second = store.incr(&k, 1, LONG).await.expect("incr");
        if created.elapsed() < ttl {
            assert_eq!(second, 2);
        }
        sleep(3 * ttl).await;
        if second == 2 {
            // The second increment found the key, so the key kept the first TTL.
            assert_eq!(
                store.get(&k).await.expect("get"),
                None,
                "window not extended"
            );
            assert_eq!(
                store.incr(&k, 1, LONG).await.expect("incr"),
                1,
                "a new window"
            );
        }
    }

    pub async fn incr_refuses_a_value_that_is_not_a_counter(store: Arc<dyn Store>) {
        for bad in ["abc", "", " 1", "+1", "1.5", "99999999999999999999"] {
            let k = key("not-a-counter");
            store.set(&k, bytes(bad), LONG).await.expect("set");
            match store.incr(&k, 1, LONG).await {
                Err(StoreError::Backend(_)) => {}
                other => panic!("incr on {bad:?}: {other:?}"),
            }
            assert_eq!(
                store.get(&k).await.expect("get"),
                Some(bytes(bad)),
                "untouched"
            );
        }
        let k = key("overflow");
        store
            .set(&k, Bytes::from(i64::MAX.to_string()), LONG)
            .await
            .expect("set");
        assert!(matches!(
            store.incr(&k, 1, LONG).await,
            Err(StoreError::Backend(_))
        ));
    }

    pub async fn touch_extends_a_live_key(store: Arc<dyn Store>) {
        let k = key("touch");
        let written = Instant::now();
        store.set(&k, bytes("pin"), TTL).await.expect("set");
        let touched = store.touch(&k, LONG).await.expect("touch");
        if written.elapsed() < TTL {
            assert!(touched, "the key was live");
        }
        sleep(3 * TTL).await;
        if touched {
            assert_eq!(
                store.get(&k).await.expect("get"),
                Some(bytes("pin")),
                "extended"
            );
        }
    }

    pub async fn touch_can_shorten_a_ttl(store: Arc<dyn Store>) {
        let k = key("touch-shorten");
        store.set(&k, bytes("pin"), LONG).await.expect("set");
        assert!(store.touch(&k, TTL).await.expect("touch"));
        sleep(3 * TTL).await;
        assert_eq!(store.get(&k).await.expect("get"), None);
    }

    pub async fn touch_of_a_missing_or_expired_key_is_false(store: Arc<dyn Store>) {
        assert!(!store
            .touch(&key("touch-missing"), LONG)
            .await
            .expect("touch"));
        let k = key("touch-expired");
        store.set(&k, bytes("pin"), TTL).await.expect("set");
        sleep(3 * TTL).await;
        assert!(!store.touch(&k, LONG).await.expect("touch"));
        assert_eq!(
            store.get(&k).await.expect("get"),
            None,
            "touch does not revive"
        );
    }

    pub async fn hash_tagged_keys_work_like_any_other(store: Arc<dyn Store>) {
        // The refresh single-flight keeps its lock and result under one hash tag, so a cluster
        // puts them on one node.
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let lock = format!("chatgate:refresh:{{{tag}}}:lock");
        let result = format!("chatgate:refresh:{{{tag}}}:result");
        let token = store
            .try_lock(&lock, LONG)
            .await
            .expect("lock")
            .expect("free");
        store
            .set(&result, bytes("session"), LONG)
            .await
            .expect("set");
        assert!(store.unlock(&lock, &token).await.expect("unlock"));
        assert_eq!(
            store.take(&result).await.expect("take"),
            Some(bytes("session"))
        );
    }
}

/// Stamps one test per case for the memory store and a fresh `redis-server`, and one test that
/// runs every case concurrently on a shared Redis Cluster (three nodes take a while to form).
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    cases::$case(Arc::new(MemoryStore::new())).await;
                }
            )*
        }

        // Through `store::connect`, as chatgate opens it: Redis behind the
        // fail-fast guard.
        mod redis {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let server = RedisServer::start();
                    let store = chatgate::store::connect(Some(&server.url()))
                        .await
                        .expect("connect");
                    cases::$case(store).await;
                }
            )*
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn redis_cluster_passes_every_case() {
            let cluster = RedisCluster::start(3);
            let store = RedisStore::connect(&cluster.url(), OP_TIMEOUT)
                .await
                .expect("connect");
            assert!(store.is_cluster());
            let store: Arc<dyn Store> = Arc::new(store);
            let runs = vec![$(
                (stringify!($case), tokio::spawn(cases::$case(store.clone()))),
            )*];
            let mut failed = Vec::new();
            for (name, run) in runs {
                if run.await.is_err() {
                    failed.push(name);
                }
            }
            assert!(failed.is_empty(), "failed on the cluster: {failed:?}");
            let counts = cluster.key_counts();
            assert!(counts.iter().all(|&n| n > 0), "keys spread over every node: {counts:?}");
        }
    };
}

contract!(
    ping_answers_and_kind_is_named,
    get_of_a_missing_key_is_none,
    set_then_get_round_trips_any_bytes,
    set_replaces_the_value_and_the_ttl,
    keys_expire_after_their_ttl,
    delete_removes_a_key_and_tolerates_a_missing_one,
    take_returns_the_value_once,
    take_is_exactly_once_among_50_concurrent_takers,
    take_ignores_an_expired_value,
    try_lock_is_exclusive_until_unlocked,
    try_lock_has_one_winner_among_50_contenders,
    unlock_by_a_former_owner_leaves_the_new_owner_alone,
    incr_creates_counts_and_reads_back_as_decimal,
    incr_is_atomic_among_100_concurrent_increments,
    incr_sets_the_ttl_once_and_never_extends_it,
    incr_refuses_a_value_that_is_not_a_counter,
    touch_extends_a_live_key,
    touch_can_shorten_a_ttl,
    touch_of_a_missing_or_expired_key_is_false,
    hash_tagged_keys_work_like_any_other,
);

/// Sends one RESP command and returns the reply's text: a status line (`+OK\r\n`) as is, a
/// bulk string's payload alone; "" when the node does not answer.
fn resp_command(port: u16, args: &[impl AsRef<str>]) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut request = format!("*{}\r\n", args.len());
    for arg in args.iter().map(AsRef::as_ref) {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return String::new();
    }
    let Some(len) = line
        .strip_prefix('$')
        .and_then(|n| n.trim().parse::<usize>().ok())
    else {
        return line;
    };
    let mut payload = vec![0u8; len];
    match reader.read_exact(&mut payload) {
        Ok(()) => String::from_utf8_lossy(&payload).into_owned(),
        Err(_) => String::new(),
    }
}

/// Runs every operation and asserts each answers `Unavailable` (not a hang, not another error).
async fn assert_every_operation_unavailable(store: &dyn Store, lock: &LockToken) {
    let k = key("outage");
    let results: Vec<(&str, Result<(), StoreError>)> = vec![
        ("get", store.get(&k).await.map(drop)),
        ("set", store.set(&k, bytes("v"), LONG).await),
        ("delete", store.delete(&k).await),
        ("take", store.take(&k).await.map(drop)),
        ("try_lock", store.try_lock(&k, LONG).await.map(drop)),
        ("unlock", store.unlock(&k, lock).await.map(drop)),
        ("incr", store.incr(&k, 1, LONG).await.map(drop)),
        ("touch", store.touch(&k, LONG).await.map(drop)),
        ("ping", store.ping().await),
    ];
    for (op, result) in results {
        match result {
            Err(err) if err.is_unavailable() => {}
            other => panic!("{op} while Redis is down: {other:?}"),
        }
    }
}

/// Polls PING until Redis answers again; the store must heal without being rebuilt.
async fn wait_until_answering(store: &dyn Store) {
    let deadline = Instant::now() + HANG_GUARD;
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "store did not reconnect");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Every operation works, including both Lua scripts (a restarted Redis has forgotten them).
async fn assert_every_operation_works(store: &dyn Store) {
    let k = key("after");
    store.set(&k, bytes("v"), LONG).await.expect("set");
    assert_eq!(store.get(&k).await.expect("get"), Some(bytes("v")));
    assert!(store.touch(&k, LONG).await.expect("touch"));
    assert_eq!(store.take(&k).await.expect("take"), Some(bytes("v")));
    store.delete(&k).await.expect("delete");
    let token = store.try_lock(&k, LONG).await.expect("lock").expect("free");
    assert!(store.unlock(&k, &token).await.expect("unlock"));
    assert_eq!(store.incr(&k, 2, LONG).await.expect("incr"), 2);
}

/// Redis-only stories: what the proxy sees when Redis goes away and comes back.
mod redis_outage {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_going_away_answers_unavailable_and_coming_back_heals_the_same_store() {
        let mut server = RedisServer::start();
        let store = RedisStore::connect(&server.url(), OP_TIMEOUT)
            .await
            .expect("connect");
        // Load both scripts so that after the restart EVALSHA meets an empty script cache.
        assert_every_operation_works(&store).await;
        let lock = store
            .try_lock(&key("held"), LONG)
            .await
            .expect("lock")
            .expect("free");

        server.stop();
        tokio::time::timeout(
            HANG_GUARD,
            assert_every_operation_unavailable(&store, &lock),
        )
        .await
        .expect("operations answer instead of hanging");
        // Still down a moment later, while the client is between reconnection attempts.
        sleep(Duration::from_millis(500)).await;
        tokio::time::timeout(
            HANG_GUARD,
            assert_every_operation_unavailable(&store, &lock),
        )
        .await
        .expect("operations answer instead of hanging");

        server.restart();
        wait_until_answering(&store).await;
        assert_every_operation_works(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_at_start_up_is_not_fatal() {
        let mut server = RedisServer::start();
        server.stop();
        let store = RedisStore::connect(&server.url(), OP_TIMEOUT)
            .await
            .expect("connect does not need Redis up");
        let err = tokio::time::timeout(HANG_GUARD, store.ping())
            .await
            .expect("ping answers")
            .expect_err("Redis is down");
        assert!(err.is_unavailable(), "{err:?}");

        server.restart();
        wait_until_answering(&store).await;
        assert_every_operation_works(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_refused_by_redis_auth_heals_once_redis_accepts_the_password() {
        let server = RedisServer::start();
        let url = format!("redis://:letmein@127.0.0.1:{}", server.port());
        let store = RedisStore::connect(&url, OP_TIMEOUT)
            .await
            .expect("connect");
        // Redis has no password yet, so AUTH fails: "Redis said no", not "Redis is not there".
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            match store.ping().await {
                Err(StoreError::Backend(_)) => break,
                Err(StoreError::Unavailable(_)) => {} // still retrying the connection
                other => panic!("ping with a password Redis does not know: {other:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "authentication failure never reported"
            );
        }
        let reply = resp_command(server.port(), &["CONFIG", "SET", "requirepass", "letmein"]);
        assert_eq!(reply, "+OK\r\n");
        wait_until_answering(&store).await;
        assert_every_operation_works(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_that_never_answers_times_out_as_unavailable() {
        // Accepts connections and never writes a byte: a hung Redis or a black-holed network.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let store = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), OP_TIMEOUT)
            .await
            .expect("connect");
        for _ in 0..2 {
            let err = tokio::time::timeout(HANG_GUARD, store.get("k"))
                .await
                .expect("get answers")
                .expect_err("nobody answers");
            assert!(err.is_unavailable(), "{err:?}");
        }
        silent.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn top_level_connect_picks_the_backend_from_the_url() {
        let server = RedisServer::start();
        let store = chatgate::store::connect(Some(&server.url()))
            .await
            .expect("connect");
        assert_eq!(store.kind(), "redis");
        store.ping().await.expect("ping");
        let memory = chatgate::store::connect(None).await.expect("connect");
        assert_eq!(memory.kind(), "memory");
    }
}

/// The outage stories again, on a cluster: the same store must ride out a cluster that is down
/// at start-up or goes away and comes back.
mod redis_cluster_outage {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_going_away_answers_unavailable_and_coming_back_heals_the_same_store() {
        let mut cluster = RedisCluster::start(3);
        let store = RedisStore::connect(&cluster.url(), OP_TIMEOUT)
            .await
            .expect("connect");
        assert_every_operation_works(&store).await;
        let lock = store
            .try_lock(&key("held"), LONG)
            .await
            .expect("lock")
            .expect("free");

        cluster.stop();
        tokio::time::timeout(
            HANG_GUARD,
            assert_every_operation_unavailable(&store, &lock),
        )
        .await
        .expect("operations answer instead of hanging");

        cluster.restart();
        wait_until_answering(&store).await;
        assert_every_operation_works(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_down_at_start_up_is_not_fatal() {
        let mut cluster = RedisCluster::start(3);
        cluster.stop();
        let store = RedisStore::connect(&cluster.url(), OP_TIMEOUT)
            .await
            .expect("connect does not need the cluster up");
        let err = tokio::time::timeout(HANG_GUARD, store.ping())
            .await
            .expect("ping answers")
            .expect_err("the cluster is down");
        assert!(err.is_unavailable(), "{err:?}");

        cluster.restart();
        wait_until_answering(&store).await;
        assert_every_operation_works(&store).await;
    }
}

/// chatgate's Redis is guarded: once it fails, callers skip it (no one
/// waits out a timeout per request) until a probe finds it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_redis_is_skipped_until_it_answers_again() {
    let mut server = RedisServer::start();
    let store = chatgate::store::connect(Some(&server.url())).await.unwrap();
    store
        .set("k", Bytes::from_static(b"v"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!store.degraded());
    server.stop();
    assert!(store.get("k").await.unwrap_err().is_unavailable());
    assert!(store.degraded(), "the failure opened the breaker");
    assert!(store.get("k").await.unwrap_err().is_unavailable());
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .set("k", Bytes::from_static(b"w"), Duration::from_secs(60))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the store never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!store.degraded());
    assert_eq!(store.get("k").await.unwrap().as_deref(), Some(&b"w"[..]));
}
