//! The user's organization, read through PostgREST with the user's own
//! access token so Row Level Security decides what they may see (SPEC
//! section 6). Cached per user for `tenant_cache_ttl`, here and in the
//! store so other replicas reuse it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::http_client::{self, HttpClient};
use crate::policy::config::LibreChatConfig;
use crate::store::Store;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The `profiles` row as the SPEC's select shapes it. A user without a
/// profile is cached as `role: None, organization: None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub organization: Option<Organization>,
}

/// An organization (the seed's `organizations` row), with its
/// `librechat_config` also read once into the policy's typed form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "OrganizationRow")]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub domain: String,
    pub plan_type: Option<String>,
    pub librechat_config: Option<serde_json::Value>,
    /// `librechat_config` as the policy phase reads it (SPEC section 10).
    #[serde(skip_serializing)]
    pub policy: Arc<LibreChatConfig>,
}

impl Organization {
    pub fn new(
        id: String,
        name: String,
        domain: String,
        plan_type: Option<String>,
        librechat_config: Option<serde_json::Value>,
    ) -> Self {
        let policy = LibreChatConfig::from_json(librechat_config.as_ref());
        Self {
            id,
            name,
            domain,
            plan_type,
            librechat_config,
            policy: Arc::new(policy),
        }
    }
}

/// The row as PostgREST (or the store's copy) shapes it.
#[derive(Deserialize)]
struct OrganizationRow {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    plan_type: Option<String>,
    #[serde(default)]
    librechat_config: Option<serde_json::Value>,
}

impl From<OrganizationRow> for Organization {
    fn from(row: OrganizationRow) -> Self {
        Organization::new(
            row.id,
            row.name,
            row.domain,
            row.plan_type,
            row.librechat_config,
        )
    }
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom(
            "organization id must be a string or a number",
        )),
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TenantError {
    /// PostgREST refused the user's token (401).
    #[error("PostgREST refused the access token")]
    Rejected,
    #[error("organization lookup unavailable: {0}")]
    Unavailable(String),
}

pub struct TenantLookup {
    http: HttpClient,
    /// `…/rest/v1/profiles?select=…&id=eq.` — the user id is appended.
    url_prefix: String,
    anon_key: String,
    store: Arc<dyn Store>,
    ttl: Duration,
    cache: moka::future::Cache<String, Arc<Profile>>,
}

impl std::fmt::Debug for TenantLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLookup")
            .field("url_prefix", &self.url_prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TenantLookup {
    pub fn new(
        http: HttpClient,
        supabase_url: &url::Url,
        profiles_table: &str,
        organizations_table: &str,
        anon_key: String,
        store: Arc<dyn Store>,
        ttl: Duration,
    ) -> Self {
        // Encoded as supabase-js encodes it (REFERENCE.md, PostgREST).
        let select = format!(
            "role%2Corganization%3A{organizations_table}%28id%2Cname%2Cdomain%2Cplan_type%2Clibrechat_config%29"
        );
        let url_prefix = format!(
            "{}/rest/v1/{profiles_table}?select={select}&id=eq.",
            supabase_url.as_str().trim_end_matches('/')
        );
        Self {
            http,
            url_prefix,
            anon_key,
            store,
            ttl,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// The profile of `user_id`, read with that user's `access_token`.
    pub async fn profile(
        &self,
        user_id: &str,
        access_token: &str,
    ) -> Result<Arc<Profile>, TenantError> {
        if let Some(profile) = self.cache.get(user_id).await {
            return Ok(profile);
        }
        // A miss (once per user and TTL). Its future, with the cache's
        // single-flight and the store and PostgREST calls, is boxed: inline it
        // made every request's future 2.3 KiB larger.
        Box::pin(self.load_once(user_id, access_token)).await
    }

    /// Concurrent misses for one user share one load.
    async fn load_once(
        &self,
        user_id: &str,
        access_token: &str,
    ) -> Result<Arc<Profile>, TenantError> {
        self.cache
            .try_get_with_by_ref(user_id, self.load(user_id, access_token))
            .await
            .map_err(|e| (*e).clone())
    }

    async fn load(&self, user_id: &str, access_token: &str) -> Result<Arc<Profile>, TenantError> {
        let key = format!("chatgate:tenant:{user_id}");
        match self.store.get(&key).await {
            Ok(Some(bytes)) => {
                if let Ok(profile) = serde_json::from_slice::<Profile>(&bytes) {
                    return Ok(Arc::new(profile));
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(%error, "store unavailable: organization read from PostgREST")
            }
        }
        let profile = self.fetch(user_id, access_token).await?;
        if let Ok(bytes) = serde_json::to_vec(&profile) {
            if let Err(error) = self.store.set(&key, Bytes::from(bytes), self.ttl).await {
                tracing::debug!(%error, "store unavailable: organization not shared");
            }
        }
        Ok(Arc::new(profile))
    }

    async fn fetch(&self, user_id: &str, access_token: &str) -> Result<Profile, TenantError> {
        // Ids come from a verified token, but keep the query well-formed whatever they hold.
        let id: String = url::form_urlencoded::byte_serialize(user_id.as_bytes()).collect();
        let url = format!("{}{id}", self.url_prefix);
        let bearer = format!("Bearer {access_token}");
        let answer = http_client::send(
            &self.http,
            Method::GET,
            &url,
            &[
                ("apikey", &self.anon_key),
                ("authorization", &bearer),
                ("accept", "application/vnd.pgrst.object+json"),
                ("accept-profile", "public"),
            ],
            Bytes::new(),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| TenantError::Unavailable(e.to_string()))?;
        match answer.status {
            StatusCode::OK => {
                let profile: Profile = serde_json::from_slice(&answer.body).map_err(|e| {
                    TenantError::Unavailable(format!("unexpected profile shape: {e}"))
                })?;
                if let Some(org) = profile.organization.as_ref() {
                    if !org.policy.problems.is_empty() {
                        tracing::warn!(organization = %org.id, problems = ?org.policy.problems,
                            "librechat_config is not in the expected shape; read as stated");
                    }
                }
                Ok(profile)
            }
            // PGRST116: no row, or RLS hides it: no profile.
            StatusCode::NOT_ACCEPTABLE => Ok(Profile {
                role: None,
                organization: None,
            }),
            StatusCode::UNAUTHORIZED => Err(TenantError::Rejected),
            status => Err(TenantError::Unavailable(format!(
                "PostgREST answered {status}"
            ))),
        }
    }
}
