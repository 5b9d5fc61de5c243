//! The LibreChat pool (SPEC section 9) on real sockets: two chatgate replicas sharing a real
//! Redis (or a real three-node Redis Cluster), three stand-in LibreChat instances that report
//! which of them answered, and signed-in users whose browsers alternate between the replicas,
//! as a load balancer would spread them.
//!
//! Instances, Redis and the cluster are stopped for real (the port refuses connections). No test
//! sleeps to wait for something or asserts a duration; `eventually` polls with a bound.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chatgate::app::Options;
use chatgate::config::Config;
use chatgate::server::{self, Running};
use http::StatusCode;
use support::chatgate::{eventually, GateConfig, SignedIn};
use support::client::{build_request, collect, Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::redis::{RedisCluster, RedisServer, Resp};
use support::supabase::{SigningKind, StandInSupabase};

const USERS: usize = 20;

/// Polls `check` every 20 ms until it holds; panics with `what` after 500 tries. Unlike
/// `eventually`, `check` may borrow a browser mutably.
macro_rules! until {
    ($what:expr, $check:expr) => {{
        let mut held = false;
        for _ in 0..500 {
            if $check {
                held = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(held, "never happened: {}", $what);
    }};
}

/// The stand-in Supabase and three LibreChat instances, `lc-0`, `lc-1` and `lc-2`.
struct World {
    supabase: StandInSupabase,
    instances: Vec<StandInLibreChat>,
}

impl World {
    async fn start() -> World {
        let supabase = StandInSupabase::start(SigningKind::Hs256).await;
        let mut instances = Vec::new();
        for i in 0..3 {
            instances.push(StandInLibreChat::start(&format!("lc-{i}")).await);
        }
        World {
            supabase,
            instances,
        }
    }

    fn urls(&self) -> Vec<String> {
        self.instances.iter().map(StandInLibreChat::url).collect()
    }

    /// The instance that answers as `id`.
    fn instance(&self, id: &str) -> &StandInLibreChat {
        self.instances
            .iter()
            .find(|i| i.id() == id)
            .unwrap_or_else(|| panic!("no instance {id}"))
    }

    /// The instance whose URL a pin holds (`http://127.0.0.1:PORT/`).
    fn id_of_url(&self, url: &str) -> String {
        let url = url.trim_end_matches('/');
        self.instances
            .iter()
            .find(|i| i.url() == url)
            .unwrap_or_else(|| panic!("no instance at {url}"))
            .id()
            .to_owned()
    }

    fn browsers(&self, from: usize, n: usize) -> Vec<Browser> {
        (from..from + n)
            .map(|i| {
                Browser::new(SignedIn::new(
                    &self.supabase,
                    &format!("user{i}@acme.example"),
                ))
            })
            .collect()
    }

    /// A chatgate replica on `redis_url`, with `tweak` applied to its config.
    async fn replica(&self, redis_url: &str, tweak: impl FnOnce(&mut Config)) -> Replica {
        let mut gate = GateConfig::new(&self.urls()).with_supabase(&self.supabase);
        gate.redis_url = redis_url.to_owned();
        Replica::start(gate, tweak, Duration::from_millis(100)).await
    }

    /// Two replicas on the same store.
    async fn replicas(&self, redis_url: &str) -> [Replica; 2] {
        [
            self.replica(redis_url, |_| {}).await,
            self.replica(redis_url, |_| {}).await,
        ]
    }
}

/// A chatgate replica running in this process.
struct Replica {
    running: Running,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(gate: GateConfig, tweak: impl FnOnce(&mut Config), health: Duration) -> Self {
        support::init_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = gate.load(dir.path());
        tweak(&mut config);
        let options = Options {
            health_interval: health,
            config_path: None,
            workers: gate.workers,
            header_read_timeout: gate.header_read_timeout,
        };
        let running = server::start(config, options)
            .await
            .expect("chatgate starts");
        Replica { running, _dir: dir }
    }

    fn addr(&self) -> SocketAddr {
        self.running.tls_addr
    }

    fn healthy(&self) -> usize {
        self.running.app().pool.healthy_count()
    }

    /// The value of an unlabelled counter at `/metrics`.
    async fn metric(&self, name: &str) -> u64 {
        let mut client = TestClient::connect(self.addr(), Alpn::H1).await.unwrap();
        let (_, _, body) = client.get("/metrics", &[]).await;
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not in /metrics"))
    }

    async fn readyz(&self) -> (StatusCode, serde_json::Value) {
        let mut client = TestClient::connect(self.addr(), Alpn::H1).await.unwrap();
        let (status, _, body) = client.get("/readyz", &[]).await;
        (status, serde_json::from_slice(&body).unwrap())
    }
}

/// What one request got: the instance that answered, or why it failed.
type Answer = Result<String, String>;

/// One signed-in user's browser: a keep-alive connection to each replica it has used, and every
/// answer it got, in order.
struct Browser {
    user: SignedIn,
    connections: HashMap<SocketAddr, TestClient>,
    answers: Vec<Answer>,
}

impl Browser {
    fn new(user: SignedIn) -> Browser {
        Browser {
            user,
            connections: HashMap::new(),
            answers: Vec::new(),
        }
    }

    fn user_id(&self) -> &str {
        self.user.session.user_id()
    }

    /// `GET /api/convos` through `replica`, as LibreChat's UI fetches it. Any transport error or
    /// status other than 200 is a failure.
    async fn get(&mut self, replica: SocketAddr) -> Answer {
        let client = match self.connections.entry(replica) {
            std::collections::hash_map::Entry::Occupied(c) => c.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let client = TestClient::connect(replica, Alpn::H1)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                v.insert(client)
            }
        };
        let request = build_request(
            http::Method::GET,
            "/api/convos?pageSize=25",
            &[self.user.header()],
            bytes::Bytes::new(),
        );
        let answer = match client.send(request).await {
            Err(e) => Err(format!("transport: {e}")),
            Ok(response) => match collect(response).await {
                (StatusCode::OK, headers, _) => Ok(headers
                    .get("x-instance")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_owned()),
                (status, _, body) => Err(format!("{status}: {}", String::from_utf8_lossy(&body))),
            },
        };
        if answer.is_err() {
            self.connections.remove(&replica);
        }
        self.answers.push(answer.clone());
        answer
    }

    /// The instances that answered, with repeats in a row collapsed: `["lc-0"]` for a user who
    /// never moved, `["lc-0", "lc-2"]` for one who moved once.
    fn path(&self) -> Vec<&str> {
        let mut path: Vec<&str> = self
            .answers
            .iter()
            .filter_map(|a| a.as_deref().ok())
            .collect();
        path.dedup();
        path
    }

    /// The instance that answered last.
    fn instance(&self) -> &str {
        self.path().last().copied().expect("answered at least once")
    }

    fn failures(&self) -> Vec<&str> {
        self.answers
            .iter()
            .filter_map(|a| a.as_ref().err().map(String::as_str))
            .collect()
    }
}

/// Every browser makes `per_user` GETs at once with the others, alternating between the two
/// replicas (half the users start on each). `sent` counts requests as they complete, so a test
/// can act while the round is under way.
async fn round(
    browsers: Vec<Browser>,
    replicas: [SocketAddr; 2],
    per_user: usize,
    sent: Arc<AtomicUsize>,
) -> Vec<Browser> {
    let tasks: Vec<_> = browsers
        .into_iter()
        .enumerate()
        .map(|(i, mut browser)| {
            let sent = sent.clone();
            tokio::spawn(async move {
                for n in 0..per_user {
                    browser.get(replicas[(i + n) % 2]).await.ok();
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                browser
            })
        })
        .collect();
    let mut browsers = Vec::new();
    for task in tasks {
        browsers.push(task.await.expect("browser task"));
    }
    browsers
}

/// A round under way in the background, and how far it got.
struct Load {
    task: tokio::task::JoinHandle<Vec<Browser>>,
    sent: Arc<AtomicUsize>,
}

fn start_round(browsers: Vec<Browser>, replicas: [SocketAddr; 2], per_user: usize) -> Load {
    let sent = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(round(browsers, replicas, per_user, sent.clone()));
    Load { task, sent }
}

impl Load {
    async fn until_sent(&self, n: usize) {
        eventually(&format!("{n} requests sent"), || async {
            self.sent.load(Ordering::Relaxed) >= n
        })
        .await;
    }

    async fn finish(self) -> Vec<Browser> {
        self.task.await.expect("round")
    }
}

fn addrs(replicas: &[Replica; 2]) -> [SocketAddr; 2] {
    [replicas[0].addr(), replicas[1].addr()]
}

async fn all_healthy(replicas: &[&Replica]) {
    eventually("every instance healthy on every replica", || async {
        replicas.iter().all(|r| r.healthy() == 3)
    })
    .await;
}

fn total_failures(browsers: &[Browser]) -> Vec<String> {
    browsers
        .iter()
        .flat_map(|b| {
            b.failures()
                .into_iter()
                .map(|f| format!("{}: {f}", b.user_id()))
        })
        .collect()
}

/// Asserts each browser was always answered by one instance; returns users per instance.
fn assert_sticky(browsers: &[Browser]) -> HashMap<String, usize> {
    let mut per_instance = HashMap::new();
    for browser in browsers {
        assert_eq!(
            browser.path().len(),
            1,
            "{} moved: {:?}",
            browser.user_id(),
            browser.path()
        );
        *per_instance
            .entry(browser.instance().to_owned())
            .or_default() += 1;
    }
    per_instance
}

/// 20 users × 50 GETs over two replicas sharing the store at `store_url`:
/// every answer for a user comes from one instance, the users spread over
/// the pool, and `pin` (a `GET` of the user's key in that store) names it.
async fn twenty_users_stay_on_one_instance(
    world: &World,
    store_url: &str,
    command: impl Fn(&[&str]) -> Resp,
) -> Vec<Browser> {
    let replicas = world.replicas(store_url).await;
    all_healthy(&[&replicas[0], &replicas[1]]).await;
    let browsers = round(
        world.browsers(0, USERS),
        addrs(&replicas),
        50,
        Arc::default(),
    )
    .await;
    assert_eq!(total_failures(&browsers), Vec::<String>::new());
    let per_instance = assert_sticky(&browsers);
    assert!(
        per_instance.len() > 1,
        "users spread over the pool: {per_instance:?}"
    );
    for browser in &browsers {
        assert_eq!(browser.answers.len(), 50);
        let pin = Resp::text(&command(&["GET", &sticky_key(browser)])).expect("a pin in the store");
        assert_eq!(
            world.id_of_url(&pin),
            browser.instance(),
            "the pin names the instance"
        );
    }
    browsers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_users_stay_on_one_instance_across_two_replicas() {
    let world = World::start().await;
    let redis = RedisServer::start();
    let browsers =
        twenty_users_stay_on_one_instance(&world, &redis.url(), |args| redis.command(args)).await;
    for browser in &browsers {
        let key = sticky_key(browser);
        let Resp::Integer(ttl) = redis.command(&["PTTL", &key]) else {
            panic!("PTTL")
        };
        assert!(
            ttl > 11 * 3600 * 1000,
            "pins live store.sticky_ttl (12h): {ttl} ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_an_instance_moves_only_its_users_once_and_no_get_fails() {
    let world = World::start().await;
    let redis = RedisServer::start();
    let replicas = world.replicas(&redis.url()).await;
    all_healthy(&[&replicas[0], &replicas[1]]).await;
    let browsers = round(
        world.browsers(0, USERS),
        addrs(&replicas),
        5,
        Arc::default(),
    )
    .await;
    let before = assert_sticky(&browsers);
    let (doomed, _) = before.iter().max_by_key(|(_, n)| **n).unwrap();
    let doomed = doomed.clone();

    // The instance goes away while every user is mid-way through 20 more GETs.
    let load = start_round(browsers, addrs(&replicas), 20);
    load.until_sent(USERS * 5).await;
    world.instance(&doomed).stop().await;
    let browsers = load.finish().await;

    let failures = total_failures(&browsers);
    let sent: usize = browsers.iter().map(|b| b.answers.len()).sum();
    println!(
        "instance {doomed} stopped mid-run: {sent} GETs sent, {} failed",
        failures.len()
    );
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "every GET was retried elsewhere"
    );
    for browser in &browsers {
        let path = browser.path();
        if path[0] == doomed {
            assert_eq!(
                path.len(),
                2,
                "{} moved once and stayed: {path:?}",
                browser.user_id()
            );
            let key = format!("chatgate:sticky:{}", browser.user_id());
            let pin = Resp::text(&redis.command(&["GET", &key])).expect("a pin");
            assert_eq!(
                world.id_of_url(&pin),
                path[1],
                "re-pinned to the new instance"
            );
        } else {
            assert_eq!(
                path.len(),
                1,
                "{} was not on {doomed}: {path:?}",
                browser.user_id()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_users_in_place_and_pins_resume_when_it_returns() {
    let world = World::start().await;
    let mut redis = RedisServer::start();
    let replicas = world.replicas(&redis.url()).await;
    all_healthy(&[&replicas[0], &replicas[1]]).await;
    let browsers = round(
        world.browsers(0, USERS),
        addrs(&replicas),
        6,
        Arc::default(),
    )
    .await;
    assert_sticky(&browsers);

    // Redis dies while users are mid-way through their GETs.
    let load = start_round(browsers, addrs(&replicas), 20);
    load.until_sent(USERS * 5).await;
    redis.stop();
    let mut browsers = load.finish().await;
    assert_eq!(total_failures(&browsers), Vec::<String>::new());
    assert_sticky(&browsers);
    for replica in &replicas {
        let (status, readyz) = replica.readyz().await;
        assert_eq!(readyz["store"]["sticky_pins"], "hashing");
        // SPEC section 4: a configured Redis that does not answer is named
        // at /readyz as degraded, and the replica stays ready: the requests
        // above succeeded all the same.
        assert_eq!(status, StatusCode::OK, "{readyz}");
        assert!(readyz["degraded"].to_string().contains("store"), "{readyz}");
    }

    // Still down: each replica, asked on its own, sends a user to the same instance.
    for browser in &mut browsers {
        let one = browser.get(replicas[0].addr()).await.unwrap();
        let two = browser.get(replicas[1].addr()).await.unwrap();
        assert_eq!(one, two, "{}: the replicas disagree", browser.user_id());
    }
    assert_sticky(&browsers);

    // Redis comes back empty. Users keep their instance, and pins are written and read again,
    // with no restart of chatgate: a pin that names another instance is followed.
    redis.restart();
    let mover = &mut browsers[0];
    let elsewhere = world
        .instances
        .iter()
        .find(|i| i.id() != mover.instance())
        .unwrap();
    let key = format!("chatgate:sticky:{}", mover.user_id());
    redis.command(&["SET", &key, &elsewhere.url()]);
    let target = elsewhere.id().to_owned();
    until!(
        "both replicas follow the pin in the restarted Redis",
        mover.get(replicas[0].addr()).await.as_deref() == Ok(target.as_str())
            && mover.get(replicas[1].addr()).await.as_deref() == Ok(target.as_str())
    );
    for replica in &replicas {
        assert_eq!(replica.readyz().await.1["store"]["sticky_pins"], "pinning");
    }
    let mut browsers = round(browsers, addrs(&replicas), 4, Arc::default()).await;
    for browser in &mut browsers[1..] {
        let key = format!("chatgate:sticky:{}", browser.user_id());
        let pin = Resp::text(&redis.command(&["GET", &key])).expect("pinned again");
        assert_eq!(world.id_of_url(&pin), browser.instance());
    }
    assert_eq!(total_failures(&browsers), Vec::<String>::new());
    assert!(
        browsers[1..].iter().all(|b| b.path().len() == 1),
        "nobody else moved"
    );
}

/// The PTTL of `key`, in milliseconds.
fn pttl(redis: &RedisServer, key: &str) -> i64 {
    match redis.command(&["PTTL", key]) {
        Resp::Integer(ms) => ms,
        other => panic!("PTTL {key}: {other:?}"),
    }
}

fn sticky_key(browser: &Browser) -> String {
    format!("chatgate:sticky:{}", browser.user_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_keeps_its_users_and_gets_no_new_ones() {
    let world = World::start().await;
    let redis = RedisServer::start();
    // The operator rolls out `draining = [lc-2]` (and, so that a renewal shows, a longer
    // sticky_ttl) to a second replica while the first still runs the old config.
    let before = world.replica(&redis.url(), |_| {}).await;
    let drained: url::Url = world.instance("lc-2").url().parse().unwrap();
    let after = world
        .replica(&redis.url(), |config| {
            config.librechat.draining = vec![drained];
            config.store.sticky_ttl = Duration::from_secs(24 * 3600);
        })
        .await;
    all_healthy(&[&before, &after]).await;

    // Users who signed in before the drain: at least three of them on lc-2.
    let mut old: Vec<Browser> = Vec::new();
    let on_lc2 = |old: &[Browser]| old.iter().filter(|b| b.instance() == "lc-2").count();
    while on_lc2(&old) < 3 || old.len() - on_lc2(&old) < 3 {
        assert!(old.len() < 200, "rendezvous never chose lc-2");
        let mut browser = world.browsers(old.len(), 1).pop().unwrap();
        browser.get(before.addr()).await.unwrap();
        old.push(browser);
    }

    // Through the draining replica, every one of them stays where they were…
    let old = round(old, [after.addr(); 2], 5, Arc::default()).await;
    assert_sticky(&old);
    assert!(on_lc2(&old) >= 3);
    // …and no new user lands on lc-2.
    let new = round(
        world.browsers(1000, USERS),
        [after.addr(); 2],
        5,
        Arc::default(),
    )
    .await;
    let per_instance = assert_sticky(&new);
    assert_eq!(per_instance.get("lc-2"), None, "{per_instance:?}");
    for browser in &new {
        let pin = Resp::text(&redis.command(&["GET", &sticky_key(browser)])).expect("pinned");
        assert_ne!(world.id_of_url(&pin), "lc-2");
    }

    // Pins in use are renewed (to the new 24 h), except those to lc-2: they run out, so the
    // drain ends.
    let twelve_hours = 12 * 3600 * 1000;
    for browser in old.iter().filter(|b| b.instance() != "lc-2") {
        let key = sticky_key(browser);
        eventually("a pin in use is renewed", || async {
            pttl(&redis, &key) > twelve_hours
        })
        .await;
    }
    for browser in old.iter().filter(|b| b.instance() == "lc-2") {
        assert!(pttl(&redis, &sticky_key(browser)) <= twelve_hours);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_instance_down_the_answer_is_503_upstream_unavailable_without_trying_one() {
    let world = World::start().await;
    let redis = RedisServer::start();
    let replica = world.replica(&redis.url(), |_| {}).await;
    all_healthy(&[&replica]).await;
    let mut browser = world.browsers(0, 1).pop().unwrap();
    browser.get(replica.addr()).await.unwrap();

    for instance in &world.instances {
        instance.stop().await;
    }
    eventually("the health checks see every instance refuse", || async {
        replica.healthy() == 0
    })
    .await;
    let (status, readyz) = replica.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz["healthy_upstreams"], 0);

    let errors_before = replica.metric("chatgate_upstream_errors_total").await;
    let mut client = TestClient::connect(replica.addr(), Alpn::H1).await.unwrap();
    let (status, _, body) = client.get("/api/convos", &[browser.user.header()]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"], "upstream_unavailable");
    assert!(error["request_id"].is_string());
    // Answered without a connection attempt, so with no connect timeout to wait for.
    assert_eq!(
        replica.metric("chatgate_upstream_errors_total").await,
        errors_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_users_stay_on_one_instance_with_a_three_node_redis_cluster() {
    let world = World::start().await;
    let cluster = RedisCluster::start(3);
    twenty_users_stay_on_one_instance(&world, &cluster.url(), |args| cluster.command(args)).await;
    let counts = cluster.key_counts();
    assert!(
        counts.iter().all(|&n| n > 0),
        "keys on every node: {counts:?}"
    );
}

/// The closing figure: one run, 20 users over two replicas, an instance and then Redis
/// killed under load and Redis brought back; every GET must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_through_an_instance_death_and_a_redis_outage_fails_no_get() {
    let world = World::start().await;
    let mut redis = RedisServer::start();
    let replicas = world.replicas(&redis.url()).await;
    all_healthy(&[&replicas[0], &replicas[1]]).await;
    let browsers = round(
        world.browsers(0, USERS),
        addrs(&replicas),
        10,
        Arc::default(),
    )
    .await;
    let (doomed, _) = assert_sticky(&browsers)
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .unwrap();

    let sent = |browsers: &[Browser]| browsers.iter().map(|b| b.answers.len()).sum::<usize>();
    let baseline = sent(&browsers);

    let load = start_round(browsers, addrs(&replicas), 15);
    load.until_sent(USERS * 5).await;
    world.instance(&doomed).stop().await;
    let browsers = load.finish().await;
    let instance_round = sent(&browsers) - baseline;

    let load = start_round(browsers, addrs(&replicas), 15);
    load.until_sent(USERS * 5).await;
    redis.stop();
    let browsers = load.finish().await;
    let redis_round = sent(&browsers) - baseline - instance_round;

    redis.restart();
    let mut browsers = browsers;
    until!("every user is pinned again in the restarted Redis", {
        browsers = round(browsers, addrs(&replicas), 1, Arc::default()).await;
        browsers.iter().all(|b| {
            Resp::text(&redis.command(&["GET", &sticky_key(b)]))
                .is_some_and(|pin| world.id_of_url(&pin) == b.instance())
        })
    });
    let recovery = sent(&browsers) - baseline - instance_round - redis_round;
    let browsers = round(browsers, addrs(&replicas), 10, Arc::default()).await;

    let failures = total_failures(&browsers);
    let mut retries = 0;
    for replica in &replicas {
        retries += replica.metric("chatgate_retries_total").await;
    }
    println!(
        "{USERS} users over 2 replicas and 3 instances, one run: {} GETs sent, {} failed, \
         {retries} retried on another instance. Phases: {baseline} before; {instance_round} in \
         the round that killed {doomed}; {redis_round} in the round that killed Redis; \
         {recovery} until every user was pinned again in the restarted (empty) Redis; 200 after.",
        sent(&browsers),
        failures.len()
    );
    assert_eq!(failures, Vec::<String>::new());
    for browser in &browsers {
        let path = browser.path();
        match path[..] {
            [_] => assert_ne!(path[0], doomed),
            [from, _] => assert_eq!(from, doomed, "{} moved: {path:?}", browser.user_id()),
            _ => panic!("{} moved more than once: {path:?}", browser.user_id()),
        }
    }
}
