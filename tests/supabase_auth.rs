//! Supabase session authentication on the real proxy (SPEC sections 4–6):
//! a real chatgate, a stand-in Supabase (GoTrue + PostgREST) and stand-in
//! LibreChat instances, over real sockets.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Value};
use support::chatgate::{acme, session_cookie, Gate, GateConfig, SignedIn, COOKIE_NAME};
use support::client::{Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::redis::RedisServer;
use support::supabase::{Route, SigningKind, StandInSupabase};

struct World {
    gate: Gate,
    supabase: StandInSupabase,
    upstream: StandInLibreChat,
}

async fn world(signing: SigningKind) -> World {
    world_with(signing, |c| c).await
}

async fn world_with(signing: SigningKind, tweak: impl FnOnce(GateConfig) -> GateConfig) -> World {
    let supabase = StandInSupabase::start(signing).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let config = tweak(GateConfig::new(&[upstream.url()]).with_supabase(&supabase));
    World {
        gate: Gate::start(config).await,
        supabase,
        upstream,
    }
}

async fn get(
    gate: &Gate,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    client.get(path, headers).await
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("JSON: {e}: {body:?}"))
}

fn echoed<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .filter_map(|p| p[1].as_str())
        .collect()
}

fn set_cookies(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_valid_session_is_forwarded_with_identity_headers_and_without_supabase_cookies() {
    let w = world(SigningKind::Hs256).await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    // The first answer binds this browser's LibreChat session to the user.
    let (_, headers, _) = get(&w.gate, "/", &[user.header()]).await;
    let bind = set_cookies(&headers)
        .into_iter()
        .find(|c| c.starts_with("chatgate_bind="))
        .expect("binding cookie");
    let bind = bind.split(';').next().unwrap();
    let cookie = format!(
        "theme=dark; {}; connect.sid=s%3Aabc; chatgate_session=xyz; {bind}",
        user.cookie
    );
    let (status, _, body) = get(
        &w.gate,
        "/c/new",
        &[
            ("cookie", &cookie),
            ("x-chatgate-user-id", "someone-else"),
            ("authorization", "Bearer librechat-own-token"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let echo = json(&body);
    assert_eq!(
        echoed(&echo, "x-chatgate-user-id"),
        [user.session.user_id()]
    );
    assert_eq!(
        echoed(&echo, "x-chatgate-org-id"),
        [acme()["id"].as_str().unwrap()]
    );
    assert_eq!(echoed(&echo, "x-chatgate-role"), ["member"]);
    assert_eq!(echoed(&echo, "cookie"), ["theme=dark; connect.sid=s%3Aabc"]);
    // LibreChat's own Authorization passes untouched (OIDC mode).
    assert_eq!(
        echoed(&echo, "authorization"),
        ["Bearer librechat-own-token"]
    );
    let upstream_saw = serde_json::to_string(&echo).unwrap();
    assert!(
        !upstream_saw.contains(&user.session.access_token),
        "access token reached LibreChat"
    );
    assert!(
        !upstream_saw.contains(&user.session.refresh_token),
        "refresh token reached LibreChat"
    );
}

#[tokio::test]
async fn es256_and_rs256_tokens_verify_through_the_jwks() {
    for signing in [SigningKind::Es256, SigningKind::Rs256] {
        let w = world_with(signing, |mut c| {
            c.supabase_jwt_secret = String::new();
            c
        })
        .await;
        let user = SignedIn::new(&w.supabase, "ada@acme.example");
        let (status, _, _) = get(&w.gate, "/", &[user.header()]).await;
        assert_eq!(status, StatusCode::OK);
        // A second request is a cache hit: the JWKS is not fetched again.
        let calls = w.supabase.jwks_calls();
        let (status, _, _) = get(&w.gate, "/", &[user.header()]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(w.supabase.jwks_calls(), calls);
    }
}

#[tokio::test]
async fn without_a_session_api_calls_get_401_and_page_loads_go_to_the_dashboard() {
    let w = world_with(SigningKind::Hs256, |mut c| {
        c.login_url = "https://dash.example.com/login?from=chat".to_owned();
        c
    })
    .await;
    let (status, _, body) = get(&w.gate, "/api/convos", &[("accept", "application/json")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&body)["error"], "unauthenticated");
    assert!(json(&body)["request_id"].as_str().is_some());

    for (path, host) in [
        ("/c/new?x=1", "localhost"),
        ("//evil.example/x", "evil.example"),
    ] {
        let (status, headers, _) = get(
            &w.gate,
            path,
            &[
                ("accept", "text/html,application/xhtml+xml"),
                ("host", host),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::FOUND, "{path}");
        let location = url::Url::parse(headers["location"].to_str().unwrap()).unwrap();
        assert_eq!(
            location.origin().ascii_serialization(),
            "https://dash.example.com"
        );
        let back = location
            .query_pairs()
            .find(|(k, _)| k == "redirect_to")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let back = url::Url::parse(&back).unwrap();
        assert_eq!(
            back.origin().ascii_serialization(),
            "https://localhost",
            "{path} → {back}"
        );
    }
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| r.path_and_query == "/health"),
        "nothing unauthenticated reached LibreChat"
    );
}

#[tokio::test]
async fn bad_cookies_and_tokens_are_no_session_never_a_5xx() {
    // Room for the 100 KB cookie to reach the cookie decoder instead of the 431 limit.
    let w = world_with(SigningKind::Hs256, |mut c| {
        c.max_header_bytes = 256 * 1024;
        c
    })
    .await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let session: Value = serde_json::from_str(&user.session.to_json()).unwrap();
    let with_token = |token: String| {
        let mut s = session.clone();
        s["access_token"] = Value::String(token);
        s["refresh_token"] = Value::String("unknown-refresh-token".to_owned());
        session_cookie(COOKIE_NAME, &s.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({
            "sub": user.session.user_id(), "aud": "authenticated", "role": "authenticated",
            "iss": w.supabase.issuer(), "iat": now, "exp": now + 3600, "email": "ada@acme.example"
        });
        f(&mut c);
        c
    };
    let none_token = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(claims(&|_| {}).to_string());
        format!("{header}.{body}.")
    };
    let big = "A".repeat(100_000);
    let cases: Vec<(&str, String)> = vec![
        (
            "truncated",
            format!("{COOKIE_NAME}={}", &user.cookie[COOKIE_NAME.len() + 1..100]),
        ),
        (
            "wrong prefix",
            format!(
                "{COOKIE_NAME}=base64l-{}",
                &user.cookie[COOKIE_NAME.len() + 8..]
            ),
        ),
        (
            "missing middle chunk",
            format!("{COOKIE_NAME}.0=base64-eyJh; {COOKIE_NAME}.2=fQ"),
        ),
        ("not JSON", format!("{COOKIE_NAME}=base64-bm90IGpzb24")),
        ("100 KB", format!("{COOKIE_NAME}={big}")),
        ("alg none", with_token(none_token)),
        (
            "wrong secret",
            with_token(sign_hs256(
                b"another-secret-another-secret-12",
                &claims(&|_| {}),
            )),
        ),
        (
            "expired, refresh unknown",
            with_token(
                w.supabase
                    .mint_access_token(claims(&|c| c["exp"] = json!(now - 120))),
            ),
        ),
        (
            "wrong aud",
            with_token(
                w.supabase
                    .mint_access_token(claims(&|c| c["aud"] = json!("anon"))),
            ),
        ),
        (
            "wrong iss",
            with_token(
                w.supabase
                    .mint_access_token(claims(&|c| c["iss"] = json!("https://evil/auth/v1"))),
            ),
        ),
        (
            "no sub",
            with_token(w.supabase.mint_access_token(claims(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }))),
        ),
    ];
    for (what, cookie) in cases {
        let (status, _, body) = get(&w.gate, "/api/convos", &[("cookie", &cookie)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body:?}");
    }
    // Within the 30 s leeway an expired token still passes.
    let cookie = with_token(
        w.supabase
            .mint_access_token(claims(&|c| c["exp"] = json!(now - 5))),
    );
    let (status, _, _) = get(&w.gate, "/api/convos", &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);
}

/// A member of "acme" whose access token expired ten minutes ago.
fn expired_member(supabase: &StandInSupabase) -> support::supabase::Session {
    let session = supabase.sign_in_expired("ada@acme.example", Duration::from_secs(600));
    supabase.set_profile(session.user_id(), "member", Some(acme()));
    session
}

fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn an_expired_session_is_refreshed_once_and_written_back() {
    let w = world(SigningKind::Hs256).await;
    let session = expired_member(&w.supabase);
    let cookie = session_cookie(COOKIE_NAME, &session.to_json());
    let (status, headers, body) = get(&w.gate, "/c/new", &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(w.supabase.refresh_calls(), 1);
    assert_eq!(headers["cache-control"], "private, no-store");
    let written = set_cookies(&headers);
    let session_cookies: Vec<&String> = written
        .iter()
        .filter(|c| c.starts_with(COOKIE_NAME))
        .collect();
    assert!(!session_cookies.is_empty());
    assert!(
        session_cookies.iter().all(|c| c.contains("Path=/")
            && c.contains("SameSite=Lax")
            && c.contains("Max-Age=34560000")),
        "{written:?}"
    );
    // The browser's next request carries the new cookie: no second refresh.
    let jar: Vec<String> = written
        .iter()
        .map(|c| c.split(';').next().unwrap().to_owned())
        .collect();
    let (status, headers, _) = get(&w.gate, "/c/new", &[("cookie", &jar.join("; "))]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(set_cookies(&headers).is_empty());
    assert_eq!(w.supabase.refresh_calls(), 1);
    // The refresh call was made as supabase-js makes it.
    let sent = w.supabase.last_request(Route::Refresh).unwrap().headers;
    assert_eq!(header_of(&sent, "apikey"), Some(w.supabase.anon_key()));
    assert_eq!(
        header_of(&sent, "authorization"),
        Some(format!("Bearer {}", w.supabase.anon_key()))
    );
}

fn header_of(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

#[tokio::test]
async fn a_refresh_written_by_chatgate_is_read_back_by_supabase_ssr() {
    let w = world(SigningKind::Hs256).await;
    // A large session, so the dashboard's cookie is chunked.
    let session = expired_member(&w.supabase);
    let mut json_session: Value = serde_json::from_str(&session.to_json()).unwrap();
    json_session["user"]["user_metadata"]["bio"] = json!("x".repeat(6000));
    let login = support::ssr::ssr(
        "login",
        &json!({"url": "http://127.0.0.1:54321", "session_json": json_session.to_string()}),
    );
    let dashboard_cookies: Vec<String> = login["set_cookie"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().split(';').next().unwrap().to_owned())
        .collect();
    assert!(
        dashboard_cookies.len() >= 2,
        "chunked: {dashboard_cookies:?}"
    );
    let cookie_header = dashboard_cookies.join("; ");
    let (status, headers, _) = get(&w.gate, "/", &[("cookie", &cookie_header)]).await;
    assert_eq!(status, StatusCode::OK);
    let written = set_cookies(&headers);
    let read = support::ssr::ssr(
        "read",
        &json!({"url": "http://127.0.0.1:54321", "cookie_header": cookie_header, "set_cookie": written}),
    );
    let new_refresh = read["session"]["refresh_token"].as_str().unwrap();
    assert_ne!(
        new_refresh, session.refresh_token,
        "the package reads the rotated session"
    );
    assert_eq!(
        read["client_session"]["refresh_token"].as_str(),
        Some(new_refresh)
    );
}

#[tokio::test]
async fn a_refresh_storm_makes_one_refresh_call() {
    let w = world(SigningKind::Hs256).await;
    w.supabase.set_refresh_delay(Duration::from_millis(300));
    let session = expired_member(&w.supabase);
    let cookie = Arc::new(session_cookie(COOKIE_NAME, &session.to_json()));
    let addr = w.gate.addr();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let cookie = cookie.clone();
            tokio::spawn(async move {
                let alpn = if i % 2 == 0 { Alpn::H1 } else { Alpn::H2 };
                let mut client = TestClient::connect(addr, alpn).await.unwrap();
                client.get("/api/convos", &[("cookie", &cookie)]).await.0
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(w.supabase.refresh_calls(), 1);
}

#[tokio::test]
async fn two_replicas_sharing_redis_make_one_refresh_call() {
    let redis = RedisServer::start();
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    supabase.set_refresh_delay(Duration::from_millis(300));
    let upstream = StandInLibreChat::start("lc-1").await;
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.redis_url = redis.url();
    let a = Gate::start(config.clone()).await;
    let b = Gate::start(config).await;
    let session = expired_member(&supabase);
    let cookie = Arc::new(session_cookie(COOKIE_NAME, &session.to_json()));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let cookie = cookie.clone();
            let addr = if i % 2 == 0 { a.addr() } else { b.addr() };
            tokio::spawn(async move {
                let mut client = TestClient::connect(addr, Alpn::H2).await.unwrap();
                client.get("/api/convos", &[("cookie", &cookie)]).await.0
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(supabase.refresh_calls(), 1);
}

#[tokio::test]
async fn session_ending_codes_clear_the_cookie() {
    for code in [
        "refresh_token_not_found",
        "refresh_token_already_used",
        "session_not_found",
        "session_expired",
        "user_banned",
    ] {
        let w = world(SigningKind::Hs256).await;
        let session = expired_member(&w.supabase);
        w.supabase.revoke_session(session.user_id(), code);
        let cookie = session_cookie(COOKIE_NAME, &session.to_json());
        let (status, headers, body) = get(&w.gate, "/api/convos", &[("cookie", &cookie)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}");
        assert_eq!(json(&body)["error"], "unauthenticated");
        let cleared = set_cookies(&headers);
        assert!(
            cleared
                .iter()
                .any(|c| c.starts_with(&format!("{COOKIE_NAME}=;")) && c.contains("Max-Age=0")),
            "{code}: {cleared:?}"
        );
    }
}

#[tokio::test]
async fn a_failing_supabase_answers_503_and_keeps_the_cookie() {
    let w = world(SigningKind::Hs256).await;
    let session = expired_member(&w.supabase);
    w.supabase.fail_next_refreshes(1, 500);
    let cookie = session_cookie(COOKIE_NAME, &session.to_json());
    let (status, headers, body) = get(&w.gate, "/api/convos", &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert!(set_cookies(&headers).is_empty(), "the cookie is kept");
    // Supabase is back: the same cookie works.
    let (status, _, _) = get(&w.gate, "/api/convos", &[("cookie", &cookie)]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_organization_is_looked_up_once_and_only_for_its_own_user() {
    let w = world(SigningKind::Hs256).await;
    let ada = SignedIn::new(&w.supabase, "ada@acme.example");
    let bob_session = w
        .supabase
        .sign_in("bob@globex.example", Duration::from_secs(3600));
    let globex = json!({"id": "globex-id", "name": "Globex", "domain": "globex.example", "plan_type": "free", "librechat_config": null});
    w.supabase
        .set_profile(bob_session.user_id(), "admin", Some(globex));
    let bob_cookie = session_cookie(COOKIE_NAME, &bob_session.to_json());

    for _ in 0..3 {
        let (status, _, body) = get(&w.gate, "/", &[ada.header()]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            echoed(&json(&body), "x-chatgate-org-id"),
            [acme()["id"].as_str().unwrap()]
        );
    }
    assert_eq!(w.supabase.profile_calls(), 1, "cache hit avoids PostgREST");
    let (_, _, body) = get(&w.gate, "/", &[("cookie", &bob_cookie)]).await;
    let echo = json(&body);
    assert_eq!(echoed(&echo, "x-chatgate-org-id"), ["globex-id"]);
    assert_eq!(echoed(&echo, "x-chatgate-role"), ["admin"]);
    assert_eq!(w.supabase.profile_calls(), 2);
}

#[tokio::test]
async fn a_user_without_an_organization_gets_403() {
    let w = world(SigningKind::Hs256).await;
    let orphan = w
        .supabase
        .sign_in("orphan@example.com", Duration::from_secs(3600));
    w.supabase.set_profile(orphan.user_id(), "member", None);
    let nobody = w
        .supabase
        .sign_in("nobody@example.com", Duration::from_secs(3600));
    for session in [orphan, nobody] {
        let cookie = session_cookie(COOKIE_NAME, &session.to_json());
        let (status, _, body) = get(&w.gate, "/", &[("cookie", &cookie)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(json(&body)["error"], "no_organization");
    }
}
