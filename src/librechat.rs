//! Signing users in to LibreChat (SPEC section 7): the chatgate token
//! (`token`), the hand-off and chatgate's own session (`handoff`), the
//! OpenID provider (`oidc`), the routes chatgate answers itself (`routes`),
//! and the binding of LibreChat's session to one dashboard user
//! (`user_switch`).

pub mod handoff;
pub mod oidc;
pub mod routes;
pub mod token;
pub mod user_switch;
