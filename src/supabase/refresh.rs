//! Refreshing an expired Supabase session: exactly one call to Supabase per
//! refresh token, however many requests and replicas carry it at once
//! (SPEC section 6). GoTrue rotates refresh tokens and logs the whole family
//! out when an old one is reused outside its window, so a proxy that
//! refreshes twice can sign its users out.
//!
//! Two layers: on this replica, concurrent callers share one future (moka's
//! `try_get_with`); across replicas, a store lock decides who calls
//! Supabase and the outcome is kept ~10 s under a hash of the old token for
//! the others.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::http_client::{self, HttpClient};
use crate::metrics::RefreshCounters;
use crate::store::Store;

/// How long the outcome of a refresh is kept for other requests and replicas.
const RESULT_TTL: Duration = Duration::from_secs(10);
/// The lock's lease: longer than a refresh call may take.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How long a request waits for another replica's refresh before giving up.
const WAIT_FOR_OTHERS: Duration = Duration::from_secs(12);
const POLL_EVERY: Duration = Duration::from_millis(25);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// GoTrue error codes that mean the session is over (SPEC section 6).
const SESSION_ENDING_CODES: [&str; 5] = [
    "refresh_token_not_found",
    "refresh_token_already_used",
    "session_not_found",
    "session_expired",
    "user_banned",
];

/// What became of a refresh. Kept in the store, so it is serializable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RefreshOutcome {
    /// The new session, as the JSON the cookie will hold.
    Refreshed { session_json: String },
    /// Supabase ended the session; the cookie must go.
    Ended { code: String },
}

/// The refresh could not be done now; the cookie is kept (SPEC: 503).
#[derive(Debug, Clone, thiserror::Error)]
#[error("Supabase refresh unavailable: {0}")]
pub struct RefreshUnavailable(pub String);

pub struct Refresher {
    http: HttpClient,
    token_url: String,
    anon_key: String,
    store: Arc<dyn Store>,
    /// Single-flight and short memory on this replica, by token hash.
    recent: moka::future::Cache<String, Arc<RefreshOutcome>>,
    counters: RefreshCounters,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl Refresher {
    pub fn new(
        http: HttpClient,
        supabase_url: &url::Url,
        anon_key: String,
        store: Arc<dyn Store>,
        counters: RefreshCounters,
    ) -> Self {
        let token_url = format!(
            "{}/auth/v1/token?grant_type=refresh_token",
            supabase_url.as_str().trim_end_matches('/')
        );
        Self {
            http,
            token_url,
            anon_key,
            store,
            recent: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(RESULT_TTL)
                .build(),
            counters,
        }
    }

    pub async fn refresh(
        &self,
        refresh_token: &str,
    ) -> Result<Arc<RefreshOutcome>, RefreshUnavailable> {
        let hash = token_hash(refresh_token);
        let led = std::sync::atomic::AtomicBool::new(false);
        let lead = async {
            led.store(true, std::sync::atomic::Ordering::Relaxed);
            self.coordinated(&hash, refresh_token).await
        };
        let outcome = self
            .recent
            .try_get_with(hash.clone(), lead)
            .await
            .map_err(|e| (*e).clone());
        if !led.load(std::sync::atomic::Ordering::Relaxed) {
            self.counters.joined.inc();
        }
        outcome
    }

    /// Across replicas: the lock holder calls Supabase; the others wait for
    /// its stored outcome. If the store is down, refresh alone (one call per
    /// replica at worst) rather than fail the user.
    async fn coordinated(
        &self,
        hash: &str,
        token: &str,
    ) -> Result<Arc<RefreshOutcome>, RefreshUnavailable> {
        // A hash tag keeps both keys on one Redis Cluster slot.
        let result_key = format!("chatgate:refresh:{{{hash}}}:result");
        let lock_key = format!("chatgate:refresh:{{{hash}}}:lock");
        let deadline = Instant::now() + WAIT_FOR_OTHERS;
        loop {
            match self.stored_outcome(&result_key).await {
                Ok(Some(outcome)) => {
                    // Another replica's refresh.
                    self.counters.joined.inc();
                    return Ok(outcome);
                }
                Ok(None) => {}
                Err(()) => return self.call_supabase(token).await.map(Arc::new),
            }
            match self.store.try_lock(&lock_key, LOCK_TTL).await {
                Ok(Some(lock)) => {
                    // Another replica may have finished between our read and our lock.
                    let outcome = match self.stored_outcome(&result_key).await {
                        Ok(Some(outcome)) => Ok(outcome),
                        _ => self.call_supabase(token).await.map(Arc::new),
                    };
                    if let Ok(outcome) = &outcome {
                        if let Ok(bytes) = serde_json::to_vec(outcome.as_ref()) {
                            if let Err(error) = self
                                .store
                                .set(&result_key, Bytes::from(bytes), RESULT_TTL)
                                .await
                            {
                                tracing::warn!(%error, "could not share a refresh outcome");
                            }
                        }
                    }
                    let _ = self.store.unlock(&lock_key, &lock).await;
                    return outcome;
                }
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(POLL_EVERY).await,
                Ok(None) => {
                    return Err(RefreshUnavailable(
                        "another replica's refresh did not finish in time".to_owned(),
                    ))
                }
                Err(error) => {
                    tracing::warn!(%error, "store unavailable: refreshing without cross-replica coordination");
                    return self.call_supabase(token).await.map(Arc::new);
                }
            }
        }
    }

    async fn stored_outcome(&self, key: &str) -> Result<Option<Arc<RefreshOutcome>>, ()> {
        match self.store.get(key).await {
            Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes).ok().map(Arc::new)),
            Ok(None) => Ok(None),
            Err(error) => {
                tracing::warn!(%error, "store unavailable: refreshing without cross-replica coordination");
                Err(())
            }
        }
    }

    /// `POST /auth/v1/token?grant_type=refresh_token`, as supabase-js sends it.
    async fn call_supabase(&self, token: &str) -> Result<RefreshOutcome, RefreshUnavailable> {
        self.counters.refreshes.inc();
        let body = serde_json::json!({ "refresh_token": token }).to_string();
        let bearer = format!("Bearer {}", self.anon_key);
        let answer = http_client::send(
            &self.http,
            Method::POST,
            &self.token_url,
            &[
                ("apikey", &self.anon_key),
                ("authorization", &bearer),
                ("content-type", "application/json;charset=UTF-8"),
                ("x-supabase-api-version", "2024-01-01"),
            ],
            Bytes::from(body),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| RefreshUnavailable(e.to_string()))?;
        interpret(answer.status, &answer.headers, &answer.body)
    }
}

/// Turns GoTrue's answer into an outcome (200 or a session-ending 400) or a
/// transient failure (network, 5xx, 409 lock contention, 429, anything else).
fn interpret(
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<RefreshOutcome, RefreshUnavailable> {
    if status == StatusCode::OK {
        return session_json(body).map(|session_json| RefreshOutcome::Refreshed { session_json });
    }
    let code = headers
        .get("x-sb-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| body_error_code(body));
    match code {
        Some(code) if status.is_client_error() && SESSION_ENDING_CODES.contains(&code.as_str()) => {
            Ok(RefreshOutcome::Ended { code })
        }
        code => Err(RefreshUnavailable(format!(
            "Supabase answered {status}{}",
            code.map(|c| format!(" ({c})")).unwrap_or_default()
        ))),
    }
}

/// `{"code":"…"}` (API version 2024-01-01) or `{"error_code":"…"}` (older).
fn body_error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["code", "error_code"]
        .iter()
        .find_map(|k| value.get(*k).and_then(|v| v.as_str()).map(str::to_owned))
}

/// The session JSON to write to the cookie: GoTrue's answer as sent, with
/// `expires_at` added when missing (supabase-js does the same, and drops a
/// stored session without it).
fn session_json(body: &[u8]) -> Result<String, RefreshUnavailable> {
    let invalid = || RefreshUnavailable("Supabase answered 200 without a session".to_owned());
    let mut value: serde_json::Value = serde_json::from_slice(body).map_err(|_| invalid())?;
    let object = value.as_object_mut().ok_or_else(invalid)?;
    for field in ["access_token", "refresh_token"] {
        let present = object
            .get(field)
            .and_then(|v| v.as_str())
            .is_some_and(|s| !s.is_empty());
        if !present {
            return Err(invalid());
        }
    }
    if object.get("expires_at").and_then(|v| v.as_i64()).is_some() {
        return String::from_utf8(body.to_vec()).map_err(|_| invalid());
    }
    let expires_in = object
        .get("expires_in")
        .and_then(|v| v.as_i64())
        .unwrap_or(3600);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    object.insert(
        "expires_at".to_owned(),
        serde_json::Value::from(now + expires_in),
    );
    Ok(value.to_string())
}

/// SHA-256 of a token, hex: the store never holds the token itself as a key.
pub fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest.as_ref() {
        use std::fmt::Write;
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(code: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(code) = code {
            headers.insert("x-sb-error-code", code.parse().unwrap());
        }
        headers
    }

    #[test]
    fn ending_codes_end_the_session_and_the_rest_are_transient() {
        for code in SESSION_ENDING_CODES {
            let body = format!(r#"{{"code":"{code}","message":"x"}}"#);
            let outcome = interpret(
                StatusCode::BAD_REQUEST,
                &headers(Some(code)),
                body.as_bytes(),
            );
            assert_eq!(
                outcome.unwrap(),
                RefreshOutcome::Ended {
                    code: code.to_owned()
                }
            );
            // Older API shape, code in the body only.
            let body = format!(r#"{{"code":400,"error_code":"{code}","msg":"x"}}"#);
            let outcome = interpret(StatusCode::BAD_REQUEST, &headers(None), body.as_bytes());
            assert_eq!(
                outcome.unwrap(),
                RefreshOutcome::Ended {
                    code: code.to_owned()
                }
            );
        }
        for (status, code) in [
            (StatusCode::INTERNAL_SERVER_ERROR, None),
            (StatusCode::CONFLICT, Some("conflict")),
            (
                StatusCode::TOO_MANY_REQUESTS,
                Some("over_request_rate_limit"),
            ),
            (StatusCode::BAD_REQUEST, Some("validation_failed")),
            (StatusCode::UNAUTHORIZED, None),
        ] {
            assert!(
                interpret(status, &headers(code), b"{}").is_err(),
                "{status} {code:?}"
            );
        }
    }

    #[test]
    fn expires_at_is_added_when_missing_and_the_body_kept_when_present() {
        let with = br#"{"access_token":"a","refresh_token":"r","expires_in":3600,"expires_at":99}"#;
        assert_eq!(session_json(with).unwrap().as_bytes(), with);
        let without = br#"{"access_token":"a","refresh_token":"r","expires_in":60}"#;
        let json: serde_json::Value =
            serde_json::from_str(&session_json(without).unwrap()).unwrap();
        assert!(json["expires_at"].as_i64().unwrap() > 1_700_000_000);
        assert!(session_json(br#"{"access_token":"a"}"#).is_err());
        assert!(session_json(b"not json").is_err());
    }

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
