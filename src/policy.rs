//! Phase 3b, SPEC section 10: the organization's `librechat_config`,
//! enforced before a request reaches LibreChat (a shared LibreChat pool
//! cannot tell organizations apart by itself).
//!
//! - `route`     — which requests the policy has a say on (others pass at
//!   the cost of one comparison);
//! - `config`    — `librechat_config` read into typed rules, once per lookup;
//! - `rules`     — one pure function per rule, table-tested;
//! - `chat_body` — a chat body read as LibreChat reads it;
//! - `decide`    — the decisions on chat and agent bodies;
//! - `specs`     — model specs from the instances' `/api/config`;
//! - `quota`     — `max_tokens` against the month's counter in the store.
//!
//! The phase that applies them to a request is `proxy::policy` (it needs
//! the shared state, which holds `quota` and `specs`; keeping it here would
//! make `policy` and `app` import each other).

pub mod chat_body;
pub mod config;
pub mod decide;
pub mod quota;
pub mod route;
pub mod rules;
pub mod specs;
