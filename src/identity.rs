//! Who is asking (SPEC section 5): a signed-in dashboard user and their
//! organization. The value every phase after `identify` reads; only the
//! `identify` phase makes one from a request. It sits low in the module
//! graph so the context, the chatgate token and the phases can all name it.

use std::sync::Arc;

use crate::supabase::tenant::{Organization, Profile};
use crate::supabase::verify::AccessClaims;

/// A signed-in dashboard user who belongs to an organization.
#[derive(Debug, Clone)]
pub struct Identity {
    claims: Arc<AccessClaims>,
    profile: Arc<Profile>,
}

impl Identity {
    /// A verified user with their profile; `None` when the profile names no
    /// organization (such a user is refused before any identity is made).
    pub fn new(claims: Arc<AccessClaims>, profile: Arc<Profile>) -> Option<Self> {
        profile.organization.as_ref()?;
        Some(Identity { claims, profile })
    }

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

    pub fn user_metadata(&self) -> Option<&serde_json::Value> {
        self.claims.user_metadata.as_ref()
    }

    pub fn organization(&self) -> &Organization {
        // `new` is the only constructor, and it checks that the profile has one.
        self.profile
            .organization
            .as_ref()
            .unwrap_or_else(|| unreachable!("Identity without an organization"))
    }
}
