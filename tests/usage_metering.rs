//! Usage metering (SPEC section 11) end to end, with real components: a
//! throw-away PostgreSQL cluster with `schema/` applied, a real Redis shared
//! by two chatgate replicas, the stand-in Supabase with users in three
//! organizations, and stand-in LibreChat instances streaming answers with
//! known `on_token_usage` totals, in both stream shapes. After each story the
//! sums in Postgres must equal, exactly, what the stand-ins emitted.
//!
//! Nothing here asserts a duration: `eventually` polls with a generous bound.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use chatgate::app::Options;
use chatgate::config::Config;
use chatgate::server::{self, Running};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use support::chatgate::{eventually, session_cookie, GateConfig, COOKIE_NAME};
use support::client::{build_request, collect, Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::librechat_chat::{chat_body, Plan, Usage};
use support::postgres::PostgresServer;
use support::redis::RedisServer;
use support::supabase::{SigningKind, StandInSupabase};

/// `[usage.prices]` of every replica here: gpt-4o (and so gpt-4o-mini) at
/// $2.5 / $10 per million tokens, i.e. 2 500 and 10 000 nano-USD per token;
/// llama-3 has no price.
const PRICES: &str = "\"gpt-4o\" = { input = 2.5, output = 10.0 }";
const GPT4O_IN_NANOS: i64 = 2_500;
const GPT4O_OUT_NANOS: i64 = 10_000;

struct User {
    cookie: String,
    org: String,
}

/// Signs in `per_org.len()` organizations' users at the stand-in Supabase.
fn users(supabase: &StandInSupabase, per_org: &[usize]) -> Vec<User> {
    let mut users = Vec::new();
    for (o, n) in per_org.iter().enumerate() {
        let org = uuid::Uuid::new_v4().to_string();
        for u in 0..*n {
            let session = supabase.sign_in(
                &format!("user{u}@org{o}.example"),
                Duration::from_secs(3600),
            );
            supabase.set_profile(
                session.user_id(),
                "member",
                Some(serde_json::json!({
                    "id": org, "name": format!("Org {o}"), "domain": format!("org{o}.example"),
                    "plan_type": "pro", "librechat_config": {}
                })),
            );
            users.push(User {
                cookie: session_cookie(COOKIE_NAME, &session.to_json()),
                org: org.clone(),
            });
        }
    }
    users
}

/// What the stand-ins emitted, per organization and per conversation.
#[derive(Default, Debug)]
struct Expected {
    /// org → (tokens, messages, cost in nano-USD)
    orgs: BTreeMap<String, (i64, i64, i64)>,
    /// conversation → (org, messages, tokens)
    conversations: BTreeMap<String, (String, i64, i64)>,
}

impl Expected {
    /// One accepted chat of `plan` (model `model`) in `conversation`.
    fn chat(&mut self, org: &str, conversation: &str, model: &str, plan: &Plan) {
        let (tokens, cost) = plan_totals(model, plan);
        let o = self.orgs.entry(org.to_owned()).or_default();
        o.0 += tokens;
        o.1 += 1;
        o.2 += cost;
        let c = self
            .conversations
            .entry(conversation.to_owned())
            .or_insert_with(|| (org.to_owned(), 0, 0));
        c.1 += 1;
        c.2 += tokens;
    }
}

/// Tokens and nano-USD a plan's answer is worth, by SPEC 11's rules.
fn plan_totals(model: &str, plan: &Plan) -> (i64, i64) {
    let priced = |model: &str, input: u64, output: u64| {
        // SPEC 10's matching: the entry "gpt-4o" also prices "gpt-4o-mini".
        if model == "gpt-4o" || model.starts_with("gpt-4o-") {
            input as i64 * GPT4O_IN_NANOS + output as i64 * GPT4O_OUT_NANOS
        } else {
            0
        }
    };
    if !plan.usage.is_empty() {
        let tokens = plan.usage.iter().map(|u| (u.input + u.output) as i64).sum();
        let cost = plan
            .usage
            .iter()
            .map(|u| match u.cost {
                Some(usd) => (usd * 1e9).round() as i64,
                None => priced(&u.model, u.input, u.output),
            })
            .sum();
        return (tokens, cost);
    }
    // No on_token_usage events: the final event's usage, else its token
    // counts (the stand-in sends 7 for the request and 42 for the answer).
    let (input, output) = plan.final_usage.unwrap_or((7, 42));
    ((input + output) as i64, priced(model, input, output))
}

/// A deterministic mix of plans: both stream shapes, 0–3 model calls with
/// a cost sent, a priced model or an unpriced one, old LibreChats' final-only
/// usage and token counts.
fn plan_for(i: usize) -> (String, Plan) {
    let mut x = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = |n: u64| {
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58476d1ce4e5b9);
        (x >> 33) % n
    };
    let model = ["gpt-4o", "gpt-4o-mini", "llama-3"][next(3) as usize].to_owned();
    let calls = next(4) as usize;
    let usage = (0..calls)
        .map(|c| Usage {
            input: 100 + next(5000),
            output: 1 + next(900),
            model: if c == 1 {
                "gpt-4o".into()
            } else {
                model.clone()
            },
            cost: (next(2) == 0).then(|| (1 + next(99_999)) as f64 / 1e7),
        })
        .collect();
    let final_usage = (calls == 0 && next(2) == 0).then(|| (10 + next(500), 5 + next(300)));
    let plan = Plan {
        resumable: i.is_multiple_of(2),
        usage,
        final_usage,
        deltas: 2,
        delay_ms: 2,
    };
    (model, plan)
}

/// How the client reads the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reader {
    /// To the end.
    Whole,
    /// Leaves after the first event: chatgate must read on.
    Leaves,
    /// Resumable only: leaves the stream after its first event, then
    /// resumes it (`resume=true`) through the other replica; LibreChat
    /// replays every event.
    Resumes,
}

/// One chat through `gate` (and `other`, for a resumed stream); returns
/// the conversation id.
async fn chat(
    gate: SocketAddr,
    other: SocketAddr,
    user: &User,
    model: &str,
    plan: &Plan,
    conversation: Option<&str>,
    reader: Reader,
) -> String {
    let mut client = TestClient::connect(gate, Alpn::H1).await.unwrap();
    let body = chat_body("openAI", model, conversation, plan);
    let request = build_request(
        Method::POST,
        "/api/agents/chat/openAI",
        &[
            ("cookie", &user.cookie),
            ("content-type", "application/json"),
            (support::librechat_chat::OPT_IN, "1"),
        ],
        Bytes::from(body),
    );
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    if plan.resumable {
        let (_, _, json) = collect(response).await;
        let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let stream_id = json["streamId"].as_str().unwrap().to_owned();
        let path = format!("/api/agents/chat/stream/{stream_id}");
        match reader {
            Reader::Whole => {
                read_stream(gate, user, &path, false).await;
            }
            Reader::Leaves => {
                read_stream(gate, user, &path, true).await;
            }
            Reader::Resumes => {
                read_stream(gate, user, &path, true).await;
                read_stream(other, user, &format!("{path}?resume=true"), false).await;
            }
        }
        return json["conversationId"].as_str().unwrap().to_owned();
    }
    read_body(response.into_body(), reader != Reader::Whole).await
}

async fn read_stream(gate: SocketAddr, user: &User, path: &str, leave: bool) -> String {
    let mut client = TestClient::connect(gate, Alpn::H1).await.unwrap();
    let response = client
        .send(build_request(
            Method::GET,
            path,
            &[("cookie", &user.cookie)],
            Bytes::new(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    read_body(response.into_body(), leave).await
    // `client` drops here: a client that left closes its connection.
}

/// Reads SSE until the end (or, `leave`, until the first event); returns
/// the conversation id from the `created` event.
async fn read_body(mut body: hyper::body::Incoming, leave: bool) -> String {
    let mut seen = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(60), body.frame())
            .await
            .expect("the stream moves");
        let Some(frame) = frame else { break };
        if let Ok(data) = frame.unwrap().into_data() {
            seen.extend_from_slice(&data);
        }
        if leave && seen.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&seen);
    let start = text.find("\"conversationId\":\"").expect("a created event") + 18;
    text[start..start + 36].to_owned()
}

/// `[usage]` for a replica writing into `pg`.
fn usage_toml(pg_url: &str, spool: &Path, flush_interval: &str) -> String {
    format!(
        "\n[usage]\npostgres_url = \"{pg_url}\"\nflush_interval = \"{flush_interval}\"\n\
         spool_dir = \"{}\"\ndrain_timeout = \"2m\"\n\n[usage.prices]\n{PRICES}\n",
        spool.display()
    )
}

async fn start_replica(gate: &GateConfig, usage: &str, dir: &Path) -> Running {
    support::init_crypto();
    let toml = format!("{}{usage}", gate.toml());
    let config = Config::from_toml(&toml, dir, &|_| None).expect("valid config");
    let options = Options {
        health_interval: Duration::from_millis(100),
        config_path: None,
        workers: gate.workers,
        header_read_timeout: gate.header_read_timeout,
    };
    server::start(config, options)
        .await
        .expect("chatgate starts")
}

/// Per organization: (SUM(tokens_used), SUM(message_count), SUM(cost_usd) in nano-USD).
async fn sums(pg: &PostgresServer) -> BTreeMap<String, (i64, i64, i64)> {
    let rows = pg
        .client()
        .await
        .query(
            "SELECT organization_id::text, SUM(tokens_used)::bigint, SUM(message_count)::bigint, \
             SUM(cost_usd)::text FROM usage_metrics GROUP BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let cost: String = r.get(3);
            (r.get(0), (r.get(1), r.get(2), decimal_nanos(&cost)))
        })
        .collect()
}

/// `"0.001230000"` → 1 230 000.
fn decimal_nanos(text: &str) -> i64 {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let fraction = format!("{fraction:0<9}");
    whole.parse::<i64>().unwrap() * 1_000_000_000 + fraction[..9].parse::<i64>().unwrap()
}

/// conversation → (org, messages, tokens), from chat_sessions.
async fn sessions(pg: &PostgresServer) -> BTreeMap<String, (String, i64, i64)> {
    let rows = pg
        .client()
        .await
        .query(
            "SELECT librechat_session_id, organization_id::text, \
             (session_metadata->>'messages')::bigint, (session_metadata->>'tokens')::bigint \
             FROM chat_sessions",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect()
}

async fn assert_sums_reach(pg: &PostgresServer, expected: &Expected, story: &str) {
    let mut last = BTreeMap::new();
    for _ in 0..600 {
        last = sums(pg).await;
        if last == expected.orgs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        last, expected.orgs,
        "{story}: per-organization sums (tokens, messages, nano-USD)"
    );
    assert_eq!(
        sessions(pg).await,
        expected.conversations,
        "{story}: one chat_sessions row per conversation, with its messages and tokens"
    );
    for (org, (tokens, messages, cost)) in &expected.orgs {
        eprintln!("{story}: org {org}: tokens {tokens}, messages {messages}, cost {cost} nano-USD");
    }
}

async fn get_status(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    match TestClient::connect(addr, Alpn::H1).await {
        Ok(mut client) => {
            let (status, _, body) = client.get(path, &[]).await;
            (status, String::from_utf8_lossy(&body).into_owned())
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_only_their_organization_s_usage_and_nobody_but_the_service_role_writes() {
    let pg = PostgresServer::start_with_schema().await;
    let admin = pg.client().await;
    let (org_a, org_b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let (ada, bob) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    admin
        .batch_execute(&format!(
            "INSERT INTO organizations (id, name, domain) VALUES ('{org_a}', 'A', 'a.example'), ('{org_b}', 'B', 'b.example');
             INSERT INTO profiles (id, organization_id) VALUES ('{ada}', '{org_a}'), ('{bob}', '{org_b}');
             INSERT INTO usage_metrics (organization_id, user_id, date, tokens_used, cost_usd, message_count)
               VALUES ('{org_a}', '{ada}', '2026-12-01', 100, 0.5, 2), ('{org_b}', '{bob}', '2026-12-01', 999, 9, 9);
             INSERT INTO chat_sessions (user_id, organization_id, librechat_session_id)
               VALUES ('{ada}', '{org_a}', 'conv-a'), ('{bob}', '{org_b}', 'conv-b');"
        ))
        .await
        .unwrap();

    // As PostgREST runs a member's query: SET ROLE authenticated + the JWT's claims.
    let mut member = pg.client().await;
    let tx = member.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL ROLE authenticated; SELECT set_config('request.jwt.claims', '{{\"sub\":\"{ada}\",\"role\":\"authenticated\"}}', true);"
    ))
    .await
    .unwrap();
    let usage = tx
        .query(
            "SELECT organization_id::text, tokens_used FROM usage_metrics",
            &[],
        )
        .await
        .unwrap();
    let seen: Vec<(String, i64)> = usage.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        seen,
        vec![(org_a.to_string(), 100)],
        "ada sees only org A's row"
    );
    let sessions = tx
        .query("SELECT librechat_session_id FROM chat_sessions", &[])
        .await
        .unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].get::<_, String>(0), "conv-a");
    let insert = tx
        .execute(
            &format!(
                "INSERT INTO usage_metrics (organization_id, user_id, date, tokens_used) \
                 VALUES ('{org_a}', '{ada}', '2026-12-02', 1)"
            ),
            &[],
        )
        .await;
    assert!(insert.is_err(), "a member cannot insert usage");
    tx.rollback().await.unwrap();

    for statement in [
        format!("UPDATE usage_metrics SET tokens_used = 0 WHERE organization_id = '{org_a}'"),
        format!("INSERT INTO chat_sessions (user_id, organization_id, librechat_session_id) VALUES ('{ada}', '{org_a}', 'forged')"),
        "INSERT INTO usage_batches (id, replica) VALUES ('forged', 'x')".to_owned(),
    ] {
        let tx = member.transaction().await.unwrap();
        tx.batch_execute(&format!(
            "SET LOCAL ROLE authenticated; SELECT set_config('request.jwt.claims', '{{\"sub\":\"{ada}\"}}', true);"
        ))
        .await
        .unwrap();
        let changed = tx.execute(&statement, &[]).await;
        assert!(
            matches!(changed, Err(_) | Ok(0)),
            "a member cannot write: {statement}: {changed:?}"
        );
        tx.rollback().await.unwrap();
    }

    // Anonymous callers see nothing; the service role writes.
    let tx = member.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE anon").await.unwrap();
    let anon = tx.query("SELECT 1 FROM usage_metrics", &[]).await;
    assert!(anon.map(|rows| rows.is_empty()).unwrap_or(true));
    tx.rollback().await.unwrap();
    let tx = member.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE service_role")
        .await
        .unwrap();
    let written = tx
        .execute(
            &format!("UPDATE usage_metrics SET tokens_used = tokens_used + 1 WHERE organization_id = '{org_b}'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(written, 1);
    tx.rollback().await.unwrap();
}

/// Two replicas sharing Redis, 200 chats of 20 users in 3 organizations in
/// both stream shapes, clients that leave mid-stream, streams resumed
/// through the other replica (LibreChat replays every event), and
/// PostgreSQL stopped (`pg_ctl stop -m immediate`) for part of the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_count_two_hundred_chats_exactly_through_a_postgres_outage() {
    let mut pg = PostgresServer::start_with_schema().await;
    let redis = RedisServer::start();
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let instances = [
        StandInLibreChat::start("lc-0").await,
        StandInLibreChat::start("lc-1").await,
    ];
    let users = users(&supabase, &[8, 7, 5]);
    let dir = tempfile::tempdir().unwrap();
    let mut gate =
        GateConfig::new(&[instances[0].url(), instances[1].url()]).with_supabase(&supabase);
    gate.redis_url = redis.url();
    let replicas = [
        start_replica(
            &gate,
            &usage_toml(&pg.url(), &dir.path().join("spool-a"), "200ms"),
            dir.path(),
        )
        .await,
        start_replica(
            &gate,
            &usage_toml(&pg.url(), &dir.path().join("spool-b"), "200ms"),
            dir.path(),
        )
        .await,
    ];
    let addrs = [replicas[0].tls_addr, replicas[1].tls_addr];

    let mut expected = Expected::default();
    let mut conversations: Vec<Option<String>> = vec![None; users.len()];
    for (phase, range) in [(0, 0..80), (1, 80..140), (2, 140..200)] {
        if phase == 1 {
            pg.stop_immediate();
        }
        let mut work = Vec::new();
        for i in range {
            let u = i % users.len();
            let (model, plan) = plan_for(i);
            let reader = match i % 7 {
                3 => Reader::Leaves,
                5 if plan.resumable => Reader::Resumes,
                _ => Reader::Whole,
            };
            // Every third chat of a user continues their last conversation.
            let conversation = if i % 3 == 2 {
                conversations[u].clone()
            } else {
                None
            };
            work.push((i, u, model, plan, reader, conversation));
        }
        for group in work.chunks(10) {
            let mut running = Vec::new();
            for (i, u, model, plan, reader, conversation) in group.iter().cloned() {
                let (gate_addr, other) = (addrs[i % 2], addrs[(i + 1) % 2]);
                let user = &users[u];
                running.push(async move {
                    let conversation = chat(
                        gate_addr,
                        other,
                        user,
                        &model,
                        &plan,
                        conversation.as_deref(),
                        reader,
                    )
                    .await;
                    (u, model, plan, conversation)
                });
            }
            for (u, model, plan, conversation) in futures_util::future::join_all(running).await {
                expected.chat(&users[u].org, &conversation, &model, &plan);
                conversations[u] = Some(conversation);
            }
        }
        if phase == 1 {
            // Postgres is named as degraded, but the replica stays ready.
            eventually("/readyz names Postgres as degraded", || async {
                let (status, body) = get_status(addrs[0], "/readyz").await;
                status == StatusCode::OK && body.contains("usage postgres")
            })
            .await;
            let (_, metrics) = get_status(addrs[0], "/metrics").await;
            assert!(
                metrics.contains("chatgate_usage_postgres_up 0"),
                "{metrics}"
            );
            // While it is down the counts wait in the spools.
            let (_, metrics) = get_status(addrs[0], "/metrics").await;
            assert!(
                metric(&metrics, "chatgate_usage_spool_bytes") > 0,
                "{metrics}"
            );
            pg.restart();
        }
        if phase == 0 {
            assert_sums_reach(
                &pg,
                &expected,
                "80 chats, two replicas, both shapes, leavers, resumes",
            )
            .await;
        }
    }
    assert_eq!(expected.orgs.values().map(|o| o.1).sum::<i64>(), 200);
    assert_eq!(expected.orgs.len(), 3);
    assert_sums_reach(
        &pg,
        &expected,
        "200 chats, with a Postgres outage for 60 of them",
    )
    .await;

    // The spool lets go of a batch just after its commit: wait for the last one.
    eventually("replica 0's spool is empty", || async {
        metric(
            &get_status(addrs[0], "/metrics").await.1,
            "chatgate_usage_spool_bytes",
        ) == 0
    })
    .await;
    let (_, metrics) = get_status(addrs[0], "/metrics").await;
    for family in [
        "chatgate_usage_batches_written_total",
        "chatgate_usage_spool_bytes 0",
        "chatgate_usage_drains_running 0",
        "chatgate_usage_postgres_up 1",
    ] {
        assert!(metrics.contains(family), "{family} in:\n{metrics}");
    }
    let skipped: u64 = metric(&metrics, "chatgate_usage_replays_skipped_total")
        + metric(
            &get_status(addrs[1], "/metrics").await.1,
            "chatgate_usage_replays_skipped_total",
        );
    assert!(
        skipped > 0,
        "resumed streams replayed events that were not counted again"
    );
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// A replica holding counts it has not flushed yet is `kill -9`ed; started
/// again on the same spool, it sends them, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_sends_its_spooled_counts_when_started_again() {
    let pg = PostgresServer::start_with_schema().await;
    let redis = RedisServer::start();
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let instance = StandInLibreChat::start("lc-0").await;
    let users = users(&supabase, &[3, 2]);
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut gate = GateConfig::new(&[instance.url()]).with_supabase(&supabase);
    gate.redis_url = redis.url();
    gate.listen = format!("127.0.0.1:{port}");
    gate.log_level = "warn".to_owned();
    let addr: SocketAddr = gate.listen.parse().unwrap();
    let spool = dir.path().join("spool");
    // An hour between flushes: nothing reaches Postgres before the kill.
    let config_text = format!("{}{}", gate.toml(), usage_toml(&pg.url(), &spool, "1h"));
    let config_path = dir.path().join("proxy.toml");
    std::fs::write(&config_path, config_text).unwrap();

    let mut child = spawn_chatgate(&config_path, addr).await;
    // The first flush runs at start; wait until it has (Postgres is up).
    eventually("the first flush ran", || async {
        metric(
            &get_status(addr, "/metrics").await.1,
            "chatgate_usage_postgres_up",
        ) == 1
    })
    .await;
    let mut expected = Expected::default();
    let mut records = 0;
    for i in 0..30 {
        let user = &users[i % users.len()];
        let (model, mut plan) = plan_for(i);
        plan.resumable = i % 2 == 1;
        let conversation = chat(addr, addr, user, &model, &plan, None, Reader::Whole).await;
        expected.chat(&user.org, &conversation, &model, &plan);
        // A record per usage event, one with the final event (and the
        // message), and for a resumable stream one with the POST's message.
        records += plan.usage.len() as u64 + 1 + u64::from(plan.resumable);
    }
    // Every count has reached the spool.
    eventually("the counts are spooled", || async {
        let metrics = get_status(addr, "/metrics").await.1;
        metric(&metrics, "chatgate_usage_records_spooled_total") == records
    })
    .await;
    let metrics = get_status(addr, "/metrics").await.1;
    assert_eq!(metric(&metrics, "chatgate_usage_batches_written_total"), 0);
    assert!(
        sums(&pg).await.is_empty(),
        "nothing was flushed before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn_chatgate(&config_path, addr).await;
    assert_sums_reach(&pg, &expected, "kill -9 with unflushed counts").await;
    // The organizations' month counters in Redis agree with Postgres.
    for (org, (tokens, _, _)) in &expected.orgs {
        let counter = redis
            .command(&["GET", &chatgate::usage::current_quota_key(org)])
            .text()
            .unwrap_or_default();
        assert_eq!(counter, tokens.to_string(), "month counter of {org}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn spawn_chatgate(config: &Path, addr: SocketAddr) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("chatgate binary starts");
    eventually("chatgate answers /readyz 200", || async {
        get_status(addr, "/readyz").await.0 == StatusCode::OK
    })
    .await;
    child
}

/// SIGTERM with counts not yet flushed: they are written within the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_last_counts_within_the_grace() {
    let pg = PostgresServer::start_with_schema().await;
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let instance = StandInLibreChat::start("lc-0").await;
    let users = users(&supabase, &[2, 2]);
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut gate = GateConfig::new(&[instance.url()]).with_supabase(&supabase);
    gate.listen = format!("127.0.0.1:{port}");
    gate.log_level = "warn".to_owned();
    gate.shutdown_grace = "3s".to_owned();
    let addr: SocketAddr = gate.listen.parse().unwrap();
    let config_text = format!(
        "{}{}",
        gate.toml(),
        usage_toml(&pg.url(), &dir.path().join("spool"), "1h")
    );
    let config_path = dir.path().join("proxy.toml");
    std::fs::write(&config_path, config_text).unwrap();
    let mut child = spawn_chatgate(&config_path, addr).await;
    eventually("the first flush ran", || async {
        metric(
            &get_status(addr, "/metrics").await.1,
            "chatgate_usage_postgres_up",
        ) == 1
    })
    .await;

    let mut expected = Expected::default();
    let mut records = 0;
    for i in 0..12 {
        let user = &users[i % users.len()];
        let (model, plan) = plan_for(100 + i);
        let conversation = chat(addr, addr, user, &model, &plan, None, Reader::Whole).await;
        expected.chat(&user.org, &conversation, &model, &plan);
        records += plan.usage.len() as u64 + 1 + u64::from(plan.resumable);
    }
    eventually("the counts are spooled", || async {
        metric(
            &get_status(addr, "/metrics").await.1,
            "chatgate_usage_records_spooled_total",
        ) == records
    })
    .await;
    assert!(sums(&pg).await.is_empty(), "nothing flushed before SIGTERM");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "chatgate exits 0: {exit}");
    // No restart: the counts are in Postgres already.
    assert_eq!(sums(&pg).await, expected.orgs);
    assert_eq!(sessions(&pg).await, expected.conversations);
    let left: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "the spool is empty after the flush");
}

/// `chatgate check` tries the usage Postgres: schema present, role can write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatgate_check_tries_the_usage_postgres() {
    let mut pg = PostgresServer::start_with_schema().await;
    let empty = PostgresServer::start();
    let dir = tempfile::tempdir().unwrap();
    let gate = GateConfig::new(&["http://127.0.0.1:9".to_owned()]);
    let check = |url: String| {
        let path = dir.path().join("proxy.toml");
        let text = format!(
            "{}{}",
            gate.toml(),
            usage_toml(&url, &dir.path().join("spool"), "10s")
        );
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_chatgate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("usage postgres"))
            .unwrap_or_else(|| {
                panic!(
                    "no usage postgres line in:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })
            .to_owned()
    };
    let line = check(pg.url());
    assert!(
        line.starts_with("ok   usage postgres: reachable, schema present, role postgres can write"),
        "{line}"
    );
    let line = check(empty.url());
    assert!(line.starts_with("FAIL usage postgres:"), "{line}");
    assert!(
        line.contains("usage_batches"),
        "names the missing table: {line}"
    );
    pg.stop_immediate();
    let line = check(pg.url());
    assert!(line.starts_with("FAIL usage postgres:"), "{line}");
}
