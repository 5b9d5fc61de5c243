//! The access-token path (`supabase::verify`): header, algorithm choice,
//! signature and claims. Verification with a fixed HS256 key never panics,
//! whether the token is arbitrary text or a correctly signed token around
//! arbitrary header and claims JSON.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chatgate::supabase::verify::{Verifier, VerifierSettings};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-hs256-secret-0123456789abcdef";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let _guard = runtime().enter();
        let settings = VerifierSettings {
            hs256_secret: Some(SECRET.to_vec()),
            // Nothing listens there: other algorithms find no key, fast.
            jwks_url: "http://127.0.0.1:9/auth/v1/.well-known/jwks.json".to_owned(),
            apikey: None,
            issuer: "http://127.0.0.1:54321/auth/v1".to_owned(),
            audience: "authenticated".to_owned(),
            leeway: Duration::from_secs(30),
        };
        Verifier::new(settings, chatgate::http_client::build())
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // header JSON, 0xff, claims JSON: signed with the right key.
        let at = rest.iter().position(|&b| b == 0xff).unwrap_or(rest.len());
        let (header, claims) = rest.split_at(at);
        let claims = claims.get(1..).unwrap_or_default();
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
        let tag = hmac::sign(&key, signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    };
    if let Ok(claims) = runtime().block_on(verifier().verify(&token)) {
        assert!(!claims.sub.is_empty());
    }
});
