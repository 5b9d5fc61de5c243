//! The hand-off (SPEC sections 1 and 5): a page load carrying
//! `?token=…&org=…` trades the single-use chatgate token for a
//! `chatgate_session` cookie and is redirected (303) to the same URL without
//! the two parameters. The session record lives in the store, so every
//! replica honours it; ending all of a user's sessions bumps a per-user
//! generation that every record is checked against.

use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::context::RequestContext;
use crate::cookies;
use crate::error::ProxyError;
use crate::librechat::token::{now, TokenClaims, TokenError};
use crate::supabase::refresh::token_hash;

/// chatgate's own session cookie (SPEC section 5); never forwarded.
pub const SESSION_COOKIE: &str = "chatgate_session";

/// What a `chatgate_session` id stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub claims: TokenClaims,
    /// The user's session generation when this session began.
    pub generation: i64,
}

/// Whether a request is a hand-off: a page load with `token` in the query.
pub fn is_handoff(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "token"))
}

/// Exchanges the hand-off token. Always ends the request: a 303 with the
/// session cookie, or the reason it was refused.
pub async fn exchange(app: &App, ctx: &mut RequestContext, uri: &Uri) -> ProxyError {
    match try_exchange(app, ctx, uri).await {
        Ok(location) => ProxyError::Redirect {
            status: StatusCode::SEE_OTHER,
            location,
        },
        Err(error) => error,
    }
}

async fn try_exchange(
    app: &App,
    ctx: &mut RequestContext,
    uri: &Uri,
) -> Result<HeaderValue, ProxyError> {
    let query = uri.query().unwrap_or_default();
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let token = param("token").unwrap_or_default();
    let claims = app.librechat_tokens.verify(&token).map_err(|e| match e {
        TokenError::NoSecret => {
            ProxyError::AuthUnavailable("librechat.jwt_secret is not set".to_owned())
        }
        _ => ProxyError::Unauthenticated,
    })?;
    if let Some(org) = param("org") {
        if org != claims.organization.domain {
            return Err(ProxyError::Forbidden(
                "the org parameter does not match the token",
            ));
        }
    }
    let ttl = Duration::from_secs((claims.exp - now()).max(1) as u64);
    // Single use: the first exchange takes the token's slot for its lifetime.
    let used_key = format!("chatgate:handoff:{}", token_hash(&token));
    match app.store.try_lock(&used_key, ttl).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(ProxyError::Unauthenticated),
        Err(e) => return Err(ProxyError::AuthUnavailable(e.to_string())),
    }
    let generation = generation(app, &claims.sub).await?;
    let id = new_session_id();
    let record = SessionRecord { claims, generation };
    let bytes =
        serde_json::to_vec(&record).map_err(|e| ProxyError::AuthUnavailable(e.to_string()))?;
    app.store
        .set(&session_key(&id), Bytes::from(bytes), ttl)
        .await
        .map_err(|e| ProxyError::AuthUnavailable(e.to_string()))?;
    ctx.set_cookies.push(session_cookie(app, ctx, &id, ttl));
    let clean = without_params(uri, &["token", "org"])?;
    HeaderValue::from_str(clean.as_str())
        .map_err(|_| ProxyError::BadRequest("the request target is not valid"))
}

fn session_cookie(app: &App, ctx: &RequestContext, id: &str, ttl: Duration) -> String {
    let mut cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; Max-Age={}",
        ttl.as_secs()
    );
    if ctx.conn.tls {
        cookie.push_str("; Secure");
    }
    // With iframe.cross_site the response phase makes every cookie
    // SameSite=None; Secure; Partitioned.
    if !app.config.iframe.cross_site {
        cookie.push_str("; SameSite=Lax");
    }
    cookie
}

/// A `Set-Cookie` value that deletes the chatgate session cookie.
pub fn clear_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; Max-Age=0")
}

/// The `chatgate_session` id the request carries, if any.
pub fn session_id(headers: &HeaderMap) -> Option<&str> {
    cookies::find(headers, SESSION_COOKIE)
        .filter(|v| !v.is_empty())
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The live session record for `id`: present, not expired, and not ended
/// by a logout since it began.
pub async fn load(app: &App, id: &str) -> Result<Option<SessionRecord>, ProxyError> {
    let bytes = app
        .store
        .get(&session_key(id))
        .await
        .map_err(|e| ProxyError::AuthUnavailable(e.to_string()))?;
    let Some(record) = bytes.and_then(|b| serde_json::from_slice::<SessionRecord>(&b).ok()) else {
        return Ok(None);
    };
    if record.claims.exp <= now()
        || record.generation != generation(app, &record.claims.sub).await?
    {
        return Ok(None);
    }
    Ok(Some(record))
}

pub async fn end(app: &App, id: &str) {
    if let Err(error) = app.store.delete(&session_key(id)).await {
        tracing::warn!(%error, "could not delete a chatgate session");
    }
}

/// Ends every chatgate session and OpenID grant of `user_id` at once.
pub async fn end_all(app: &App, user_id: &str) -> Result<(), ProxyError> {
    app.store
        .incr(&generation_key(user_id), 1, GENERATION_TTL)
        .await
        .map(|_| ())
        .map_err(|e| ProxyError::AuthUnavailable(e.to_string()))
}

/// The user's current session generation (0 until their first logout).
pub async fn generation(app: &App, user_id: &str) -> Result<i64, ProxyError> {
    let value = app
        .store
        .get(&generation_key(user_id))
        .await
        .map_err(|e| ProxyError::AuthUnavailable(e.to_string()))?;
    Ok(value
        .and_then(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(0))
}

/// Outlives every session and grant that could be checked against it.
const GENERATION_TTL: Duration = Duration::from_secs(400 * 24 * 3600);

fn session_key(id: &str) -> String {
    format!("chatgate:session:{id}")
}

fn generation_key(user_id: &str) -> String {
    format!("chatgate:user:{user_id}:generation")
}

/// 256 random bits, base64url.
pub fn new_session_id() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let _ = aws_lc_rs::rand::SecureRandom::fill(&rng, &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The path and query without the named parameters. Names are compared
/// decoded, so `%74oken=` counts as `token=` as it would for the server
/// reading it.
pub fn without_params(uri: &http::Uri, names: &[&str]) -> Result<PathAndQuery, ProxyError> {
    let Some(pq) = uri.path_and_query() else {
        return Ok(PathAndQuery::from_static("/"));
    };
    let Some(query) = pq.query() else {
        return Ok(pq.clone());
    };
    let named = |pair: &&str| {
        url::form_urlencoded::parse(pair.as_bytes())
            .next()
            .is_some_and(|(name, _)| {
                names
                    .iter()
                    .any(|n| name == *n || name.strip_suffix("[]") == Some(n))
            })
    };
    if !query.split('&').any(|p| named(&p)) {
        return Ok(pq.clone());
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !named(p)).collect();
    let rebuilt = if kept.is_empty() {
        pq.path().to_owned()
    } else {
        format!("{}?{}", pq.path(), kept.join("&"))
    };
    rebuilt
        .parse()
        .map_err(|_| ProxyError::BadRequest("the request target is not valid"))
}
