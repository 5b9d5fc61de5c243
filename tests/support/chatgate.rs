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
    pub shutdown_grace: String,
    pub log_level: String,
}

impl GateConfig {
    pub fn new(upstreams: &[String]) -> Self {
        Self {
            listen: "127.0.0.1:0".to_owned(),
            http_listen: false,
            upstreams: upstreams.to_vec(),
            trusted_proxies: Vec::new(),
            max_header_bytes: 32768,
            shutdown_grace: "3s".to_owned(),
            log_level: "info".to_owned(),
        }
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
public_url = "https://localhost"
trusted_proxies = [{trusted}]
shutdown_grace = "{grace}"
max_header_bytes = {max_header_bytes}

[tls]
cert = "certs/cert.pem"
key = "certs/key.pem"
dev_self_signed = true

[librechat]
upstreams = [{upstreams}]

[log]
level = "{level}"
"#,
            listen = self.listen,
            trusted = list(&self.trusted_proxies),
            grace = self.shutdown_grace,
            max_header_bytes = self.max_header_bytes,
            upstreams = list(&self.upstreams),
            level = self.log_level,
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
    _dir: tempfile::TempDir,
}

impl Gate {
    pub async fn start(config: GateConfig) -> Gate {
        super::init_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options {
            health_interval: Duration::from_millis(100),
        };
        let running = server::start(config.load(dir.path()), options)
            .await
            .expect("chatgate starts");
        Gate { running, _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.tls_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.running.http_addr.expect("http_listen is on")
    }

    pub fn app(&self) -> &Arc<App> {
        &self.running.app
    }
}

/// Polls `check` every 20 ms until it holds; panics with `what` after 10 s.
/// The bound only stops a broken test from hanging; no test asserts a time.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}
