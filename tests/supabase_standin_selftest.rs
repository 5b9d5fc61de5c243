//! Self-test of the stand-in Supabase (`tests/support/supabase.rs`): real HTTP calls show it
//! answers the way GoTrue and PostgREST do where chatgate depends on it.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use support::supabase::{Route, Session, SigningKind, StandInSupabase, PROFILE_SELECT};

const HOUR: Duration = Duration::from_secs(3600);

/// The query string supabase-js sends for chatgate's profile lookup.
fn profile_query(user_id: &str) -> String {
    let select: String = url::form_urlencoded::byte_serialize(PROFILE_SELECT.as_bytes()).collect();
    format!("/rest/v1/profiles?select={select}&id=eq.{user_id}")
}

fn acme() -> Value {
    json!({
        "id": "6b1f3c4e-8d2a-4f5b-9c7e-1a2b3c4d5e6f",
        "name": "Acme",
        "domain": "acme.com",
        "plan_type": "pro",
        "librechat_config": {"enabled_models": ["gpt-4o"], "features": {"file_upload": false}},
    })
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A plain HTTP client speaking to one stand-in.
struct Caller {
    base: String,
    anon_key: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Caller {
    fn new(supabase: &StandInSupabase) -> Caller {
        Caller {
            base: supabase.url(),
            anon_key: supabase.anon_key(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = Full::new(Bytes::from(body.unwrap_or_default().to_owned()));
        let response = self
            .client
            .request(request.body(body).expect("request"))
            .await
            .expect("stand-in answers");
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("body").to_bytes(),
        }
    }

    /// The refresh exactly as supabase-js sends it (`versioned` adds `X-Supabase-Api-Version`).
    async fn refresh_with(&self, body: &str, versioned: bool) -> Answer {
        let bearer = format!("Bearer {}", self.anon_key);
        let mut headers = vec![
            ("apikey", self.anon_key.as_str()),
            ("authorization", bearer.as_str()),
            ("content-type", "application/json;charset=UTF-8"),
        ];
        if versioned {
            headers.push(("x-supabase-api-version", "2024-01-01"));
        }
        self.send(
            Method::POST,
            "/auth/v1/token?grant_type=refresh_token",
            &headers,
            Some(body),
        )
        .await
    }

    async fn refresh(&self, refresh_token: &str) -> Answer {
        let body = json!({ "refresh_token": refresh_token }).to_string();
        self.refresh_with(&body, true).await
    }

    async fn get_with_token(&self, path: &str, token: &str, accept: Option<&str>) -> Answer {
        let bearer = format!("Bearer {token}");
        let mut headers = vec![
            ("apikey", self.anon_key.as_str()),
            ("authorization", bearer.as_str()),
            ("accept-profile", "public"),
        ];
        if let Some(accept) = accept {
            headers.push(("accept", accept));
        }
        self.send(Method::GET, path, &headers, None).await
    }

    async fn profile(&self, user_id: &str, token: &str) -> Answer {
        let accept = Some("application/vnd.pgrst.object+json");
        self.get_with_token(&profile_query(user_id), token, accept)
            .await
    }

    async fn jwks(&self) -> Answer {
        let headers = [("apikey", self.anon_key.as_str())];
        self.send(
            Method::GET,
            "/auth/v1/.well-known/jwks.json",
            &headers,
            None,
        )
        .await
    }
}

fn refreshed(answer: &Answer) -> Session {
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "refresh failed: {:?}",
        answer.body
    );
    Session::from_json(std::str::from_utf8(&answer.body).unwrap()).expect("session JSON")
}

fn validation(supabase: &StandInSupabase, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_audience(&["authenticated"]);
    validation.set_issuer(&[supabase.issuer()]);
    validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
    validation
}

/// Verifies `token` with the published JWKS, as chatgate will.
async fn verify_with_jwks(caller: &Caller, supabase: &StandInSupabase, token: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("JWT header");
    let set: JwkSet = serde_json::from_slice(&caller.jwks().await.body).expect("JWKS parses");
    let kid = header.kid.expect("asymmetric tokens carry a kid");
    let jwk = set.find(&kid).expect("kid is published");
    let key = DecodingKey::from_jwk(jwk).expect("usable JWK");
    jsonwebtoken::decode::<Value>(token, &key, &validation(supabase, header.alg))
        .expect("token verifies with the published key")
        .claims
}

#[tokio::test]
async fn hs256_sign_in_gives_a_gotrue_session_that_verifies_with_the_secret() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let session = supabase.sign_in("alice@example.com", HOUR);

    assert!(supabase.jwt_secret().len() >= 32);
    assert_eq!(session.token_type, "bearer");
    assert_eq!(session.expires_in, 3600);
    assert_eq!(session.refresh_token.len(), 12);
    assert!(session
        .refresh_token
        .bytes()
        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
    assert_eq!(session.user["email"], "alice@example.com");
    assert_eq!(session.user["aud"], "authenticated");
    assert!(uuid::Uuid::parse_str(session.user_id()).is_ok());

    let header = jsonwebtoken::decode_header(&session.access_token).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.kid, None, "HS256 tokens carry no kid");
    let key = DecodingKey::from_secret(supabase.jwt_secret().as_bytes());
    let claims = jsonwebtoken::decode::<Value>(
        &session.access_token,
        &key,
        &validation(&supabase, Algorithm::HS256),
    )
    .expect("verifies with the JWT secret")
    .claims;
    assert_eq!(claims["sub"], session.user_id());
    assert_eq!(claims["role"], "authenticated");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["aal"], "aal1");
    assert_eq!(claims["amr"][0]["method"], "password");
    assert_eq!(claims["is_anonymous"], false);
    assert!(claims["session_id"].as_str().is_some());
    assert_eq!(claims["exp"], session.expires_at);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    assert_eq!(session.claims(), claims);

    let again = supabase.sign_in("alice@example.com", HOUR);
    assert_eq!(again.user_id(), session.user_id(), "same e-mail, same user");
    assert_ne!(again.claims()["session_id"], claims["session_id"]);

    let jwks = Caller::new(&supabase).jwks().await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.json(), json!({"keys": []}));
}

#[tokio::test]
async fn es256_and_rs256_tokens_verify_with_the_published_jwk() {
    for (kind, alg, kty) in [
        (SigningKind::Es256, Algorithm::ES256, "EC"),
        (SigningKind::Rs256, Algorithm::RS256, "RSA"),
    ] {
        let supabase = StandInSupabase::start(kind).await;
        let caller = Caller::new(&supabase);
        let session = supabase.sign_in("bob@example.com", HOUR);

        let jwks = caller.jwks().await;
        assert_eq!(jwks.status, StatusCode::OK);
        assert_eq!(jwks.header("cache-control"), Some("public, max-age=600"));
        let document = jwks.json();
        let keys = document["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["kty"], kty);
        assert_eq!(keys[0]["kid"].as_str(), supabase.current_kid().as_deref());
        assert!(keys[0].get("d").is_none(), "public keys only");

        let header = jsonwebtoken::decode_header(&session.access_token).unwrap();
        assert_eq!(header.alg, alg);
        let claims = verify_with_jwks(&caller, &supabase, &session.access_token).await;
        assert_eq!(claims["sub"], session.user_id());
        assert_eq!(supabase.jwks_calls(), 2);
    }
}

#[tokio::test]
async fn every_route_wants_the_apikey_like_kong() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let caller = Caller::new(&supabase);
    let session = supabase.sign_in("carol@example.com", HOUR);

    for path in [
        "/auth/v1/health",
        "/auth/v1/.well-known/jwks.json",
        "/auth/v1/user",
        "/rest/v1/profiles?select=role",
    ] {
        let missing = caller.send(Method::GET, path, &[], None).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            missing.json(),
            json!({"message": "No API key found in request"})
        );
        let wrong = caller
            .send(Method::GET, path, &[("apikey", "nope")], None)
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(wrong.json(), json!({"message": "Invalid API key"}));
    }
    let body = json!({ "refresh_token": session.refresh_token }).to_string();
    let refused = caller
        .send(
            Method::POST,
            "/auth/v1/token?grant_type=refresh_token",
            &[("content-type", "application/json")],
            Some(&body),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(supabase.refresh_calls(), 1, "refused calls count too");
    assert_eq!(supabase.jwks_calls(), 2);
    assert_eq!(supabase.profile_calls(), 2);

    let health = caller
        .send(
            Method::GET,
            "/auth/v1/health",
            &[("apikey", &supabase.anon_key())],
            None,
        )
        .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["name"], "GoTrue");
    assert_eq!(supabase.calls(Route::Health), 3);
}

#[tokio::test]
async fn refresh_rotates_and_hands_the_active_child_back_to_its_parent() {
    let supabase = StandInSupabase::start(SigningKind::Es256).await;
    let caller = Caller::new(&supabase);
    let session = supabase.sign_in("dave@example.com", HOUR);

    let child = refreshed(&caller.refresh(&session.refresh_token).await);
    assert_ne!(child.refresh_token, session.refresh_token);
    assert_eq!(child.refresh_token.len(), 12);
    assert_eq!(child.user_id(), session.user_id());
    assert_eq!(child.token_type, "bearer");
    assert_eq!(child.expires_in, 3600);
    let claims = verify_with_jwks(&caller, &supabase, &child.access_token).await;
    assert_eq!(claims["session_id"], session.claims()["session_id"]);
    assert_eq!(claims["exp"], child.expires_at);

    // chatgate sent the headers SPEC section 6 asks for; the stand-in kept them.
    let request = supabase.last_request(Route::Refresh).unwrap();
    assert_eq!(request.header("apikey"), Some(supabase.anon_key().as_str()));
    let bearer = format!("Bearer {}", supabase.anon_key());
    assert_eq!(request.header("authorization"), Some(bearer.as_str()));
    assert_eq!(
        serde_json::from_str::<Value>(&request.body).unwrap()["refresh_token"],
        session.refresh_token.as_str()
    );

    // The parent of the active token gets the same child again, at any time.
    supabase.set_reuse_interval(Duration::ZERO);
    for _ in 0..2 {
        let again = refreshed(&caller.refresh(&session.refresh_token).await);
        assert_eq!(again.refresh_token, child.refresh_token);
        verify_with_jwks(&caller, &supabase, &again.access_token).await;
    }
    let grandchild = refreshed(&caller.refresh(&child.refresh_token).await);
    assert_ne!(grandchild.refresh_token, child.refresh_token);
    assert_eq!(supabase.refresh_calls(), 4);
}

#[tokio::test]
async fn older_token_is_reissued_inside_the_reuse_interval() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let caller = Caller::new(&supabase);
    let a = supabase.sign_in("erin@example.com", HOUR).refresh_token;
    let b = refreshed(&caller.refresh(&a).await).refresh_token;
    let c = refreshed(&caller.refresh(&b).await).refresh_token;

    // `a` is two generations old but was revoked less than 10 s ago: GoTrue issues a new child.
    let d = refreshed(&caller.refresh(&a).await).refresh_token;
    assert!(![&a, &b, &c].contains(&&d));
    // `d` is now the session's active token, so `a` (its parent) gets `d` again.
    assert_eq!(refreshed(&caller.refresh(&a).await).refresh_token, d);
}

#[tokio::test]
async fn older_token_outside_the_reuse_interval_revokes_the_family() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let caller = Caller::new(&supabase);
    supabase.set_reuse_interval(Duration::from_millis(200));
    let a = supabase.sign_in("frank@example.com", HOUR).refresh_token;
    let b = refreshed(&caller.refresh(&a).await).refresh_token;
    let c = refreshed(&caller.refresh(&b).await).refresh_token;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let reuse = caller.refresh(&a).await;
    assert_eq!(reuse.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reuse.header("x-sb-error-code"),
        Some("refresh_token_already_used")
    );
    assert_eq!(
        reuse.json(),
        json!({"code": "refresh_token_already_used", "message": "Invalid Refresh Token: Already Used"})
    );

    // The whole family went with it: once the reuse window of that revocation has passed,
    // the formerly active token is refused too (inside it GoTrue would still reissue).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for token in [&b, &c] {
        let answer = caller.refresh(token).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{token}");
        assert_eq!(
            answer.header("x-sb-error-code"),
            Some("refresh_token_already_used")
        );
    }
    // A new sign-in is a new family.
    let fresh = supabase.sign_in("frank@example.com", HOUR);
    refreshed(&caller.refresh(&fresh.refresh_token).await);
}

#[tokio::test]
async fn refresh_errors_come_in_both_gotrue_shapes() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let caller = Caller::new(&supabase);
    let unknown = json!({ "refresh_token": "abcdefghijkl" }).to_string();

    let legacy = caller.refresh_with(&unknown, false).await;
    assert_eq!(legacy.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        legacy.header("x-sb-error-code"),
        Some("refresh_token_not_found")
    );
    assert_eq!(legacy.header("x-supabase-api-version"), None);
    assert_eq!(
        legacy.json(),
        json!({"code": 400, "error_code": "refresh_token_not_found",
               "msg": "Invalid Refresh Token: Refresh Token Not Found"})
    );

    let versioned = caller.refresh_with(&unknown, true).await;
    assert_eq!(versioned.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        versioned.header("x-sb-error-code"),
        Some("refresh_token_not_found")
    );
    assert_eq!(
        versioned.header("x-supabase-api-version"),
        Some("2024-01-01")
    );
    assert_eq!(
        versioned.json(),
        json!({"code": "refresh_token_not_found",
               "message": "Invalid Refresh Token: Refresh Token Not Found"})
    );

    // A missing token is an OAuth-style error in GoTrue, without x-sb-error-code.
    let missing = caller.refresh_with("{}", true).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.header("x-sb-error-code"), None);
    assert_eq!(
        missing.json(),
        json!({"error": "invalid_request", "error_description": "refresh_token required"})
    );

    let garbled = caller.refresh_with("not json", true).await;
    assert_eq!(garbled.status, StatusCode::BAD_REQUEST);
    assert_eq!(garbled.header("x-sb-error-code"), Some("bad_json"));
    assert_eq!(garbled.json()["code"], "bad_json");
    assert_eq!(supabase.refresh_calls(), 4);
}

#[tokio::test]
async fn injected_failures_answer_like_gotrue_then_recover() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let caller = Caller::new(&supabase);
    let session = supabase.sign_in("grace@example.com", HOUR);
    let body = json!({ "refresh_token": session.refresh_token }).to_string();

    supabase.fail_next_refreshes(2, 500);
    let legacy = caller.refresh_with(&body, false).await;
    assert_eq!(legacy.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(legacy.header("x-sb-error-code"), Some("unexpected_failure"));
    let error = legacy.json();
    assert_eq!(error["code"], 500);
    assert_eq!(error["error_code"], "unexpected_failure");
    assert!(error["error_id"].as_str().is_some());
    let versioned = caller.refresh_with(&body, true).await;
    assert_eq!(versioned.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(versioned.json()["code"], "unexpected_failure");

    supabase.fail_next_refreshes(1, 503);
    assert_eq!(
        caller.refresh(&session.refresh_token).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    supabase.fail_next_refreshes(1, 409);
    let conflict = caller.refresh(&session.refresh_token).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.header("x-sb-error-code"), Some("conflict"));

    // The failures consumed nothing: the original token still rotates.
    let child = refreshed(&caller.refresh(&session.refresh_token).await);
    assert_ne!(child.refresh_token, session.refresh_token);
    assert_eq!(supabase.refresh_calls(), 5);
}

#[tokio::test]
async fn a_revoked_session_answers_its_code() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let caller = Caller::new(&supabase);
    for (code, message) in [
        (
            "session_not_found",
            "Invalid Refresh Token: No Valid Session Found",
        ),
        ("user_banned", "Invalid Refresh Token: User Banned"),
        ("session_expired", "Invalid Refresh Token: Session Expired"),
    ] {
        let email = format!("{code}@example.com");
        let session = supabase.sign_in(&email, HOUR);
        supabase.revoke_session(session.user_id(), code);
        for _ in 0..2 {
            let answer = caller.refresh(&session.refresh_token).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{code}");
            assert_eq!(answer.header("x-sb-error-code"), Some(code));
            assert_eq!(answer.json(), json!({"code": code, "message": message}));
        }
        // A later sign-in opens a session that works.
        let later = supabase.sign_in(&email, HOUR);
        refreshed(&caller.refresh(&later.refresh_token).await);
    }
}

#[tokio::test]
async fn refresh_delay_makes_concurrent_refreshes_overlap() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let caller = std::sync::Arc::new(Caller::new(&supabase));
    let session = supabase.sign_in("heidi@example.com", HOUR);
    supabase.set_refresh_delay(Duration::from_millis(500));

    let started = Instant::now();
    let spawn_refresh = || {
        let (caller, token) = (caller.clone(), session.refresh_token.clone());
        tokio::spawn(async move { caller.refresh(&token).await })
    };
    let (first, second) = (spawn_refresh(), spawn_refresh());
    // Both arrive while the first answer is still held.
    while supabase.refresh_calls() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        !first.is_finished() && !second.is_finished(),
        "both are held"
    );
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(500));
    // GoTrue serializes them: the second sees the parent of the active token.
    assert_eq!(
        refreshed(&first).refresh_token,
        refreshed(&second).refresh_token
    );
    assert_eq!(supabase.refresh_calls(), 2);
}

#[tokio::test]
async fn postgrest_returns_the_profile_shaped_by_the_select() {
    let supabase = StandInSupabase::start(SigningKind::Rs256).await;
    let caller = Caller::new(&supabase);
    let alice = supabase.sign_in("ivan@example.com", HOUR);
    supabase.set_profile(alice.user_id(), "admin", Some(acme()));

    let object = caller.profile(alice.user_id(), &alice.access_token).await;
    assert_eq!(object.status, StatusCode::OK);
    assert_eq!(
        object.header("content-type"),
        Some("application/vnd.pgrst.object+json; charset=utf-8")
    );
    assert_eq!(
        object.json(),
        json!({"role": "admin", "organization": acme()})
    );

    let request = supabase.last_request(Route::Profiles).unwrap();
    assert_eq!(request.header("apikey"), Some(supabase.anon_key().as_str()));
    let bearer = format!("Bearer {}", alice.access_token);
    assert_eq!(request.header("authorization"), Some(bearer.as_str()));
    assert_eq!(request.path_and_query, profile_query(alice.user_id()));

    let array = caller
        .get_with_token(&profile_query(alice.user_id()), &alice.access_token, None)
        .await;
    assert_eq!(array.status, StatusCode::OK);
    assert_eq!(
        array.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        array.json(),
        json!([{"role": "admin", "organization": acme()}])
    );

    supabase.set_profile(alice.user_id(), "member", None);
    let orphan = caller.profile(alice.user_id(), &alice.access_token).await;
    assert_eq!(
        orphan.json(),
        json!({"role": "member", "organization": null})
    );

    let narrow = caller
        .get_with_token(
            &format!(
                "/rest/v1/profiles?select=id,org:organizations(domain)&id=eq.{}",
                alice.user_id()
            ),
            &alice.access_token,
            Some("application/vnd.pgrst.object+json"),
        )
        .await;
    assert_eq!(narrow.json(), json!({"id": alice.user_id(), "org": null}));

    let unknown_column = caller
        .get_with_token("/rest/v1/profiles?select=secret", &alice.access_token, None)
        .await;
    assert_eq!(unknown_column.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown_column.json()["code"], "42703");
    let other_table = caller
        .get_with_token("/rest/v1/members?select=*", &alice.access_token, None)
        .await;
    assert_eq!(other_table.status, StatusCode::NOT_FOUND);
    assert_eq!(other_table.json()["code"], "PGRST205");
    assert_eq!(supabase.profile_calls(), 5);
}

#[tokio::test]
async fn row_level_security_hides_other_users_profiles() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let caller = Caller::new(&supabase);
    let alice = supabase.sign_in("judy@example.com", HOUR);
    let bob = supabase.sign_in("mallory@example.com", HOUR);
    supabase.set_profile(alice.user_id(), "admin", Some(acme()));
    supabase.set_profile(bob.user_id(), "member", Some(acme()));

    let expected_406 = json!({
        "code": "PGRST116",
        "details": "The result contains 0 rows",
        "hint": null,
        "message": "Cannot coerce the result to a single JSON object",
    });
    let peek = caller.profile(bob.user_id(), &alice.access_token).await;
    assert_eq!(peek.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(
        peek.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(peek.json(), expected_406);

    let own = caller.profile(bob.user_id(), &bob.access_token).await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.json()["role"], "member");

    supabase.remove_profile(bob.user_id());
    let none = caller.profile(bob.user_id(), &bob.access_token).await;
    assert_eq!(none.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(none.json(), expected_406);

    // The anon key is no user: it sees no rows.
    let anon = caller.profile(alice.user_id(), &supabase.anon_key()).await;
    assert_eq!(anon.status, StatusCode::NOT_ACCEPTABLE);
    let list = caller
        .get_with_token("/rest/v1/profiles?select=id", &alice.access_token, None)
        .await;
    assert_eq!(list.json(), json!([{"id": alice.user_id()}]));
}

#[tokio::test]
async fn postgrest_refuses_bad_and_expired_jwts_with_401() {
    let supabase = StandInSupabase::start(SigningKind::Es256).await;
    let other = StandInSupabase::start(SigningKind::Es256).await;
    let caller = Caller::new(&supabase);
    let alice = supabase.sign_in("ken@example.com", HOUR);
    supabase.set_profile(alice.user_id(), "admin", Some(acme()));

    let garbage = caller.profile(alice.user_id(), "not-a-jwt").await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        garbage.json(),
        json!({"code": "PGRST301", "details": null, "hint": null,
               "message": "Expected 3 parts in JWT; got 1"})
    );
    assert_eq!(
        garbage.header("www-authenticate"),
        Some(
            "Bearer error=\"invalid_token\", error_description=\"Expected 3 parts in JWT; got 1\""
        )
    );

    // Flip the first character of the signature: still base64url, no longer valid.
    let (signed, signature) = alice.access_token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{signed}.{flipped}{}", &signature[1..]);
    let forged = caller.profile(alice.user_id(), &tampered).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    assert_eq!(forged.json()["code"], "PGRST301");

    let mut claims = alice.claims();
    claims["exp"] = json!(claims["exp"].as_i64().unwrap() + 60);
    let foreign = caller
        .profile(alice.user_id(), &other.mint_access_token(claims))
        .await;
    assert_eq!(foreign.status, StatusCode::UNAUTHORIZED);
    assert_eq!(foreign.json()["code"], "PGRST301");

    let stale = supabase.sign_in_expired("ken@example.com", Duration::from_secs(120));
    let expired = caller.profile(stale.user_id(), &stale.access_token).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        expired.json(),
        json!({"code": "PGRST303", "details": null, "hint": null, "message": "JWT expired"})
    );
    assert_eq!(
        expired.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\", error_description=\"JWT expired\"")
    );

    // PostgREST allows 30 s of clock skew on exp.
    let just_expired = supabase.sign_in_expired("ken@example.com", Duration::from_secs(5));
    let skewed = caller
        .profile(just_expired.user_id(), &just_expired.access_token)
        .await;
    assert_eq!(skewed.status, StatusCode::OK);

    let mut claims = alice.claims();
    claims["role"] = json!("postgres_admin");
    let bad_role = caller
        .profile(alice.user_id(), &supabase.mint_access_token(claims))
        .await;
    assert_eq!(bad_role.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bad_role.json()["code"], "22023");
}

#[tokio::test]
async fn user_route_answers_the_user_or_bad_jwt() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let caller = Caller::new(&supabase);
    let alice = supabase.sign_in("leo@example.com", HOUR);

    let me = caller
        .get_with_token("/auth/v1/user", &alice.access_token, None)
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["id"], alice.user_id());
    assert_eq!(me.json()["email"], "leo@example.com");

    let forged = caller
        .get_with_token("/auth/v1/user", &format!("{}x", alice.access_token), None)
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(forged.header("x-sb-error-code"), Some("bad_jwt"));

    let stale = supabase.sign_in_expired("leo@example.com", Duration::from_secs(5));
    let expired = caller
        .get_with_token("/auth/v1/user", &stale.access_token, None)
        .await;
    assert_eq!(
        expired.status,
        StatusCode::FORBIDDEN,
        "GoTrue has no leeway"
    );

    let mut claims = alice.claims();
    claims.as_object_mut().unwrap().remove("sub");
    let subless = caller
        .get_with_token("/auth/v1/user", &supabase.mint_access_token(claims), None)
        .await;
    assert_eq!(subless.status, StatusCode::FORBIDDEN);
    assert_eq!(subless.json()["code"], 403);
    assert_eq!(subless.json()["msg"], "invalid claim: missing sub claim");

    let headers = [("apikey", supabase.anon_key())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let anonymous = caller
        .send(Method::GET, "/auth/v1/user", &headers, None)
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.header("x-sb-error-code"),
        Some("no_authorization")
    );

    supabase.revoke_session(alice.user_id(), "session_not_found");
    let gone = caller
        .get_with_token("/auth/v1/user", &alice.access_token, None)
        .await;
    assert_eq!(gone.status, StatusCode::FORBIDDEN);
    assert_eq!(gone.header("x-sb-error-code"), Some("session_not_found"));
    assert_eq!(supabase.calls(Route::User), 6);
}

#[tokio::test]
async fn rotating_the_signing_key_publishes_both_keys() {
    let supabase = StandInSupabase::start(SigningKind::Es256).await;
    let caller = Caller::new(&supabase);
    let before = supabase.sign_in("mia@example.com", HOUR);
    let old_kid = supabase.current_kid().unwrap();

    supabase.rotate_signing_key();
    let new_kid = supabase.current_kid().unwrap();
    assert_ne!(old_kid, new_kid);
    let after = supabase.sign_in("mia@example.com", HOUR);
    assert_eq!(
        jsonwebtoken::decode_header(&after.access_token)
            .unwrap()
            .kid,
        Some(new_kid.clone())
    );

    let document = caller.jwks().await.json();
    let kids: Vec<&str> = document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [old_kid.as_str(), new_kid.as_str()]);
    verify_with_jwks(&caller, &supabase, &before.access_token).await;
    verify_with_jwks(&caller, &supabase, &after.access_token).await;

    // Both still pass PostgREST, and a refresh signs with the new key.
    supabase.set_profile(before.user_id(), "member", None);
    assert_eq!(
        caller
            .profile(before.user_id(), &before.access_token)
            .await
            .status,
        StatusCode::OK
    );
    let child = refreshed(&caller.refresh(&before.refresh_token).await);
    assert_eq!(
        jsonwebtoken::decode_header(&child.access_token)
            .unwrap()
            .kid,
        Some(new_kid)
    );
}

#[tokio::test]
async fn stopping_closes_the_port() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let addr = supabase.addr();
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("listening");
    supabase.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert_ne!(support::free_port(), 0);
}
