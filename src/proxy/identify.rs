//! Phase 3: who is asking. Forwarding takes an `Identity`, and only this
//! module can make one, so no route can reach LibreChat without passing here.
//! There is deliberately no setting that skips this phase.

use http::Request;

use crate::app::App;
use crate::context::RequestContext;
use crate::error::ProxyError;

/// The person a forwarded request belongs to.
#[derive(Debug, Clone)]
pub struct Identity {
    kind: IdentityKind,
}

#[derive(Debug, Clone)]
enum IdentityKind {
    /// The proxy core is in place before Supabase authentication (issue 3).
    /// Until then every request is admitted as unidentified; issue 3
    /// replaces this variant with a verified user and an `Err` for the rest.
    Unidentified,
}

impl Identity {
    /// The user id LibreChat and the pool key on; `None` until
    /// authentication exists.
    pub fn user_id(&self) -> Option<&str> {
        match &self.kind {
            IdentityKind::Unidentified => None,
        }
    }
}

pub async fn identify<B>(
    _app: &App,
    _ctx: &mut RequestContext,
    _request: &Request<B>,
) -> Result<Identity, ProxyError> {
    Ok(Identity {
        kind: IdentityKind::Unidentified,
    })
}
