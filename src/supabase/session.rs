//! Reading a request's Supabase session: find and decode the cookie, verify
//! the access token, refresh it when it has expired (SPEC section 6). A
//! cookie that cannot be read or verified is "no session", never an error.

use std::sync::Arc;

use http::header::COOKIE;
use http::HeaderMap;

use super::cookie::{clear_set_cookies, encode_set_cookies, find_session_cookie, SupabaseSession};
use super::refresh::RefreshOutcome;
use super::verify::{AccessClaims, VerifyError};
use super::Supabase;

/// What the request's cookie says.
#[derive(Debug)]
pub enum SessionCheck {
    /// No session cookie, or one that cannot be read or verified.
    Absent,
    /// A valid access token.
    Valid {
        claims: Arc<AccessClaims>,
        access_token: Arc<str>,
    },
    /// The access token had expired and was refreshed: `set_cookies` write
    /// the new session back in `@supabase/ssr`'s format.
    Refreshed {
        claims: Arc<AccessClaims>,
        access_token: Arc<str>,
        set_cookies: Vec<String>,
    },
    /// Supabase ended the session (`code`): `clear_cookies` delete it.
    Ended {
        code: String,
        clear_cookies: Vec<String>,
    },
}

/// Supabase could not be asked right now; the cookie is kept.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SessionUnavailable(pub String);

impl Supabase {
    pub async fn check_session(
        &self,
        headers: &HeaderMap,
    ) -> Result<SessionCheck, SessionUnavailable> {
        let cookies = headers.get_all(COOKIE).iter().map(|v| v.as_bytes());
        let Some(found) = find_session_cookie(cookies, &self.cookie_name) else {
            return Ok(SessionCheck::Absent);
        };
        // Only the tokens: the `user` object is never needed here.
        let Ok(session) = found.decode_tokens_recent() else {
            return Ok(SessionCheck::Absent);
        };
        match self.verifier.verify_shared(&session.access_token).await {
            Ok(claims) => Ok(SessionCheck::Valid {
                claims,
                access_token: session.access_token.clone(),
            }),
            Err(VerifyError::Invalid(_)) => Ok(SessionCheck::Absent),
            Err(VerifyError::KeysUnavailable(reason)) => Err(SessionUnavailable(reason)),
            // Boxed: rare, and its future is 4 KiB that every request's
            // future would otherwise carry (and each connection keep).
            Err(VerifyError::Expired) => {
                Box::pin(self.refresh(&session.refresh_token, &found.chunk_names())).await
            }
        }
    }

    async fn refresh(
        &self,
        refresh_token: &str,
        chunks: &[String],
    ) -> Result<SessionCheck, SessionUnavailable> {
        if refresh_token.is_empty() {
            return Ok(SessionCheck::Absent);
        }
        let outcome = self
            .refresher
            .refresh(refresh_token)
            .await
            .map_err(|e| SessionUnavailable(e.to_string()))?;
        let domain = self.cookie_domain.as_deref();
        match outcome.as_ref() {
            RefreshOutcome::Ended { code } => Ok(SessionCheck::Ended {
                code: code.clone(),
                clear_cookies: clear_set_cookies(&self.cookie_name, chunks, domain),
            }),
            RefreshOutcome::Refreshed { session_json } => {
                let fresh: SupabaseSession = serde_json::from_str(session_json).map_err(|_| {
                    SessionUnavailable("refreshed session is not valid JSON".to_owned())
                })?;
                let claims = self
                    .verifier
                    .verify(&fresh.access_token)
                    .await
                    .map_err(|e| {
                        SessionUnavailable(format!(
                            "the refreshed access token does not verify: {e}"
                        ))
                    })?;
                Ok(SessionCheck::Refreshed {
                    claims,
                    access_token: fresh.access_token.into(),
                    set_cookies: encode_set_cookies(
                        &self.cookie_name,
                        session_json,
                        chunks,
                        domain,
                    ),
                })
            }
        }
    }
}
