//! No self-inflicted outages (SPEC sections 5 and 9): a burst beyond what an
//! instance accepts waits for a connection instead of failing, failed
//! requests never take the last instance out of rotation, and a PostgREST
//! that stops answering does not sign out users whose profile was read.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::Value;
use support::chatgate::{eventually, Gate, GateConfig, SignedIn};
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
