//! `chatgate check`: validates the config, then tries each dependency and
//! prints one line per check (SPEC section 2).

use std::path::Path;

use crate::config::Config;
use crate::upstream::{health, Upstream};

/// One dependency check's outcome.
#[derive(Debug)]
pub struct CheckLine {
    pub ok: bool,
    pub what: String,
    pub detail: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark} {}: {}", self.what, self.detail)
    }
}

/// Runs every check of a loaded config.
pub async fn run(config: &Config, path: &Path) -> Vec<CheckLine> {
    let mut lines = vec![CheckLine {
        ok: true,
        what: "config".to_owned(),
        detail: format!("{} is valid", path.display()),
    }];
    for warning in config.warnings() {
        lines.push(CheckLine {
            ok: true,
            what: "config warning".to_owned(),
            detail: warning,
        });
    }
    lines.push(tls_line(config));
    for url in &config.librechat.upstreams {
        let draining = config.librechat.draining.contains(url);
        lines.push(upstream_line(url, &config.librechat.health_path, draining).await);
    }
    lines.push(store_line(config).await);
    lines.push(supabase_line(config).await);
    if let Some(line) = postgres_line(config).await {
        lines.push(line);
    }
    lines
}

/// SPEC section 11: reachable, the schema is there, the role can write.
async fn postgres_line(config: &Config) -> Option<CheckLine> {
    let url = config.usage.postgres_url.as_ref()?;
    let what = "usage postgres".to_owned();
    let result = match crate::usage::postgres::Db::new(url.expose()) {
        Ok(db) => db.check().await.map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    Some(match result {
        Ok(detail) => CheckLine {
            ok: true,
            what,
            detail,
        },
        Err(detail) => CheckLine {
            ok: false,
            what,
            detail: format!(
                "{detail}; until this passes, counts wait in {}",
                config.usage.spool_dir.display()
            ),
        },
    })
}

async fn store_line(config: &Config) -> CheckLine {
    let Some(url) = &config.store.redis_url else {
        return CheckLine {
            ok: true,
            what: "store".to_owned(),
            detail: "in-process (store.redis_url is empty): run one replica only".to_owned(),
        };
    };
    let what = "store redis".to_owned();
    let result = match crate::store::connect(Some(url.expose())).await {
        Ok(store) => store.ping().await.map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match result {
        Ok(()) => CheckLine {
            ok: true,
            what,
            detail: "PING answered".to_owned(),
        },
        Err(detail) => CheckLine {
            ok: false,
            what,
            detail: format!("{detail}; until it answers, users go to instances by rendezvous hashing instead of sticky pins"),
        },
    }
}

/// The JWKS when tokens are verified with it, else GoTrue's health route.
async fn supabase_line(config: &Config) -> CheckLine {
    let supabase = &config.supabase;
    let http = crate::http_client::build();
    if supabase.jwt_secret.is_none() {
        let what = format!("supabase jwks {}", supabase.jwks_url);
        let verifier = crate::supabase::verify::Verifier::new(
            crate::supabase::verifier_settings(supabase),
            http,
        );
        return match verifier.check_keys().await {
            Ok(n) => CheckLine {
                ok: true,
                what,
                detail: format!("{n} signing key(s)"),
            },
            Err(detail) => CheckLine {
                ok: false,
                what,
                detail,
            },
        };
    }
    let url = format!(
        "{}/auth/v1/health",
        supabase.url.as_str().trim_end_matches('/')
    );
    let what = format!("supabase auth {url}");
    let key = supabase.anon_key.as_ref().map(|k| k.expose()).unwrap_or("");
    let answer = crate::http_client::send(
        &http,
        http::Method::GET,
        &url,
        &[("apikey", key)],
        bytes::Bytes::new(),
        std::time::Duration::from_secs(5),
    )
    .await;
    match answer {
        Ok(a) if a.status.is_success() => CheckLine {
            ok: true,
            what,
            detail: format!("answered {}", a.status),
        },
        Ok(a) => CheckLine {
            ok: false,
            what,
            detail: format!("answered {}", a.status),
        },
        Err(error) => CheckLine {
            ok: false,
            what,
            detail: error.to_string(),
        },
    }
}

fn tls_line(config: &Config) -> CheckLine {
    let what = "tls".to_owned();
    if !config.tls.cert.exists() && !config.tls.key.exists() && config.tls.dev_self_signed {
        return CheckLine {
            ok: true,
            what,
            detail: "no certificate yet: a development certificate will be generated at start"
                .to_owned(),
        };
    }
    crate::tls::install_crypto_provider();
    match crate::tls::load_certified_key(&config.tls) {
        Ok(_) => CheckLine {
            ok: true,
            what,
            detail: format!("{} loads", config.tls.cert.display()),
        },
        Err(error) => CheckLine {
            ok: false,
            what,
            detail: error.to_string(),
        },
    }
}

async fn upstream_line(url: &url::Url, health_path: &str, draining: bool) -> CheckLine {
    let what = if draining {
        format!("upstream {url} (draining: no new sticky pins)")
    } else {
        format!("upstream {url}")
    };
    let upstream = match Upstream::new(url.clone(), false) {
        Ok(upstream) => upstream,
        Err(detail) => {
            return CheckLine {
                ok: false,
                what,
                detail,
            }
        }
    };
    match health::check(&upstream, health_path).await {
        Ok(()) => CheckLine {
            ok: true,
            what,
            detail: format!("{health_path} answered 2xx"),
        },
        Err(failure) => CheckLine {
            ok: false,
            what,
            detail: format!("{health_path}: {}", failure.reason),
        },
    }
}
