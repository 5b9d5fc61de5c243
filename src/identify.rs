//! Phase 3: who is asking (SPEC section 5). Forwarding takes an `Identity`
//! (`crate::identity`), and the request path makes one only here, so no
//! route reaches LibreChat without passing here. There is deliberately no
//! setting that skips this phase. Below both the proxy and chatgate's own
//! routes (`crate::routes`), which call it; it calls only downwards.
//!
//! In order, the first that applies:
//! 1. a hand-off `?token=` on a page load → a chatgate session and a 303;
//! 2. the Supabase session cookie (refreshed when expired) — it wins over a
//!    `chatgate_session` of another user, which is then ended;
//! 3. the `chatgate_session` cookie.

pub mod handoff;
pub mod user_switch;

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::HeaderMap;

use self::handoff::SessionRecord;
use crate::app::App;
use crate::context::{RequestContext, RequestLine};
use crate::error::ProxyError;
use crate::identity::Identity;
use crate::metrics::AuthOutcome;
use crate::supabase::session::SessionCheck;
use crate::supabase::tenant::{Organization, Profile, TenantError};
use crate::supabase::verify::{AccessClaims, VerifyError};

/// Identifies the user of a request bound for LibreChat (or for an OpenID
/// authorization, which identifies the same way).
pub async fn identify(
    app: &App,
    ctx: &mut RequestContext,
    line: &RequestLine,
    headers: &HeaderMap,
) -> Result<Identity, ProxyError> {
    if line.page_load && handoff::is_handoff(&line.uri) {
        ctx.identified_by = Some("handoff");
        // Boxed, as are the chatgate-session lookups below: rare next to a
        // cookie, and their futures would enlarge every request's.
        return Err(Box::pin(handoff::exchange(app, ctx, &line.uri)).await);
    }
    let session_id = handoff::session_id(headers).map(str::to_owned);
    let supabase = from_supabase_cookie(app, ctx, headers).await;
    match (supabase, session_id) {
        (Ok(identity), None) => {
            ctx.identified_by = Some("cookie");
            Ok(identity)
        }
        (Ok(identity), Some(id)) => {
            ctx.identified_by = Some("cookie");
            // The dashboard's user wins; a chatgate session of someone else ends.
            if let Ok(Some(record)) = Box::pin(handoff::load(app, &id)).await {
                if record.claims.sub != identity.user_id() {
                    Box::pin(handoff::end(app, &id)).await;
                    ctx.set_cookies.push(handoff::clear_session_cookie());
                }
            }
            Ok(identity)
        }
        (Err(error), Some(id)) if is_no_supabase_session(&error) => {
            match Box::pin(handoff::load(app, &id)).await {
                Ok(Some(record)) => {
                    ctx.identified_by = Some("session");
                    Ok(from_session(record))
                }
                Ok(None) => {
                    ctx.set_cookies.push(handoff::clear_session_cookie());
                    Err(error)
                }
                // Keep the Supabase answer: the session cookie could not be checked either.
                Err(_) => Err(error),
            }
        }
        (Err(error), _) => Err(error),
    }
}

/// The identity a chatgate session stands for.
fn from_session(record: SessionRecord) -> Identity {
    let c = record.claims;
    let metadata = serde_json::json!({ "full_name": c.name, "avatar_url": c.avatar });
    let claims = AccessClaims {
        sub: c.sub,
        email: Some(c.email),
        role: Some(c.role.clone()),
        exp: c.exp,
        iat: Some(c.iat),
        session_id: None,
        is_anonymous: Some(false),
        user_metadata: Some(metadata),
    };
    let org = c.organization;
    let profile = Profile {
        role: Some(c.role),
        organization: Some(Organization::new(
            org.id,
            org.name,
            org.domain,
            org.plan_type,
            org.librechat_config,
        )),
    };
    Identity::new(Arc::new(claims), Arc::new(profile))
        .unwrap_or_else(|| unreachable!("a chatgate session names its organization"))
}

fn is_no_supabase_session(error: &ProxyError) -> bool {
    matches!(
        error,
        ProxyError::Unauthenticated | ProxyError::AuthUnavailable(_)
    )
}

/// The user of the Supabase session cookie (refreshing it when expired).
pub async fn from_supabase_cookie(
    app: &App,
    ctx: &mut RequestContext,
    headers: &HeaderMap,
) -> Result<Identity, ProxyError> {
    let check = app.supabase.check_session(headers).await.map_err(|e| {
        app.metrics.record_auth(AuthOutcome::Unavailable);
        ProxyError::AuthUnavailable(e.0)
    })?;
    let (claims, access_token) = match check {
        SessionCheck::Absent => {
            app.metrics.record_auth(AuthOutcome::Absent);
            return Err(ProxyError::Unauthenticated);
        }
        SessionCheck::Ended {
            code,
            clear_cookies,
        } => {
            app.metrics.record_auth(AuthOutcome::Ended);
            tracing::info!(request_id = ctx.request_id_str(), %code, "Supabase ended the session");
            ctx.set_cookies.extend(clear_cookies);
            return Err(ProxyError::Unauthenticated);
        }
        SessionCheck::Refreshed {
            claims,
            access_token,
            set_cookies,
        } => {
            app.metrics.record_auth(AuthOutcome::Refreshed);
            ctx.set_cookies.extend(set_cookies);
            (claims, access_token)
        }
        SessionCheck::Valid {
            claims,
            access_token,
        } => {
            app.metrics.record_auth(AuthOutcome::Valid);
            (claims, access_token)
        }
    };
    let identity = with_organization(app, claims, &access_token).await?;
    ctx.identified_by = Some("cookie");
    Ok(identity)
}

/// The user of a Supabase session given as `Authorization: Bearer <access
/// token>` (the dashboard's server calling `/api/librechat/auth`), else of
/// the cookie.
pub async fn from_supabase_bearer_or_cookie(
    app: &App,
    ctx: &mut RequestContext,
    headers: &HeaderMap,
) -> Result<Identity, ProxyError> {
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = bearer else {
        return from_supabase_cookie(app, ctx, headers).await;
    };
    let claims = app
        .supabase
        .verifier
        .verify(token)
        .await
        .map_err(|e| match e {
            VerifyError::KeysUnavailable(reason) => {
                app.metrics.record_auth(AuthOutcome::Unavailable);
                ProxyError::AuthUnavailable(reason)
            }
            VerifyError::Expired | VerifyError::Invalid(_) => {
                app.metrics.record_auth(AuthOutcome::Absent);
                ProxyError::Unauthenticated
            }
        })?;
    app.metrics.record_auth(AuthOutcome::Valid);
    ctx.identified_by = Some("bearer");
    with_organization(app, claims, token).await
}

async fn with_organization(
    app: &App,
    claims: Arc<AccessClaims>,
    access_token: &str,
) -> Result<Identity, ProxyError> {
    let profile = app
        .supabase
        .tenants
        .profile(&claims.sub, access_token)
        .await
        .map_err(|e| match e {
            TenantError::Rejected => ProxyError::Unauthenticated,
            TenantError::Unavailable(reason) => ProxyError::AuthUnavailable(reason),
        })?;
    Identity::new(claims, profile).ok_or(ProxyError::NoOrganization)
}
