//! What reading the dashboard's session cookie costs chatgate on every
//! request: find the chunks in the `Cookie` header and decode the session
//! (percent-decoding, base64url, JSON), for a session in one cookie and one
//! split over three — whole (`decode`, with the `user` object) and tokens
//! only (`decode_tokens`, what each request runs); and taking the session
//! cookies out of the `Cookie` header LibreChat receives; and looking for a
//! cookie that is not there (`find_absent`, the `chatgate_session` look).
//!
//! `cargo bench --bench cookie`.
//!
//! `decode_tokens_recent_hit` is what a request pays when its thread
//! decoded the same cookie lately (the common case: a page's requests).
//! Minting the chatgate token and the whole request-header rewrite are in
//! `benches/rewrite.rs`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chatgate::supabase::cookie::{create_chunks, find_session_cookie, strip_cookies};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

const NAME: &str = "sb-127-auth-token";

/// A session shaped like GoTrue's (an HS256 access token of the usual size
/// and the user object), with `extra` bytes of user metadata.
fn session_json(extra: usize) -> String {
    let user_id = "6f1d1c1e-0000-4000-8000-000000000001";
    let claims = json!({
        "iss": "https://abcdefghijklmnop.supabase.co/auth/v1",
        "sub": user_id,
        "aud": "authenticated",
        "exp": 1_900_000_000,
        "iat": 1_899_996_400,
        "email": "ada@example.com",
        "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {"email": "ada@example.com", "email_verified": true,
                          "phone_verified": false, "sub": user_id},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": 1_899_996_400}],
        "session_id": "b7d3e0a4-0000-4000-8000-000000000002",
        "is_anonymous": false
    });
    let access_token = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode([7u8; 32])
    );
    json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": 3600,
        "expires_at": 1_900_000_000,
        "refresh_token": "vbnqkz3lr5tq",
        "user": {
            "id": user_id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": "ada@example.com",
            "email_confirmed_at": "2025-01-01T00:00:00Z",
            "phone": "",
            "confirmed_at": "2025-01-01T00:00:00Z",
            "last_sign_in_at": "2025-01-01T00:00:00Z",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {"email": "ada@example.com", "email_verified": true,
                              "phone_verified": false, "sub": user_id,
                              "bio": "x".repeat(extra)},
            "identities": [],
            "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z",
            "is_anonymous": false
        }
    })
    .to_string()
}

/// The `Cookie` header a browser sends once `@supabase/ssr` stored the
/// session, with two unrelated cookies around it; and its chunk count.
fn cookie_header(session_json: &str) -> (String, usize) {
    let value = format!("base64-{}", URL_SAFE_NO_PAD.encode(session_json));
    let chunks = create_chunks(NAME, &value);
    let pairs: Vec<String> = chunks
        .iter()
        .map(|c| format!("{}={}", c.name, c.value))
        .collect();
    (
        format!("theme=dark; {}; connect.sid=s%3Aabc", pairs.join("; ")),
        chunks.len(),
    )
}

fn cookie(c: &mut Criterion) {
    let mut group = c.benchmark_group("cookie");
    for (label, extra, chunks) in [("1_chunk", 0, 1), ("3_chunks", 4500, 3)] {
        let (header, count) = cookie_header(&session_json(extra));
        assert_eq!(count, chunks, "{label}: chunk count");
        let decoded = find_session_cookie(std::iter::once(header.as_bytes()), NAME)
            .expect("found")
            .decode()
            .expect("decodes");
        assert_eq!(decoded.refresh_token, "vbnqkz3lr5tq");

        group.bench_function(format!("decode_{label}"), |b| {
            b.iter(|| {
                find_session_cookie(std::iter::once(header.as_bytes()), NAME)
                    .expect("found")
                    .decode()
                    .expect("decodes")
            })
        });
        group.bench_function(format!("decode_tokens_{label}"), |b| {
            b.iter(|| {
                find_session_cookie(std::iter::once(header.as_bytes()), NAME)
                    .expect("found")
                    .decode_tokens()
                    .expect("decodes")
            })
        });
        group.bench_function(format!("decode_tokens_recent_hit_{label}"), |b| {
            b.iter(|| {
                find_session_cookie(std::iter::once(header.as_bytes()), NAME)
                    .expect("found")
                    .decode_tokens_recent()
                    .expect("decodes")
            })
        });
        // The per-request look for `chatgate_session`, absent: the whole header walked.
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            http::HeaderValue::from_str(&header).expect("a header value"),
        );
        assert!(chatgate::cookies::find(&headers, "chatgate_session").is_none());
        group.bench_function(format!("find_absent_{label}"), |b| {
            b.iter(|| chatgate::cookies::find(&headers, "chatgate_session"))
        });
        group.bench_function(format!("strip_{label}"), |b| {
            b.iter(|| strip_cookies(&header, NAME, &["chatgate_session"]).expect("kept"))
        });
    }
    group.finish();
}

criterion_group!(benches, cookie);
criterion_main!(benches);
