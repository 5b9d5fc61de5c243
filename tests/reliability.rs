//! No self-inflicted outages (SPEC sections 5, 6 and 9): a burst beyond what
//! an instance accepts waits for a connection instead of failing, failed
//! requests never take the last instance out of rotation, and a PostgREST
//! that stops answering does not sign out users whose profile was read.
//! Under concurrent load, over HTTP/1.1 and HTTP/2: Supabase's refresh
//! failing fails only the users whose access token expired, a JWKS that
//! cannot be fetched leaves verified users working, and so does a PostgREST
//! that refuses connections, a reload (SIGHUP) included.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::Value;
use support::chatgate::{
    acme, eventually, session_cookie, Gate, GateConfig, SignedIn, COOKIE_NAME,
};
use support::client::{Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::supabase::{SigningKind, StandInSupabase};

async fn metric(gate: &Gate, name: &str) -> f64 {
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    let (_, _, body) = client.get("/metrics", &[]).await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_burst_beyond_the_connection_limit_waits_and_is_served() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.max_connections_per_instance = 4;
    let gate = Gate::start(config).await;
    let user = SignedIn::new(&supabase, "ada@acme.example");
    // 64 requests at once, over HTTP/2 and HTTP/1.1, each held 50 ms upstream.
    let mut burst = Vec::new();
    for n in 0..64 {
        let cookie = user.cookie.clone();
        let addr = gate.addr();
        burst.push(tokio::spawn(async move {
            let alpn = if n % 2 == 0 { Alpn::H2 } else { Alpn::H1 };
            let mut client = TestClient::connect(addr, alpn).await.unwrap();
            client
                .get("/slow?ms=50", &[("cookie", cookie.as_str())])
                .await
                .0
        }));
    }
    for request in burst {
        assert_eq!(
            request.await.unwrap(),
            StatusCode::OK,
            "every request is served, none refused"
        );
    }
    // The limit is shared out among the 2 serving threads; the health
    // checker has a connection of its own.
    assert!(
        upstream.max_connections() <= 4 + 1,
        "at most the limit was open at once: {}",
        upstream.max_connections()
    );
    assert!(metric(&gate, "chatgate_upstream_connection_waits_total").await > 0.0);
    assert_eq!(
        metric(&gate, "chatgate_upstream_connection_wait_timeouts_total").await,
        0.0
    );
    assert_eq!(metric(&gate, "chatgate_upstream_ejected").await, 0.0);
}

#[tokio::test]
async fn failed_requests_never_take_the_only_instance_out() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    // One active check (at start-up), none during the test: only passive counts change.
    config.health_interval = Duration::from_secs(3600);
    let gate = Gate::start(config).await;
    let user = SignedIn::new(&supabase, "ada@acme.example");
    let mut client = TestClient::connect(gate.addr(), Alpn::H2).await.unwrap();
    // A struggling instance answers 503 many times in a row…
    for _ in 0..10 {
        let (status, _, _) = client.get("/status?code=503", &[user.header()]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(metric(&gate, "chatgate_upstream_ejected").await, 1.0);
    assert_eq!(metric(&gate, "chatgate_pool_panic").await, 1.0);
    // …but its active checks pass, so it still gets every request.
    let (status, _, body) = client.get("/api/convos", &[user.header()]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    // Its first good answer puts it back in rotation.
    assert_eq!(metric(&gate, "chatgate_upstream_ejected").await, 0.0);
    assert_eq!(metric(&gate, "chatgate_pool_panic").await, 0.0);
}

#[tokio::test]
async fn an_ejected_instance_is_avoided_while_the_rest_can_serve() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let (a, b) = (
        StandInLibreChat::start("lc-a").await,
        StandInLibreChat::start("lc-b").await,
    );
    let mut config = GateConfig::new(&[a.url(), b.url()]).with_supabase(&supabase);
    config.health_interval = Duration::from_secs(3600);
    let gate = Gate::start(config).await;
    let user = SignedIn::new(&supabase, "ada@acme.example");
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    let (_, headers, _) = client.get("/api/convos", &[user.header()]).await;
    let pinned = headers["x-instance"].to_str().unwrap().to_owned();
    for _ in 0..3 {
        client.get("/status?code=502", &[user.header()]).await;
    }
    assert_eq!(
        metric(&gate, "chatgate_pool_panic").await,
        0.0,
        "1 of 2 is half"
    );
    let (status, headers, _) = client.get("/api/convos", &[user.header()]).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(
        headers["x-instance"].to_str().unwrap(),
        pinned,
        "moved off the ejected instance"
    );
}

#[tokio::test]
async fn a_known_user_keeps_working_while_postgrest_is_silent_and_a_new_one_gets_503() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.tenant_cache_ttl = "1s".to_owned();
    let gate = Gate::start(config).await;
    let known = SignedIn::new(&supabase, "ada@acme.example");
    let newcomer = SignedIn::new(&supabase, "bob@acme.example");
    let get = |who: &SignedIn| {
        let header = ("cookie", who.cookie.clone());
        let addr = gate.addr();
        async move {
            let mut client = TestClient::connect(addr, Alpn::H1).await.unwrap();
            client
                .get("/api/convos", &[(header.0, header.1.as_str())])
                .await
        }
    };
    assert_eq!(get(&known).await.0, StatusCode::OK);
    let lookups = supabase.profile_calls();
    supabase.set_postgrest_silent(true);
    // Past the TTL (and again past it) the known user is still served,
    // from the profile read before PostgREST went silent.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (status, _, body) = get(&known).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
    }
    assert!(supabase.profile_calls() > lookups, "a reload was tried");
    // Nobody has a profile for the newcomer: 503, with the reason in the log.
    let (status, _, body) = get(&newcomer).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["error"], "upstream_unavailable");
    // PostgREST answers again: the profile is read afresh.
    supabase.set_postgrest_silent(false);
    eventually("the newcomer is served", || async {
        get(&newcomer).await.0 == StatusCode::OK
    })
    .await;
}

/// One answer of [`load`]: whose request it was (the index of its cookie),
/// the status, the headers and the body.
type Answer = (usize, StatusCode, HeaderMap, Bytes);

/// `rounds` requests for every cookie on an HTTP/1.1 and on an HTTP/2
/// connection of its own, all at once; every answer comes back.
async fn load(addr: SocketAddr, cookies: &[String], rounds: usize) -> Vec<Answer> {
    let mut clients = tokio::task::JoinSet::new();
    for (who, cookie) in cookies.iter().enumerate() {
        for alpn in [Alpn::H1, Alpn::H2] {
            let cookie = cookie.clone();
            clients.spawn(async move {
                let mut client = TestClient::connect(addr, alpn).await.unwrap();
                let mut answers = Vec::new();
                for _ in 0..rounds {
                    let (status, headers, body) = client
                        .get("/api/convos", &[("cookie", cookie.as_str())])
                        .await;
                    answers.push((who, status, headers, body));
                }
                answers
            });
        }
    }
    let mut answers = Vec::new();
    while let Some(done) = clients.join_next().await {
        answers.extend(done.unwrap());
    }
    assert_eq!(answers.len(), cookies.len() * 2 * rounds);
    answers
}

/// Every answer is a 200 from LibreChat.
fn all_served(answers: &[Answer], when: &str) {
    for (who, status, _, body) in answers {
        assert_eq!(
            *status,
            StatusCode::OK,
            "{when}: user {who}: {}",
            String::from_utf8_lossy(body)
        );
    }
}

fn cookies(users: &[SignedIn]) -> Vec<String> {
    users.iter().map(|u| u.cookie.clone()).collect()
}

fn sign_in_many(supabase: &StandInSupabase, n: usize) -> Vec<SignedIn> {
    (0..n)
        .map(|n| SignedIn::new(supabase, &format!("user{n}@acme.example")))
        .collect()
}

#[tokio::test]
async fn a_failing_refresh_endpoint_fails_only_the_expired_session_and_keeps_its_cookie() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let gate = Gate::start(GateConfig::new(&[upstream.url()]).with_supabase(&supabase)).await;
    let users = sign_in_many(&supabase, 8);
    let late = supabase.sign_in_expired("late@acme.example", Duration::from_secs(120));
    supabase.set_profile(late.user_id(), "member", Some(acme()));
    let mut everyone = cookies(&users);
    everyone.push(session_cookie(COOKIE_NAME, &late.to_json()));
    all_served(&load(gate.addr(), &cookies(&users), 1).await, "warm-up");

    // GoTrue answers 5xx to every refresh, each after a moment, while
    // everyone sends requests at once.
    supabase.fail_next_refreshes(usize::MAX, 503);
    supabase.set_refresh_delay(Duration::from_millis(20));
    let answers = load(gate.addr(), &everyone, 20).await;
    let (valid, expired): (Vec<Answer>, Vec<Answer>) =
        answers.into_iter().partition(|a| a.0 < users.len());
    all_served(&valid, "valid sessions while refresh fails");
    // SPEC 6: a 5xx from the refresh endpoint is a 503, and the cookie is kept.
    for (_, status, headers, body) in &expired {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        let answer: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(answer["error"], "upstream_unavailable");
        assert!(
            headers.get("set-cookie").is_none(),
            "the session cookie is neither cleared nor rewritten: {headers:?}"
        );
    }
    assert!(supabase.refresh_calls() > 0, "the refresh was tried");

    // GoTrue is back: the same cookie refreshes and is served.
    supabase.fail_next_refreshes(0, 503);
    let answers = load(gate.addr(), &everyone, 2).await;
    all_served(&answers, "after GoTrue is back");
    assert!(answers
        .iter()
        .any(|(who, _, headers, _)| *who == users.len() && headers.contains_key("set-cookie")));
}

#[tokio::test]
async fn verified_users_keep_working_while_the_jwks_cannot_be_fetched_a_reload_included() {
    let supabase = StandInSupabase::start(SigningKind::Es256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let dir = tempfile::tempdir().unwrap();
    let config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    let gate = Gate::start_in(config.clone(), dir.path()).await;
    let users = sign_in_many(&supabase, 8);
    // Six users are verified first; two are new when the JWKS goes away.
    all_served(
        &load(gate.addr(), &cookies(&users[..6]), 1).await,
        "warm-up",
    );
    assert_eq!(supabase.jwks_calls(), 1, "one JWKS fetch for everyone");

    supabase.set_gotrue_down(true);
    // Verified tokens, and new ones signed by a key chatgate already has.
    all_served(
        &load(gate.addr(), &cookies(&users), 20).await,
        "JWKS unreachable",
    );
    // A reload (SIGHUP) keeps the keys: the JWKS cannot be read again.
    gate.running
        .reload_with(config.load(dir.path()))
        .await
        .unwrap();
    all_served(
        &load(gate.addr(), &cookies(&users), 20).await,
        "JWKS unreachable, after a reload",
    );
}

#[tokio::test]
async fn known_users_keep_working_while_postgrest_refuses_connections_a_reload_included() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.tenant_cache_ttl = "1s".to_owned();
    let gate = Gate::start_in(config.clone(), dir.path()).await;
    let users = sign_in_many(&supabase, 9);
    let (known, newcomer) = users.split_at(8);
    all_served(&load(gate.addr(), &cookies(known), 1).await, "warm-up");

    // Supabase is gone: connections to it are refused at once (no 5 s wait
    // as with silence), so every request past the TTL retries the lookup.
    supabase.stop().await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        all_served(
            &load(gate.addr(), &cookies(known), 5).await,
            "PostgREST refusing connections",
        );
    }
    gate.running
        .reload_with(config.load(dir.path()))
        .await
        .unwrap();
    all_served(
        &load(gate.addr(), &cookies(known), 5).await,
        "PostgREST refusing connections, after a reload",
    );
    // Nobody ever read the newcomer's profile: 503.
    let answers = load(gate.addr(), &cookies(newcomer), 1).await;
    for (_, status, _, body) in answers {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    }
}
