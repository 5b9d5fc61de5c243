//! What the request head costs between identification and forwarding: the
//! header rewriting of a typical browser request to LibreChat (hop-by-hop
//! and reserved headers out, forwarding and identity headers in, the
//! Supabase session cut out of `Cookie`, `token` out of the query), and the
//! chatgate token of `auth_mode = "jwt"`: signed (cold) and from its cache.
//!
//! `cargo bench --bench rewrite`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatgate::app::App;
use chatgate::config::Config;
use chatgate::context::{ConnInfo, RequestContext};
use chatgate::identity::Identity;
use chatgate::librechat::token::{now, TokenClaims, TokenIssuer};
use chatgate::proxy::rewrite_request::rewrite_head;
use chatgate::supabase::tenant::Profile;
use chatgate::supabase::verify::AccessClaims;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::json;

const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

fn identity() -> Identity {
    let claims: AccessClaims = serde_json::from_value(json!({
        "sub": "6f1d1c1e-0000-4000-8000-000000000001",
        "email": "ada@acme.example",
        "role": "authenticated",
        "exp": now() + 3600,
        "iat": now(),
        "session_id": "a1b2c3d4-0000-4000-8000-000000000002",
        "user_metadata": {"full_name": "Ada Lovelace"},
    }))
    .expect("claims");
    let profile: Profile = serde_json::from_value(json!({
        "role": "member",
        "organization": {
            "id": "7d1c7c6e-0000-4000-8000-00000000acme",
            "name": "Acme",
            "domain": "acme.example",
            "plan_type": "pro",
        },
    }))
    .expect("profile");
    Identity::new(Arc::new(claims), Arc::new(profile)).expect("an organization")
}

/// A browser's request for a LibreChat API route through chatgate: its
/// usual headers, a 3-chunk Supabase session cookie beside LibreChat's own
/// cookies, and a hop-by-hop header.
fn browser_request() -> http::request::Parts {
    let chunk = "x".repeat(3180);
    let cookie = format!(
        "sb-127-auth-token.0=base64-{chunk}; sb-127-auth-token.1={chunk}; \
         sb-127-auth-token.2={chunk}; refreshToken=eyJhbGciOiJIUzI1NiJ9.e30.sig; \
         token_provider=openid; chatgate_bind=0123456789abcdef"
    );
    let (parts, ()) = http::Request::builder()
        .method("GET")
        .uri("/api/messages/9b2f0c1e-3f0a-4c1b-9d7e-5a6b7c8d9e0f?limit=25")
        .header("host", "chat.acme.example")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36")
        .header("accept", "application/json, text/plain, */*")
        .header("accept-language", "en-GB,en;q=0.9")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .header("referer", "https://chat.acme.example/c/new")
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-dest", "empty")
        .header("sec-ch-ua-platform", "\"Linux\"")
        .header("connection", "keep-alive")
        .header("cookie", cookie)
        .body(())
        .expect("request")
        .into_parts();
    parts
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::from_toml(
        &format!(
            "[server]\npublic_url = \"https://chat.acme.example\"\n\
             [tls]\ndev_self_signed = true\n\
             [supabase]\nurl = \"http://127.0.0.1:9\"\njwt_secret = \"{SECRET}\"\n\
             [librechat]\nupstreams = [\"http://10.0.0.1:3080\"]\njwt_secret = \"{SECRET}\"\n"
        ),
        dir.path(),
        &|_| None,
    )
    .expect("config");
    let app = runtime.block_on(App::new(config)).expect("app");
    let peer: SocketAddr = "203.0.113.9:51234".parse().expect("peer");
    let ctx = RequestContext::new(Arc::new(ConnInfo { peer, tls: true }), None, None);
    let identity = identity();
    let issuer = TokenIssuer::new(Some(SECRET), Duration::from_secs(900));

    let mut group = c.benchmark_group("request_head");
    group.bench_function("rewrite_typical_browser_request", |b| {
        b.iter_batched(
            browser_request,
            |mut parts| rewrite_head(&app, &ctx, &identity, &mut parts, false).expect("rewritten"),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("chatgate_token");
    group.bench_function("mint_cold", |b| {
        b.iter(|| {
            let claims = TokenClaims::for_identity(&identity, now(), issuer.ttl());
            issuer.sign(&claims).expect("signed")
        })
    });
    issuer.for_identity(&identity).expect("first mint");
    group.bench_function("mint_cached", |b| {
        b.iter(|| issuer.for_identity(&identity).expect("cached"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
