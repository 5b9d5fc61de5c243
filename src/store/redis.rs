//! The Redis store shared by every replica: one self-healing connection (or a Redis Cluster
//! client), each operation a single command or a tiny Lua script, each bounded by a timeout.
//!
//! - `redis://[[user]:password@]host[:port][/db]` (and `redis+unix:///path?db=N&pass=…`) uses a
//!   `ConnectionManager`: one multiplexed connection that reconnects by itself, with backoff, after
//!   Redis goes away — chatgate never needs a restart for it.
//! - `redis+cluster://[[user]:password@]host:port,host:port,…` uses the cluster client, which
//!   follows slot moves and failovers. Every operation touches one key, so all are cluster-safe.
//!
//! `rediss://` and `rediss+cluster://` speak TLS (rustls), trusting the system's roots plus
//! `SSL_CERT_FILE`/`SSL_CERT_DIR` when set.
//!
//! Both connect lazily: a Redis that is down at start-up makes operations fail with
//! [`StoreError::Unavailable`] until it comes up, not `connect`. Every operation answers within
//! the configured timeout, so an outage degrades requests instead of hanging them (each waits up
//! to that timeout while Redis is down). Needs Redis ≥ 6.2 (`GETDEL`).

use std::fmt;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClientBuilder, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Client, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, Script,
    ServerErrorKind, Value,
};
use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::{clamp_ttl, LockToken, Store, StoreError};

/// Deletes the lock only if it still holds the caller's token, in one step so that a lock that
/// expired and was re-taken in between is never released by its former owner.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Increments and gives the key its TTL only when it has none, i.e. when this increment created
/// it: later increments must not push a fixed window's end back.
const INCR_SCRIPT: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return n
";

/// Longest pause between reconnection attempts: once Redis is back, chatgate uses it again
/// within about this long.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Attempts per reconnection round; a failed round is restarted by the next operation.
const RECONNECT_ATTEMPTS: usize = 6;

/// Least time between two rebuilds of the connection after a failed authentication.
const REBUILD_INTERVAL: Duration = Duration::from_secs(1);

/// Retries of one cluster command (slot moves, failover); the operation timeout bounds them too.
const CLUSTER_RETRIES: u32 = 3;

/// [`Store`] on Redis or Redis Cluster.
pub struct RedisStore {
    backend: Backend,
    op_timeout: Duration,
    /// The URL without password or query, for `Debug`.
    redacted_url: String,
    unlock_script: Script,
    incr_script: Script,
}

enum Backend {
    Single(Box<SingleServer>),
    Cluster(ClusterConnection),
}

/// What it takes to rebuild the connection manager (see [`RedisStore::recover_from`]).
struct SingleServer {
    client: Client,
    config: ConnectionManagerConfig,
    manager: Mutex<Manager>,
}

struct Manager {
    conn: ConnectionManager,
    built: Instant,
}

/// A single server or a cluster behind one command interface; cheap to clone per operation.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisStore {
    /// Prepares the store for `url` (see the module doc for the forms); each operation will give
    /// up after `op_timeout`. Fails only on a URL that cannot be used, never because Redis is
    /// down: the connection is opened on first use. Call [`Store::ping`] to check it answers.
    pub async fn connect(url: &str, op_timeout: Duration) -> Result<Self, StoreError> {
        // rustls needs a process-wide crypto provider for rediss://; chatgate uses aws-lc-rs
        // everywhere, and installing it a second time is a harmless no-op.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        if url.starts_with("rediss") && url.contains('#') {
            // redis-rs reads `#insecure` as "skip certificate checks"; chatgate never does.
            return Err(StoreError::InvalidUrl(
                "a URL fragment such as #insecure is not supported; trust a private CA with \
                 SSL_CERT_FILE instead"
                    .into(),
            ));
        }
        let backend = match cluster_nodes(url)? {
            Some(nodes) => {
                let client = ClusterClientBuilder::new(nodes)
                    .connection_timeout(op_timeout)
                    .response_timeout(op_timeout)
                    .retries(CLUSTER_RETRIES)
                    .build()
                    .map_err(invalid_url)?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(op_timeout)
                    .set_response_timeout(op_timeout);
                // Pending: nodes are contacted in the background, so a cluster that is down at
                // start-up does not fail here.
                Backend::Cluster(client.get_pending_async_connection_with_config(config))
            }
            None => {
                let client = Client::open(url).map_err(invalid_url)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(op_timeout))
                    .set_response_timeout(Some(op_timeout))
                    .set_number_of_retries(RECONNECT_ATTEMPTS)
                    .set_max_delay(MAX_RECONNECT_DELAY);
                let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map_err(invalid_url)?;
                Backend::Single(Box::new(SingleServer {
                    client,
                    config,
                    manager: Mutex::new(Manager {
                        conn,
                        built: Instant::now(),
                    }),
                }))
            }
        };
        Ok(Self {
            backend,
            op_timeout,
            redacted_url: redact(url),
            unlock_script: Script::new(UNLOCK_SCRIPT),
            incr_script: Script::new(INCR_SCRIPT),
        })
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster(_))
    }

    /// The connection for one operation.
    fn connection(&self) -> Connection {
        match &self.backend {
            Backend::Single(single) => {
                let manager = single
                    .manager
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                Connection::Single(manager.conn.clone())
            }
            Backend::Cluster(conn) => Connection::Cluster(conn.clone()),
        }
    }

    /// Runs one command, bounded by the operation timeout.
    async fn query<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StoreError> {
        let mut conn = self.connection();
        self.bounded(async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Awaits `op` for at most the operation timeout; a late answer counts as Redis unavailable.
    async fn bounded<T>(&self, op: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                self.recover_from(&err);
                Err(store_error(err))
            }
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                self.op_timeout.as_millis()
            ))),
        }
    }

    /// A `ConnectionManager` only reconnects after I/O errors: one whose connection failed to
    /// authenticate keeps answering that failure forever, even once Redis accepts the password
    /// (an ACL user or `requirepass` set after chatgate started). Start a fresh one then, at most
    /// once per [`REBUILD_INTERVAL`].
    fn recover_from(&self, err: &RedisError) {
        let Backend::Single(single) = &self.backend else {
            return;
        };
        if err.kind() != ErrorKind::AuthenticationFailed {
            return;
        }
        let mut manager = single
            .manager
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if manager.built.elapsed() < REBUILD_INTERVAL {
            return;
        }
        let fresh =
            ConnectionManager::new_lazy_with_config(single.client.clone(), single.config.clone());
        if let Ok(conn) = fresh {
            *manager = Manager {
                conn,
                built: Instant::now(),
            };
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.redacted_url)
            .field("cluster", &self.is_cluster())
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

/// Milliseconds for `PX`/`PEXPIRE`, after the common clamp.
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(clamp_ttl(ttl).as_millis()).unwrap_or(u64::MAX)
}

fn command(name: &str, key: &str) -> Cmd {
    let mut cmd = ::redis::cmd(name);
    cmd.arg(key);
    cmd
}

impl Store for RedisStore {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        Box::pin(self.query(command("GET", key)))
    }

    fn set(&self, key: &str, value: Bytes, ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut cmd = command("SET", key);
        cmd.arg(value.as_ref()).arg("PX").arg(ttl_ms(ttl));
        Box::pin(self.query(cmd))
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.query(command("DEL", key)))
    }

    fn take(&self, key: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        Box::pin(self.query(command("GETDEL", key)))
    }

    fn try_lock(
        &self,
        key: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<LockToken>, StoreError>> {
        let token = LockToken::generate();
        let mut cmd = command("SET", key);
        cmd.arg(token.as_bytes())
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms(ttl));
        Box::pin(async move {
            // `SET … NX` answers OK when it wrote the key and nil when the key was there.
            let written: Option<String> = self.query(cmd).await?;
            Ok(written.map(|_| token))
        })
    }

    fn unlock(&self, key: &str, token: &LockToken) -> BoxFuture<'_, Result<bool, StoreError>> {
        let mut invocation = self.unlock_script.key(key);
        invocation.arg(token.as_bytes());
        let mut conn = self.connection();
        // EVALSHA, falling back to loading the script: a restarted Redis has forgotten it.
        Box::pin(async move {
            let deleted: i64 = self
                .bounded(async move { invocation.invoke_async(&mut conn).await })
                .await?;
            Ok(deleted == 1)
        })
    }

    fn incr(&self, key: &str, by: i64, ttl: Duration) -> BoxFuture<'_, Result<i64, StoreError>> {
        let mut invocation = self.incr_script.key(key);
        invocation.arg(by).arg(ttl_ms(ttl));
        let mut conn = self.connection();
        Box::pin(self.bounded(async move { invocation.invoke_async(&mut conn).await }))
    }

    fn touch(&self, key: &str, ttl: Duration) -> BoxFuture<'_, Result<bool, StoreError>> {
        let mut cmd = command("PEXPIRE", key);
        cmd.arg(ttl_ms(ttl));
        Box::pin(self.query(cmd))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        // On a cluster, PING goes to every primary, so one unreachable node fails the probe.
        Box::pin(self.query(::redis::cmd("PING")))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Splits a `redis+cluster://` (or `rediss+cluster://`) URL into one plain URL per seed node,
/// each carrying the shared credentials; `None` for any other URL.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, StoreError> {
    const SCHEMES: [(&str, &str); 2] = [
        ("redis+cluster://", "redis://"),
        ("rediss+cluster://", "rediss://"),
    ];
    let Some((scheme, rest)) = SCHEMES
        .iter()
        .find_map(|(cluster, plain)| url.strip_prefix(cluster).map(|rest| (plain, rest)))
    else {
        return Ok(None);
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (format!("{userinfo}@"), rest),
        None => (String::new(), rest),
    };
    let (hosts, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|host| !host.is_empty())
        .map(|host| format!("{scheme}{userinfo}{host}{tail}"))
        .collect();
    if nodes.is_empty() {
        return Err(StoreError::InvalidUrl(
            "a redis+cluster:// URL needs at least one host:port".into(),
        ));
    }
    Ok(Some(nodes))
}

/// The URL with the user-info replaced by `***` and the query and fragment dropped: the
/// password sits in one or the other (`redis+unix://…?pass=`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable>".into();
    };
    // Hosts and paths never contain '@', so everything up to the last one is credentials.
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((_, rest)) => ("***@", rest),
        None => ("", rest),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{credentials}{rest}")
}

/// A URL error, described by the client library (its messages never repeat the URL).
fn invalid_url(err: RedisError) -> StoreError {
    StoreError::InvalidUrl(err.to_string())
}

/// Sorts a client error into "Redis is not there (right now)" and "Redis said no".
fn store_error(err: RedisError) -> StoreError {
    let unavailable = err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if unavailable {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Backend(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_credentials_and_query() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/2"),
            "redis://127.0.0.1:6379/2"
        );
        assert_eq!(
            redact("redis://user:s3cret@redis.internal:6379/0"),
            "redis://***@redis.internal:6379/0"
        );
        assert_eq!(redact("redis://:p@ss@h:1"), "redis://***@h:1");
        assert_eq!(
            redact("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock"
        );
        assert_eq!(
            redact("redis+cluster://:s3cret@a:7000,b:7001"),
            "redis+cluster://***@a:7000,b:7001"
        );
        assert_eq!(redact("s3cret"), "<unparsable>");
    }

    #[test]
    fn cluster_url_becomes_one_url_per_node() {
        assert_eq!(cluster_nodes("redis://h:1").expect("plain url"), None);
        assert_eq!(
            cluster_nodes("redis+cluster://u:pw@a:7000, b:7001,?protocol=resp3")
                .expect("cluster url"),
            Some(vec![
                "redis://u:pw@a:7000?protocol=resp3".to_owned(),
                "redis://u:pw@b:7001?protocol=resp3".to_owned(),
            ])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://a:7000").expect("tls cluster url"),
            Some(vec!["rediss://a:7000".to_owned()])
        );
        assert!(matches!(
            cluster_nodes("redis+cluster://"),
            Err(StoreError::InvalidUrl(_))
        ));
    }

    #[tokio::test]
    async fn bad_urls_are_refused_without_repeating_them() {
        for url in [
            "http://user:s3cret@h:1",
            "redis://user:s3cret@h:notaport",
            "rediss://user:s3cret@h:1/#insecure",
            "rediss+cluster://user:s3cret@h:1,h:2#insecure",
            "redis+cluster://user:s3cret@",
        ] {
            let err = RedisStore::connect(url, Duration::from_millis(100))
                .await
                .expect_err(url);
            assert!(matches!(err, StoreError::InvalidUrl(_)), "{url}: {err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
            assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
        }
    }

    #[tokio::test]
    async fn debug_never_shows_the_password() {
        for (url, shown) in [
            ("redis://:s3cret@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),
            ("rediss://u:s3cret@127.0.0.1:1", "rediss://***@127.0.0.1:1"),
            (
                "redis+cluster://:s3cret@127.0.0.1:1",
                "redis+cluster://***@127.0.0.1:1",
            ),
        ] {
            let store = RedisStore::connect(url, Duration::from_millis(50))
                .await
                .expect("lazy connect");
            let debug = format!("{store:?}");
            assert!(debug.contains(shown), "{debug}");
            assert!(!debug.contains("s3cret"), "{debug}");
            // Port 1 is closed: the store exists but does not answer.
            let err = store.ping().await.expect_err("nothing listens");
            assert!(err.is_unavailable(), "{err:?}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }
}
