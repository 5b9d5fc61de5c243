//! Starts a real chatgate for a test: in this process on port 0 (`Gate`), or
//! as the built binary with a config file (`GateConfig::write`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chatgate::app::{App, Options};
use chatgate::config::Config;
use chatgate::server::{self, Running};

/// The parts of `proxy.toml` tests vary; everything else keeps its default.
#[derive(Debug, Clone)]
pub struct GateConfig {
    pub listen: String,
    pub http_listen: bool,
    pub upstreams: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub max_header_bytes: usize,
    /// `server.proxy_protocol`: connections start with a PROXY header.
    pub proxy_protocol: bool,
    /// `Options::header_read_timeout` (slowloris): 30 s unless a test shortens it.
    pub header_read_timeout: Duration,
    pub shutdown_grace: String,
    pub log_level: String,
    pub supabase_url: String,
    pub supabase_anon_key: String,
    pub supabase_jwt_secret: String,
    pub redis_url: String,
    pub login_url: String,
    pub tenant_cache_ttl: String,
    pub public_url: String,
    pub auth_mode: String,
    pub librechat_jwt_secret: String,
    pub oidc_client_secret: String,
    pub allowed_origins: Vec<String>,
    pub cross_site: bool,
    /// `librechat.max_connections_per_instance`.
    pub max_connections_per_instance: usize,
    /// Active health check period (`Options::health_interval`); 100 ms.
    pub health_interval: Duration,
    /// Serving threads (`Options::workers`): 2, as the binary runs on a
    /// 2-core machine, so connections are handed between runtimes as there.
    pub workers: usize,
}

impl GateConfig {
    pub fn new(upstreams: &[String]) -> Self {
        Self {
            listen: "127.0.0.1:0".to_owned(),
            http_listen: false,
            upstreams: upstreams.to_vec(),
            trusted_proxies: Vec::new(),
            max_header_bytes: 32768,
            proxy_protocol: false,
            header_read_timeout: chatgate::server::HEADER_READ_TIMEOUT,
            shutdown_grace: "3s".to_owned(),
            log_level: "info".to_owned(),
            // Nothing listens there: tests that authenticate call `with_supabase`.
            supabase_url: "http://127.0.0.1:9".to_owned(),
            supabase_anon_key: "anon".to_owned(),
            supabase_jwt_secret: String::new(),
            redis_url: String::new(),
            login_url: String::new(),
            tenant_cache_ttl: "60s".to_owned(),
            public_url: "https://localhost".to_owned(),
            auth_mode: "oidc".to_owned(),
            librechat_jwt_secret: LIBRECHAT_SECRET.to_owned(),
            oidc_client_secret: OIDC_CLIENT_SECRET.to_owned(),
            allowed_origins: Vec::new(),
            cross_site: false,
            max_connections_per_instance: 256,
            health_interval: Duration::from_millis(100),
            workers: 2,
        }
    }

    /// Points chatgate at a stand-in Supabase.
    pub fn with_supabase(mut self, supabase: &super::supabase::StandInSupabase) -> Self {
        self.supabase_url = supabase.url();
        self.supabase_anon_key = supabase.anon_key();
        self.supabase_jwt_secret = supabase.jwt_secret();
        self
    }

    pub fn toml(&self) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let http_listen = if self.http_listen { "127.0.0.1:0" } else { "" };
        format!(
            r#"
[server]
listen = "{listen}"
http_listen = "{http_listen}"
public_url = "{public_url}"
trusted_proxies = [{trusted}]
shutdown_grace = "{grace}"
max_header_bytes = {max_header_bytes}
proxy_protocol = {proxy_protocol}

[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
dev_self_signed = true

[supabase]
url = "{supabase_url}"
anon_key = "{anon_key}"
jwt_secret = "{jwt_secret}"
tenant_cache_ttl = "{tenant_ttl}"

[librechat]
upstreams = [{upstreams}]
auth_mode = "{auth_mode}"
jwt_secret = "{librechat_secret}"
max_connections_per_instance = {max_connections}

[oidc]
client_secret = "{oidc_secret}"
signing_key = "certs/oidc-signing.pem"

[iframe]
allowed_origins = [{allowed_origins}]
cross_site = {cross_site}

[dashboard]
login_url = "{login_url}"

[store]
redis_url = "{redis_url}"

[log]
level = "{level}"
"#,
            listen = self.listen,
            trusted = list(&self.trusted_proxies),
            grace = self.shutdown_grace,
            max_header_bytes = self.max_header_bytes,
            proxy_protocol = self.proxy_protocol,
            upstreams = list(&self.upstreams),
            level = self.log_level,
            supabase_url = self.supabase_url,
            anon_key = self.supabase_anon_key,
            jwt_secret = self.supabase_jwt_secret,
            tenant_ttl = self.tenant_cache_ttl,
            login_url = self.login_url,
            redis_url = self.redis_url,
            public_url = self.public_url,
            auth_mode = self.auth_mode,
            librechat_secret = self.librechat_jwt_secret,
            oidc_secret = self.oidc_client_secret,
            allowed_origins = list(&self.allowed_origins),
            cross_site = self.cross_site,
            max_connections = self.max_connections_per_instance,
        )
    }

    /// Writes `proxy.toml` into `dir` (certificates will be generated beside it).
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("proxy.toml");
        std::fs::write(&path, self.toml()).expect("write proxy.toml");
        path
    }

    pub fn load(&self, dir: &Path) -> Config {
        Config::from_toml(&self.toml(), dir, &|_| None).expect("test config is valid")
    }
}

/// A chatgate running inside the test process.
pub struct Gate {
    pub running: Running,
    _dir: Option<tempfile::TempDir>,
}

impl Gate {
    pub async fn start(config: GateConfig) -> Gate {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut gate = Gate::start_in(config, dir.path()).await;
        gate._dir = Some(dir);
        gate
    }

    /// Starts with its files (certificate, OpenID signing key) in `dir`:
    /// replicas started in one folder share them, as deployed replicas must.
    pub async fn start_in(config: GateConfig, dir: &Path) -> Gate {
        super::init_crypto();
        let options = Options {
            health_interval: config.health_interval,
            config_path: None,
            workers: config.workers,
            header_read_timeout: config.header_read_timeout,
        };
        let running = server::start(config.load(dir), options)
            .await
            .expect("chatgate starts");
        Gate {
            running,
            _dir: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.tls_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.running.http_addr.expect("http_listen is on")
    }

    pub fn app(&self) -> Arc<App> {
        self.running.app()
    }
}

/// Polls `check` every 20 ms until it holds; panics with `what` after ~30 s.
/// The bound only stops a broken test from hanging; no test asserts a time.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

/// The `Cookie` header value a browser sends for `session_json` under
/// `name`, chunked as `@supabase/ssr` chunks it.
pub fn session_cookie(name: &str, session_json: &str) -> String {
    chatgate::supabase::cookie::create_chunks(name, session_json)
        .into_iter()
        .map(|c| format!("{}={}", c.name, c.value))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `librechat.jwt_secret` in tests (≥ 32 bytes).
pub const LIBRECHAT_SECRET: &str = "test-librechat-secret-0123456789abcdef";
/// `oidc.client_secret` in tests.
pub const OIDC_CLIENT_SECRET: &str = "test-oidc-client-secret-0123456789abcdef";

/// The default cookie name for a stand-in Supabase on 127.0.0.1.
pub const COOKIE_NAME: &str = "sb-127-auth-token";

/// A signed-in dashboard user of organization "acme", with the cookie their
/// browser would send.
pub struct SignedIn {
    pub session: super::supabase::Session,
    pub cookie: String,
}

impl SignedIn {
    pub fn new(supabase: &super::supabase::StandInSupabase, email: &str) -> SignedIn {
        let session = supabase.sign_in(email, Duration::from_secs(3600));
        supabase.set_profile(session.user_id(), "member", Some(acme()));
        let cookie = session_cookie(COOKIE_NAME, &session.to_json());
        SignedIn { session, cookie }
    }

    pub fn header(&self) -> (&'static str, &str) {
        ("cookie", &self.cookie)
    }
}

pub fn acme() -> serde_json::Value {
    serde_json::json!({
        "id": "7d1c7c6e-0000-4000-8000-00000000acme",
        "name": "Acme",
        "domain": "acme.example",
        "plan_type": "pro",
        "librechat_config": {}
    })
}
