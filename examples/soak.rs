//! The soak of `scripts/soak.sh` (issue 13): a release chatgate, run as its
//! own process, under mixed load for N minutes, with the stand-in upstreams
//! of the integration tests (`tests/support/`) in this process and a real
//! `redis-server`.
//!
//! ```text
//! soak --gate-bin target/release/chatgate [--minutes 10] [--warmup 2]
//! ```
//!
//! Load, all at once over TLS: API calls (HTTP/2 and HTTP/1.1 keep-alive),
//! page loads (a new HTTP/1.1 connection each), long chat SSE streams (a
//! POST each, ~8 s), WebSocket sessions (30 echoed messages each), and a
//! session refresh every second (an expired access token). Faults: SIGHUP
//! every minute, one LibreChat instance (of 3) restarted every 2 minutes
//! (down 2 s), Redis restarted once, half-way.
//!
//! Each minute one table row: requests, failed idempotent requests (GETs,
//! refreshes included), streams and WebSocket sessions with their failures,
//! chatgate's RSS and open file descriptors; at the end the totals and the
//! slope of RSS and descriptors over the minutes after the warm-up. A
//! failure's reason goes to stderr (at most 5 a minute).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::chatgate::{acme, session_cookie, GateConfig, SignedIn, COOKIE_NAME};
use support::client::{build_request, try_websocket_tls, Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::librechat_chat::{chat_body, Plan, Usage, OPT_IN};
use support::redis::RedisServer;
use support::supabase::{SigningKind, StandInSupabase};
use tokio_tungstenite::tungstenite::Message;

const INSTANCES: usize = 3;
const USERS: usize = 16;

/// What the load did; the orchestrator reads and resets the per-minute part.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    idempotent_failed: AtomicU64,
    streams: AtomicU64,
    streams_failed: AtomicU64,
    websockets: AtomicU64,
    websockets_failed: AtomicU64,
    /// Reasons of this minute's failures, the first few.
    reasons: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut reasons = self.reasons.lock().unwrap();
        if reasons.len() < 5 {
            reasons.push(what);
        }
    }

    fn take(&self) -> [u64; 6] {
        [
            &self.requests,
            &self.idempotent_failed,
            &self.streams,
            &self.streams_failed,
            &self.websockets,
            &self.websockets_failed,
        ]
        .map(|c| c.swap(0, Ordering::Relaxed))
    }
}

struct Load {
    addr: SocketAddr,
    cookies: Vec<String>,
    tally: Tally,
    stop: AtomicBool,
}

impl Load {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    fn cookie(&self, n: usize) -> &str {
        &self.cookies[n % self.cookies.len()]
    }

    /// One GET; `None` if it was answered (2xx or 3xx) with its whole body.
    async fn get(
        &self,
        client: &mut TestClient,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<String> {
        self.tally.requests.fetch_add(1, Ordering::Relaxed);
        let request = build_request(Method::GET, path, headers, Bytes::new());
        match client.send(request).await {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().collect().await;
                // A redirect (a page load's sign-in hand-off) is an answer too.
                let answered = status.is_success() || status.is_redirection();
                match (answered, body) {
                    (true, Ok(_)) => None,
                    (true, Err(e)) => Some(format!("GET {path}: body: {e}")),
                    (false, body) => Some(format!(
                        "GET {path}: {status} {}",
                        body.map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                            .unwrap_or_default()
                    )),
                }
            }
            Err(e) => Some(format!("GET {path}: {e}")),
        }
    }
}

async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// API calls on one kept connection (a new one after a failure).
async fn api_calls(load: Arc<Load>, n: usize, alpn: Alpn) {
    let paths = [
        "/api/convos",
        "/api/models",
        "/api/endpoints",
        "/api/config",
    ];
    let mut client = None;
    let mut i = 0;
    while load.running() {
        i += 1;
        if client.is_none() {
            match TestClient::connect(load.addr, alpn).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    load.tally.requests.fetch_add(1, Ordering::Relaxed);
                    load.tally.fail(
                        &load.tally.idempotent_failed,
                        format!("connect {alpn:?}: {e}"),
                    );
                    pause(100).await;
                    continue;
                }
            }
        }
        let path = paths[i % paths.len()];
        let cookie = load.cookie(n + i);
        if let Some(why) = load
            .get(client.as_mut().unwrap(), path, &[("cookie", cookie)])
            .await
        {
            load.tally
                .fail(&load.tally.idempotent_failed, format!("{alpn:?} {why}"));
            client = None;
        }
        pause(5).await;
    }
}

/// Page loads, each on a new HTTP/1.1 connection.
async fn page_loads(load: Arc<Load>, n: usize) {
    let mut i = 0;
    while load.running() {
        i += 1;
        let headers = [
            ("cookie", load.cookie(n + i)),
            ("accept", "text/html,application/xhtml+xml"),
        ];
        let why = match TestClient::connect(load.addr, Alpn::H1).await {
            Ok(mut client) => load.get(&mut client, "/c/new", &headers).await,
            Err(e) => {
                load.tally.requests.fetch_add(1, Ordering::Relaxed);
                Some(format!("page connect: {e}"))
            }
        };
        if let Some(why) = why {
            load.tally.fail(&load.tally.idempotent_failed, why);
        }
        pause(50).await;
    }
}

/// Chat POSTs whose SSE answer lasts about 8 s.
async fn long_streams(load: Arc<Load>, n: usize) {
    let plan = Plan {
        usage: vec![Usage {
            input: 800,
            output: 200,
            model: "gpt-4o".to_owned(),
            cost: Some(0.004),
        }],
        deltas: 100,
        delay_ms: 40,
        ..Plan::default()
    };
    let mut i = 0;
    while load.running() {
        i += 1;
        let alpn = if (n + i).is_multiple_of(2) {
            Alpn::H2
        } else {
            Alpn::H1
        };
        let body = chat_body("openAI", "gpt-4o", None, &plan);
        let request = build_request(
            Method::POST,
            "/api/agents/chat/openAI",
            &[
                ("cookie", load.cookie(n + i)),
                ("content-type", "application/json"),
                (OPT_IN, "1"),
            ],
            Bytes::from(body),
        );
        load.tally.requests.fetch_add(1, Ordering::Relaxed);
        load.tally.streams.fetch_add(1, Ordering::Relaxed);
        let outcome = async {
            let mut client = TestClient::connect(load.addr, alpn)
                .await
                .map_err(|e| e.to_string())?;
            let response = client.send(request).await.map_err(|e| e.to_string())?;
            if response.status() != StatusCode::OK {
                return Err(format!("status {}", response.status()));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            let text = body.to_bytes();
            if !String::from_utf8_lossy(&text).contains("\"final\":true") {
                return Err(format!(
                    "stream ended after {} bytes without its final event",
                    text.len()
                ));
            }
            Ok(())
        }
        .await;
        if let Err(why) = outcome {
            load.tally.fail(
                &load.tally.streams_failed,
                format!("{alpn:?} chat stream: {why}"),
            );
            pause(200).await;
        }
    }
}

/// WebSocket sessions of 30 echoed messages, 100 ms apart.
async fn websockets(load: Arc<Load>, n: usize) {
    let mut i = 0;
    while load.running() {
        i += 1;
        load.tally.requests.fetch_add(1, Ordering::Relaxed);
        load.tally.websockets.fetch_add(1, Ordering::Relaxed);
        let outcome = async {
            let (mut ws, _) =
                try_websocket_tls(load.addr, "/ws", &[("cookie", load.cookie(n + i))])
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            for m in 0..30 {
                let text = format!("message {m}");
                ws.send(Message::text(text.clone()))
                    .await
                    .map_err(|e| format!("send {m}: {e}"))?;
                match ws.next().await {
                    Some(Ok(Message::Text(echo))) if echo.as_str() == text => {}
                    other => return Err(format!("echo {m}: {other:?}")),
                }
                pause(100).await;
            }
            let _ = ws.close(None).await;
            Ok(())
        }
        .await;
        if let Err(why) = outcome {
            load.tally
                .fail(&load.tally.websockets_failed, format!("WebSocket: {why}"));
            pause(200).await;
        }
    }
}

/// A session whose access token expired, every second: refreshed and served.
async fn refreshes(load: Arc<Load>, supabase: Arc<StandInSupabase>) {
    let mut i = 0usize;
    while load.running() {
        i += 1;
        let session = supabase.sign_in_expired(
            &format!("late{}@acme.example", i % 8),
            Duration::from_secs(120),
        );
        supabase.set_profile(session.user_id(), "member", Some(acme()));
        let cookie = session_cookie(COOKIE_NAME, &session.to_json());
        let alpn = if i.is_multiple_of(2) {
            Alpn::H2
        } else {
            Alpn::H1
        };
        load.tally.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = async {
            let mut client = TestClient::connect(load.addr, alpn)
                .await
                .map_err(|e| e.to_string())?;
            let request = build_request(
                Method::GET,
                "/api/convos",
                &[("cookie", &cookie)],
                Bytes::new(),
            );
            let response = client.send(request).await.map_err(|e| e.to_string())?;
            let refreshed = response.headers().contains_key("set-cookie");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            match (status, refreshed) {
                (StatusCode::OK, true) => Ok(()),
                _ => Err(format!(
                    "{status}, set-cookie: {refreshed}, {}",
                    String::from_utf8_lossy(&body.to_bytes())
                )),
            }
        }
        .await;
        if let Err(why) = outcome {
            load.tally.fail(
                &load.tally.idempotent_failed,
                format!("{alpn:?} refresh: {why}"),
            );
        }
        pause(1000).await;
    }
}

/// chatgate's resident memory (MiB) and open descriptors, from /proc.
fn resources(pid: u32) -> (f64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (rss_kib / 1024.0, fds)
}

/// Least-squares slope of `ys` per step.
fn slope(ys: &[f64]) -> f64 {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return 0.0;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in ys.iter().enumerate() {
        let dx = x as f64 - mean_x;
        num += dx * (y - mean_y);
        den += dx * dx;
    }
    num / den
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").args([name, &pid.to_string()]).status();
}

struct Args {
    gate_bin: PathBuf,
    minutes: u64,
    warmup: usize,
}

fn args() -> Args {
    let mut parsed = Args {
        gate_bin: PathBuf::from("target/release/chatgate"),
        minutes: 10,
        warmup: 2,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_default();
        match arg.as_str() {
            "--gate-bin" => parsed.gate_bin = value.into(),
            "--minutes" => parsed.minutes = value.parse().expect("--minutes N"),
            "--warmup" => parsed.warmup = value.parse().expect("--warmup N"),
            _ => {
                eprintln!("usage: soak --gate-bin PATH [--minutes 10] [--warmup 2]");
                std::process::exit(2);
            }
        }
    }
    parsed
}

#[tokio::main]
async fn main() {
    let args = args();
    support::init_crypto();
    let mut redis = RedisServer::start();
    let supabase = Arc::new(StandInSupabase::start(SigningKind::Hs256).await);
    let mut instances = Vec::new();
    for n in 0..INSTANCES {
        instances.push(StandInLibreChat::start(&format!("lc-{n}")).await);
    }
    let urls: Vec<String> = instances.iter().map(StandInLibreChat::url).collect();
    let users: Vec<SignedIn> = (0..USERS)
        .map(|n| SignedIn::new(&supabase, &format!("user{n}@acme.example")))
        .collect();

    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = GateConfig::new(&urls).with_supabase(&supabase);
    config.listen = addr.to_string();
    config.redis_url = redis.url();
    config.log_level = "warn".to_owned();
    let config_path = config.write(dir.path());
    let log_path = dir.path().join("chatgate.log");
    let mut gate = Command::new(&args.gate_bin)
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", args.gate_bin.display()));
    let pid = gate.id();
    let started = Instant::now();
    loop {
        if let Ok(mut client) = TestClient::connect(addr, Alpn::H1).await {
            let request = build_request(
                Method::GET,
                "/api/convos",
                &[users[0].header()],
                Bytes::new(),
            );
            if let Ok(response) = client.send(request).await {
                if response.status() == StatusCode::OK {
                    break;
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "chatgate did not start; see {}",
            log_path.display()
        );
        pause(100).await;
    }

    let load = Arc::new(Load {
        addr,
        cookies: users.iter().map(|u| u.cookie.clone()).collect(),
        tally: Tally::default(),
        stop: AtomicBool::new(false),
    });
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..6usize {
        let alpn = if n.is_multiple_of(2) {
            Alpn::H2
        } else {
            Alpn::H1
        };
        workers.spawn(api_calls(load.clone(), n, alpn));
    }
    for n in 0..2 {
        workers.spawn(page_loads(load.clone(), n));
    }
    for n in 0..6 {
        workers.spawn(long_streams(load.clone(), n));
    }
    for n in 0..3 {
        workers.spawn(websockets(load.clone(), n));
    }
    workers.spawn(refreshes(load.clone(), supabase.clone()));

    println!(
        "| min | requests | failed idempotent | streams (failed) | WebSockets (failed) | RSS MiB | fds | events |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    let (mut total, mut failed_idempotent, mut failed_other) = (0u64, 0u64, 0u64);
    let (mut rss, mut fds) = (Vec::new(), Vec::new());
    let redis_at = Duration::from_secs(args.minutes * 60 / 2 + 45);
    let mut redis_restarted = false;
    let begin = Instant::now();
    for minute in 1..=args.minutes {
        let mut events = Vec::new();
        let end = begin + Duration::from_secs(minute * 60);
        // An instance restart at :30 of every second minute, away from the SIGHUP.
        let restart_at = minute
            .is_multiple_of(2)
            .then(|| end - Duration::from_secs(30));
        while Instant::now() < end {
            if restart_at.is_some_and(|at| Instant::now() >= at)
                && !events.iter().any(|e: &String| e.starts_with("restart"))
            {
                let n = (minute as usize / 2 - 1) % INSTANCES;
                let at = instances[n].addr();
                instances[n].stop().await;
                pause(2000).await;
                instances[n] = StandInLibreChat::start_on(&format!("lc-{n}"), at).await;
                events.push(format!("restart lc-{n}"));
            }
            if !redis_restarted && begin.elapsed() >= redis_at {
                tokio::task::block_in_place(|| redis.restart());
                redis_restarted = true;
                events.push("restart Redis".to_owned());
            }
            for instance in &instances {
                instance.forget_requests();
            }
            pause(250).await;
        }
        let [requests, idempotent, streams, streams_failed, sockets, sockets_failed] =
            load.tally.take();
        let (mem, open) = resources(pid);
        total += requests;
        failed_idempotent += idempotent;
        failed_other += streams_failed + sockets_failed;
        rss.push(mem);
        fds.push(open as f64);
        if minute < args.minutes {
            signal(pid, "-HUP");
            events.push("SIGHUP".to_owned());
        }
        println!(
            "| {minute} | {requests} | {idempotent} | {streams} ({streams_failed}) | {sockets} ({sockets_failed}) | {mem:.1} | {open} | {} |",
            events.join(", ")
        );
        for reason in load.tally.reasons.lock().unwrap().drain(..) {
            eprintln!("  minute {minute}: {reason}");
        }
    }
    load.stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}

    let warm = args.warmup.min(rss.len().saturating_sub(2));
    println!();
    println!(
        "total: {total} requests, {failed_idempotent} failed idempotent, {failed_other} failed streams/WebSockets"
    );
    println!(
        "after a {warm}-minute warm-up (minutes {}..{}): RSS slope {:+.2} MiB/min, fds slope {:+.2} /min",
        warm + 1,
        rss.len(),
        slope(&rss[warm..]),
        slope(&fds[warm..])
    );
    let reloads = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .matches("reload refused")
        .count();
    println!(
        "reloads refused: {reloads}; chatgate log: {} lines",
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .count()
    );
    signal(pid, "-TERM");
    let exit = tokio::task::spawn_blocking(move || gate.wait())
        .await
        .unwrap();
    println!("chatgate exit: {exit:?}");
    redis.stop();
}
