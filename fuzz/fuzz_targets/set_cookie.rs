//! The cross-site `Set-Cookie` rewriter (`proxy::rewrite_response`): any
//! header value comes out a valid header value; a textual one ends with
//! `SameSite=None; Secure; Partitioned`, keeps its `name=value`, and a
//! second rewrite changes nothing.
#![no_main]

use chatgate::proxy::rewrite_response::cross_site_cookie;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;

const SUFFIX: &str = "SameSite=None; Secure; Partitioned";

fuzz_target!(|data: &[u8]| {
    let Ok(cookie) = HeaderValue::from_bytes(data) else {
        return;
    };
    let once = cross_site_cookie(&cookie);
    let twice = cross_site_cookie(&once);
    assert_eq!(once, twice, "not idempotent");
    let Ok(text) = cookie.to_str() else {
        return;
    };
    let out = once.to_str().expect("text in, text out");
    assert!(out.ends_with(SUFFIX), "{out}");
    let pair = text.split(';').next().unwrap_or_default().trim();
    assert!(out.starts_with(pair), "{text} -> {out}");
});
