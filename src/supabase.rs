//! Supabase Auth as chatgate sees it: the session cookie the dashboard
//! writes (`cookie`), access-token verification (`verify`), refresh exactly
//! once per token (`refresh`), reading a request's session (`session`) and
//! the user's organization under Row Level Security (`tenant`).

pub mod cookie;
pub mod refresh;
pub mod session;
pub mod tenant;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use crate::config::SupabaseConfig;
use crate::http_client::HttpClient;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything chatgate needs to authenticate a request against Supabase.
#[derive(Debug)]
pub struct Supabase {
    pub verifier: verify::Verifier,
    pub refresher: refresh::Refresher,
    pub tenants: tenant::TenantLookup,
    pub cookie_name: String,
    pub cookie_domain: Option<String>,
}

/// SPEC section 6: `aud` = `authenticated`, 30 s of leeway on `exp`.
pub fn verifier_settings(config: &SupabaseConfig) -> verify::VerifierSettings {
    verify::VerifierSettings {
        hs256_secret: config
            .jwt_secret
            .as_ref()
            .map(|s| s.expose().as_bytes().to_vec()),
        jwks_url: config.jwks_url.to_string(),
        apikey: config.anon_key.as_ref().map(|k| k.expose().to_owned()),
        issuer: config.issuer.clone(),
        audience: "authenticated".to_owned(),
        leeway: Duration::from_secs(30),
    }
}

impl Supabase {
    pub fn new(
        config: &SupabaseConfig,
        http: HttpClient,
        store: Arc<dyn Store>,
        metrics: &Metrics,
    ) -> Self {
        let anon_key = config
            .anon_key
            .as_ref()
            .map(|k| k.expose().to_owned())
            .unwrap_or_default();
        Self {
            verifier: verify::Verifier::new(verifier_settings(config), http.clone()),
            refresher: refresh::Refresher::new(
                http.clone(),
                &config.url,
                anon_key.clone(),
                store.clone(),
                metrics.refresh.clone(),
            ),
            tenants: tenant::TenantLookup::new(
                http,
                &config.url,
                &config.profiles_table,
                &config.organizations_table,
                anon_key,
                store,
                config.tenant_cache_ttl,
            )
            .with_counters(metrics.lookups.clone()),
            cookie_name: config.cookie_name.clone(),
            cookie_domain: config.cookie_domain.clone(),
        }
    }
}
