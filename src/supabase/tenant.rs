//! The user's organization, read through PostgREST with the user's own
//! access token so Row Level Security decides what they may see (SPEC
//! section 6). Cached per user for `tenant_cache_ttl`, here and in the
//! store so other replicas reuse it.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::http_client::{self, HttpClient};
use crate::metrics::{LookupCounters, LookupOutcome};
use crate::policy::config::LibreChatConfig;
use crate::recent::Recent;
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

/// An organization (the seed's `organizations` row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Organization {
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub plan_type: Option<String>,
    #[serde(default)]
    pub librechat_config: Option<serde_json::Value>,
    /// `librechat_config` as the policy reads it, made on first use: only
    /// requests on policy routes pay the reading, once per cached profile.
    #[serde(skip)]
    policy: OnceLock<LibreChatConfig>,
    /// `id` as a header value (`X-Tenant-Id`, `X-Chatgate-Org-Id`), made once.
    #[serde(skip)]
    id_header: OnceLock<Option<HeaderValue>>,
}

/// Equal rows are equal organizations, whichever caches were filled.
impl PartialEq for Organization {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.name == other.name
            && self.domain == other.domain
            && self.plan_type == other.plan_type
            && self.librechat_config == other.librechat_config
    }
}

impl Organization {
    pub fn new(
        id: String,
        name: String,
        domain: String,
        plan_type: Option<String>,
        librechat_config: Option<serde_json::Value>,
    ) -> Self {
        Self {
            id,
            name,
            domain,
            plan_type,
            librechat_config,
            policy: OnceLock::new(),
            id_header: OnceLock::new(),
        }
    }

    /// The organization's policy (SPEC section 10).
    pub fn policy(&self) -> &LibreChatConfig {
        self.policy
            .get_or_init(|| LibreChatConfig::from_json(self.librechat_config.as_ref()))
    }

    /// The id as a header value; `None` if it cannot be one.
    pub fn id_header(&self) -> Option<&HeaderValue> {
        self.id_header
            .get_or_init(|| HeaderValue::from_str(&self.id).ok())
            .as_ref()
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

/// A profile older than `tenant_cache_ttl` is served for up to this many
/// TTLs while PostgREST fails or is slow (SPEC section 5).
const STALE_FACTOR: u32 = 10;
/// How long a request waits for the reload of an expired profile before
/// the previous one is served (the reload goes on in the background).
const STALE_WAIT: Duration = Duration::from_secs(1);

/// A profile and when it was read.
#[derive(Debug)]
struct CachedProfile {
    profile: Arc<Profile>,
    fetched: Instant,
}

#[derive(Clone)]
pub struct TenantLookup {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    /// `…/rest/v1/profiles?select=…&id=eq.` — the user id is appended.
    url_prefix: String,
    anon_key: String,
    store: Arc<dyn Store>,
    ttl: Duration,
    /// Profiles, kept `STALE_FACTOR` TTLs; fresh for one.
    cache: moka::future::Cache<String, Arc<CachedProfile>>,
    /// The single-flight of loads: concurrent loads for one user share one.
    loading: moka::future::Cache<String, Arc<CachedProfile>>,
    /// Users whose profile is being refreshed in the background.
    refreshing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Each serving thread's last few fresh profiles, most recent first
    /// (see [`TenantLookup::profile`]).
    recent: thread_local::ThreadLocal<RefCell<Recent<RecentProfile, RECENT_PER_THREAD>>>,
    counters: LookupCounters,
}

/// Profiles a serving thread keeps at hand: a page load is dozens of
/// requests by one user, and the shared cache's lookup (hashing, its
/// bookkeeping of reads) was 1 % of a forwarded request's instructions.
const RECENT_PER_THREAD: usize = 8;

/// A user's id and the cache entry a thread found for them.
type RecentProfile = (Box<str>, Arc<CachedProfile>);

impl std::fmt::Debug for TenantLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantLookup")
            .field("url_prefix", &self.inner.url_prefix)
            .field("ttl", &self.inner.ttl)
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
        let inner = Inner {
            http,
            url_prefix,
            anon_key,
            store,
            ttl,
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl * STALE_FACTOR)
                .build(),
            loading: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            refreshing: std::sync::Mutex::new(std::collections::HashSet::new()),
            recent: thread_local::ThreadLocal::new(),
            counters: LookupCounters::detached(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Counts lookups into `counters` (`/metrics`).
    pub fn with_counters(mut self, counters: LookupCounters) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.counters = counters;
        }
        self
    }

    /// The profile of `user_id`, read with that user's `access_token`.
    /// Fresh for `tenant_cache_ttl` (refreshed in the background once three
    /// quarters of it have passed, for users who are active); after that,
    /// reloaded — and while PostgREST fails or is slow, the previous
    /// profile is served for up to 10 TTLs. Only a user with no profile
    /// read at all gets the failure.
    pub async fn profile(
        &self,
        user_id: &str,
        access_token: &str,
    ) -> Result<Arc<Profile>, TenantError> {
        if let Some(profile) = self.recent_fresh(user_id) {
            self.inner.counters.record(LookupOutcome::Hit);
            return Ok(profile);
        }
        if let Some(entry) = self.inner.cache.get(user_id).await {
            let age = entry.fetched.elapsed();
            if age < self.inner.ttl {
                if age >= self.inner.ttl * 3 / 4 {
                    self.refresh_in_background(user_id, access_token);
                } else {
                    self.remember(user_id, &entry);
                }
                self.inner.counters.record(LookupOutcome::Hit);
                return Ok(entry.profile.clone());
            }
            return Box::pin(self.reload_or_stale(user_id, access_token, entry)).await;
        }
        // A miss (once per user and TTL). Its future, with the cache's
        // single-flight and the store and PostgREST calls, is boxed: inline it
        // made every request's future 2.3 KiB larger.
        let loaded = Box::pin(self.inner.load_once(user_id, access_token, true))
            .await
            .map(|entry| entry.profile.clone());
        self.inner.counters.record(match loaded {
            Ok(_) => LookupOutcome::Miss,
            Err(_) => LookupOutcome::Error,
        });
        loaded
    }

    /// The profile this thread found in the cache lately, while younger
    /// than three quarters of the TTL. The cache gets a newer profile for a
    /// user only once the one it has is that old (a background refresh or a
    /// reload) or gone, so this answers what the cache would.
    fn recent_fresh(&self, user_id: &str) -> Option<Arc<Profile>> {
        self.inner
            .recent
            .get_or_default()
            .borrow_mut()
            .find(
                |(user, _)| **user == *user_id,
                |(_, entry)| entry.fetched.elapsed() < self.inner.ttl * 3 / 4,
            )
            .map(|(_, entry)| entry.profile.clone())
    }

    fn remember(&self, user_id: &str, entry: &Arc<CachedProfile>) {
        self.inner
            .recent
            .get_or_default()
            .borrow_mut()
            .remember((user_id.into(), entry.clone()));
    }

    /// An expired profile: reloaded, or served as it was while PostgREST
    /// fails (or takes longer than `STALE_WAIT`) and it is not too old.
    async fn reload_or_stale(
        &self,
        user_id: &str,
        access_token: &str,
        stale: Arc<CachedProfile>,
    ) -> Result<Arc<Profile>, TenantError> {
        let usable = stale.fetched.elapsed() < self.inner.ttl * STALE_FACTOR;
        let reload = self.inner.load_once(user_id, access_token, true);
        let answer = self
            .stale_or_not(user_id, access_token, &stale, usable, reload)
            .await;
        self.inner.counters.record(match &answer {
            Ok(profile) if Arc::ptr_eq(profile, &stale.profile) => LookupOutcome::Stale,
            Ok(_) => LookupOutcome::Miss,
            Err(_) => LookupOutcome::Error,
        });
        answer
    }

    async fn stale_or_not(
        &self,
        user_id: &str,
        access_token: &str,
        stale: &CachedProfile,
        usable: bool,
        reload: impl std::future::Future<Output = Result<Arc<CachedProfile>, TenantError>>,
    ) -> Result<Arc<Profile>, TenantError> {
        match tokio::time::timeout(STALE_WAIT, reload).await {
            Ok(Ok(entry)) => Ok(entry.profile.clone()),
            Ok(Err(TenantError::Unavailable(reason))) if usable => {
                tracing::warn!(user_id, %reason, age = ?stale.fetched.elapsed(),
                    "organization lookup failed: the previous profile is served");
                Ok(stale.profile.clone())
            }
            Err(_slow) if usable => {
                self.refresh_in_background(user_id, access_token);
                tracing::warn!(user_id, age = ?stale.fetched.elapsed(),
                    "organization lookup is slow: the previous profile is served meanwhile");
                Ok(stale.profile.clone())
            }
            Ok(Err(error)) => Err(error),
            Err(_slow) => Err(TenantError::Unavailable(format!(
                "PostgREST did not answer within {STALE_WAIT:?} and the last profile is older than {} TTLs",
                STALE_FACTOR
            ))),
        }
    }

    /// Reads the profile again without making anyone wait; one refresh per
    /// user at a time.
    fn refresh_in_background(&self, user_id: &str, access_token: &str) {
        {
            let mut refreshing = self
                .inner
                .refreshing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !refreshing.insert(user_id.to_owned()) {
                return;
            }
        }
        let inner = self.inner.clone();
        let (user_id, access_token) = (user_id.to_owned(), access_token.to_owned());
        tokio::spawn(async move {
            // Straight to PostgREST: the store's copy is as old as ours.
            if let Err(error) = inner.load_once(&user_id, &access_token, false).await {
                tracing::debug!(user_id, %error, "background organization refresh failed");
            }
            inner
                .refreshing
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(&user_id);
        });
    }
}

impl Inner {
    /// Concurrent loads for one user share one; a failed load fails only
    /// the requests that waited for it (each then falls back as it may).
    async fn load_once(
        &self,
        user_id: &str,
        access_token: &str,
        from_store: bool,
    ) -> Result<Arc<CachedProfile>, TenantError> {
        let loaded = self
            .loading
            .try_get_with_by_ref(user_id, self.load(user_id, access_token, from_store))
            .await
            .map_err(|e| (*e).clone());
        // The single-flight ends with the load: the next expiry loads anew.
        self.loading.invalidate(user_id).await;
        let entry = loaded?;
        self.cache.insert(user_id.to_owned(), entry.clone()).await;
        Ok(entry)
    }

    async fn load(
        &self,
        user_id: &str,
        access_token: &str,
        from_store: bool,
    ) -> Result<Arc<CachedProfile>, TenantError> {
        let key = format!("chatgate:tenant:{user_id}");
        if from_store {
            match self.store.get(&key).await {
                Ok(Some(bytes)) => {
                    if let Ok(profile) = serde_json::from_slice::<Profile>(&bytes) {
                        return Ok(Arc::new(CachedProfile {
                            profile: Arc::new(profile),
                            fetched: Instant::now(),
                        }));
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%error, "store unavailable: organization read from PostgREST")
                }
            }
        }
        let profile = self.fetch(user_id, access_token).await?;
        if let Ok(bytes) = serde_json::to_vec(&profile) {
            if let Err(error) = self.store.set(&key, Bytes::from(bytes), self.ttl).await {
                tracing::debug!(%error, "store unavailable: organization not shared");
            }
        }
        Ok(Arc::new(CachedProfile {
            profile: Arc::new(profile),
            fetched: Instant::now(),
        }))
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
                    if !org.policy().problems.is_empty() {
                        tracing::warn!(organization = %org.id, problems = ?org.policy().problems,
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
