//! Verifies Supabase access tokens (the JWT inside the dashboard's session
//! cookie, and the one the dashboard hands to `/api/librechat/auth`).
//!
//! - Algorithms are pinned by key, never chosen by the token: HS256 only with
//!   the configured secret, ES256 only with an EC P-256 JWK, RS256 only with
//!   an RSA JWK of at least 2048 bits, EdDSA only with an OKP Ed25519 JWK.
//!   Anything else (`none`, HS384, PS256, a header `jwk`/`jku`, …) is refused.
//! - The JWKS is fetched lazily, shared, refetched on an unknown `kid` at most
//!   once a minute (concurrent fetches coalesce into one), and refreshed by one
//!   request once older than ten minutes (the others keep the old set
//!   meanwhile), so a key removed from the JWKS stops working.
//! - Claims: `exp` (with leeway), `aud`, `iss` exactly, `sub` non-empty.
//!   A token that is both expired and wrong otherwise is `Invalid`, so an
//!   `Expired` answer always means "validly signed, ours, refresh it".
//! - Hot path: a verified token is cached (keyed by its text) until its `exp`
//!   (at most ten minutes), so a repeat costs one cache lookup: a hash of the
//!   text and one comparison, no signature check. Each serving thread also
//!   remembers its last few session tokens by their shared text
//!   ([`Verifier::verify_shared`]): a page's requests carry one cookie, which
//!   `decode_tokens_recent` hands out as the same `Arc<str>` each time.
//!
//! No token text ever goes into a log line or an error message.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use bytes::Bytes;
use http::Method;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::sync::Cache;
use moka::{Equivalent, Expiry};
use serde::{Deserialize, Serialize};

use crate::http_client::{self, HttpClient};
use crate::recent::Recent;

/// Longer tokens are refused before any parsing. Supabase's are about 1 KiB
/// (more with large `user_metadata`); a cookie can't carry much more anyway.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Memory bound of the verified-token cache (token text plus claims).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// A cached token is verified again after this long even if its `exp` is
/// later, so a key removed from the JWKS stops being trusted soon.
const CACHE_MAX_TTL: Duration = Duration::from_secs(600);
/// Session tokens a serving thread remembers as verified (see
/// [`Verifier::verify_shared`]).
const RECENT_PER_THREAD: usize = 8;
/// How long a thread answers from its own list before asking the cache
/// again: short, so the cache's [`CACHE_MAX_TTL`] stays the bound on how
/// long a verified token is trusted without a signature check.
const RECENT_MAX_AGE_SECS: i64 = 30;
/// Unknown `kid`s refetch the JWKS at most this often (SPEC section 6).
const REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// While no JWKS was ever loaded every asymmetric token fails, so retry sooner.
const RETRY_WITHOUT_KEYS: Duration = Duration::from_secs(5);
/// Keys older than this are refreshed (Supabase serves `max-age=600`).
const KEYS_MAX_AGE: Duration = Duration::from_secs(600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MIN_RSA_BITS: usize = 2048;
/// A JWKS holds a handful of keys; more usable ones than this are ignored.
const MAX_JWKS_KEYS: usize = 32;

const BAD_SIGNATURE: &str = "bad signature";
const UNKNOWN_KID: &str = "unknown key id";

/// JWK members are unpadded base64url; tolerate padding from odd publishers.
const JWK_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Claims chatgate uses; unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    pub exp: i64,
    #[serde(default)]
    pub iat: Option<i64>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub is_anonymous: Option<bool>,
    /// The dashboard's profile data (`full_name`, `avatar_url`…), used for
    /// the LibreChat user's name and picture.
    #[serde(default)]
    pub user_metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Signature and claims are good but `exp` passed beyond the leeway:
    /// the caller refreshes the session.
    #[error("access token expired")]
    Expired,
    /// Anything else wrong: the caller treats the request as having no session.
    #[error("invalid access token: {0}")]
    Invalid(&'static str),
    /// The JWKS could not be fetched and the token's key is unknown: transient.
    #[error("Supabase signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// What the verifier needs from the configuration.
#[derive(Clone)]
pub struct VerifierSettings {
    /// The project's legacy JWT secret; `None` (or empty) refuses HS256.
    pub hs256_secret: Option<Vec<u8>>,
    /// `{supabase.url}/auth/v1/.well-known/jwks.json`.
    pub jwks_url: String,
    /// Sent as `apikey` when fetching the JWKS: Supabase's gateway may ask for it.
    pub apikey: Option<String>,
    /// Expected `iss`, compared exactly.
    pub issuer: String,
    /// Expected `aud`, normally `authenticated`.
    pub audience: String,
    /// Clock skew allowed on `exp` (and `nbf`), normally 30 s.
    pub leeway: Duration,
}

impl std::fmt::Debug for VerifierSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierSettings")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("jwks_url", &self.jwks_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierStats {
    /// Tokens that went through signature verification (cache misses).
    pub signature_checks: u64,
    /// JWKS fetches attempted.
    pub jwks_fetches: u64,
    /// Verified tokens in the cache (approximate).
    pub cached_tokens: u64,
}

/// Installs aws-lc-rs as jsonwebtoken's process-wide crypto provider.
/// jsonwebtoken 11 infers it from its crate features only when exactly one
/// backend (`aws_lc_rs`, `rust_crypto`) is enabled, and panics on first use
/// otherwise; another crate enabling `rust_crypto` through feature
/// unification would do that, so chatgate installs it explicitly.
/// Idempotent; [`Verifier::new`] calls it too.
pub fn install_jwt_crypto_provider() {
    let ours = &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
    if let Err(installed) = ours.install_default() {
        if !std::ptr::eq(installed, ours) {
            tracing::warn!("another jsonwebtoken crypto provider was installed first; keeping it");
        }
    }
}

/// The algorithms chatgate accepts, each tied to one kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs256,
    Es256,
    Rs256,
    EdDsa,
}

impl Alg {
    fn from_header(alg: &str) -> Option<Self> {
        match alg {
            "HS256" => Some(Self::Hs256),
            "ES256" => Some(Self::Es256),
            "RS256" => Some(Self::Rs256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Es256 => Algorithm::ES256,
            Self::Rs256 => Algorithm::RS256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One usable key from the JWKS, with the one algorithm it may verify.
struct JwksKey {
    kid: Option<String>,
    alg: Alg,
    key: DecodingKey,
}

/// A JWKS snapshot; replaced whole, never edited.
#[derive(Default)]
struct KeySet {
    keys: Vec<JwksKey>,
    /// `None` until the first successful fetch.
    fetched_at: Option<Instant>,
    /// Bumped on every successful fetch, so a waiter sees someone else's.
    generation: u64,
}

/// Who fetched last and how it went; the mutex around it coalesces fetches.
#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    /// Why the last attempt failed; `None` after a success.
    last_error: Option<String>,
}

/// The header members chatgate looks at; the rest (`jwk`, `jku`, `x5u`, …)
/// is ignored on purpose: keys come from the configuration only.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// How much of a token's end the cache hashes: part of its signature.
const HASHED_TAIL: usize = 32;

/// The cache key: a verified token's text. Equality compares the whole text,
/// so a hash collision can never hand out another token's claims.
#[derive(PartialEq, Eq)]
struct TokenKey(Arc<str>);

/// A token to look up, borrowed: no allocation per request.
struct TokenRef<'a>(&'a str);

/// Only the tail is hashed: a token is ~1 KiB and SipHash over all of it
/// dominated both a cache hit and moka's rehashing on churn. The tail is the
/// signature, unpredictable without the signing key, and only verified tokens
/// are ever inserted, so entries still spread evenly.
fn hashed_tail(token: &str) -> &[u8] {
    let bytes = token.as_bytes();
    &bytes[bytes.len().saturating_sub(HASHED_TAIL)..]
}

impl Hash for TokenKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(hashed_tail(&self.0));
    }
}

impl Hash for TokenRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(hashed_tail(self.0));
    }
}

impl Equivalent<TokenKey> for TokenRef<'_> {
    fn equivalent(&self, key: &TokenKey) -> bool {
        *key.0 == *self.0
    }
}

/// A session token a thread verified (or found in the cache) lately.
struct Remembered {
    /// Compared by pointer: the `Arc` of a thread's decoded session cookie.
    token: Arc<str>,
    claims: Arc<AccessClaims>,
    /// [`Verifier::now`] when the cache or a signature check answered.
    verified_at: i64,
}

/// Verified tokens live until `exp` + leeway, capped at [`CACHE_MAX_TTL`].
struct UntilExp {
    leeway: i64,
}

impl Expiry<TokenKey, Arc<AccessClaims>> for UntilExp {
    fn expire_after_create(
        &self,
        _token: &TokenKey,
        claims: &Arc<AccessClaims>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = claims
            .exp
            .saturating_add(self.leeway)
            .saturating_sub(unix_now());
        let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
        Some(left.min(CACHE_MAX_TTL))
    }
}

/// Verifies access tokens; `Send + Sync`, shared behind an `Arc`.
pub struct Verifier {
    hs256: Option<DecodingKey>,
    /// Prebuilt per [`Alg`], indexed by [`Alg::index`].
    validations: [Validation; 4],
    leeway: i64,
    jwks_url: String,
    apikey: Option<String>,
    http: HttpClient,
    keys: RwLock<Arc<KeySet>>,
    fetch: tokio::sync::Mutex<FetchState>,
    /// Verified tokens by their text (see [`TokenKey`]).
    cache: Cache<TokenKey, Arc<AccessClaims>>,
    /// Each thread's last verified session tokens, most recent first.
    recent: thread_local::ThreadLocal<RefCell<Recent<Remembered, RECENT_PER_THREAD>>>,
    signature_checks: AtomicU64,
    jwks_fetches: AtomicU64,
    #[cfg(test)]
    clock_skew: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hs256", &self.hs256.as_ref().map(|_| "[redacted]"))
            .field("jwks_url", &self.jwks_url)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(settings: VerifierSettings, http: HttpClient) -> Self {
        install_jwt_crypto_provider();
        let leeway = i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX);
        let validation = |alg: Alg| {
            let mut validation = Validation::new(alg.jwt());
            validation.leeway = settings.leeway.as_secs();
            // `exp` is checked after the other claims, so that a token that is
            // both expired and wrong reads `Invalid`, never `Expired`.
            validation.validate_exp = false;
            validation.validate_nbf = true;
            // jsonwebtoken only compares `iss`/`aud` when present: require them.
            validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
            validation.set_issuer(&[&settings.issuer]);
            validation.set_audience(&[&settings.audience]);
            validation
        };
        let cache = Cache::builder()
            .max_capacity(CACHE_BYTES)
            .weigher(|token: &TokenKey, _claims: &Arc<AccessClaims>| {
                // Token text plus a rough size of the claims and entry overhead.
                u32::try_from(token.0.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(256)
            })
            .expire_after(UntilExp { leeway })
            .build();
        Self {
            hs256: settings
                .hs256_secret
                .as_deref()
                // An empty HMAC secret would let anyone sign: treat it as none.
                .filter(|secret| !secret.is_empty())
                .map(DecodingKey::from_secret),
            validations: [
                validation(Alg::Hs256),
                validation(Alg::Es256),
                validation(Alg::Rs256),
                validation(Alg::EdDsa),
            ],
            leeway,
            jwks_url: settings.jwks_url,
            apikey: settings.apikey.filter(|k| !k.is_empty()),
            http,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            cache,
            recent: thread_local::ThreadLocal::new(),
            signature_checks: AtomicU64::new(0),
            jwks_fetches: AtomicU64::new(0),
            #[cfg(test)]
            clock_skew: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Verifies `token`; a token seen before and still valid costs one cache
    /// lookup.
    pub async fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, VerifyError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(VerifyError::Invalid("token too long"));
        }
        let now = self.now();
        if let Some(claims) = self.cache.get(&TokenRef(token)) {
            if claims.exp.saturating_add(self.leeway) >= now {
                return Ok(claims);
            }
            // moka expires entries lazily; this one was validly signed, so
            // the answer is known without checking the signature again.
            self.cache.invalidate(&TokenRef(token));
            return Err(VerifyError::Expired);
        }
        // Boxed: once per token, and the JWKS fetch inside makes the future
        // large for every caller of `verify` otherwise.
        let claims = Arc::new(Box::pin(self.verify_uncached(token, now)).await?);
        self.cache
            .insert(TokenKey(Arc::from(token)), Arc::clone(&claims));
        Ok(claims)
    }

    /// [`Self::verify`] for a token shared by a thread's recent session
    /// cookies: the same `Arc` (not only the same text) verified lately on
    /// this thread is answered from a short list compared by pointer, with
    /// the check a cache hit makes (`exp` with leeway) and for at most
    /// [`RECENT_MAX_AGE_SECS`]; no hashing, no shared cache touched.
    pub async fn verify_shared(&self, token: &Arc<str>) -> Result<Arc<AccessClaims>, VerifyError> {
        let now = self.now();
        let remembered = self
            .recent
            .get_or_default()
            .borrow_mut()
            .find(
                |r| Arc::ptr_eq(&r.token, token),
                |r| {
                    r.claims.exp.saturating_add(self.leeway) >= now
                        && now.saturating_sub(r.verified_at) < RECENT_MAX_AGE_SECS
                },
            )
            .map(|r| r.claims.clone());
        if let Some(claims) = remembered {
            return Ok(claims);
        }
        // Not remembered, or no longer: asked the way a first sight is.
        let claims = self.verify(token).await?;
        self.recent
            .get_or_default()
            .borrow_mut()
            .remember(Remembered {
                token: token.clone(),
                claims: claims.clone(),
                verified_at: now,
            });
        Ok(claims)
    }

    /// Fetches the JWKS now (for `chatgate check`) and answers how many of
    /// its keys chatgate can use. Zero is not an error here: with an HS256
    /// secret the JWKS may legitimately be empty.
    pub async fn check_keys(&self) -> Result<usize, String> {
        let mut state = self.fetch.lock().await;
        self.fetch_locked(&mut state)
            .await
            .map(|keys| keys.keys.len())
    }

    pub fn stats(&self) -> VerifierStats {
        VerifierStats {
            signature_checks: self.signature_checks.load(Ordering::Relaxed),
            jwks_fetches: self.jwks_fetches.load(Ordering::Relaxed),
            cached_tokens: self.cache.entry_count(),
        }
    }

    async fn verify_uncached(&self, token: &str, now: i64) -> Result<AccessClaims, VerifyError> {
        let header = parse_header(token)?;
        if header.crit.is_some() {
            // We implement no JWS extension, so none can be "critical".
            return Err(VerifyError::Invalid("unsupported critical header"));
        }
        let alg =
            Alg::from_header(&header.alg).ok_or(VerifyError::Invalid("algorithm not allowed"))?;
        match alg {
            // HS256 always means the configured secret, whatever the `kid`:
            // a JWKS never holds it, and a public key must never become one.
            Alg::Hs256 => match &self.hs256 {
                Some(secret) => self.check(token, secret, alg, now),
                None => Err(VerifyError::Invalid("HS256 without a configured secret")),
            },
            _ => {
                self.check_with_jwks(token, alg, header.kid.as_deref(), now)
                    .await
            }
        }
    }

    async fn check_with_jwks(
        &self,
        token: &str,
        alg: Alg,
        kid: Option<&str>,
        now: i64,
    ) -> Result<AccessClaims, VerifyError> {
        let mut keys = self.current_keys();
        if keys
            .fetched_at
            .is_some_and(|at| at.elapsed() > KEYS_MAX_AGE)
        {
            keys = self.refresh_stale(keys).await;
        }
        if let Some(result) = self.check_with_keys(&keys, token, alg, kid, now) {
            return result;
        }
        let keys = self.refetch_for_unknown_key(keys.generation).await?;
        self.check_with_keys(&keys, token, alg, kid, now)
            .unwrap_or(Err(VerifyError::Invalid(UNKNOWN_KID)))
    }

    /// `None` when no key in `keys` could have signed the token.
    fn check_with_keys(
        &self,
        keys: &KeySet,
        token: &str,
        alg: Alg,
        kid: Option<&str>,
        now: i64,
    ) -> Option<Result<AccessClaims, VerifyError>> {
        if let Some(kid) = kid {
            let key = keys
                .keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid))?;
            if key.alg != alg {
                // e.g. an RS256 header naming an EC key: refuse, don't refetch.
                return Some(Err(VerifyError::Invalid(
                    "algorithm does not match the key",
                )));
            }
            return Some(self.check(token, &key.key, alg, now));
        }
        // No `kid`: try the (few) keys of the token's algorithm.
        let mut tried = false;
        for key in keys.keys.iter().filter(|key| key.alg == alg) {
            tried = true;
            match self.check(token, &key.key, alg, now) {
                Err(VerifyError::Invalid(BAD_SIGNATURE)) => continue,
                result => return Some(result),
            }
        }
        tried.then_some(Err(VerifyError::Invalid(BAD_SIGNATURE)))
    }

    /// Signature, then claims, then `exp`.
    fn check(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Alg,
        now: i64,
    ) -> Result<AccessClaims, VerifyError> {
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        let validation = &self.validations[alg.index()];
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, validation)
            .map_err(|e| VerifyError::Invalid(reason(e.kind())))?
            .claims;
        if claims.sub.is_empty() {
            return Err(VerifyError::Invalid("empty sub"));
        }
        if claims.exp.saturating_add(self.leeway) < now {
            return Err(VerifyError::Expired);
        }
        Ok(claims)
    }

    fn current_keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Refreshes old keys if nobody else is fetching; on failure keeps them
    /// (Supabase being briefly down must not log everyone out).
    async fn refresh_stale(&self, keys: Arc<KeySet>) -> Arc<KeySet> {
        let Ok(mut state) = self.fetch.try_lock() else {
            return keys;
        };
        if state
            .last_attempt
            .is_some_and(|at| at.elapsed() < REFETCH_INTERVAL)
        {
            return keys;
        }
        self.fetch_locked(&mut state).await.unwrap_or(keys)
    }

    /// One fetch for all the callers that miss a key at once, at most one a
    /// minute (every 5 s while no JWKS was ever loaded).
    async fn refetch_for_unknown_key(&self, seen: u64) -> Result<Arc<KeySet>, VerifyError> {
        let mut state = self.fetch.lock().await;
        let keys = self.current_keys();
        if keys.generation != seen {
            // Someone fetched while we waited for the lock.
            return Ok(keys);
        }
        let gap = if keys.fetched_at.is_some() {
            REFETCH_INTERVAL
        } else {
            RETRY_WITHOUT_KEYS
        };
        if state.last_attempt.is_some_and(|at| at.elapsed() < gap) {
            return match &state.last_error {
                Some(error) => Err(VerifyError::KeysUnavailable(error.clone())),
                None => Ok(keys),
            };
        }
        self.fetch_locked(&mut state)
            .await
            .map_err(VerifyError::KeysUnavailable)
    }

    /// Fetches and installs the JWKS; the caller holds the fetch lock.
    async fn fetch_locked(&self, state: &mut FetchState) -> Result<Arc<KeySet>, String> {
        state.last_attempt = Some(Instant::now());
        // Stays if this future is dropped mid-fetch (the request went away),
        // so the callers held back meanwhile answer "unavailable", not
        // "unknown key".
        state.last_error = Some("the previous JWKS fetch was interrupted".to_owned());
        self.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch_jwks().await {
            Ok(keys) => {
                let set = Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                    generation: self.current_keys().generation + 1,
                });
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&set);
                state.last_error = None;
                tracing::debug!(keys = set.keys.len(), url = %self.jwks_url, "loaded the Supabase JWKS");
                Ok(set)
            }
            Err(error) => {
                tracing::warn!(%error, "fetching the Supabase JWKS failed");
                state.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    async fn fetch_jwks(&self) -> Result<Vec<JwksKey>, String> {
        let mut headers = vec![("accept", "application/json")];
        if let Some(key) = &self.apikey {
            headers.push(("apikey", key));
        }
        let answer = http_client::send(
            &self.http,
            Method::GET,
            &self.jwks_url,
            &headers,
            Bytes::new(),
            FETCH_TIMEOUT,
        )
        .await
        .map_err(|e| format!("GET {}: {e}", self.jwks_url))?;
        if !answer.status.is_success() {
            return Err(format!("GET {}: status {}", self.jwks_url, answer.status));
        }
        parse_jwks(&answer.body).map_err(|e| format!("GET {}: {e}", self.jwks_url))
    }

    #[cfg(not(test))]
    fn now(&self) -> i64 {
        unix_now()
    }

    /// Tests move this clock to expire cached tokens without waiting.
    #[cfg(test)]
    fn now(&self) -> i64 {
        unix_now() + self.clock_skew.load(Ordering::Relaxed)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

/// The header of a compact JWS: exactly three parts, JSON header.
fn parse_header(token: &str) -> Result<TokenHeader, VerifyError> {
    const MALFORMED: VerifyError = VerifyError::Invalid("malformed token");
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| MALFORMED)?;
    serde_json::from_slice(&header).map_err(|_| MALFORMED)
}

/// A fixed reason per jsonwebtoken error; its own messages are not passed on.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => BAD_SIGNATURE,
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::ImmatureSignature => "not valid yet",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "no exp",
            "sub" => "no sub",
            "aud" => "no aud",
            "iss" => "no iss",
            _ => "missing claim",
        },
        ErrorKind::InvalidClaimFormat(_) => "malformed claim",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
            "algorithm does not match the key"
        }
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed token",
        _ => "invalid token",
    }
}

/// One JWK as published; everything optional so one odd key can't spoil the set.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

/// The usable signature keys of a JWKS document; others are skipped.
fn parse_jwks(body: &[u8]) -> Result<Vec<JwksKey>, String> {
    let set: RawJwkSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<RawJwk>(value).ok())
        .filter_map(usable_key)
        .take(MAX_JWKS_KEYS)
        .collect())
}

/// The key and its one algorithm, or `None` for keys chatgate must not use:
/// encryption keys, symmetric keys, other curves, short RSA moduli, or a
/// declared `alg` that disagrees with the key type.
fn usable_key(jwk: RawJwk) -> Option<JwksKey> {
    if jwk.use_.as_deref().is_some_and(|use_| use_ != "sig") {
        return None;
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
    {
        return None;
    }
    let decode = |member: &Option<String>| JWK_BASE64.decode(member.as_deref()?).ok();
    let declared = jwk.alg.as_deref();
    let (alg, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("EC", Some("P-256")) if matches!(declared, None | Some("ES256")) => {
            let (x, y) = (decode(&jwk.x)?, decode(&jwk.y)?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            // Uncompressed SEC1 point, as aws-lc-rs verifies with.
            let point = [&[0x04][..], &x, &y].concat();
            (Alg::Es256, DecodingKey::from_ec_der(&point))
        }
        ("RSA", _) if matches!(declared, None | Some("RS256")) => {
            let (n, e) = (decode(&jwk.n)?, decode(&jwk.e)?);
            if rsa_bits(&n) < MIN_RSA_BITS || e.is_empty() {
                return None;
            }
            (Alg::Rs256, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        // "Ed25519" is the fully specified name of RFC 9864.
        ("OKP", Some("Ed25519")) if matches!(declared, None | Some("EdDSA" | "Ed25519")) => {
            let x = decode(&jwk.x)?;
            if x.len() != 32 {
                return None;
            }
            (Alg::EdDsa, DecodingKey::from_ed_der(&x))
        }
        _ => return None,
    };
    Some(JwksKey {
        kid: jwk.kid,
        alg,
        key,
    })
}

/// Bit length of a big-endian unsigned integer.
fn rsa_bits(n: &[u8]) -> usize {
    let Some(start) = n.iter().position(|&byte| byte != 0) else {
        return 0;
    };
    (n.len() - start) * 8 - n[start].leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
    use aws_lc_rs::signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
        ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
    };
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use serde_json::{json, Value};

    use super::*;

    const SECRET: &[u8] = b"super-secret-jwt-token-with-at-least-32-characters-long";
    const ISSUER: &str = "http://127.0.0.1:54321/auth/v1";

    fn b64(data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(data)
    }

    /// Builds a compact JWS by hand (independently of jsonwebtoken).
    fn jws(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = sign(message.as_bytes());
        format!("{message}.{}", b64(&signature))
    }

    fn hmac(secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> + '_ {
        move |message| {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
            aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec()
        }
    }

    fn now() -> i64 {
        unix_now()
    }

    fn claims() -> Value {
        json!({
            "sub": "6f1d1c1e-0000-4000-8000-000000000001",
            "aud": "authenticated",
            "iss": ISSUER,
            "exp": now() + 3600,
            "iat": now(),
            "email": "ada@example.com",
            "phone": "",
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": now()}],
            "session_id": "b7d3e0a4-0000-4000-8000-000000000002",
            "is_anonymous": false,
            "app_metadata": {"provider": "email"},
            "user_metadata": {"name": "Ada"},
        })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        if let Some(object) = claims.as_object_mut() {
            object.remove(key);
        }
        claims
    }

    fn hs256(claims: &Value) -> String {
        jws(&json!({"alg": "HS256", "typ": "JWT"}), claims, hmac(SECRET))
    }

    struct EcKey {
        pair: EcdsaKeyPair,
        kid: &'static str,
    }

    impl EcKey {
        fn new(kid: &'static str) -> Self {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
            Self { pair, kid }
        }
        fn jwk(&self) -> Value {
            let point = self.pair.public_key().as_ref();
            json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                   "key_ops": ["verify"], "ext": true,
                   "x": b64(&point[1..33]), "y": b64(&point[33..65])})
        }
        fn sign(&self, message: &[u8]) -> Vec<u8> {
            self.pair
                .sign(&SystemRandom::new(), message)
                .unwrap()
                .as_ref()
                .to_vec()
        }
        fn token(&self, claims: &Value) -> String {
            self.token_with(
                &json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"}),
                claims,
            )
        }
        fn token_with(&self, header: &Value, claims: &Value) -> String {
            jws(header, claims, |m| self.sign(m))
        }
    }

    struct RsaKey {
        pair: RsaKeyPair,
        kid: &'static str,
    }

    impl RsaKey {
        fn new(kid: &'static str) -> Self {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
            Self { pair, kid }
        }
        fn jwk(&self) -> Value {
            let parts = PublicKeyComponents::<Vec<u8>>::from(self.pair.public_key());
            json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                   "n": b64(&parts.n), "e": b64(&parts.e)})
        }
        fn public_der(&self) -> Vec<u8> {
            self.pair.public_key().as_der().unwrap().as_ref().to_vec()
        }
        fn public_pem(&self) -> Vec<u8> {
            let body = base64::engine::general_purpose::STANDARD.encode(self.public_der());
            let lines: Vec<&str> = body
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                lines.join("\n")
            )
            .into_bytes()
        }
        fn sign_with(
            &self,
            padding: &'static dyn aws_lc_rs::signature::RsaEncoding,
            message: &[u8],
        ) -> Vec<u8> {
            let mut signature = vec![0; self.pair.public_modulus_len()];
            self.pair
                .sign(padding, &SystemRandom::new(), message, &mut signature)
                .unwrap();
            signature
        }
        fn token(&self, claims: &Value) -> String {
            jws(
                &json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"}),
                claims,
                |m| self.sign_with(&RSA_PKCS1_SHA256, m),
            )
        }
    }

    struct EdKey {
        pair: Ed25519KeyPair,
        kid: &'static str,
    }

    impl EdKey {
        fn new(kid: &'static str) -> Self {
            Self {
                pair: Ed25519KeyPair::generate().unwrap(),
                kid,
            }
        }
        fn jwk(&self) -> Value {
            json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "use": "sig", "alg": "EdDSA",
                   "x": b64(self.pair.public_key().as_ref())})
        }
        fn token(&self, claims: &Value) -> String {
            jws(
                &json!({"alg": "EdDSA", "kid": self.kid, "typ": "JWT"}),
                claims,
                |m| self.pair.sign(m).as_ref().to_vec(),
            )
        }
    }

    /// A stand-in for `GET /auth/v1/.well-known/jwks.json` that counts fetches.
    struct JwksServer {
        url: String,
        fetches: Arc<AtomicUsize>,
        document: Arc<std::sync::Mutex<(u16, String)>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        async fn start(keys: &[Value]) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!(
                "http://{}/auth/v1/.well-known/jwks.json",
                listener.local_addr().unwrap()
            );
            let fetches = Arc::new(AtomicUsize::new(0));
            let document = Arc::new(std::sync::Mutex::new((
                200,
                json!({ "keys": keys }).to_string(),
            )));
            let (counter, served) = (Arc::clone(&fetches), Arc::clone(&document));
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (counter, served) = (Arc::clone(&counter), Arc::clone(&served));
                    tokio::spawn(async move {
                        let service = service_fn(move |_request| {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let (status, body) = served.lock().unwrap().clone();
                            async move {
                                Ok::<_, Infallible>(
                                    http::Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json")
                                        .header("cache-control", "public, max-age=600")
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Self {
                url,
                fetches,
                document,
                task,
            }
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        fn publish(&self, keys: &[Value]) {
            *self.document.lock().unwrap() = (200, json!({ "keys": keys }).to_string());
        }

        fn answer(&self, status: u16, body: &str) {
            *self.document.lock().unwrap() = (status, body.to_owned());
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn settings(secret: Option<&[u8]>, jwks_url: &str) -> VerifierSettings {
        VerifierSettings {
            hs256_secret: secret.map(<[u8]>::to_vec),
            jwks_url: jwks_url.to_owned(),
            apikey: None,
            issuer: ISSUER.to_owned(),
            audience: "authenticated".to_owned(),
            leeway: Duration::from_secs(30),
        }
    }

    fn verifier(secret: Option<&[u8]>, jwks_url: &str) -> Verifier {
        Verifier::new(settings(secret, jwks_url), http_client::build())
    }

    /// A URL where nothing listens.
    async fn dead_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{address}/auth/v1/.well-known/jwks.json")
    }

    fn assert_invalid(result: Result<Arc<AccessClaims>, VerifyError>, case: &str) {
        assert!(
            matches!(result, Err(VerifyError::Invalid(_))),
            "{case}: expected Invalid, got {result:?}"
        );
    }

    #[tokio::test]
    async fn hs256_token_with_the_secret_is_accepted() {
        let verifier = verifier(Some(SECRET), &dead_url().await);
        let claims = verifier.verify(&hs256(&claims())).await.unwrap();
        assert_eq!(claims.sub, "6f1d1c1e-0000-4000-8000-000000000001");
        assert_eq!(claims.email.as_deref(), Some("ada@example.com"));
        assert_eq!(claims.role.as_deref(), Some("authenticated"));
        assert_eq!(
            claims.session_id.as_deref(),
            Some("b7d3e0a4-0000-4000-8000-000000000002")
        );
        assert_eq!(claims.is_anonymous, Some(false));
        assert!(claims.iat.is_some());
        // HS256 needs no JWKS.
        assert_eq!(verifier.stats().jwks_fetches, 0);
    }

    #[tokio::test]
    async fn es256_token_is_accepted_with_the_jwks_key() {
        let key = EcKey::new("ec-1");
        let server = JwksServer::start(&[key.jwk()]).await;
        let verifier = verifier(None, &server.url);
        let claims = verifier.verify(&key.token(&claims())).await.unwrap();
        assert_eq!(claims.sub, "6f1d1c1e-0000-4000-8000-000000000001");
        // A second token with the same key reuses the cached JWKS.
        let other = key.token(&with(claims_json(), "sub", json!("someone-else")));
        verifier.verify(&other).await.unwrap();
        assert_eq!(server.fetches(), 1);
    }

    fn claims_json() -> Value {
        claims()
    }

    #[tokio::test]
    async fn rs256_token_is_accepted_with_the_jwks_key() {
        let key = RsaKey::new("rsa-1");
        let server = JwksServer::start(&[key.jwk()]).await;
        let verifier = verifier(Some(SECRET), &server.url);
        let claims = verifier.verify(&key.token(&claims())).await.unwrap();
        assert_eq!(claims.email.as_deref(), Some("ada@example.com"));
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn eddsa_token_is_accepted_with_an_ed25519_jwk() {
        let key = EdKey::new("ed-1");
        let server = JwksServer::start(&[key.jwk()]).await;
        let verifier = verifier(None, &server.url);
        verifier.verify(&key.token(&claims())).await.unwrap();
    }

    #[tokio::test]
    async fn audience_may_be_an_array_containing_authenticated() {
        let verifier = verifier(Some(SECRET), &dead_url().await);
        let token = hs256(&with(claims(), "aud", json!(["other", "authenticated"])));
        verifier.verify(&token).await.unwrap();
    }

    #[tokio::test]
    async fn asymmetric_token_without_kid_is_tried_against_keys_of_its_type() {
        let (key, other) = (EcKey::new("ec-1"), EcKey::new("ec-2"));
        let server = JwksServer::start(&[other.jwk(), key.jwk()]).await;
        let verifier = verifier(None, &server.url);
        let token = key.token_with(&json!({"alg": "ES256"}), &claims());
        verifier.verify(&token).await.unwrap();
        // Signed by a key the JWKS does not hold: refused.
        let stranger = EcKey::new("ec-3").token_with(&json!({"alg": "ES256"}), &claims());
        assert_invalid(verifier.verify(&stranger).await, "kid-less stranger");
    }

    #[tokio::test]
    async fn bad_tokens_are_invalid_and_never_panic() {
        let ec = EcKey::new("ec-1");
        let rsa = RsaKey::new("rsa-1");
        let server = JwksServer::start(&[ec.jwk(), rsa.jwk()]).await;
        let verifier = verifier(Some(SECRET), &server.url);
        let good = hs256(&claims());
        let mut parts = good.split('.');
        let (header, payload, signature) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let other_payload = b64(with(claims(), "sub", json!("admin")).to_string().as_bytes());
        let confusion = |secret: Vec<u8>, kid: Option<&str>| {
            let header = match kid {
                Some(kid) => json!({"alg": "HS256", "kid": kid}),
                None => json!({"alg": "HS256"}),
            };
            jws(&header, &claims(), move |m| hmac(&secret)(m))
        };
        let attacker = EcKey::new("ec-1");
        let mut embedded_jwk = attacker.jwk();
        embedded_jwk["kid"] = json!("attacker");
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("one part", "abc".into()),
            ("truncated", good[..good.len() / 2].to_owned()),
            ("two parts", format!("{header}.{payload}")),
            ("three dots", format!("{header}.{payload}.{signature}.")),
            ("only dots", "...".into()),
            ("non-base64", "!!!.???.***".into()),
            (
                "header not JSON",
                format!("{}.{payload}.{signature}", b64(b"hello")),
            ),
            ("padded header", format!("{header}=.{payload}.{signature}")),
            ("signature stripped", format!("{header}.{payload}.")),
            ("signature not base64", format!("{header}.{payload}.@@@")),
            (
                "payload swapped",
                format!("{header}.{other_payload}.{signature}"),
            ),
            (
                "ES256 all-zero signature",
                ec.token_with(&json!({"alg": "ES256", "kid": "ec-1"}), &claims())
                    .rsplit_once('.')
                    .map(|(message, _)| format!("{message}.{}", b64(&[0; 64])))
                    .unwrap(),
            ),
            (
                "ES256 DER-encoded signature",
                jws(&json!({"alg": "ES256", "kid": "ec-1"}), &claims(), |m| {
                    EcdsaKeyPair::from_pkcs8(
                        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                        ec.pair.to_pkcs8v1().unwrap().as_ref(),
                    )
                    .unwrap()
                    .sign(&SystemRandom::new(), m)
                    .unwrap()
                    .as_ref()
                    .to_vec()
                }),
            ),
            (
                "alg none unsigned",
                format!(
                    "{}.{payload}.",
                    b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes())
                ),
            ),
            (
                "alg None with signature",
                jws(&json!({"alg": "None"}), &claims(), hmac(SECRET)),
            ),
            (
                "alg missing",
                jws(&json!({"typ": "JWT"}), &claims(), hmac(SECRET)),
            ),
            (
                "wrong secret",
                jws(&json!({"alg": "HS256"}), &claims(), hmac(b"not-the-secret")),
            ),
            (
                "HS512 with the secret",
                jws(&json!({"alg": "HS512"}), &claims(), |m| {
                    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA512, SECRET);
                    aws_lc_rs::hmac::sign(&key, m).as_ref().to_vec()
                }),
            ),
            (
                "HS256 keyed with the RSA PEM",
                confusion(rsa.public_pem(), None),
            ),
            (
                "HS256 keyed with the RSA DER",
                confusion(rsa.public_der(), None),
            ),
            (
                "HS256 keyed with the RSA PEM, RSA kid",
                confusion(rsa.public_pem(), Some("rsa-1")),
            ),
            (
                "RS256 header with the EC key's kid",
                ec.token_with(&json!({"alg": "RS256", "kid": "ec-1"}), &claims()),
            ),
            (
                "ES256 header with the RSA key's kid",
                jws(&json!({"alg": "ES256", "kid": "rsa-1"}), &claims(), |m| {
                    rsa.sign_with(&RSA_PKCS1_SHA256, m)
                }),
            ),
            (
                "PS256 with the RSA key",
                jws(&json!({"alg": "PS256", "kid": "rsa-1"}), &claims(), |m| {
                    rsa.sign_with(&RSA_PSS_SHA256, m)
                }),
            ),
            (
                "ES384",
                jws(&json!({"alg": "ES384", "kid": "ec-1"}), &claims(), |m| {
                    EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
                        .unwrap()
                        .sign(&SystemRandom::new(), m)
                        .unwrap()
                        .as_ref()
                        .to_vec()
                }),
            ),
            (
                "ES256 by another key under a known kid",
                attacker.token(&claims()),
            ),
            (
                "ES256 with an embedded jwk",
                attacker.token_with(
                    &json!({"alg": "ES256", "kid": "attacker", "jwk": embedded_jwk}),
                    &claims(),
                ),
            ),
            (
                "ES256 with a jku",
                attacker.token_with(
                    &json!({"alg": "ES256", "kid": "attacker", "jku": "http://evil.example/jwks"}),
                    &claims(),
                ),
            ),
            (
                "crit header",
                jws(
                    &json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
                    &claims(),
                    hmac(SECRET),
                ),
            ),
            ("wrong aud", hs256(&with(claims(), "aud", json!("anon")))),
            (
                "aud array without ours",
                hs256(&with(claims(), "aud", json!(["anon"]))),
            ),
            ("no aud", hs256(&without(claims(), "aud"))),
            (
                "wrong iss",
                hs256(&with(
                    claims(),
                    "iss",
                    json!("https://evil.supabase.co/auth/v1"),
                )),
            ),
            (
                "iss with a trailing slash",
                hs256(&with(claims(), "iss", json!(format!("{ISSUER}/")))),
            ),
            ("no iss", hs256(&without(claims(), "iss"))),
            ("no sub", hs256(&without(claims(), "sub"))),
            ("empty sub", hs256(&with(claims(), "sub", json!("")))),
            ("sub not a string", hs256(&with(claims(), "sub", json!(42)))),
            ("no exp", hs256(&without(claims(), "exp"))),
            (
                "exp a string",
                hs256(&with(claims(), "exp", json!("tomorrow"))),
            ),
            (
                "not yet valid",
                hs256(&with(claims(), "nbf", json!(now() + 3600))),
            ),
            (
                "claims an array",
                jws(&json!({"alg": "HS256"}), &json!([1, 2]), hmac(SECRET)),
            ),
            (
                "expired and wrong iss",
                hs256(&with(
                    with(claims(), "exp", json!(now() - 3600)),
                    "iss",
                    json!("https://evil.supabase.co/auth/v1"),
                )),
            ),
            (
                "100 KB token",
                hs256(&with(
                    claims(),
                    "user_metadata",
                    json!({"blob": "x".repeat(100 * 1024)}),
                )),
            ),
            ("100 KB of dots", ".".repeat(100 * 1024)),
        ];
        for (case, token) in &cases {
            let result = verifier.verify(token).await;
            assert_invalid(result.clone(), case);
            let message = result.unwrap_err().to_string();
            if token.len() > 8 {
                assert!(!message.contains(token.as_str()), "{case}: token in error");
            }
        }
        assert_eq!(verifier.stats().cached_tokens, 0);
    }

    #[tokio::test]
    async fn hs256_is_refused_when_no_secret_is_configured() {
        let rsa = RsaKey::new("rsa-1");
        let server = JwksServer::start(&[rsa.jwk()]).await;
        let verifier = verifier(None, &server.url);
        let pem = rsa.public_pem();
        let token = jws(
            &json!({"alg": "HS256", "kid": "rsa-1"}),
            &claims(),
            hmac(&pem),
        );
        assert_invalid(verifier.verify(&token).await, "HS256 without secret");
        let token = jws(&json!({"alg": "HS256"}), &claims(), hmac(b""));
        assert_invalid(verifier.verify(&token).await, "HS256 with empty key");
        assert_eq!(verifier.stats().signature_checks, 0);
        assert_eq!(server.fetches(), 0);
        // An empty configured secret counts as none.
        let verifier = Verifier::new(settings(Some(b""), &server.url), http_client::build());
        assert_invalid(verifier.verify(&token).await, "empty secret");
    }

    #[tokio::test]
    async fn expired_past_the_leeway_is_expired_within_it_is_accepted() {
        let verifier = verifier(Some(SECRET), &dead_url().await);
        let expired = hs256(&with(claims(), "exp", json!(now() - 31 - 5)));
        assert_eq!(verifier.verify(&expired).await, Err(VerifyError::Expired));
        let recent = hs256(&with(claims(), "exp", json!(now() - 20)));
        verifier.verify(&recent).await.unwrap();
        // Expired under the RSA key as well.
        let rsa = RsaKey::new("rsa-1");
        let server = JwksServer::start(&[rsa.jwk()]).await;
        let verifier = self::verifier(None, &server.url);
        let expired = rsa.token(&with(claims(), "exp", json!(now() - 3600)));
        assert_eq!(verifier.verify(&expired).await, Err(VerifyError::Expired));
    }

    /// Pretends the last JWKS fetch happened `seconds` ago.
    async fn age_last_fetch(verifier: &Verifier, seconds: u64) {
        let mut state = verifier.fetch.lock().await;
        state.last_attempt = Instant::now().checked_sub(Duration::from_secs(seconds));
    }

    #[tokio::test]
    async fn unknown_kid_refetches_once_then_waits_a_minute() {
        let (first, second) = (EcKey::new("ec-1"), EcKey::new("ec-2"));
        let server = JwksServer::start(&[first.jwk()]).await;
        let verifier = verifier(None, &server.url);
        verifier.verify(&first.token(&claims())).await.unwrap();
        assert_eq!(server.fetches(), 1);

        // A minute later, an unknown kid refetches once: rotation picked up.
        server.publish(&[first.jwk(), second.jwk()]);
        age_last_fetch(&verifier, 61).await;
        verifier.verify(&second.token(&claims())).await.unwrap();
        assert_eq!(server.fetches(), 2);

        // Another minute: an unknown kid refetches, is still unknown: Invalid.
        age_last_fetch(&verifier, 61).await;
        let third = EcKey::new("ec-3");
        assert_eq!(
            verifier.verify(&third.token(&claims())).await,
            Err(VerifyError::Invalid(UNKNOWN_KID))
        );
        assert_eq!(server.fetches(), 3);

        // Within that minute, other unknown kids are refused without fetching,
        // even once the key is published.
        let fourth = EcKey::new("ec-4");
        server.publish(&[first.jwk(), second.jwk(), fourth.jwk()]);
        for _ in 0..20 {
            assert_eq!(
                verifier.verify(&fourth.token(&claims())).await,
                Err(VerifyError::Invalid(UNKNOWN_KID))
            );
        }
        assert_eq!(server.fetches(), 3);
        // Known keys still work meanwhile.
        verifier.verify(&first.token(&claims())).await.unwrap();
        assert_eq!(server.fetches(), 3);
    }

    #[tokio::test]
    async fn keys_older_than_ten_minutes_are_refreshed_so_a_removed_key_stops_working() {
        let (old, new) = (EcKey::new("old"), EcKey::new("new"));
        let server = JwksServer::start(&[old.jwk(), new.jwk()]).await;
        let verifier = verifier(None, &server.url);
        verifier.verify(&old.token(&claims())).await.unwrap();
        server.publish(&[new.jwk()]);
        // Pretend the set was loaded eleven minutes ago.
        {
            let mut keys = verifier.keys.write().unwrap();
            let aged = KeySet {
                keys: parse_jwks(
                    json!({"keys": [old.jwk(), new.jwk()]})
                        .to_string()
                        .as_bytes(),
                )
                .unwrap(),
                fetched_at: Instant::now().checked_sub(Duration::from_secs(660)),
                generation: keys.generation,
            };
            *keys = Arc::new(aged);
        }
        age_last_fetch(&verifier, 660).await;
        let token = old.token(&with(claims(), "sub", json!("after-revocation")));
        assert_invalid(verifier.verify(&token).await, "revoked key");
        assert_eq!(server.fetches(), 2);
        verifier.verify(&new.token(&claims())).await.unwrap();
    }

    #[tokio::test]
    async fn an_unknown_kid_after_a_fresh_fetch_is_invalid_without_fetching_twice() {
        let key = EcKey::new("ec-1");
        let server = JwksServer::start(&[key.jwk()]).await;
        let verifier = verifier(None, &server.url);
        let stranger = EcKey::new("nobody");
        assert_eq!(
            verifier.verify(&stranger.token(&claims())).await,
            Err(VerifyError::Invalid(UNKNOWN_KID))
        );
        assert_invalid(
            verifier.verify(&EcKey::new("n2").token(&claims())).await,
            "n2",
        );
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn concurrent_first_fetches_coalesce_into_one() {
        let key = EcKey::new("ec-1");
        let server = JwksServer::start(&[key.jwk()]).await;
        let verifier = Arc::new(verifier(None, &server.url));
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let token = key.token(&with(claims(), "sub", json!(format!("user-{i}"))));
                let verifier = Arc::clone(&verifier);
                tokio::spawn(async move { verifier.verify(&token).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn jwks_down_and_kid_unknown_is_keys_unavailable() {
        let verifier = verifier(Some(SECRET), &dead_url().await);
        let token = EcKey::new("ec-1").token(&claims());
        let first = verifier.verify(&token).await;
        assert!(
            matches!(&first, Err(VerifyError::KeysUnavailable(_))),
            "{first:?}"
        );
        let message = first.unwrap_err().to_string();
        assert!(!message.contains(&token));
        // A burst meanwhile reuses the failure instead of hammering Supabase.
        for _ in 0..10 {
            assert!(matches!(
                verifier.verify(&token).await,
                Err(VerifyError::KeysUnavailable(_))
            ));
        }
        assert_eq!(verifier.stats().jwks_fetches, 1);
        // HS256 does not depend on the JWKS.
        verifier.verify(&hs256(&claims())).await.unwrap();
        assert!(verifier.check_keys().await.is_err());
    }

    #[tokio::test]
    async fn a_fetch_dropped_midway_counts_as_unavailable() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let verifier = verifier(None, &url);
        let token = EcKey::new("ec-1").token(&claims());
        let gave_up =
            tokio::time::timeout(Duration::from_millis(200), verifier.verify(&token)).await;
        assert!(gave_up.is_err());
        assert!(matches!(
            verifier.verify(&token).await,
            Err(VerifyError::KeysUnavailable(_))
        ));
        hold.abort();
    }

    #[tokio::test]
    async fn jwks_errors_are_keys_unavailable_then_recover() {
        let key = EcKey::new("ec-1");
        let server = JwksServer::start(&[]).await;
        server.answer(503, "upstream down");
        let verifier = verifier(None, &server.url);
        let token = key.token(&claims());
        assert!(matches!(
            verifier.verify(&token).await,
            Err(VerifyError::KeysUnavailable(_))
        ));
        server.answer(200, "<html>not json</html>");
        assert!(verifier.check_keys().await.is_err());
        server.publish(&[key.jwk()]);
        assert_eq!(verifier.check_keys().await, Ok(1));
        verifier.verify(&token).await.unwrap();
    }

    #[tokio::test]
    async fn check_keys_counts_only_usable_signature_keys() {
        let (ec, rsa, ed) = (EcKey::new("ec-1"), RsaKey::new("rsa-1"), EdKey::new("ed-1"));
        let mut encryption = EcKey::new("enc").jwk();
        encryption["use"] = json!("enc");
        let mut wrong_alg = RsaKey::new("rsa-512").jwk();
        wrong_alg["alg"] = json!("RS512");
        let mut ec_as_rs256 = EcKey::new("ec-rs").jwk();
        ec_as_rs256["alg"] = json!("RS256");
        let mut sign_only = EcKey::new("ec-sign").jwk();
        sign_only["key_ops"] = json!(["sign"]);
        let server = JwksServer::start(&[
            ec.jwk(),
            rsa.jwk(),
            ed.jwk(),
            encryption,
            wrong_alg,
            ec_as_rs256,
            sign_only,
            json!({"kty": "oct", "kid": "hmac", "k": b64(SECRET)}),
            json!({"kty": "RSA", "kid": "rsa-1024", "n": b64(&[0xff; 128]), "e": "AQAB"}),
            json!({"kty": "EC", "crv": "P-384", "kid": "p384", "x": b64(&[1; 48]), "y": b64(&[2; 48])}),
            json!({"kty": "EC", "crv": "P-256", "kid": "short", "x": b64(&[1; 31]), "y": b64(&[2; 32])}),
            json!({"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": b64(&[1; 32])}),
            json!({"kty": "EC", "crv": "P-256", "kid": "no-y", "x": b64(&[1; 32])}),
            json!("not an object"),
            json!({"kid": "no-kty"}),
        ])
        .await;
        let verifier = verifier(None, &server.url);
        assert_eq!(verifier.check_keys().await, Ok(3));
        // The oct key is never used for HS256.
        let token = jws(
            &json!({"alg": "HS256", "kid": "hmac"}),
            &claims(),
            hmac(SECRET),
        );
        assert_invalid(verifier.verify(&token).await, "oct key from the JWKS");
        // Refused keys are unknown kids.
        let token = EcKey::new("enc").token(&claims());
        assert_invalid(verifier.verify(&token).await, "encryption key");
    }

    #[tokio::test]
    async fn a_repeat_is_a_cache_hit_without_signature_check() {
        let key = EcKey::new("ec-1");
        let server = JwksServer::start(&[key.jwk()]).await;
        let verifier = verifier(Some(SECRET), &server.url);
        let token = key.token(&claims());
        let first = verifier.verify(&token).await.unwrap();
        assert_eq!(verifier.stats().signature_checks, 1);
        for _ in 0..10 {
            let again = verifier.verify(&token).await.unwrap();
            assert!(Arc::ptr_eq(&first, &again));
        }
        assert_eq!(verifier.stats().signature_checks, 1);
        let token = hs256(&claims());
        verifier.verify(&token).await.unwrap();
        verifier.verify(&token).await.unwrap();
        assert_eq!(verifier.stats().signature_checks, 2);
    }

    #[tokio::test]
    async fn a_token_sharing_a_cached_tokens_tail_is_not_a_hit() {
        let verifier = verifier(Some(SECRET), &dead_url().await);
        let token = hs256(&claims());
        verifier.verify(&token).await.unwrap();
        // Same tail, so same hash; the text differs: compared in full, a miss.
        let forged = format!("x{}", &token[1..]);
        assert_invalid(verifier.verify(&forged).await, "same tail");
        let shorter = &token[1..];
        assert_invalid(verifier.verify(shorter).await, "suffix of a cached token");
    }

    #[tokio::test]
    async fn a_threads_recent_token_is_answered_by_pointer_until_exp_or_30_s() {
        let verifier = verifier(Some(SECRET), &dead_url().await);
        let token: Arc<str> = hs256(&with(claims(), "exp", json!(now() + 100))).into();
        verifier.verify_shared(&token).await.unwrap();
        assert_eq!(verifier.stats().signature_checks, 1);
        // Gone from the shared cache: this thread's list still answers …
        verifier.cache.invalidate(&TokenRef(&token));
        assert_eq!(
            verifier.verify_shared(&token).await.unwrap().sub,
            claims()["sub"]
        );
        assert_eq!(verifier.stats().signature_checks, 1);
        // … for that very `Arc` only: the same text elsewhere asks the cache.
        let copy: Arc<str> = Arc::from(&*token);
        verifier.verify_shared(&copy).await.unwrap();
        assert_eq!(verifier.stats().signature_checks, 2);
        // After 30 s the list asks the cache again.
        verifier.cache.invalidate(&TokenRef(&token));
        verifier.clock_skew.store(31, Ordering::Relaxed);
        verifier.verify_shared(&token).await.unwrap();
        assert_eq!(verifier.stats().signature_checks, 3);
        // Past exp + leeway it is expired, as from the cache.
        verifier.clock_skew.store(100 + 31, Ordering::Relaxed);
        assert_eq!(
            verifier.verify_shared(&token).await,
            Err(VerifyError::Expired)
        );
    }

    #[tokio::test]
    async fn a_cached_token_past_its_exp_is_not_returned() {
        let verifier = verifier(Some(SECRET), &dead_url().await);
        let token = hs256(&with(claims(), "exp", json!(now() + 100)));
        verifier.verify(&token).await.unwrap();
        assert_eq!(verifier.stats().signature_checks, 1);
        // Still cached by moka (its own clock did not move), but past exp + leeway.
        verifier.clock_skew.store(100 + 31, Ordering::Relaxed);
        assert_eq!(verifier.verify(&token).await, Err(VerifyError::Expired));
        assert_eq!(verifier.stats().signature_checks, 1);
        // And evicted: the next look verifies (and refuses) again.
        assert_eq!(verifier.verify(&token).await, Err(VerifyError::Expired));
        assert_eq!(verifier.stats().signature_checks, 2);
        // Within the leeway it is still good.
        verifier.clock_skew.store(0, Ordering::Relaxed);
        let token = hs256(&with(claims(), "exp", json!(now() + 100)));
        verifier.verify(&token).await.unwrap();
        verifier.clock_skew.store(100 + 29, Ordering::Relaxed);
        verifier.verify(&token).await.unwrap();
    }

    #[tokio::test]
    async fn the_cache_expires_entries_by_exp() {
        let verifier = verifier(Some(SECRET), &dead_url().await);
        // exp + leeway is 1 s away: moka's own expiry drops the entry.
        let token = hs256(&with(claims(), "exp", json!(now() - 29)));
        verifier.verify(&token).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        verifier.cache.run_pending_tasks();
        assert_eq!(verifier.cache.get(&TokenRef(&token)), None);
        assert_eq!(verifier.verify(&token).await, Err(VerifyError::Expired));
    }

    #[test]
    fn verifier_is_shareable_across_tasks() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Verifier>();
        shareable::<Arc<AccessClaims>>();
        shareable::<VerifyError>();
    }

    #[test]
    fn secrets_and_tokens_stay_out_of_debug_output() {
        let settings = settings(Some(SECRET), "http://127.0.0.1:1/jwks");
        let text = format!("{settings:?}");
        assert!(text.contains("[redacted]"));
        assert!(!text.contains(std::str::from_utf8(SECRET).unwrap()));
    }

    #[test]
    fn rsa_bit_length_ignores_leading_zeros() {
        assert_eq!(rsa_bits(&[]), 0);
        assert_eq!(rsa_bits(&[0, 0]), 0);
        assert_eq!(rsa_bits(&[0, 1]), 1);
        assert_eq!(rsa_bits(&[0, 0x80, 0]), 16);
        let mut n = vec![0u8; 257];
        n[1] = 0x80;
        assert_eq!(rsa_bits(&n), 2048);
        n[1] = 0x40;
        assert_eq!(rsa_bits(&n), 2047);
    }

    #[test]
    fn install_jwt_crypto_provider_is_idempotent() {
        install_jwt_crypto_provider();
        install_jwt_crypto_provider();
    }
}
