//! chatgate: a TLS reverse proxy that signs a SaaS dashboard's users
//! (Supabase Auth) in to a pool of LibreChat instances.
//!
//! Every request walks one path, called in order by [`proxy::handle`]:
//!
//! ```text
//!  client ──TLS (server, tls)──▶ check_request ──▶ admin::route ──▶ /healthz /readyz /metrics
//!                                     │ (431)            │ not an admin route
//!                                     ▼                  ▼
//!                                 error.rs ◀──── identify (fails closed)
//!                                     ▲                  ▼
//!                                     │           rewrite_request
//!                                     │                  ▼
//!                                     ├──────── forward: pick upstream ──▶ send ──connect failed──┐
//!                                     │                  ▲                                         │
//!                                     │                  └──────── retry once elsewhere ◀──────────┘
//!                                     │                  ▼
//!                                     │          rewrite_response ──▶ log ──▶ client (streamed)
//! ```
//!
//! Module map: `config` (proxy.toml), `server` (listeners, drain), `tls`,
//! `proxy` and its phases, `upstream` (pool, health), `admin`, `error`,
//! `context` (per-request state), `body` (streaming, idle limit).

pub mod admin;
pub mod app;
pub mod body;
pub mod check;
pub mod config;
pub mod context;
pub mod error;
pub mod http_client;
pub mod librechat;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod store;
pub mod supabase;
pub mod tls;
pub mod upstream;
