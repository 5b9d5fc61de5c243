//! The stand-in Supabase of the integration tests (`tests/support/supabase.rs`),
//! run as a process for `scripts/bench.sh`: GoTrue refresh and PostgREST
//! profiles on 127.0.0.1, one signed-in user of an organization without a
//! policy, and one of an organization with a restrictive policy.
//!
//! ```text
//! cargo run --release --example bench_supabase -- [--refresh-delay-ms 100]
//! ```
//!
//! Prints one JSON line on stdout, then serves until killed:
//! `{"url", "anon_key", "jwt_secret", "cookie_name", "cookie", "policy_cookie", "expired_cookie", "control"}`.
//! `cookie` is the `Cookie` header value of a valid session (as `@supabase/ssr`
//! writes it: `base64-…`, chunked); `expired_cookie` carries an access token
//! that expired two minutes ago (a refresh storm). `control` is a second
//! plain-HTTP port answering `GET /stats` (calls per route so far) and
//! `GET /expired-cookie` (a fresh expired session of the same user).

#[path = "../tests/support/supabase.rs"]
mod supabase;

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use supabase::{Route, SigningKind, StandInSupabase};
use tokio::net::TcpListener;

const EMAIL: &str = "bench@acme.example";
const POLICY_EMAIL: &str = "bench@globex.example";
const COOKIE_NAME: &str = "sb-127-auth-token";

#[tokio::main]
async fn main() {
    let mut refresh_delay = Duration::from_millis(100);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--refresh-delay-ms", Some(ms)) => {
                refresh_delay = Duration::from_millis(ms.parse().expect("--refresh-delay-ms N"));
            }
            _ => {
                eprintln!("usage: bench_supabase [--refresh-delay-ms N]");
                std::process::exit(2);
            }
        }
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let supabase = Arc::new(StandInSupabase::start(SigningKind::Hs256).await);
    // A real Supabase answers a refresh over the network in tens of
    // milliseconds; the delay makes a storm's requests overlap the call.
    supabase.set_refresh_delay(refresh_delay);
    let session = supabase.sign_in(EMAIL, Duration::from_secs(3600 * 24));
    // A UUID, as in Supabase: usage metering counts nothing for an
    // organization whose id is not one.
    supabase.set_profile(
        session.user_id(),
        "member",
        Some(json!({
            "id": "7d1c7c6e-0000-4000-8000-00000000ac3e",
            "name": "Acme",
            "domain": "acme.example",
            "plan_type": "pro",
            "librechat_config": {}
        })),
    );

    // A second user, of an organization with a restrictive policy (SPEC
    // section 10), for the policy's cost on chat requests.
    let policy_session = supabase.sign_in(POLICY_EMAIL, Duration::from_secs(3600 * 24));
    supabase.set_profile(
        policy_session.user_id(),
        "member",
        Some(json!({
            "id": "9e2d8d7f-0000-4000-8000-0000000globx",
            "name": "Globex",
            "domain": "globex.example",
            "plan_type": "enterprise",
            "librechat_config": {
                "allowed_endpoints": ["openAI", "anthropic", "agents"],
                "enabled_models": ["gpt-4o", "gpt-4", "claude-3-5", "o1*"],
                "mcp_servers": ["github"],
                "knowledge_bases": ["handbook"],
                "custom_instructions": "You work for Globex. Answer in the user's language.",
                "max_tokens": 1000000000,
                "features": {"code_interpreter": false, "image_generation": false, "voice_chat": false}
            }
        })),
    );

    let control = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind control port");
    let control_url = format!("http://{}", control.local_addr().expect("control addr"));
    let line = json!({
        "url": supabase.url(),
        "anon_key": supabase.anon_key(),
        "jwt_secret": supabase.jwt_secret(),
        "cookie_name": COOKIE_NAME,
        "cookie": cookie_header(&session.to_json()),
        "policy_cookie": cookie_header(&policy_session.to_json()),
        "expired_cookie": expired_cookie(&supabase),
        "control": control_url,
    });
    println!("{line}");

    loop {
        let Ok((tcp, _)) = control.accept().await else {
            continue;
        };
        let supabase = supabase.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| control_route(supabase.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn control_route(
    supabase: Arc<StandInSupabase>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.uri().path() {
        "/stats" => json!({
            "refresh_calls": supabase.refresh_calls(),
            "profile_calls": supabase.profile_calls(),
            "jwks_calls": supabase.calls(Route::Jwks),
        }),
        "/expired-cookie" => json!({ "cookie": expired_cookie(&supabase) }),
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return Ok(response);
        }
    };
    Ok(Response::new(Full::new(Bytes::from(format!("{body}\n")))))
}

/// A new session of the bench user whose access token expired 2 minutes ago
/// (beyond chatgate's 30 s leeway), with an unused refresh token.
fn expired_cookie(supabase: &StandInSupabase) -> String {
    let session = supabase.sign_in_expired(EMAIL, Duration::from_secs(120));
    cookie_header(&session.to_json())
}

/// What a browser sends after `@supabase/ssr` stored `session_json`.
fn cookie_header(session_json: &str) -> String {
    chatgate::supabase::cookie::encode_set_cookies(COOKIE_NAME, session_json, &[], None)
        .iter()
        .filter_map(|set_cookie| set_cookie.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}
