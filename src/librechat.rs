//! Signing users in to LibreChat (SPEC section 7): the chatgate token
//! (`token`) and the OpenID provider (`oidc`) — the keys and grants the
//! shared state holds. The routes that hand them out are `crate::routes`;
//! the hand-off and chatgate's own session are `crate::identify::handoff`.

pub mod oidc;
pub mod token;
