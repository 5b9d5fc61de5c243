//! LibreChat's side of the OpenID sign-in, played by the npm packages
//! LibreChat itself uses (`openid-client` 6.5.0, `jsonwebtoken` 9.0.2),
//! against a real chatgate: discovery → authorize with a genuine Supabase
//! cookie → code exchange → ID token validated against chatgate's JWKS →
//! userinfo → refresh with rotation.

mod support;

use http::StatusCode;
use serde_json::{json, Value};
use support::chatgate::{Gate, GateConfig, SignedIn, LIBRECHAT_SECRET, OIDC_CLIENT_SECRET};
use support::client::{Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::supabase::{SigningKind, StandInSupabase};

/// Runs the driver off the runtime: it calls back into the chatgate this
/// test process serves.
async fn node(script: &'static str, mode: &'static str, input: Value) -> Value {
    tokio::task::spawn_blocking(move || support::ssr::node(script, mode, &input))
        .await
        .unwrap()
}

struct World {
    gate: Gate,
    supabase: StandInSupabase,
    _upstream: StandInLibreChat,
    public_url: String,
}

async fn world() -> World {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let port = support::free_port();
    let public_url = format!("https://localhost:{port}");
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.listen = format!("127.0.0.1:{port}");
    config.public_url = public_url.clone();
    World {
        gate: Gate::start(config).await,
        supabase,
        _upstream: upstream,
        public_url,
    }
}

fn settings(w: &World, use_nonce: bool) -> Value {
    json!({
        "issuer": format!("{}/oidc", w.public_url),
        "client_id": "librechat",
        "client_secret": OIDC_CLIENT_SECRET,
        "redirect_uri": format!("{}/oauth/openid/callback", w.public_url),
        "use_nonce": use_nonce,
    })
}

/// The browser's part: open the authorization URL with the dashboard's
/// cookie and return where chatgate redirects it.
async fn browser_authorize(w: &World, user: &SignedIn, authorization_url: &str) -> String {
    let url = url::Url::parse(authorization_url).unwrap();
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let mut client = TestClient::connect(w.gate.addr(), Alpn::H2).await.unwrap();
    let (status, headers, body) = client
        .get(&path, &[("accept", "text/html"), user.header()])
        .await;
    assert_eq!(status, StatusCode::FOUND, "{body:?}");
    headers["location"].to_str().unwrap().to_owned()
}

/// openid-client starts the flow, the user's browser goes through chatgate's
/// authorize endpoint: what openid-client needs to finish it (callback URL,
/// state, nonce, PKCE verifier, settings).
async fn authorized(w: &World, user: &SignedIn, use_nonce: bool) -> Value {
    let mut input = settings(w, use_nonce);
    let started = node("oidc_client.mjs", "authorize", input.clone()).await;
    let callback_url =
        browser_authorize(w, user, started["authorization_url"].as_str().unwrap()).await;
    input["callback_url"] = json!(callback_url);
    for key in ["state", "nonce", "code_verifier"] {
        input[key] = started[key].clone();
    }
    input
}

#[tokio::test]
async fn openid_client_signs_in_through_chatgate_as_librechat_does() {
    let w = world().await;
    let user = SignedIn::new(&w.supabase, "ada.lovelace@acme.example");
    // Stock LibreChat sends no nonce; with OPENID_GENERATE_NONCE=true it does.
    for use_nonce in [false, true] {
        let input = authorized(&w, &user, use_nonce).await;
        let done = node("oidc_client.mjs", "callback", input).await;

        let claims = &done["id_token_claims"];
        assert_eq!(claims["iss"], format!("{}/oidc", w.public_url));
        assert_eq!(claims["aud"], "librechat");
        assert_eq!(claims["sub"], user.session.user_id());
        assert_eq!(claims["email"], "ada.lovelace@acme.example");
        assert_eq!(claims["email_verified"], true);
        assert_eq!(claims["preferred_username"], "ada.lovelace");
        assert_eq!(claims["organization"]["domain"], "acme.example");
        // A member is a LibreChat user, never its (instance-wide) ADMIN.
        assert_eq!(claims["roles"], json!(["user"]));
        assert_eq!(done["userinfo"]["roles"], json!(["user"]));
        assert_eq!(claims.get("nonce").is_some(), use_nonce, "{claims}");
        assert_eq!(done["userinfo"]["sub"], user.session.user_id());
        assert_eq!(done["userinfo"]["name"], "ada.lovelace");
        assert!(done["refreshed"]["refresh_token"].as_str().is_some());
        assert_eq!(done["old_refresh_reuse_error"], "invalid_grant");
    }
}

#[tokio::test]
async fn only_platform_staff_become_librechat_admins() {
    let w = world().await;
    for (role, roles) in [
        ("super_admin", json!(["admin"])),
        ("admin", json!(["user"])),
    ] {
        let user = SignedIn::new(&w.supabase, &format!("{role}@acme.example"));
        w.supabase.set_profile(
            user.session.user_id(),
            role,
            Some(support::chatgate::acme()),
        );
        let input = authorized(&w, &user, false).await;
        let done = node("oidc_client.mjs", "callback", input).await;
        assert_eq!(done["id_token_claims"]["roles"], roles, "{role}");
        assert_eq!(done["userinfo"]["roles"], roles, "{role}");
        assert_eq!(
            done["id_token_claims"]["organization"]["id"],
            support::chatgate::acme()["id"]
        );
        assert_eq!(done["id_token_claims"]["organization"]["name"], "Acme");
    }
}

#[tokio::test]
async fn a_code_redeemed_twice_fails_for_openid_client() {
    let w = world().await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let input = authorized(&w, &user, false).await;
    let first = node("oidc_client.mjs", "redeem", input.clone()).await;
    assert_eq!(first["ok"], true, "{first}");
    let second = node("oidc_client.mjs", "redeem", input).await;
    assert_eq!(second["ok"], false);
    assert_eq!(second["error"], "invalid_grant");
}

#[tokio::test]
async fn the_chatgate_token_verifies_with_librechats_jsonwebtoken() {
    let w = world().await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let mut client = TestClient::connect(w.gate.addr(), Alpn::H1).await.unwrap();
    let (status, _, body) = client
        .request(
            http::Method::POST,
            "/api/librechat/auth",
            &[user.header()],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let token = serde_json::from_slice::<Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let verified = node(
        "librechat_token.mjs",
        "verify",
        json!({"token": token, "secret": LIBRECHAT_SECRET}),
    )
    .await;
    assert_eq!(verified["ok"], true, "{verified}");
    let claims = &verified["claims"];
    for key in [
        "sub",
        "id",
        "email",
        "name",
        "username",
        "avatar",
        "role",
        "provider",
        "organization",
        "iat",
        "exp",
    ] {
        assert!(claims.get(key).is_some(), "{key} missing: {claims}");
    }
    for key in ["id", "name", "domain", "plan_type", "librechat_config"] {
        assert!(
            claims["organization"].get(key).is_some(),
            "organization.{key} missing"
        );
    }
    assert_eq!(verified["header"]["alg"], "HS256");
    let forged = node(
        "librechat_token.mjs",
        "verify",
        json!({"token": token, "secret": "not-the-secret-not-the-secret-xx"}),
    )
    .await;
    assert_eq!(forged["ok"], false);
}
