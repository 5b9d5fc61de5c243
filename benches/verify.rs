//! What a Supabase access token costs chatgate: the first sight of a token
//! (signature and claims; HS256, ES256, RS256) against a repeat (cache hit).
//!
//! `cargo bench --bench verify`. The futures are polled directly (they are
//! ready at once when the JWKS is loaded), so the figures are the
//! verifier's, not an executor's.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chatgate::supabase::verify::{Verifier, VerifierSettings};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

const SECRET: &[u8] = b"super-secret-jwt-token-with-at-least-32-characters-long";
const ISSUER: &str = "https://abcdefghijklmnop.supabase.co/auth/v1";

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn unix_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit i64")
}

/// Claims shaped like a real Supabase session's; `n` makes each token unique.
fn claims(n: u64) -> Value {
    let now = unix_now();
    json!({
        "iss": ISSUER,
        "sub": format!("6f1d1c1e-0000-4000-8000-{n:012}"),
        "aud": "authenticated",
        "exp": now + 3600,
        "iat": now,
        "email": "ada@example.com",
        "phone": "",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {"email_verified": true, "name": "Ada Lovelace"},
        "role": "authenticated",
        "aal": "aal1",
        "amr": [{"method": "password", "timestamp": now}],
        "session_id": "b7d3e0a4-0000-4000-8000-000000000002",
        "is_anonymous": false
    })
}

fn jws(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = sign(message.as_bytes());
    format!("{message}.{}", b64(&signature))
}

/// Polls once; a verification whose keys are loaded never waits.
fn ready<F: Future>(runtime: &Runtime, future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => runtime.block_on(future),
    }
}

/// Serves `body` as the JWKS on 127.0.0.1 for as long as the runtime lives.
fn serve_jwks(runtime: &Runtime, body: String) -> String {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!(
        "http://{}/auth/v1/.well-known/jwks.json",
        listener.local_addr().expect("address")
    );
    runtime.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

fn access_token(c: &mut Criterion) {
    let runtime = Runtime::new().expect("runtime");
    let rng = SystemRandom::new();
    let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("EC key");
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
    let point = ec.public_key().as_ref().to_vec();
    let rsa_public = PublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
    let jwks = json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "ec-1", "use": "sig", "alg": "ES256",
         "x": b64(&point[1..33]), "y": b64(&point[33..65])},
        {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
         "n": b64(&rsa_public.n), "e": b64(&rsa_public.e)},
    ]});
    let jwks_url = serve_jwks(&runtime, jwks.to_string());
    let verifier = {
        let _entered = runtime.enter();
        Verifier::new(
            VerifierSettings {
                hs256_secret: Some(SECRET.to_vec()),
                jwks_url,
                apikey: None,
                issuer: ISSUER.to_owned(),
                audience: "authenticated".to_owned(),
                leeway: Duration::from_secs(30),
            },
            chatgate::http_client::build(),
        )
    };
    assert_eq!(runtime.block_on(verifier.check_keys()), Ok(2));

    let serial = AtomicU64::new(0);
    let next = || claims(serial.fetch_add(1, Ordering::Relaxed));
    let hs256 = |claims: &Value| {
        jws(&json!({"alg": "HS256", "typ": "JWT"}), claims, |m| {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
            aws_lc_rs::hmac::sign(&key, m).as_ref().to_vec()
        })
    };
    let es256 = |claims: &Value| {
        jws(
            &json!({"alg": "ES256", "kid": "ec-1", "typ": "JWT"}),
            claims,
            |m| ec.sign(&rng, m).expect("sign").as_ref().to_vec(),
        )
    };
    let rs256 = |claims: &Value| {
        jws(
            &json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}),
            claims,
            |m| {
                let mut signature = vec![0; rsa.public_modulus_len()];
                rsa.sign(&RSA_PKCS1_SHA256, &rng, m, &mut signature)
                    .expect("sign");
                signature
            },
        )
    };

    let mut group = c.benchmark_group("access_token");
    group.bench_function("cold_hs256", |b| {
        b.iter_batched(
            || hs256(&next()),
            |token| ready(&runtime, verifier.verify(&token)).expect("valid"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("cold_es256", |b| {
        b.iter_batched(
            || es256(&next()),
            |token| ready(&runtime, verifier.verify(&token)).expect("valid"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("cold_rs256", |b| {
        b.iter_batched(
            || rs256(&next()),
            |token| ready(&runtime, verifier.verify(&token)).expect("valid"),
            BatchSize::SmallInput,
        )
    });
    let token = es256(&next());
    ready(&runtime, verifier.verify(&token)).expect("valid");
    group.bench_function("cached", |b| {
        b.iter(|| ready(&runtime, verifier.verify(&token)).expect("valid"))
    });
    group.finish();
}

criterion_group!(benches, access_token);
criterion_main!(benches);
