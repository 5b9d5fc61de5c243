//! The raw shape of `proxy.toml` (SPEC section 3): every section and key as
//! written in the file, with the shipped defaults. Nothing here is validated;
//! `config.rs` turns it into typed values once.
//!
//! Every value is kept as the plain TOML type it is written as (strings for
//! durations, addresses and URLs), so that `config.rs` owns every error
//! message and can name the key at fault.

use serde::{Deserialize, Serialize};

/// The whole file. A missing section takes its defaults.
// `Serialize` is not for writing files: serializing the defaults gives the
// list of known keys and their types, which `config.rs` uses to name unknown
// keys and to parse environment overrides.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyToml {
    /// `[server]`: listeners and the public origin.
    pub server: Server,
    /// `[tls]`: certificate and key of the TLS listener.
    pub tls: Tls,
    /// `[supabase]`: the dashboard's Supabase project.
    pub supabase: Supabase,
    /// `[librechat]`: the pool of LibreChat instances.
    pub librechat: LibreChat,
    /// `[oidc]`: chatgate as LibreChat's OpenID provider.
    pub oidc: Oidc,
    /// `[iframe]`: embedding chatgate in the dashboard.
    pub iframe: Iframe,
    /// `[dashboard]`: where unauthenticated users are sent.
    pub dashboard: Dashboard,
    /// `[store]`: shared state across replicas.
    pub store: Store,
    /// `[usage]`: usage metering into Postgres.
    pub usage: Usage,
    /// `[log]`: log output.
    pub log: Log,
}

/// `[server]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// TLS listener address, `host:port`.
    pub listen: String,
    /// Optional plain-HTTP listener (behind a TLS load balancer); "" = off.
    pub http_listen: String,
    /// The origin browsers use, e.g. `https://chat.example.com`.
    pub public_url: String,
    /// CIDRs (or bare IPs) whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<String>,
    /// Drain time after SIGTERM, e.g. "30s".
    pub shutdown_grace: String,
    /// Largest request head accepted, in bytes.
    // Signed so that a negative number reaches validation and gets a message
    // naming the key instead of a serde type error.
    pub max_header_bytes: i64,
    /// Every connection, on both listeners, starts with a PROXY protocol
    /// v1 or v2 header (an L4 load balancer's); the client address comes
    /// from it.
    pub proxy_protocol: bool,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8443".into(),
            http_listen: String::new(),
            public_url: "https://localhost:8443".into(),
            trusted_proxies: Vec::new(),
            shutdown_grace: "30s".into(),
            max_header_bytes: 32768,
            proxy_protocol: false,
        }
    }
}

/// `[tls]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain; relative to the config file's directory.
    pub cert: String,
    /// PEM private key; relative to the config file's directory.
    pub key: String,
    /// Generate a localhost certificate when both files are missing; also
    /// lets short development secrets through with a warning.
    pub dev_self_signed: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            cert: "certs/cert.pem".into(),
            key: "certs/key.pem".into(),
            dev_self_signed: true,
        }
    }
}

/// `[supabase]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supabase {
    /// Supabase project URL (`SUPABASE_URL`).
    pub url: String,
    /// Public anon key, sent as `apikey` (`SUPABASE_ANON_KEY`).
    pub anon_key: String,
    /// Legacy HS256 JWT secret (`SUPABASE_JWT_SECRET`); "" = JWKS only.
    pub jwt_secret: String,
    /// JWKS URL; "" = `{url}/auth/v1/.well-known/jwks.json`.
    pub jwks_url: String,
    /// Session cookie name; "" = `sb-<first label of url host>-auth-token`.
    pub cookie_name: String,
    /// `Domain` attribute for rewritten session cookies; "" = host-only.
    pub cookie_domain: String,
    /// Expected `iss` of access tokens; "" = `{url}/auth/v1`.
    pub issuer: String,
    /// Table holding each user's profile (role, organization).
    pub profiles_table: String,
    /// Table holding organizations.
    pub organizations_table: String,
    /// How long a user's organization lookup is cached, e.g. "60s".
    pub tenant_cache_ttl: String,
}

impl Default for Supabase {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:54321".into(),
            anon_key: String::new(),
            jwt_secret: String::new(),
            jwks_url: String::new(),
            cookie_name: String::new(),
            cookie_domain: String::new(),
            issuer: String::new(),
            profiles_table: "profiles".into(),
            organizations_table: "organizations".into(),
            tenant_cache_ttl: "60s".into(),
        }
    }
}

/// `[librechat]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibreChat {
    /// Base URLs of the LibreChat instances.
    pub upstreams: Vec<String>,
    /// Path probed by the active health check.
    pub health_path: String,
    /// Upstreams that take no new sticky pins (each one of `upstreams`).
    pub draining: Vec<String>,
    /// "oidc" (stock LibreChat) or "jwt" (shared-secret token).
    pub auth_mode: String,
    /// Signs hand-off and jwt-mode tokens (`LIBRECHAT_JWT_SECRET`).
    pub jwt_secret: String,
    /// Lifetime of a minted chatgate token, e.g. "24h".
    pub token_ttl: String,
    /// Send `X-Tenant-Id: <organization id>` upstream.
    pub tenant_header: bool,
    /// Requests (so connections) at once per instance, on this replica.
    pub max_connections_per_instance: i64,
}

impl Default for LibreChat {
    fn default() -> Self {
        Self {
            upstreams: vec!["http://127.0.0.1:3080".into()],
            health_path: "/health".into(),
            draining: Vec::new(),
            auth_mode: "oidc".into(),
            jwt_secret: String::new(),
            token_ttl: "24h".into(),
            tenant_header: true,
            max_connections_per_instance: 256,
        }
    }
}

/// `[oidc]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Oidc {
    /// The client id LibreChat registers with (`OPENID_CLIENT_ID`).
    pub client_id: String,
    /// The client secret (`CHATGATE_OIDC_CLIENT_SECRET`).
    pub client_secret: String,
    /// RS256 signing key (PEM); relative to the config file's directory.
    pub signing_key: String,
    /// Base URL LibreChat's server uses for token/jwks/userinfo; "" = public_url.
    pub internal_url: String,
    /// Dashboard roles given LibreChat's ADMIN (`roles: ["admin"]`).
    pub admin_roles: Vec<String>,
}

impl Default for Oidc {
    fn default() -> Self {
        Self {
            client_id: "librechat".into(),
            client_secret: String::new(),
            signing_key: "certs/oidc-signing.pem".into(),
            internal_url: String::new(),
            admin_roles: vec!["super_admin".into()],
        }
    }
}

/// `[iframe]`
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Iframe {
    /// Dashboard origins allowed to frame chatgate.
    pub allowed_origins: Vec<String>,
    /// Rewrite cookies to `SameSite=None; Secure; Partitioned`.
    pub cross_site: bool,
}

/// `[dashboard]`
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dashboard {
    /// Where unauthenticated page loads go, with `?redirect_to=`; "" = 401.
    pub login_url: String,
}

/// `[store]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Store {
    /// Redis URL (`REDIS_URL`); "" = in-process store.
    pub redis_url: String,
    /// Lifetime of a user's pin to an upstream, e.g. "12h".
    pub sticky_ttl: String,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            sticky_ttl: "12h".into(),
        }
    }
}

/// `[usage]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Usage {
    /// Postgres URL (`USAGE_DATABASE_URL`); "" = metering off.
    pub postgres_url: String,
    /// How often counts are written, e.g. "10s".
    pub flush_interval: String,
    /// Folder of the local spool, relative to the config file's folder.
    pub spool_dir: String,
    /// How long a stream whose client left is still read, e.g. "10m".
    pub drain_timeout: String,
    /// `[usage.prices]`: `model = { input = 2.5, output = 10.0 }`, USD per
    /// million tokens. Kept as a table so that `config.rs` names the entry at fault.
    pub prices: toml::Table,
}

impl Default for Usage {
    fn default() -> Self {
        Self {
            postgres_url: String::new(),
            flush_interval: "10s".into(),
            spool_dir: "usage-spool".into(),
            drain_timeout: "10m".into(),
            prices: toml::Table::new(),
        }
    }
}

/// `[log]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// "json" or "text".
    pub format: String,
    /// trace, debug, info, warn or error.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
        }
    }
}
