//! The Supabase session cookie decoder (`supabase::cookie`): any `Cookie`
//! header values never panic, a decoded session agrees with its tokens,
//! and any text stored with `encode_set_cookies` reads back as itself.
#![no_main]

use chatgate::supabase::cookie::{
    encode_set_cookies, find_session_cookie, strip_cookies, SupabaseSession,
};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "sb-127-auth-token";

fuzz_target!(|data: &[u8]| {
    // Lines are separate `Cookie` headers (HTTP/2 may send several).
    let headers = data.split(|&b| b == b'\n');
    if let Some(cookie) = find_session_cookie(headers, NAME) {
        let _ = cookie.chunk_names();
        let session = cookie.decode();
        let tokens = cookie.decode_tokens();
        // `decode` is the stricter of the two (it builds `user`): what it
        // reads, the hot path reads the same.
        if let Ok(session) = &session {
            let tokens = tokens.expect("decode_tokens refused what decode read");
            assert_eq!(&*tokens.access_token, session.access_token);
            assert_eq!(tokens.refresh_token, session.refresh_token);
        }
        let _ = cookie.decode_tokens_recent();
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(kept) = strip_cookies(text, NAME, &["chatgate_session"]) {
        // Names as the `cookie` package reads them: up to `=`, without
        // the spaces and tabs around them.
        for pair in kept.split(';') {
            let name = pair.split('=').next().unwrap_or_default();
            let name = name.trim_matches([' ', '\t']);
            assert_ne!(name, "chatgate_session", "{kept}");
        }
        let left = find_session_cookie(std::iter::once(kept.as_bytes()), NAME);
        assert!(left.is_none(), "a session cookie survived: {kept}");
    }

    // Round trip: write the text as the session, read it back.
    let written = encode_set_cookies(NAME, text, &[], None);
    let header: Vec<&str> = written
        .iter()
        .map(|c| c.split(';').next().unwrap_or_default())
        .collect();
    let header = header.join("; ");
    let cookie = find_session_cookie(std::iter::once(header.as_bytes()), NAME)
        .expect("the written cookies are found");
    let expected = serde_json::from_str::<SupabaseSession>(text).ok();
    assert!(
        expected == cookie.decode().ok(),
        "round trip changed the session"
    );
});
