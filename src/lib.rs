//! chatgate: a TLS reverse proxy that signs a SaaS dashboard's users
//! (Supabase Auth) in to a pool of LibreChat instances.
//!
//! Every request walks one path, called in order by [`proxy::handle`]:
//!
//! ```text
//!  client ──TLS──▶ check_request (431) ──▶ admin::route ──▶ /healthz /readyz /metrics
//!                                              │ other paths
//!                                              ▼
//!                                        routes::answer ──▶ /api/librechat/*, /api/auth/*, /oidc/*
//!                                              │ other paths
//!                                              ▼
//!                  error.rs ◀── fails ── identify ──▶ user_switch
//!                  (JSON, or a redirect    │
//!                   to the dashboard)      ▼
//!                          ◀── refused ── policy::apply (organization's librechat_config)
//!                                          ▼
//!                                     rewrite_request ──▶ usage::tap::begin (chat routes)
//!                                          ▼
//!                       ┌──────▶ forward: pick upstream (sticky pin, panic routing,
//!                       │                 connection slot) ──▶ send
//!                       │                                               │
//!                       └──── retry once elsewhere ◀── connect failed ──┤
//!                                                                       ▼
//!                usage::tap::wrap (counts the stream) ──▶ rewrite_response
//!                  ──▶ policy list filter ──▶ log ──▶ client (streamed)
//! ```
//!
//! Module map: `config` (proxy.toml), `server` (listeners, workers, parking,
//! PROXY protocol, drain, reload),
//! `tls`, `proxy` and its phases (`proxy::policy` applies the organization's
//! policy), `routes` (chatgate's own routes: seed API, OpenID provider),
//! `identify` (who is asking: the phase, the hand-off and chatgate's
//! session, the user switch), `identity` (the `Identity` it makes),
//! `supabase` (cookie, token verification, refresh, organization),
//! `librechat` (chatgate token, OpenID provider keys and grants), `upstream`
//! (pool, health, sticky pins, rendezvous), `store` (memory, Redis,
//! fail-fast guard), `admin`, `error`, `context` (per-request state), `body`
//! (streaming, idle limit), `policy` (the organization's policy as pure
//! decisions: rules, chat bodies, lists, quota), `usage` (metering chat
//! streams into Postgres), `calendar` (UTC dates), `recent` (a thread's
//! recent answers).
//!
//! Modules only call downwards: no top-level module uses one that uses it
//! back (`tests/module_graph.rs`; the layers are drawn in
//! `docs/architecture.md`).

pub mod admin;
pub mod app;
pub mod body;
pub mod calendar;
pub mod check;
pub mod config;
pub mod context;
pub mod cookies;
pub mod error;
pub mod http_client;
pub mod identify;
pub mod identity;
pub mod librechat;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod recent;
pub mod routes;
pub mod server;
pub mod store;
pub mod supabase;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod usage;
