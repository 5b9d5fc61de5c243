//! chatgate's Supabase session cookie against the real `@supabase/ssr`
//! package: what the dashboard writes, we read; what we write, the dashboard
//! reads; and for the same change both write the same `Set-Cookie` bytes.
//!
//! The package runs in Node through `tests/js/ssr_cookies.mjs`; install it
//! once with `npm ci --prefix tests/js`.

mod support;

use chatgate::supabase::cookie::{
    clear_set_cookies, create_chunks, encode_set_cookies, find_session_cookie, SupabaseSession,
};
use serde_json::{json, Value};
use support::ssr::ssr;

const SUPABASE_URL: &str = "http://127.0.0.1:54321";
const NAME: &str = "sb-127-auth-token";

/// A session as GoTrue returns it; `padding` characters of user metadata make
/// it need more chunks (≈2 KiB fits one cookie, 6 KiB needs three).
fn session_json(access_token: &str, expires_at: i64, padding: usize) -> String {
    json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": 3600,
        "expires_at": expires_at,
        "refresh_token": format!("refresh-{access_token}"),
        "user": {
            "id": "8d3c7d4e-4a0e-4a53-9a43-2f3c1d6a9b10",
            "aud": "authenticated",
            "role": "authenticated",
            "email": "zoë@example.com",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {"full_name": "Zoë 東京 🚀", "bio": "x".repeat(padding)},
            "identities": [],
        },
    })
    .to_string()
}

const FUTURE: i64 = 4_102_444_800; // 2100-01-01
const PAST: i64 = 1_000_000_000; // 2001: expired, the package refreshes it

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// What a browser sends back after these `Set-Cookie` values.
fn cookie_header(set_cookies: &[String]) -> String {
    set_cookies
        .iter()
        .filter(|c| !c.contains("Max-Age=0"))
        .map(|c| c.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("; ")
}

fn our_decode(cookie_header: &str) -> SupabaseSession {
    find_session_cookie(std::iter::once(cookie_header.as_bytes()), NAME)
        .expect("session cookie found")
        .decode()
        .expect("our decoder reads it")
}

fn parsed(json: &str) -> Value {
    serde_json::from_str(json).expect("JSON")
}

fn as_session(json: &str) -> SupabaseSession {
    serde_json::from_str(json).expect("session JSON")
}

/// The dashboard signs in and writes the cookie; we read the same session and
/// would have written byte-identical `Set-Cookie` values.
#[test]
fn dashboard_cookies_decode_to_the_same_session() {
    for (padding, chunks) in [(10, 1), (6000, 3)] {
        let json = session_json("at-login", FUTURE, padding);
        let js = ssr("login", &json!({"url": SUPABASE_URL, "session_json": json}));
        assert_eq!(js["cookie_name"], NAME);
        assert_eq!(
            js["stored"],
            parsed(&json),
            "the package stores the session as given"
        );
        let js_set = strings(&js["set_cookie"]);
        assert_eq!(js_set.len(), chunks, "{js_set:?}");

        assert_eq!(our_decode(&cookie_header(&js_set)), as_session(&json));
        assert_eq!(encode_set_cookies(NAME, &json, &[], None), js_set);
    }
}

/// Cookies from older dashboards (raw JSON, URI-encoded and split on escapes)
/// and from `cookies.encode: "tokens-only"` (no user) are read too.
#[test]
fn raw_and_tokens_only_dashboard_cookies_decode() {
    let json =
        session_json("at-raw", FUTURE, 6000).replace(&"x".repeat(6000), &"é%; ".repeat(1500));
    let js = ssr(
        "login",
        &json!({"url": SUPABASE_URL, "session_json": json, "cookie_encoding": "raw"}),
    );
    let js_set = strings(&js["set_cookie"]);
    assert!(
        js_set.len() > 3 && js_set[0].contains("%7B%22"),
        "{js_set:?}"
    );
    assert_eq!(our_decode(&cookie_header(&js_set)), as_session(&json));

    let json = session_json("at-tokens-only", FUTURE, 0);
    let js = ssr(
        "login",
        &json!({"url": SUPABASE_URL, "session_json": json, "tokens_only": true}),
    );
    let session = our_decode(&cookie_header(&strings(&js["set_cookie"])));
    let want = as_session(&json);
    assert_eq!(session.user, None);
    assert_eq!(
        (
            session.access_token,
            session.refresh_token,
            session.expires_at
        ),
        (want.access_token, want.refresh_token, want.expires_at)
    );
}

/// What we write, the package reads back (its own combineChunks + base64url,
/// and a server client's getSession), with and without a cookie Domain.
#[test]
fn our_cookies_are_read_by_the_package() {
    for (padding, domain) in [(10, None), (6000, None), (6000, Some("example.com"))] {
        let json = session_json("at-ours", FUTURE, padding);
        let ours = encode_set_cookies(NAME, &json, &[], domain);
        let js = ssr("read", &json!({"url": SUPABASE_URL, "set_cookie": ours}));
        assert!(js["combined"]
            .as_str()
            .is_some_and(|c| c.starts_with("base64-")));
        assert_eq!(js["session"], parsed(&json), "combineChunks read");
        assert_eq!(js["client_session"], parsed(&json), "getSession read");
    }
}

/// A refresh that changes the number of chunks: we write exactly what the
/// package writes for the same transition, and after applying our
/// `Set-Cookie` values (stale chunks deleted) the package reads the new
/// session, not a mix of generations.
#[test]
fn rewrite_after_refresh_matches_the_package() {
    let cases = [
        ("3 chunks -> 1", 6000, 10, None),
        ("1 cookie -> 3 chunks", 10, 6000, None),
        ("3 chunks -> 2", 6000, 3000, None),
        ("3 chunks -> 1 with Domain", 6000, 10, Some("example.com")),
    ];
    for (what, old_padding, new_padding, domain) in cases {
        let cookie_options = domain.map_or(json!({}), |d| json!({"domain": d}));
        let old = session_json("at-old", PAST, old_padding);
        let login = ssr(
            "login",
            &json!({"url": SUPABASE_URL, "session_json": old, "cookie_options": cookie_options}),
        );
        let request_cookies = format!(
            "theme=dark; {}; {NAME}-code-verifier=pkce",
            cookie_header(&strings(&login["set_cookie"]))
        );
        let new = session_json("at-new", FUTURE, new_padding);

        let found = find_session_cookie(std::iter::once(request_cookies.as_bytes()), NAME)
            .expect("request carries the session");
        assert_eq!(
            found.decode().expect("old session"),
            as_session(&old),
            "{what}"
        );
        let ours = encode_set_cookies(NAME, &new, &found.chunk_names(), domain);

        let js = ssr(
            "refresh",
            &json!({
                "url": SUPABASE_URL,
                "cookie_header": request_cookies,
                "new_session_json": new,
                "cookie_options": cookie_options,
            }),
        );
        assert_eq!(
            ours,
            strings(&js["set_cookie"]),
            "{what}: same Set-Cookie bytes"
        );

        let read = ssr(
            "read",
            &json!({"url": SUPABASE_URL, "cookie_header": request_cookies, "set_cookie": ours}),
        );
        assert_eq!(read["session"], parsed(&new), "{what}");
        assert_eq!(read["client_session"], parsed(&new), "{what}");
        let jar = read["cookie_header"].as_str().expect("jar");
        let kept: Vec<&str> = jar
            .split("; ")
            .filter_map(|p| p.split_once('='))
            .map(|(n, _)| n)
            .collect();
        let mut written: Vec<&str> = ours
            .iter()
            .filter(|c| c.contains("Max-Age=34560000"))
            .map(|c| c.split_once('=').map_or("", |(n, _)| n))
            .collect();
        let mut session_cookies: Vec<&str> = kept
            .iter()
            .copied()
            .filter(|n| *n == NAME || n.starts_with(&format!("{NAME}.")))
            .collect();
        session_cookies.sort_unstable();
        written.sort_unstable();
        assert_eq!(session_cookies, written, "{what}: no stale chunk left");
        assert!(kept.contains(&"theme") && kept.contains(&"sb-127-auth-token-code-verifier"));
    }
}

/// Ending the session: our deletions match the package's sign-out and leave
/// it reading no session.
#[test]
fn clearing_matches_the_package_sign_out() {
    for (padding, domain) in [(6000, None), (10, Some("example.com"))] {
        let cookie_options = domain.map_or(json!({}), |d| json!({"domain": d}));
        let json = session_json("at-bye", FUTURE, padding);
        let request_cookies = cookie_header(&encode_set_cookies(NAME, &json, &[], domain));
        let found = find_session_cookie(std::iter::once(request_cookies.as_bytes()), NAME)
            .expect("request carries the session");
        let ours = clear_set_cookies(NAME, &found.chunk_names(), domain);

        let js = ssr(
            "signout",
            &json!({"url": SUPABASE_URL, "cookie_header": request_cookies, "cookie_options": cookie_options}),
        );
        assert_eq!(ours, strings(&js["set_cookie"]));

        let read = ssr(
            "read",
            &json!({"url": SUPABASE_URL, "cookie_header": request_cookies, "set_cookie": ours}),
        );
        assert_eq!(
            (&read["session"], &read["client_session"]),
            (&Value::Null, &Value::Null)
        );
    }
}

/// createChunks on escape-heavy values, cut right at the 3180 limit.
#[test]
fn chunking_matches_create_chunks() {
    let mut values = vec![
        "a".repeat(3180),
        "a".repeat(3181),
        "é".repeat(530),
        "é".repeat(531),
        format!("{}é", "a".repeat(3178)),
        format!("{}é", "a".repeat(3177)),
        format!("{}%b", "a".repeat(3179)),
        format!("{}{}", "a".repeat(3170), "🚀".repeat(3)),
        format!("{}{}", "a".repeat(3169), "€".repeat(700)),
        "; =,\"\\".repeat(2000),
    ];
    for shift in 0..12 {
        values.push(format!(
            "{}{}",
            "b".repeat(3168 + shift),
            "🚀é€%".repeat(600)
        ));
    }
    let js = ssr("chunks", &json!({"key": NAME, "values": values}));
    for (value, result) in values
        .iter()
        .zip(js["results"].as_array().expect("results"))
    {
        let ours: Vec<Value> = create_chunks(NAME, value)
            .into_iter()
            .map(|c| json!({"name": c.name, "value": c.value}))
            .collect();
        assert_eq!(
            &Value::Array(ours),
            &result["chunks"],
            "value of {} chars",
            value.len()
        );
    }
}
