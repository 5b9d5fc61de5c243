//! The header rules of SPEC section 8 and the invariants of section 13, on
//! the real proxy: what LibreChat receives, what the browser receives, what
//! the logs hold, and where redirects may point.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use support::chatgate::{acme, eventually, Gate, GateConfig, SignedIn};
use support::client::{self, Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::supabase::{SigningKind, StandInSupabase};

const DASHBOARD: &str = "https://dash.example.com";

struct World {
    gate: Gate,
    supabase: StandInSupabase,
    upstream: StandInLibreChat,
}

async fn world(tweak: impl FnOnce(GateConfig) -> GateConfig) -> World {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.allowed_origins = vec![DASHBOARD.to_owned()];
    config.login_url = format!("{DASHBOARD}/login");
    World {
        gate: Gate::start(tweak(config)).await,
        supabase,
        upstream,
    }
}

async fn get(
    gate: &Gate,
    alpn: Alpn,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut client = TestClient::connect(gate.addr(), alpn).await.unwrap();
    client.get(path, headers).await
}

fn echoed(body: &Bytes, name: &str) -> Vec<String> {
    let echo: Value = serde_json::from_slice(body).unwrap();
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|p| p[1].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn response_headers_let_only_the_dashboard_frame_chatgate() {
    let w = world(|c| c).await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let frame = format!("frame-ancestors 'self' {DASHBOARD}");
    // (path, expected CSP)
    let cases = [
        ("/csp", format!("default-src 'self'; img-src *; {frame}")),
        ("/api/convos", frame.clone()),
    ];
    for alpn in [Alpn::H1, Alpn::H2] {
        for (path, csp) in &cases {
            let (status, headers, _) = get(&w.gate, alpn, path, &[user.header()]).await;
            assert_eq!(status, StatusCode::OK);
            assert!(
                !headers.contains_key("x-frame-options"),
                "{path}: X-Frame-Options passed"
            );
            let csps: Vec<_> = headers.get_all("content-security-policy").iter().collect();
            assert_eq!(csps, [csp.as_str()], "{path} {alpn:?}");
            assert_eq!(headers["strict-transport-security"], "max-age=31536000");
        }
    }
    // Same-site deployments keep LibreChat's cookie attributes.
    let (_, headers, _) = get(&w.gate, Alpn::H1, "/set-cookie", &[user.header()]).await;
    let refresh = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with("refreshToken="))
        .unwrap();
    assert!(refresh.contains("SameSite=Strict"), "{refresh}");
}

#[tokio::test]
async fn cross_site_framing_makes_every_cookie_partitioned() {
    let w = world(|mut c| {
        c.cross_site = true;
        c
    })
    .await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let (_, headers, _) = get(&w.gate, Alpn::H1, "/set-cookie", &[user.header()]).await;
    let cookies: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cookies.len() >= 3,
        "LibreChat's two and chatgate's binding: {cookies:?}"
    );
    for cookie in cookies {
        assert!(
            cookie.ends_with("SameSite=None; Secure; Partitioned"),
            "{cookie}"
        );
        assert!(!cookie.contains("Strict"), "{cookie}");
    }
}

#[tokio::test]
async fn hsts_is_sent_on_tls_only() {
    let w = world(|mut c| {
        c.http_listen = true;
        c
    })
    .await;
    let (_, headers, _) = client::plain_get(w.gate.http_addr(), "/healthz", &[]).await;
    assert!(!headers.contains_key("strict-transport-security"));
    let (_, headers, _) = get(&w.gate, Alpn::H1, "/healthz", &[]).await;
    assert!(headers.contains_key("strict-transport-security"));
    // chatgate's own answers are framed by the dashboard only, too.
    let (status, headers, _) = get(&w.gate, Alpn::H1, "/api/convos", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["content-security-policy"],
        format!("frame-ancestors 'self' {DASHBOARD}").as_str()
    );
}

#[tokio::test]
async fn identity_headers_come_from_chatgate_alone() {
    let w = world(|c| c).await;
    let user = SignedIn::new(&w.supabase, "ada@acme.example");
    let spoofs = [
        ("x-chatgate-user-id", "evil-1"),
        ("X-Chatgate-User-Id", "evil-2"),
        ("X-CHATGATE-ORG-ID", "evil-org"),
        ("x-chatgate-role", "admin"),
        ("x-chatgate-anything", "evil"),
        ("X-User-Id", "evil"),
        ("x-user-email", "evil@example.com"),
        ("X-Organization-Id", "evil"),
        ("x-organization-domain", "evil.example"),
        ("x-tenant-id", "evil-tenant"),
        ("X-Tenant-Id", "evil-tenant-2"),
        ("X-TENANT-ID", "evil-tenant-3"),
    ];
    for alpn in [Alpn::H1, Alpn::H2] {
        let mut headers = vec![user.header()];
        headers.extend(spoofs);
        let (status, _, body) = get(&w.gate, alpn, "/api/convos", &headers).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            echoed(&body, "x-chatgate-user-id"),
            [user.session.user_id()],
            "{alpn:?}"
        );
        assert_eq!(echoed(&body, "x-chatgate-role"), ["member"]);
        for (name, _) in spoofs
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("x-chatgate-user-id"))
        {
            let values = echoed(&body, name);
            assert!(
                values.iter().all(|v| !v.contains("evil")),
                "{name}: {values:?}"
            );
        }
        assert!(echoed(&body, "x-user-id").is_empty());
        // LibreChat's tenant is the user's organization, named by chatgate alone.
        assert_eq!(
            echoed(&body, "x-tenant-id"),
            [acme()["id"].as_str().unwrap()]
        );
    }
    // An obs-folded header cannot smuggle an identity line (hyper refuses it).
    let raw = format!(
        "GET /api/convos HTTP/1.1\r\nhost: localhost\r\ncookie: {}\r\nx-harmless: a\r\n x-chatgate-user-id: evil\r\nconnection: close\r\n\r\n",
        user.cookie
    );
    let answer =
        String::from_utf8_lossy(&client::raw_exchange_tls(w.gate.addr(), raw.as_bytes()).await)
            .into_owned();
    assert!(
        !answer.contains("evil") || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
}

#[tokio::test]
async fn path_and_host_tricks_reach_nothing_unauthenticated() {
    let w = world(|c| c).await;
    let tricks = [
        "/healthz/../api/convos",
        "/api/librechat/auth/..%2f..%2fapi%2fconvos",
        "/%2e%2e/api/convos",
        "/oidc/..%2fapi/librechat/auth",
        "/..%2f..%2fetc/passwd",
        "/api/librechat/auth%2f",
        "//api/librechat/auth",
    ];
    for path in tricks {
        for alpn in [Alpn::H1, Alpn::H2] {
            let (status, _, body) =
                get(&w.gate, alpn, path, &[("accept", "application/json")]).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{path} {alpn:?}: {body:?}"
            );
        }
    }
    // Absolute-form targets and a Host naming another site change nothing.
    for raw in [
        "GET http://evil.example/api/convos HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n",
        "GET https://localhost/api/librechat/auth HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        "GET /api/convos HTTP/1.1\r\nhost: librechat-internal:3080\r\nconnection: close\r\n\r\n",
    ] {
        let answer = String::from_utf8_lossy(&client::raw_exchange_tls(w.gate.addr(), raw.as_bytes()).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 401"), "{raw:?} → {answer}");
    }
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| r.path_and_query == "/health"),
        "an unauthenticated request reached LibreChat"
    );
}

#[tokio::test]
async fn redirect_to_always_points_at_chatgates_origin() {
    let w = world(|c| c).await;
    let targets = [
        "/c/new",
        "//evil.example/x",
        "/\\evil.example/x",
        "/%2f%2fevil.example",
        "/@evil.example",
        "/.evil.example",
    ];
    for target in targets {
        for host in ["localhost", "evil.example", "localhost@evil.example"] {
            let (status, headers, _) = get(
                &w.gate,
                Alpn::H1,
                target,
                &[("accept", "text/html"), ("host", host)],
            )
            .await;
            assert_eq!(status, StatusCode::FOUND, "{target}");
            let location = url::Url::parse(headers["location"].to_str().unwrap()).unwrap();
            assert_eq!(location.origin().ascii_serialization(), DASHBOARD);
            let back = location
                .query_pairs()
                .find(|(k, _)| k == "redirect_to")
                .unwrap()
                .1
                .into_owned();
            let back = url::Url::parse(&back).unwrap();
            assert_eq!(
                back.origin().ascii_serialization(),
                "https://localhost",
                "{target} via {host} → {back}"
            );
            assert!(
                back.username().is_empty() && back.password().is_none(),
                "{back}"
            );
        }
    }
    // Absolute-form over raw HTTP/1.1 too.
    let raw = "GET https://evil.example/c/new HTTP/1.1\r\nhost: evil.example\r\naccept: text/html\r\nconnection: close\r\n\r\n";
    let answer =
        String::from_utf8_lossy(&client::raw_exchange_tls(w.gate.addr(), raw.as_bytes()).await)
            .into_owned();
    assert!(answer.starts_with("HTTP/1.1 302"), "{answer}");
    assert!(
        answer.contains("redirect_to=https%3A%2F%2Flocalhost%2Fc%2Fnew"),
        "{answer}"
    );
}

/// No cookie value, `Authorization` value, hand-off token or configured
/// secret appears in any log line, at the most verbose level chatgate has.
#[tokio::test]
async fn logs_never_hold_credentials() {
    support::init_crypto();
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.listen = format!("127.0.0.1:{port}");
    config.log_level = "trace".to_owned();
    config.shutdown_grace = "1s".to_owned();
    let config_path = config.write(dir.path());
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let log_path = dir.path().join("chatgate.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    eventually("chatgate answers", || async {
        match TestClient::connect(addr, Alpn::H1).await {
            Ok(mut c) => c.get("/readyz", &[]).await.0 == StatusCode::OK,
            Err(_) => false,
        }
    })
    .await;

    let user = SignedIn::new(&supabase, "ada@acme.example");
    let expired = supabase.sign_in_expired("ada@acme.example", Duration::from_secs(600));
    let expired_cookie =
        support::chatgate::session_cookie(support::chatgate::COOKIE_NAME, &expired.to_json());
    let mut client = TestClient::connect(addr, Alpn::H1).await.unwrap();
    let (_, _, body) = client.get("/api/librechat/auth", &[user.header()]).await;
    let handoff: Value = serde_json::from_slice(&body).unwrap();
    let handoff_url = handoff["url"].as_str().unwrap().to_owned();
    let handoff_token = url::Url::parse(&handoff_url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "token")
        .unwrap()
        .1
        .into_owned();
    let path = handoff_url
        .strip_prefix("https://localhost")
        .unwrap()
        .to_owned();
    let mut client = TestClient::connect(addr, Alpn::H2).await.unwrap();
    client.get(&path, &[("accept", "text/html")]).await;
    client
        .get(
            "/api/convos",
            &[
                user.header(),
                ("authorization", "Bearer librechat-secret-bearer"),
            ],
        )
        .await;
    client
        .get("/api/convos", &[("cookie", &expired_cookie)])
        .await;
    client
        .get(
            "/api/convos?token=query-token-value",
            &[("cookie", "garbage=1; sb-127-auth-token=base64-garbage")],
        )
        .await;
    drop(client);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.lines().count() > 10,
        "trace logging produced lines: {logs}"
    );
    assert!(
        logs.contains("forwarding"),
        "the trace line with headers is there"
    );
    let secrets = [
        user.session.access_token.as_str(),
        user.session.refresh_token.as_str(),
        expired.access_token.as_str(),
        expired.refresh_token.as_str(),
        &user.cookie[support::chatgate::COOKIE_NAME.len() + 1..],
        handoff_token.as_str(),
        "librechat-secret-bearer",
        "query-token-value",
        support::chatgate::LIBRECHAT_SECRET,
        support::chatgate::OIDC_CLIENT_SECRET,
        &supabase.jwt_secret(),
        &supabase.anon_key(),
    ];
    for secret in secrets {
        assert!(
            !logs.contains(secret),
            "a log line holds a secret: {}…",
            &secret[..secret.len().min(12)]
        );
    }
}
