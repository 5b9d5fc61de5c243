//! Signing users in to LibreChat (SPEC sections 4, 5 and 7) on the real
//! proxy: the seed's endpoints and token, the hand-off, chatgate's own
//! session, the OpenID provider, the user switch and jwt mode.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::chatgate::{acme, Gate, GateConfig, SignedIn, LIBRECHAT_SECRET, OIDC_CLIENT_SECRET};
use support::client::{Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::redis::RedisServer;
use support::supabase::{SigningKind, StandInSupabase};

struct World {
    gate: Gate,
    supabase: StandInSupabase,
    upstream: StandInLibreChat,
}

async fn world(tweak: impl FnOnce(GateConfig) -> GateConfig) -> World {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let config = tweak(GateConfig::new(&[upstream.url()]).with_supabase(&supabase));
    World {
        gate: Gate::start(config).await,
        supabase,
        upstream,
    }
}

async fn request(
    gate: &Gate,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    client
        .request(method, path, headers, Bytes::from(body.to_owned()))
        .await
}

async fn get(
    gate: &Gate,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Bytes) {
    request(gate, Method::GET, path, headers, "").await
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("JSON: {e}: {body:?}"))
}

fn set_cookie_named(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with(&format!("{name}=")))
}

/// The `name=value` part of a `Set-Cookie`.
fn jar_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

const PAGE: (&str, &str) = ("accept", "text/html,application/xhtml+xml");

/// The hand-off token of `GET /api/librechat/auth`.
async fn handoff_url(w: &World, user: &SignedIn) -> String {
    let (status, _, body) = get(&w.gate, "/api/librechat/auth", &[user.header()]).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    json(&body)["url"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_seed_endpoints_answer_in_the_seed_shapes() {
    let w = world(|c| c).await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");

    let (status, _, body) = get(&w.gate, "/api/librechat/auth", &[user.header()]).await;
    assert_eq!(status, StatusCode::OK);
    let got = json(&body);
    let url = got["url"].as_str().unwrap();
    assert!(url.starts_with("https://localhost/?token="), "{url}");
    assert_eq!(query_param(url, "org").as_deref(), Some("acme.example"));
    assert_eq!(
        got["organization"],
        json!({"id": acme()["id"], "name": "Acme", "domain": "acme.example", "plan_type": "pro"})
    );

    // The dashboard's server may call with the user's access token instead of the cookie.
    let bearer = format!("Bearer {}", user.session.access_token);
    let (status, _, body) = request(
        &w.gate,
        Method::POST,
        "/api/librechat/auth",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let got = json(&body);
    let user_json = &got["user"];
    assert_eq!(user_json["id"], user.session.user_id());
    assert_eq!(user_json["email"], "ada@acme.example");
    assert_eq!(user_json["name"], "ada");
    assert_eq!(user_json["username"], "ada");
    assert_eq!(
        user_json["avatar"],
        "https://ui-avatars.com/api/?name=ada&background=0D9488&color=fff"
    );
    assert_eq!(user_json["role"], "member");
    assert_eq!(user_json["organization"]["librechat_config"], json!({}));
    let token = got["token"].as_str().unwrap();

    // GET /api/auth/verify answers the claims of that token, and 401 otherwise.
    let auth = format!("Bearer {token}");
    let (status, _, body) = get(&w.gate, "/api/auth/verify", &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK);
    let claims = json(&body);
    for key in [
        "sub",
        "id",
        "email",
        "name",
        "username",
        "avatar",
        "role",
        "organization",
        "iat",
        "exp",
        "provider",
    ] {
        assert!(claims.get(key).is_some(), "claim {key} missing: {claims}");
    }
    assert_eq!(claims["provider"], "supabase");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        24 * 3600
    );
    let (status, _, _) = get(
        &w.gate,
        "/api/auth/verify",
        &[("authorization", "Bearer a.b.c")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Without a Supabase session: 401.
    let (status, _, _) = get(&w.gate, "/api/librechat/auth", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn minted_tokens_are_reused_until_late_in_their_life() {
    let w = world(|c| c).await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let a = handoff_url(&w, &user).await;
    let b = handoff_url(&w, &user).await;
    assert_eq!(query_param(&a, "token"), query_param(&b, "token"));
}

#[tokio::test]
async fn a_handoff_is_exchanged_once_for_a_chatgate_session() {
    let w = world(|c| c).await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let url = handoff_url(&w, &user).await;
    let target = url
        .strip_prefix("https://localhost")
        .unwrap()
        .replace("/?", "/c/new?x=1&");

    // No Supabase cookie here: the iframe is on another site.
    let (status, headers, _) = get(&w.gate, &target, &[PAGE]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/c/new?x=1");
    let session = set_cookie_named(&headers, "chatgate_session").expect("session cookie");
    assert!(
        session.contains("HttpOnly")
            && session.contains("Secure")
            && session.contains("SameSite=Lax"),
        "{session}"
    );
    let jar = jar_pair(&session);

    let (status, _, body) = get(&w.gate, "/c/new?x=1", &[PAGE, ("cookie", &jar)]).await;
    assert_eq!(status, StatusCode::OK);
    let echo = json(&body);
    let headers_seen = echo["headers"].to_string();
    assert!(
        !headers_seen.contains("chatgate_session"),
        "chatgate's cookie reached LibreChat"
    );
    let token = query_param(&url, "token").unwrap();
    assert!(
        !echo.to_string().contains(&token),
        "the token reached LibreChat"
    );
    assert!(w
        .upstream
        .requests()
        .iter()
        .all(|r| !r.path_and_query.contains("token=")));

    // A second exchange of the same token fails.
    let (status, headers, _) = get(&w.gate, &target, &[PAGE]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
    assert!(set_cookie_named(&headers, "chatgate_session").is_none());
}

#[tokio::test]
async fn bad_handoffs_fail_as_the_spec_says() {
    let w = world(|c| c).await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let url = handoff_url(&w, &user).await;
    let token = query_param(&url, "token").unwrap();

    let (status, _, body) = get(
        &w.gate,
        &format!("/?token={token}&org=globex.example"),
        &[PAGE],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json(&body)["error"], "forbidden");

    let forged = {
        let other = chatgate::librechat::token::TokenIssuer::new(
            Some("another-secret-that-is-32-bytes-long!"),
            Duration::from_secs(60),
        );
        let mut claims = chatgate_claims(&token);
        claims.sub = "someone-else".to_owned();
        other.sign(&claims).unwrap()
    };
    let expired = {
        let issuer = chatgate::librechat::token::TokenIssuer::new(
            Some(LIBRECHAT_SECRET),
            Duration::from_secs(60),
        );
        let mut claims = chatgate_claims(&token);
        claims.exp = claims.iat - 10;
        issuer.sign(&claims).unwrap()
    };
    for (what, bad) in [("forged", forged), ("expired", expired)] {
        let (status, headers, _) =
            get(&w.gate, &format!("/?token={bad}&org=acme.example"), &[PAGE]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert!(
            set_cookie_named(&headers, "chatgate_session").is_none(),
            "{what}"
        );
    }
    assert!(w
        .upstream
        .requests()
        .iter()
        .all(|r| r.path_and_query == "/health"));
}

/// Two chatgate replicas sharing one real Redis and one folder (certificate
/// and OpenID signing key), as deployed replicas must.
struct Replicas {
    a: Gate,
    b: Gate,
    supabase: StandInSupabase,
    _redis: RedisServer,
    _upstream: StandInLibreChat,
    _dir: tempfile::TempDir,
}

async fn replicas() -> Replicas {
    let redis = RedisServer::start();
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.redis_url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let a = Gate::start_in(config.clone(), dir.path()).await;
    let b = Gate::start_in(config, dir.path()).await;
    Replicas {
        a,
        b,
        supabase,
        _redis: redis,
        _upstream: upstream,
        _dir: dir,
    }
}

fn chatgate_claims(token: &str) -> chatgate::librechat::token::TokenClaims {
    let issuer = chatgate::librechat::token::TokenIssuer::new(
        Some(LIBRECHAT_SECRET),
        Duration::from_secs(60),
    );
    issuer.verify(token).unwrap()
}

#[tokio::test]
async fn a_chatgate_session_works_on_every_replica_and_ends_at_logout() {
    let Replicas {
        a,
        b,
        supabase,
        _redis,
        _upstream,
        _dir,
    } = replicas().await;
    let user = SignedIn::new(&supabase, "ada@acme.example");

    let (_, _, body) = get(&a, "/api/librechat/auth", &[user.header()]).await;
    let url = json(&body)["url"].as_str().unwrap().to_owned();
    let (status, headers, _) =
        get(&a, url.strip_prefix("https://localhost").unwrap(), &[PAGE]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let jar = jar_pair(&set_cookie_named(&headers, "chatgate_session").unwrap());

    let (status, _, body) = get(&b, "/api/convos", &[("cookie", &jar)]).await;
    assert_eq!(status, StatusCode::OK, "replica B honours A's session");
    let echo = json(&body);
    let user_header = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "x-chatgate-user-id")
        .unwrap()[1]
        .clone();
    assert_eq!(user_header, user.session.user_id());

    // Logging out on B ends the session everywhere.
    let (status, headers, _) = request(
        &b,
        Method::POST,
        "/api/librechat/logout",
        &[user.header()],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(set_cookie_named(&headers, "chatgate_session")
        .unwrap()
        .contains("Max-Age=0"));
    assert!(set_cookie_named(&headers, "refreshToken")
        .unwrap()
        .contains("Max-Age=0"));
    let (status, _, _) = get(&a, "/api/convos", &[("cookie", &jar)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_user_switch_never_forwards_the_previous_users_librechat_session() {
    let w = world(|c| c).await;
    let ada = SignedIn::new(&w.supabase, "ada@acme.example");
    let bob = SignedIn::new(&w.supabase, "bob@acme.example");

    // Ada's browser: bound to Ada, with LibreChat's cookies.
    let (_, headers, _) = get(&w.gate, "/", &[ada.header()]).await;
    let bind = jar_pair(&set_cookie_named(&headers, "chatgate_bind").unwrap());
    let librechat = "refreshToken=ada-refresh; token_provider=openid; openid_id_token=ada-id; connect.sid=s%3Aada";
    let ada_cookies = format!("{}; {bind}; {librechat}", ada.cookie);
    let (status, _, body) = get(
        &w.gate,
        "/api/convos",
        &[
            ("cookie", &ada_cookies),
            ("authorization", "Bearer ada-librechat"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        json(&body).to_string().contains("ada-refresh"),
        "Ada's own session passes"
    );

    // Bob signs in to the dashboard in the same browser.
    let bob_cookies = format!("{}; {bind}; {librechat}", bob.cookie);
    let (status, _, body) = get(
        &w.gate,
        "/api/convos",
        &[
            ("cookie", &bob_cookies),
            ("authorization", "Bearer ada-librechat"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = json(&body).to_string();
    for secret in ["ada-refresh", "ada-id", "s%3Aada", "ada-librechat"] {
        assert!(
            !seen.contains(secret),
            "Bob's request carried Ada's {secret}"
        );
    }

    // A page load is sent through sign-in again, with LibreChat's cookies cleared.
    let before = w.upstream.requests().len();
    let (status, headers, _) = get(&w.gate, "/c/new", &[PAGE, ("cookie", &bob_cookies)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/c/new");
    for name in [
        "refreshToken",
        "token_provider",
        "openid_id_token",
        "connect.sid",
    ] {
        let cleared =
            set_cookie_named(&headers, name).unwrap_or_else(|| panic!("{name} not cleared"));
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
    }
    assert_eq!(
        w.upstream.requests().len(),
        before,
        "the page load did not reach LibreChat"
    );
}

#[tokio::test]
async fn jwt_mode_sends_chatgates_bearer_and_answers_refresh() {
    let w = world(|mut c| {
        c.auth_mode = "jwt".to_owned();
        c
    })
    .await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let (status, _, body) = get(
        &w.gate,
        "/api/convos",
        &[user.header(), ("authorization", "Bearer client-token")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let echo = json(&body);
    let auth = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "authorization")
        .unwrap()[1]
        .as_str()
        .unwrap()
        .to_owned();
    let token = auth.strip_prefix("Bearer ").unwrap();
    assert_ne!(token, "client-token");
    let issuer = chatgate::librechat::token::TokenIssuer::new(
        Some(LIBRECHAT_SECRET),
        Duration::from_secs(60),
    );
    assert_eq!(issuer.verify(token).unwrap().sub, user.session.user_id());

    let (status, _, body) = request(
        &w.gate,
        Method::POST,
        "/api/auth/refresh",
        &[user.header()],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let refreshed = json(&body);
    assert_eq!(refreshed["user"]["email"], "ada@acme.example");
    assert_eq!(refreshed["user"]["_id"], user.session.user_id());
    assert!(issuer.verify(refreshed["token"].as_str().unwrap()).is_ok());
    // The OpenID provider is off in jwt mode: its routes are LibreChat's (after auth).
    let (status, _, _) = get(&w.gate, "/oidc/.well-known/openid-configuration", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

// ---- The OpenID provider, at the HTTP level --------------------------------

const CALLBACK: &str = "https://localhost/oauth/openid/callback";

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

fn authorize_path(redirect_uri: &str, challenge: Option<&str>) -> String {
    let mut url = url::Url::parse("https://localhost/oidc/authorize").unwrap();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "librechat")
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", "openid profile email")
        .append_pair("state", "st-123")
        .append_pair("nonce", "n-456");
    if let Some(c) = challenge {
        url.query_pairs_mut()
            .append_pair("code_challenge", c)
            .append_pair("code_challenge_method", "S256");
    }
    format!("{}?{}", url.path(), url.query().unwrap())
}

async fn code_for(gate: &Gate, user: &SignedIn, challenge: Option<&str>) -> String {
    let (status, headers, body) = get(
        gate,
        &authorize_path(CALLBACK, challenge),
        &[PAGE, user.header()],
    )
    .await;
    assert_eq!(status, StatusCode::FOUND, "{body:?}");
    let location = headers["location"].to_str().unwrap();
    assert!(location.starts_with(CALLBACK), "{location}");
    assert_eq!(query_param(location, "state").as_deref(), Some("st-123"));
    query_param(location, "code").unwrap()
}

async fn redeem(gate: &Gate, code: &str, verifier: Option<&str>) -> (StatusCode, Value) {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", CALLBACK);
    if let Some(v) = verifier {
        form.append_pair("code_verifier", v);
    }
    let auth = basic("librechat", OIDC_CLIENT_SECRET);
    let (status, _, body) = request(
        gate,
        Method::POST,
        "/oidc/token",
        &[
            ("authorization", &auth),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &form.finish(),
    )
    .await;
    (status, json(&body))
}

#[tokio::test]
async fn the_discovery_document_names_the_endpoints() {
    let w = world(|mut c| {
        c.public_url = "https://chat.example.com".to_owned();
        c
    })
    .await;
    let (status, _, body) = get(&w.gate, "/oidc/.well-known/openid-configuration", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert_eq!(doc["issuer"], "https://chat.example.com/oidc");
    assert_eq!(
        doc["authorization_endpoint"],
        "https://chat.example.com/oidc/authorize"
    );
    assert_eq!(doc["token_endpoint"], "https://chat.example.com/oidc/token");
    assert_eq!(doc["jwks_uri"], "https://chat.example.com/oidc/jwks.json");
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    let (_, _, body) = get(&w.gate, "/oidc/jwks.json", &[]).await;
    let key = &json(&body)["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert!(key["kid"].as_str().is_some());
    assert!(key.get("d").is_none(), "the JWKS publishes no private part");
}

#[tokio::test]
async fn codes_are_single_use_and_pkce_is_checked() {
    let w = world(|c| c).await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    let code = code_for(&w.gate, &user, Some(challenge)).await;
    let (status, body) = redeem(&w.gate, &code, Some("wrong-verifier")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    let code = code_for(&w.gate, &user, Some(challenge)).await;
    let (status, tokens) = redeem(&w.gate, &code, Some(verifier)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let (status, again) = redeem(&w.gate, &code, Some(verifier)).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // A wrong client secret is invalid_client.
    let code = code_for(&w.gate, &user, None).await;
    let auth = basic("librechat", "not-the-secret");
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}",
        urlencode(CALLBACK)
    );
    let (status, _, body) = request(
        &w.gate,
        Method::POST,
        "/oidc/token",
        &[
            ("authorization", &auth),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &form,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json(&body)["error"], "invalid_client");
    // client_secret_post works too.
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&client_id=librechat&client_secret={OIDC_CLIENT_SECRET}",
        urlencode(CALLBACK)
    );
    let (status, _, body) = request(
        &w.gate,
        Method::POST,
        "/oidc/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn a_foreign_redirect_uri_is_refused_without_redirecting() {
    let w = world(|c| c).await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    for evil in [
        "https://evil.example/cb",
        "https://localhost.evil.example/cb",
        "https://user@evil.example/cb",
        "//evil.example/cb",
        "https://localhost:8443/cb",
        "http://localhost/cb",
    ] {
        let (status, headers, _) =
            get(&w.gate, &authorize_path(evil, None), &[PAGE, user.header()]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{evil}");
        assert!(
            !headers.contains_key("location"),
            "{evil} was redirected to"
        );
    }
}

#[tokio::test]
async fn authorize_without_a_session_goes_to_the_dashboard() {
    let w = world(|mut c| {
        c.login_url = "https://dash.example.com/login".to_owned();
        c
    })
    .await;
    let (status, headers, _) = get(&w.gate, &authorize_path(CALLBACK, None), &[PAGE]).await;
    assert_eq!(status, StatusCode::FOUND);
    let location = headers["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://dash.example.com/login?redirect_to="),
        "{location}"
    );
    let back = query_param(location, "redirect_to").unwrap();
    assert!(
        back.starts_with("https://localhost/oidc/authorize?"),
        "{back}"
    );
}

#[tokio::test]
async fn a_code_from_one_replica_is_redeemed_on_another_and_refresh_rotates() {
    let Replicas {
        a,
        b,
        supabase,
        _redis,
        _upstream,
        _dir,
    } = replicas().await;
    let user = SignedIn::new(&supabase, "ada@acme.example");

    let code = code_for(&a, &user, None).await;
    let (status, tokens) = redeem(&b, &code, None).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");

    // userinfo on A with the access token B issued.
    let bearer = format!("Bearer {}", tokens["access_token"].as_str().unwrap());
    let (status, _, body) = get(&a, "/oidc/userinfo", &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    let info = json(&body);
    assert_eq!(info["sub"], user.session.user_id());
    assert_eq!(info["email"], "ada@acme.example");
    assert_eq!(info["email_verified"], true);
    assert_eq!(info["organization"]["domain"], "acme.example");

    // The refresh token rotates: the new one works once, the old one never again.
    let refresh = |token: String| {
        let gate = &a;
        async move {
            let form = format!("grant_type=refresh_token&refresh_token={token}");
            let auth = basic("librechat", OIDC_CLIENT_SECRET);
            let (status, _, body) = request(
                gate,
                Method::POST,
                "/oidc/token",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &form,
            )
            .await;
            (status, json(&body))
        }
    };
    let old = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated) = refresh(old.clone()).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert_ne!(rotated["refresh_token"], tokens["refresh_token"]);
    let (status, reused) = refresh(old).await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // A dashboard logout ends the OpenID grant too.
    let (status, _, _) = request(
        &a,
        Method::POST,
        "/api/librechat/logout",
        &[user.header()],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, ended) = refresh(rotated["refresh_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(
        (status, ended["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}
