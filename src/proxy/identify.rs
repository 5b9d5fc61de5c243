//! Phase 3: who is asking (SPEC section 5). Forwarding takes an `Identity`,
//! and only this module can make one, so no route reaches LibreChat without
//! passing here. There is deliberately no setting that skips this phase.

use std::sync::Arc;

use http::Request;

use crate::app::App;
use crate::context::RequestContext;
use crate::error::ProxyError;
use crate::supabase::session::SessionCheck;
use crate::supabase::tenant::{Organization, Profile, TenantError};
use crate::supabase::verify::AccessClaims;

/// A signed-in dashboard user who belongs to an organization.
#[derive(Debug, Clone)]
pub struct Identity {
    claims: Arc<AccessClaims>,
    profile: Arc<Profile>,
}

impl Identity {
    /// The Supabase user id (`sub`).
    pub fn user_id(&self) -> &str {
        &self.claims.sub
    }

    pub fn email(&self) -> Option<&str> {
        self.claims.email.as_deref()
    }

    /// The role in the organization (`profiles.role`), else the token's.
    pub fn role(&self) -> Option<&str> {
        self.profile.role.as_deref().or(self.claims.role.as_deref())
    }

    pub fn organization(&self) -> &Organization {
        // `identify` only builds an Identity whose profile has one.
        self.profile
            .organization
            .as_ref()
            .unwrap_or_else(|| unreachable!("Identity without an organization"))
    }
}

pub async fn identify<B>(
    app: &App,
    ctx: &mut RequestContext,
    request: &Request<B>,
) -> Result<Identity, ProxyError> {
    let check = app
        .supabase
        .check_session(request.headers())
        .await
        .map_err(|e| ProxyError::AuthUnavailable(e.0))?;
    let (claims, access_token) = match check {
        SessionCheck::Absent => return Err(ProxyError::Unauthenticated),
        SessionCheck::Ended {
            code,
            clear_cookies,
        } => {
            tracing::info!(request_id = ctx.request_id_str(), %code, "Supabase ended the session");
            ctx.set_cookies.extend(clear_cookies);
            return Err(ProxyError::Unauthenticated);
        }
        SessionCheck::Refreshed {
            claims,
            access_token,
            set_cookies,
        } => {
            ctx.set_cookies.extend(set_cookies);
            (claims, access_token)
        }
        SessionCheck::Valid {
            claims,
            access_token,
        } => (claims, access_token),
    };
    let profile = app
        .supabase
        .tenants
        .profile(&claims.sub, &access_token)
        .await
        .map_err(|e| match e {
            TenantError::Rejected => ProxyError::Unauthenticated,
            TenantError::Unavailable(reason) => ProxyError::AuthUnavailable(reason),
        })?;
    if profile.organization.is_none() {
        return Err(ProxyError::NoOrganization);
    }
    Ok(Identity { claims, profile })
}
