//! SPEC section 11's writer: one transaction per batch that records the
//! batch id and adds the batch's sums to `usage_metrics` and
//! `chat_sessions` (schema in `schema/`). A pooled `tokio-postgres` client,
//! over TLS (rustls, aws-lc-rs) when the URL's `sslmode` asks for it.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::aggregate::{nanos_to_decimal, Batch};

/// How long connecting (and waiting for a pooled connection) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one statement may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections per replica: one writer, plus room for checks.
const POOL_SIZE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("usage.postgres_url: {0}")]
    Url(String),
    #[error("postgres: {0}")]
    Pool(String),
    #[error("postgres: {0}")]
    Query(String),
    #[error("postgres: timed out after {0:?}")]
    Timeout(Duration),
}

impl From<tokio_postgres::Error> for DbError {
    /// tokio-postgres says only "db error"; the server's own message
    /// (`relation "usage_batches" does not exist`) is what an operator needs.
    fn from(error: tokio_postgres::Error) -> Self {
        match error.as_db_error() {
            Some(db) => DbError::Query(format!("{} ({})", db.message(), db.code().code())),
            None => {
                let mut text = error.to_string();
                if let Some(source) = std::error::Error::source(&error) {
                    text = format!("{text}: {source}");
                }
                DbError::Query(text)
            }
        }
    }
}

/// What happened to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Its sums were added now.
    Now,
    /// Its id was already recorded: it had committed before.
    Before,
}

#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db { .. }")
    }
}

impl Db {
    /// A pool for `url` (`postgres://…` or `host=… user=…`); connects lazily.
    /// Must be called inside a Tokio runtime; connections live on it.
    pub fn new(url: &str) -> Result<Db, DbError> {
        let (url, root_cert) = split_root_cert(url);
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| DbError::Url(e.to_string()))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("chatgate");
        }
        let tls = MakeRustlsConnect::new(tls_config(root_cert.as_deref()).map_err(DbError::Url)?);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))?;
        Ok(Db { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::from(e),
            deadpool_postgres::PoolError::Timeout(_) => DbError::Timeout(CONNECT_TIMEOUT),
            other => DbError::Pool(other.to_string()),
        })
    }

    /// `SELECT 1`.
    pub async fn ping(&self) -> Result<(), DbError> {
        timed(async {
            self.client().await?.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
    }

    /// Adds `batch` under `id`, once: a batch whose id is recorded already
    /// changes nothing.
    pub async fn apply(&self, id: &str, replica: &str, batch: &Batch) -> Result<Applied, DbError> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let fresh = tx
                .execute(
                    "INSERT INTO usage_batches (id, replica, records) VALUES ($1, $2, $3) \
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &replica, &(batch.records as i64)],
                )
                .await?;
            if fresh == 0 {
                tx.commit().await?;
                return Ok(Applied::Before);
            }
            let metric = tx
                .prepare(
                    "INSERT INTO usage_metrics \
                       (organization_id, user_id, date, tokens_used, cost_usd, message_count) \
                     VALUES ($1::text::uuid, $2::text::uuid, $3::text::date, $4, $5::text::numeric, $6) \
                     ON CONFLICT (organization_id, user_id, date) DO UPDATE SET \
                       tokens_used = usage_metrics.tokens_used + EXCLUDED.tokens_used, \
                       cost_usd = usage_metrics.cost_usd + EXCLUDED.cost_usd, \
                       message_count = usage_metrics.message_count + EXCLUDED.message_count, \
                       updated_at = now()",
                )
                .await?;
            for ((org, user, date), sums) in &batch.metrics {
                let cost = nanos_to_decimal(sums.cost_nanos);
                tx.execute(
                    &metric,
                    &[
                        org,
                        user,
                        date,
                        &(sums.tokens as i64),
                        &cost,
                        &(sums.messages as i64),
                    ],
                )
                .await?;
            }
            let session = tx
                .prepare(
                    "INSERT INTO chat_sessions \
                       (user_id, organization_id, librechat_session_id, model_used, session_metadata) \
                     VALUES ($1::text::uuid, $2::text::uuid, $3, $4, \
                       jsonb_build_object('messages', $5::bigint, 'tokens', $6::bigint, 'endpoint', $7::text)) \
                     ON CONFLICT (librechat_session_id) DO UPDATE SET \
                       model_used = COALESCE(EXCLUDED.model_used, chat_sessions.model_used), \
                       session_metadata = chat_sessions.session_metadata || jsonb_build_object( \
                         'messages', COALESCE((chat_sessions.session_metadata->>'messages')::bigint, 0) + $5::bigint, \
                         'tokens', COALESCE((chat_sessions.session_metadata->>'tokens')::bigint, 0) + $6::bigint, \
                         'endpoint', COALESCE($7::text, chat_sessions.session_metadata->>'endpoint')), \
                       updated_at = now()",
                )
                .await?;
            for (conversation, sums) in &batch.sessions {
                tx.execute(
                    &session,
                    &[
                        &sums.user,
                        &sums.org,
                        conversation,
                        &sums.model,
                        &(sums.messages as i64),
                        &(sums.tokens as i64),
                        &sums.endpoint,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(Applied::Now)
        })
        .await
    }

    /// Tokens `org` used from `from` (a date, inclusive) to `to` (exclusive).
    pub async fn tokens_between(&self, org: &str, from: &str, to: &str) -> Result<i64, DbError> {
        timed(async {
            let row = self
                .client()
                .await?
                .query_one(
                    "SELECT COALESCE(SUM(tokens_used), 0)::bigint FROM usage_metrics \
                     WHERE organization_id = $1::text::uuid \
                       AND date >= $2::text::date AND date < $3::text::date",
                    &[&org, &from, &to],
                )
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    /// For `chatgate check`: the tables are there and this role may write
    /// them (an insert into each, rolled back).
    pub async fn check(&self) -> Result<String, DbError> {
        timed(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let id = format!("chatgate-check-{}", uuid::Uuid::new_v4().simple());
            tx.execute(
                "INSERT INTO usage_batches (id, replica, records) VALUES ($1, 'check', 0)",
                &[&id],
            )
            .await?;
            let org = uuid::Uuid::nil().to_string();
            tx.execute(
                "INSERT INTO usage_metrics (organization_id, user_id, date) \
                 VALUES ($1::text::uuid, $1::text::uuid, '1970-01-01') \
                 ON CONFLICT (organization_id, user_id, date) DO NOTHING",
                &[&org],
            )
            .await?;
            tx.execute(
                "INSERT INTO chat_sessions (user_id, organization_id, librechat_session_id) \
                 VALUES ($1::text::uuid, $1::text::uuid, $2) \
                 ON CONFLICT (librechat_session_id) DO NOTHING",
                &[&org, &id],
            )
            .await?;
            let row = tx
                .query_one(
                    "SELECT current_user::text, count(*) FROM usage_batches",
                    &[],
                )
                .await?;
            let (role, batches): (String, i64) = (row.get(0), row.get(1));
            tx.rollback().await?;
            Ok(format!(
                "reachable, schema present, role {role} can write ({batches} batches recorded)"
            ))
        })
        .await
    }
}

async fn timed<T>(
    work: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    tokio::time::timeout(STATEMENT_TIMEOUT, work)
        .await
        .unwrap_or(Err(DbError::Timeout(STATEMENT_TIMEOUT)))
}

/// libpq's `sslrootcert=<file>` (which tokio-postgres does not know),
/// taken out of the URL or `key=value` string: Supabase's server
/// certificate is signed by its own CA, downloaded from the project's
/// database settings.
fn split_root_cert(url: &str) -> (String, Option<String>) {
    if let Ok(mut parsed) = url::Url::parse(url) {
        let mut root = None;
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter_map(|(k, v)| {
                if k == "sslrootcert" {
                    root = Some(v.into_owned());
                    None
                } else {
                    Some((k.into_owned(), v.into_owned()))
                }
            })
            .collect();
        if root.is_some() {
            parsed.set_query(None);
            if !kept.is_empty() {
                parsed.query_pairs_mut().extend_pairs(kept);
            }
            return (parsed.to_string(), root);
        }
        return (url.to_owned(), None);
    }
    let mut root = None;
    let kept: Vec<&str> = url
        .split_whitespace()
        .filter(|part| match part.strip_prefix("sslrootcert=") {
            Some(path) => {
                root = Some(path.trim_matches('\'').to_owned());
                false
            }
            None => true,
        })
        .collect();
    (kept.join(" "), root)
}

/// rustls on aws-lc-rs only, trusting the system's roots and `root_cert`.
fn tls_config(root_cert: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = root_cert {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("sslrootcert {path}: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_is_taken_out_of_both_url_forms() {
        let (url, root) = split_root_cert(
            "postgres://u:p@db.x.supabase.co:5432/postgres?sslmode=require&sslrootcert=/etc/ca.crt",
        );
        assert_eq!(
            url,
            "postgres://u:p@db.x.supabase.co:5432/postgres?sslmode=require"
        );
        assert_eq!(root.as_deref(), Some("/etc/ca.crt"));
        let (url, root) = split_root_cert("host=db user=u sslrootcert=/etc/ca.crt sslmode=require");
        assert_eq!(url, "host=db user=u sslmode=require");
        assert_eq!(root.as_deref(), Some("/etc/ca.crt"));
        let (url, root) = split_root_cert("postgres://db/x");
        assert_eq!((url.as_str(), root), ("postgres://db/x", None));
    }

    #[tokio::test]
    async fn a_url_tokio_postgres_cannot_read_is_named() {
        let error = Db::new("postgres://db/x?nonsense=1").unwrap_err();
        assert!(
            error.to_string().starts_with("usage.postgres_url:"),
            "{error}"
        );
        assert!(Db::new("postgres://db/x?sslrootcert=/nowhere.pem").is_err());
    }
}
