//! chatgate's configuration: `proxy.toml` plus environment overrides,
//! validated once into the typed values the rest of the proxy uses
//! (SPEC section 3).
//!
//! Loading goes: TOML text → value tree → unknown keys and wrong types refused
//! (naming `section.key`) → environment overrides written into the tree →
//! the raw serde shape (`config/file.rs`) → [`Config`], where every value is
//! checked and defaults that depend on other keys are filled in. Every error
//! is one line naming the key, the environment variable or the file at fault.

mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::{Table, Value};
use url::Url;

/// Shortest accepted signing or client secret, in bytes (HS256 wants at
/// least its 256-bit output size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Bounds of `server.max_header_bytes`. The floor is hyper's smallest HTTP/1
/// read buffer (it panics below 8 KiB); the ceiling keeps one request head
/// from costing a replica more than a mebibyte.
pub const MIN_HEADER_BYTES: usize = 8 * 1024;
/// See [`MIN_HEADER_BYTES`].
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Variables that Supabase and LibreChat deployments already set; each also
/// overrides its key, after `CHATGATE_<SECTION>_<KEY>`.
const SHARED_VARS: &[(&str, &str, &str)] = &[
    ("SUPABASE_URL", "supabase", "url"),
    ("SUPABASE_ANON_KEY", "supabase", "anon_key"),
    ("SUPABASE_JWT_SECRET", "supabase", "jwt_secret"),
    ("LIBRECHAT_JWT_SECRET", "librechat", "jwt_secret"),
    ("REDIS_URL", "store", "redis_url"),
    ("USAGE_DATABASE_URL", "usage", "postgres_url"),
];

/// Variables that, set to `true`, force `log.level = "debug"` (LibreChat's own).
const DEBUG_VARS: &[&str] = &["DEBUG", "LIBRECHAT_DEBUG"];

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub supabase: SupabaseConfig,
    pub librechat: LibreChatConfig,
    pub oidc: OidcConfig,
    pub iframe: IframeConfig,
    pub dashboard: DashboardConfig,
    pub store: StoreConfig,
    pub usage: UsageConfig,
    pub log: LogConfig,
}

/// `[server]`: listeners and the public origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// TLS listener.
    pub listen: SocketAddr,
    /// Plain-HTTP listener for use behind a TLS load balancer.
    pub http_listen: Option<SocketAddr>,
    /// The origin browsers use; path is always "/".
    pub public_url: Url,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Drain time after SIGTERM.
    pub shutdown_grace: Duration,
    /// Largest request head accepted.
    pub max_header_bytes: usize,
    /// Connections start with a PROXY protocol v1/v2 header naming the
    /// client; without a valid one they are closed. `trusted_proxies`
    /// then applies to the address the header names.
    pub proxy_protocol: bool,
}

/// `[tls]`: certificate and key of the TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain, resolved against the config file's directory.
    pub cert: PathBuf,
    /// PEM private key, resolved against the config file's directory.
    pub key: PathBuf,
    /// Development mode: generate missing certificates and keys, allow short secrets.
    pub dev_self_signed: bool,
}

/// `[supabase]`: the dashboard's Supabase project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupabaseConfig {
    /// Project URL; its path always ends with "/" so `Url::join` appends.
    pub url: Url,
    /// Public anon key, sent as `apikey` (not strength-checked: it is public).
    pub anon_key: Option<Secret>,
    /// Legacy HS256 secret; `None` = JWKS only.
    pub jwt_secret: Option<Secret>,
    /// JWKS for ES256/RS256 access tokens.
    pub jwks_url: Url,
    /// Session cookie name (chunks are `<name>.0`, `<name>.1`, …).
    pub cookie_name: String,
    /// `Domain` attribute for rewritten session cookies; `None` = host-only.
    pub cookie_domain: Option<String>,
    /// Expected `iss` of access tokens.
    pub issuer: String,
    /// PostgREST table of profiles.
    pub profiles_table: String,
    /// PostgREST table of organizations.
    pub organizations_table: String,
    /// How long a user's organization lookup is cached.
    pub tenant_cache_ttl: Duration,
}

/// `[librechat]`: the pool of LibreChat instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibreChatConfig {
    /// Base URLs (path "/") of the instances; never empty, no duplicates.
    pub upstreams: Vec<Url>,
    /// Path probed by the active health check; starts with "/".
    pub health_path: String,
    /// Instances that take no new sticky pins; each is one of `upstreams`.
    pub draining: Vec<Url>,
    /// How LibreChat learns who the user is.
    pub auth_mode: AuthMode,
    /// Signs hand-off tokens and jwt-mode tokens; required in jwt mode.
    pub jwt_secret: Option<Secret>,
    /// Lifetime of a minted chatgate token.
    pub token_ttl: Duration,
    /// Send `X-Tenant-Id: <organization id>` on every forwarded request.
    pub tenant_header: bool,
    /// At most this many requests (so upstream connections) at once per
    /// instance on this replica; more wait up to the connect timeout.
    pub max_connections_per_instance: usize,
}

/// `librechat.auth_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `"oidc"`: chatgate is stock LibreChat's OpenID provider.
    Oidc,
    /// `"jwt"`: chatgate sends a shared-secret token on every request.
    Jwt,
}

/// `[oidc]`: chatgate as LibreChat's OpenID provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The client id LibreChat registers with.
    pub client_id: String,
    /// The client secret LibreChat authenticates with.
    pub client_secret: Option<Secret>,
    /// RS256 signing key (PEM), resolved against the config file's directory.
    pub signing_key: PathBuf,
    /// Base URL (path "/") LibreChat's server uses; `None` = `server.public_url`.
    pub internal_url: Option<Url>,
    /// Dashboard roles (`profiles.role`) that become LibreChat ADMIN.
    pub admin_roles: Vec<String>,
}

/// `[iframe]`: embedding chatgate in the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IframeConfig {
    /// Origins allowed to frame chatgate, serialized as `scheme://host[:port]`.
    pub allowed_origins: Vec<String>,
    /// Rewrite upstream cookies to `SameSite=None; Secure; Partitioned`.
    pub cross_site: bool,
}

/// `[dashboard]`: where unauthenticated users are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardConfig {
    /// Login page; `None` = unauthenticated page loads get 401.
    pub login_url: Option<Url>,
}

/// `[store]`: shared state across replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Redis URL (may hold a password); `None` = in-process store.
    pub redis_url: Option<Secret>,
    /// Lifetime of a user's pin to an upstream.
    pub sticky_ttl: Duration,
}

/// `[usage]`: usage metering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageConfig {
    /// Postgres connection string (may hold a password); `None` = metering off.
    pub postgres_url: Option<Secret>,
    /// How often counts are written; never zero.
    pub flush_interval: Duration,
    /// The local spool, resolved against the config file's directory.
    pub spool_dir: PathBuf,
    /// How long a stream whose client left is still read; never zero.
    pub drain_timeout: Duration,
    /// `[usage.prices]`, in file order; entries match models as in SPEC section 10.
    pub prices: Vec<ModelPrice>,
}

/// One `[usage.prices]` entry. Prices are kept as integers, in pico-USD per
/// token (= micro-USD per million tokens), so that costs add up exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    /// The entry's name: a model, a `<prefix>` of `<prefix>-…`, or a `*` glob.
    pub model: String,
    pub input_pico_usd: u64,
    pub output_pico_usd: u64,
}

/// The highest price accepted, in USD per million tokens.
pub const MAX_PRICE_USD_PER_MILLION: f64 = 1_000_000.0;

/// `[log]`: log output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// One of trace, debug, info, warn, error (lower-case).
    pub level: String,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// A secret string: Debug and Display print "[redacted]"; `expose()` gives the value.
///
/// Equality is for comparing configurations; it is not constant-time, so do
/// not use it to check a credential a client sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a configuration was refused. Display is one line and never contains a
/// secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {error}", .path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// An error in the named file.
    // `error` rather than `source`: Display already includes it, and an error
    // chain printer (anyhow's `{:#}`) would print it twice.
    #[error("{}: {error}", .path.display())]
    InFile {
        path: PathBuf,
        error: Box<ConfigError>,
    },
    /// The text is not TOML.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// A `[section]` chatgate does not know.
    #[error("unknown section [{section}] (known: {known})")]
    UnknownSection { section: String, known: String },
    /// A key chatgate does not know, as `section.key`.
    #[error("unknown key \"{key}\" (known in this section: {known})")]
    UnknownKey { key: String, known: String },
    /// An environment variable whose text cannot be read as its key's type.
    #[error("{var}: {message}")]
    Env { var: String, message: String },
    /// A value that is there but wrong; `env` names the variable it came from.
    #[error("{key}{}: {message}", from_env(.env))]
    Invalid {
        key: String,
        env: Option<String>,
        message: String,
    },
    /// The value tree did not fit the raw shape after the checks above; a
    /// mismatch between those checks and `config/file.rs`.
    #[error("{0}")]
    Malformed(String),
}

fn from_env(env: &Option<String>) -> String {
    env.as_ref()
        .map(|var| format!(" (from {var})"))
        .unwrap_or_default()
}

impl Config {
    /// Reads the file, applies environment overrides from the real process environment, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        // `Path::new("proxy.toml").parent()` is `Some("")`: relative paths
        // then stay relative to the working directory, which holds the file.
        let base_dir = path.parent().unwrap_or(Path::new(""));
        Self::from_toml(&text, base_dir, &|var| std::env::var(var).ok()).map_err(|error| {
            match error {
                // A bad variable is not the file's fault.
                ConfigError::Env { .. } => error,
                error => ConfigError::InFile {
                    path: path.to_owned(),
                    error: Box::new(error),
                },
            }
        })
    }

    /// Same from text; `base_dir` resolves relative paths (tls.cert, tls.key, oidc.signing_key) — relative paths are relative to the config file's directory;
    /// `env` is a lookup function so tests need not touch the process environment.
    pub fn from_toml(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut tree: Table = toml::from_str(text).map_err(|e| syntax_error(text, &e))?;
        let schema = schema()?;
        check_shape(&tree, &schema)?;
        let from_env = apply_env(&mut tree, &schema, env)?;
        let raw: file::ProxyToml = Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Malformed(one_line(e.message())))?;
        Check {
            from_env: &from_env,
            base_dir,
        }
        .config(raw)
    }

    /// Non-fatal findings to log at start-up (short secrets with dev_self_signed, no upstream, no Supabase secret/anon key...).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let secrets = [
            ("supabase.jwt_secret", &self.supabase.jwt_secret),
            ("librechat.jwt_secret", &self.librechat.jwt_secret),
            ("oidc.client_secret", &self.oidc.client_secret),
        ];
        for (key, secret) in secrets {
            // Only dev_self_signed lets a short secret load, so no need to check it here.
            if secret
                .as_ref()
                .is_some_and(|s| s.expose().len() < MIN_SECRET_BYTES)
            {
                warnings.push(format!(
                    "{key} is shorter than {MIN_SECRET_BYTES} bytes; accepted only because \
                     tls.dev_self_signed = true, use a long random secret in production"
                ));
            }
        }
        if self.supabase.anon_key.is_none() {
            warnings.push(
                "supabase.anon_key is empty (SUPABASE_ANON_KEY): session refresh and the \
                 organization lookup need it"
                    .into(),
            );
        }
        if self.supabase.jwt_secret.is_none() {
            warnings.push(format!(
                "supabase.jwt_secret is empty (SUPABASE_JWT_SECRET): access tokens are verified \
                 with the JWKS at {} only",
                self.supabase.jwks_url
            ));
        }
        if self.librechat.jwt_secret.is_none() {
            warnings.push(
                "librechat.jwt_secret is empty (LIBRECHAT_JWT_SECRET): hand-off tokens \
                 (/api/librechat/auth, ?token=) need it"
                    .into(),
            );
        }
        if self.librechat.auth_mode == AuthMode::Oidc && self.oidc.client_secret.is_none() {
            warnings.push(
                "oidc.client_secret is empty (CHATGATE_OIDC_CLIENT_SECRET): LibreChat \
                 authenticates to /oidc/token with it"
                    .into(),
            );
        }
        if self
            .librechat
            .upstreams
            .iter()
            .all(|u| self.librechat.draining.contains(u))
        {
            warnings.push(
                "every librechat.upstreams entry is in librechat.draining: new users get no \
                 sticky pin"
                    .into(),
            );
        }
        if self.store.redis_url.is_none() {
            warnings.push(
                "store.redis_url is empty (REDIS_URL): using the in-process store, run one \
                 replica only"
                    .into(),
            );
        }
        if self.usage.postgres_url.is_none() {
            warnings.push(
                "usage.postgres_url is empty (USAGE_DATABASE_URL): usage metering is off".into(),
            );
        }
        if self.dashboard.login_url.is_none() {
            warnings.push(
                "dashboard.login_url is empty: unauthenticated page loads get 401 instead of a \
                 redirect to the dashboard"
                    .into(),
            );
        }
        if self.server.http_listen.is_some() && self.server.trusted_proxies.is_empty() {
            warnings.push(
                "server.http_listen is set but server.trusted_proxies is empty: the load \
                 balancer's X-Forwarded-* headers will be ignored"
                    .into(),
            );
        }
        if self.iframe.cross_site && self.server.public_url.scheme() != "https" {
            warnings.push(
                "iframe.cross_site = true with an http server.public_url: browsers drop \
                 SameSite=None cookies that are not Secure"
                    .into(),
            );
        }
        warnings
    }
}

/// A toml syntax error as one line with its position.
fn syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |span| span.start);
    let before = text.get(..offset).unwrap_or(text);
    ConfigError::Syntax {
        line: before.matches('\n').count() + 1,
        column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
        message: one_line(error.message()),
    }
}

/// toml's messages span several lines; errors here are one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every known section and key with its default value, from the raw shape
/// itself so that this list cannot drift from `config/file.rs`.
fn schema() -> Result<Table, ConfigError> {
    match Value::try_from(file::ProxyToml::default()) {
        Ok(Value::Table(table)) => Ok(table),
        Ok(other) => Err(ConfigError::Malformed(format!(
            "defaults serialize to {}, not a table",
            other.type_str()
        ))),
        Err(e) => Err(ConfigError::Malformed(one_line(&e.to_string()))),
    }
}

fn names(table: &Table) -> String {
    table
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses unknown sections and keys and values of the wrong type, naming
/// them; serde's own messages would not say which section.
fn check_shape(tree: &Table, schema: &Table) -> Result<(), ConfigError> {
    for (section, value) in tree {
        let Some(Value::Table(known)) = schema.get(section) else {
            return Err(ConfigError::UnknownSection {
                section: section.clone(),
                known: names(schema),
            });
        };
        let Value::Table(keys) = value else {
            return Err(invalid_in_file(
                section,
                format!("expected a table, found {}", value.type_str()),
            ));
        };
        for (key, value) in keys {
            let path = format!("{section}.{key}");
            let Some(default) = known.get(key) else {
                return Err(ConfigError::UnknownKey {
                    key: path,
                    known: names(known),
                });
            };
            check_type(&path, value, default)?;
        }
    }
    Ok(())
}

fn check_type(path: &str, value: &Value, default: &Value) -> Result<(), ConfigError> {
    let (fits, expected) = match default {
        // Every list key is a list of strings.
        Value::Array(_) => (
            matches!(value, Value::Array(items) if items.iter().all(Value::is_str)),
            "a list of strings",
        ),
        Value::String(_) => (value.is_str(), "a string"),
        Value::Integer(_) => (value.is_integer(), "an integer"),
        Value::Boolean(_) => (value.is_bool(), "true or false"),
        other => (value.same_type(other), other.type_str()),
    };
    if fits {
        return Ok(());
    }
    let found = match value {
        Value::Array(items) => match items.iter().find(|v| !v.is_str()) {
            Some(item) => format!("a list holding a {}", item.type_str()),
            None => "a list".into(),
        },
        other => other.type_str().into(),
    };
    Err(invalid_in_file(
        path,
        format!("expected {expected}, found {found}"),
    ))
}

fn invalid_in_file(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        env: None,
        message,
    }
}

/// Writes environment overrides into the tree, typed like each key's default.
/// Returns which variable set which key, so that later errors name it.
/// An empty variable counts as unset: compose files pass `VAR=${VAR}` through
/// even when the operator never set it, which must not wipe a file value.
fn apply_env(
    tree: &mut Table,
    schema: &Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let lookup = |var: &str| env(var).filter(|v| !v.is_empty());
    let mut from_env = BTreeMap::new();
    for (section, keys) in schema {
        let Value::Table(keys) = keys else { continue };
        for (key, default) in keys {
            let generic = format!(
                "CHATGATE_{}_{}",
                section.to_ascii_uppercase(),
                key.to_ascii_uppercase()
            );
            let shared = SHARED_VARS
                .iter()
                .find(|(_, s, k)| s == section && k == key)
                .map(|(var, ..)| *var);
            // The CHATGATE_ name wins over the shared one: it can only have
            // been meant for chatgate.
            let found = std::iter::once(generic.as_str())
                .chain(shared)
                .find_map(|var| lookup(var).map(|text| (var.to_owned(), text)));
            let Some((var, text)) = found else { continue };
            let value = env_value(&var, &text, default)?;
            set(tree, section, key, value);
            from_env.insert(format!("{section}.{key}"), var);
        }
    }
    let debug = DEBUG_VARS
        .iter()
        .find(|var| lookup(var).is_some_and(|v| is_true(&v)));
    if let Some(var) = debug {
        set(tree, "log", "level", Value::String("debug".into()));
        from_env.insert("log.level".into(), (*var).into());
    }
    Ok(from_env)
}

fn set(tree: &mut Table, section: &str, key: &str, value: Value) {
    let entry = tree
        .entry(section)
        .or_insert_with(|| Value::Table(Table::new()));
    // check_shape has made every section present a table.
    if let Value::Table(keys) = entry {
        keys.insert(key.into(), value);
    }
}

fn is_true(text: &str) -> bool {
    matches!(text.trim().to_ascii_lowercase().as_str(), "true" | "1")
}

/// An environment variable's text as a value of its key's type.
fn env_value(var: &str, text: &str, default: &Value) -> Result<Value, ConfigError> {
    let err = |message: String| ConfigError::Env {
        var: var.into(),
        message,
    };
    match default {
        Value::String(_) => Ok(Value::String(text.into())),
        Value::Boolean(_) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Boolean(true)),
            "false" | "0" => Ok(Value::Boolean(false)),
            _ => Err(err(format!("expected true or false, got {text:?}"))),
        },
        Value::Integer(_) => text
            .trim()
            .parse()
            .map(Value::Integer)
            .map_err(|e| err(format!("expected an integer, got {text:?}: {e}"))),
        Value::Array(_) => env_list(text).map_err(err),
        // `[usage.prices]`: a TOML inline table, `{ "gpt-4o" = { input = 2.5, output = 10.0 } }`.
        Value::Table(_) => match toml::from_str::<Table>(&format!("table = {}", text.trim())) {
            Ok(mut parsed) => match parsed.remove("table") {
                Some(table @ Value::Table(_)) => Ok(table),
                _ => Err(err("expected a TOML inline table".into())),
            },
            Err(e) => Err(err(format!(
                "not a TOML inline table: {}",
                one_line(e.message())
            ))),
        },
        other => Err(err(format!("cannot set a {} key", other.type_str()))),
    }
}

/// A list from the environment: a TOML array literal (`["a", "b"]`, also the
/// only way to say "empty": `[]`) or comma-separated items.
fn env_list(text: &str) -> Result<Value, String> {
    let text = text.trim();
    if text.starts_with('[') {
        let parsed: Table = toml::from_str(&format!("list = {text}"))
            .map_err(|e| format!("not a TOML array: {}", one_line(e.message())))?;
        return match parsed.get("list") {
            Some(Value::Array(items)) if items.iter().all(Value::is_str) => {
                Ok(Value::Array(items.clone()))
            }
            _ => Err("expected an array of strings".into()),
        };
    }
    Ok(Value::Array(
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| Value::String(item.into()))
            .collect(),
    ))
}

/// "" means "not set" for every optional string key.
fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Turns the raw shape into [`Config`], naming the key (and the variable it
/// came from) on the first bad value.
struct Check<'a> {
    from_env: &'a BTreeMap<String, String>,
    base_dir: &'a Path,
}

impl Check<'_> {
    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            env: self.from_env.get(key).cloned(),
            message: message.into(),
        }
    }

    fn config(&self, raw: file::ProxyToml) -> Result<Config, ConfigError> {
        let dev = raw.tls.dev_self_signed;
        Ok(Config {
            server: self.server(raw.server)?,
            tls: self.tls(raw.tls)?,
            supabase: self.supabase(raw.supabase, dev)?,
            librechat: self.librechat(raw.librechat, dev)?,
            oidc: self.oidc(raw.oidc, dev)?,
            iframe: self.iframe(raw.iframe)?,
            dashboard: self.dashboard(raw.dashboard)?,
            store: self.store(raw.store)?,
            usage: self.usage(raw.usage)?,
            log: self.log(raw.log)?,
        })
    }

    fn server(&self, raw: file::Server) -> Result<ServerConfig, ConfigError> {
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .map(|text| {
                parse_net(text).ok_or_else(|| {
                    self.err(
                        "server.trusted_proxies",
                        format!("invalid CIDR or IP address {text:?}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let max_header_bytes = usize::try_from(raw.max_header_bytes)
            .ok()
            .filter(|n| (MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(n))
            .ok_or_else(|| {
                self.err(
                    "server.max_header_bytes",
                    format!(
                        "must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}, got {}",
                        raw.max_header_bytes
                    ),
                )
            })?;
        Ok(ServerConfig {
            listen: self.socket_addr("server.listen", &raw.listen)?,
            http_listen: non_empty(&raw.http_listen)
                .map(|text| self.socket_addr("server.http_listen", text))
                .transpose()?,
            public_url: self.base_url("server.public_url", &raw.public_url)?,
            trusted_proxies,
            shutdown_grace: self.duration("server.shutdown_grace", &raw.shutdown_grace)?,
            max_header_bytes,
            proxy_protocol: raw.proxy_protocol,
        })
    }

    fn tls(&self, raw: file::Tls) -> Result<TlsConfig, ConfigError> {
        Ok(TlsConfig {
            cert: self.path("tls.cert", &raw.cert)?,
            key: self.path("tls.key", &raw.key)?,
            dev_self_signed: raw.dev_self_signed,
        })
    }

    fn supabase(&self, raw: file::Supabase, dev: bool) -> Result<SupabaseConfig, ConfigError> {
        let mut url = self.web_url("supabase.url", &raw.url)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(self.err("supabase.url", "must not have a query or fragment"));
        }
        // A trailing "/" makes `url.join("auth/v1/…")` append rather than
        // replace the last path segment of a self-hosted prefix.
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let jwks_url = match non_empty(&raw.jwks_url) {
            Some(text) => self.web_url("supabase.jwks_url", text)?,
            None => Url::parse(&format!("{base}/auth/v1/.well-known/jwks.json"))
                .map_err(|e| self.err("supabase.url", format!("cannot derive jwks_url: {e}")))?,
        };
        let cookie_name = match non_empty(&raw.cookie_name) {
            Some(name) if is_cookie_token(name) => name.to_owned(),
            Some(name) => {
                return Err(self.err(
                    "supabase.cookie_name",
                    format!("{name:?} is not a valid cookie name"),
                ))
            }
            // What @supabase/ssr does: the first label of the URL's hostname.
            None => format!(
                "sb-{}-auth-token",
                url.host_str()
                    .and_then(|host| host.split('.').next())
                    .unwrap_or_default()
            ),
        };
        let cookie_domain = match non_empty(&raw.cookie_domain) {
            Some(domain) if domain.contains([';', ',', ' ', '=']) => {
                return Err(self.err(
                    "supabase.cookie_domain",
                    format!("{domain:?} is not a domain"),
                ))
            }
            domain => domain.map(str::to_owned),
        };
        Ok(SupabaseConfig {
            anon_key: non_empty(&raw.anon_key).map(Secret::new),
            jwt_secret: self.secret("supabase.jwt_secret", &raw.jwt_secret, dev)?,
            jwks_url,
            cookie_name,
            cookie_domain,
            issuer: non_empty(&raw.issuer).map_or_else(|| format!("{base}/auth/v1"), str::to_owned),
            profiles_table: self.table_name("supabase.profiles_table", &raw.profiles_table)?,
            organizations_table: self
                .table_name("supabase.organizations_table", &raw.organizations_table)?,
            tenant_cache_ttl: self
                .positive_duration("supabase.tenant_cache_ttl", &raw.tenant_cache_ttl)?,
            url,
        })
    }

    fn librechat(&self, raw: file::LibreChat, dev: bool) -> Result<LibreChatConfig, ConfigError> {
        let mut upstreams: Vec<Url> = Vec::new();
        for text in &raw.upstreams {
            let url = self.base_url("librechat.upstreams", text)?;
            if upstreams.contains(&url) {
                return Err(self.err("librechat.upstreams", format!("lists {url} twice")));
            }
            upstreams.push(url);
        }
        if upstreams.is_empty() {
            return Err(self.err(
                "librechat.upstreams",
                "must list at least one LibreChat URL",
            ));
        }
        let mut draining = Vec::new();
        for text in &raw.draining {
            let url = self.base_url("librechat.draining", text)?;
            if !upstreams.contains(&url) {
                return Err(self.err(
                    "librechat.draining",
                    format!("{text:?} is not one of librechat.upstreams"),
                ));
            }
            draining.push(url);
        }
        if !raw.health_path.starts_with('/') {
            return Err(self.err(
                "librechat.health_path",
                format!("must start with \"/\", got {:?}", raw.health_path),
            ));
        }
        let auth_mode = match raw.auth_mode.as_str() {
            "oidc" => AuthMode::Oidc,
            "jwt" => AuthMode::Jwt,
            other => {
                return Err(self.err(
                    "librechat.auth_mode",
                    format!("expected \"oidc\" or \"jwt\", got {other:?}"),
                ))
            }
        };
        let jwt_secret = self.secret("librechat.jwt_secret", &raw.jwt_secret, dev)?;
        if auth_mode == AuthMode::Jwt && jwt_secret.is_none() {
            return Err(self.err(
                "librechat.jwt_secret",
                "required with librechat.auth_mode = \"jwt\": LibreChat verifies every token with it",
            ));
        }
        Ok(LibreChatConfig {
            upstreams,
            health_path: raw.health_path,
            draining,
            auth_mode,
            jwt_secret,
            token_ttl: self.positive_duration("librechat.token_ttl", &raw.token_ttl)?,
            tenant_header: raw.tenant_header,
            max_connections_per_instance: match usize::try_from(raw.max_connections_per_instance) {
                Ok(n) if (1..=1_000_000).contains(&n) => n,
                _ => {
                    return Err(self.err(
                        "librechat.max_connections_per_instance",
                        format!(
                            "must be between 1 and 1000000, got {}",
                            raw.max_connections_per_instance
                        ),
                    ))
                }
            },
        })
    }

    fn oidc(&self, raw: file::Oidc, dev: bool) -> Result<OidcConfig, ConfigError> {
        if raw.client_id.is_empty() {
            return Err(self.err("oidc.client_id", "must not be empty"));
        }
        Ok(OidcConfig {
            client_id: raw.client_id,
            client_secret: self.secret("oidc.client_secret", &raw.client_secret, dev)?,
            signing_key: self.path("oidc.signing_key", &raw.signing_key)?,
            internal_url: non_empty(&raw.internal_url)
                .map(|text| self.base_url("oidc.internal_url", text))
                .transpose()?,
            admin_roles: raw
                .admin_roles
                .iter()
                .map(|role| role.trim().to_owned())
                .filter(|role| !role.is_empty())
                .collect(),
        })
    }

    fn iframe(&self, raw: file::Iframe) -> Result<IframeConfig, ConfigError> {
        let mut allowed_origins: Vec<String> = Vec::new();
        for text in &raw.allowed_origins {
            let origin = self
                .base_url("iframe.allowed_origins", text)?
                .origin()
                .ascii_serialization();
            if !allowed_origins.contains(&origin) {
                allowed_origins.push(origin);
            }
        }
        Ok(IframeConfig {
            allowed_origins,
            cross_site: raw.cross_site,
        })
    }

    fn dashboard(&self, raw: file::Dashboard) -> Result<DashboardConfig, ConfigError> {
        Ok(DashboardConfig {
            login_url: non_empty(&raw.login_url)
                .map(|text| self.web_url("dashboard.login_url", text))
                .transpose()?,
        })
    }

    fn store(&self, raw: file::Store) -> Result<StoreConfig, ConfigError> {
        let redis_url =
            match non_empty(&raw.redis_url) {
                // The value may hold a password: the messages never quote it.
                Some(text) => {
                    let scheme = text.split("://").next().unwrap_or("");
                    match scheme {
                        // A cluster URL lists several hosts, which `Url` cannot parse;
                        // the store checks it when it connects.
                        "redis+cluster" | "rediss+cluster" => Some(Secret::new(text)),
                        "redis" | "rediss" | "redis+unix" | "unix" => match Url::parse(text) {
                            Ok(_) => Some(Secret::new(text)),
                            Err(e) => {
                                return Err(self.err("store.redis_url", format!("not a URL: {e}")))
                            }
                        },
                        _ => return Err(self.err(
                            "store.redis_url",
                            "scheme must be redis://, rediss://, redis+unix:// or redis+cluster://",
                        )),
                    }
                }
                None => None,
            };
        Ok(StoreConfig {
            redis_url,
            sticky_ttl: self.positive_duration("store.sticky_ttl", &raw.sticky_ttl)?,
        })
    }

    fn usage(&self, raw: file::Usage) -> Result<UsageConfig, ConfigError> {
        let postgres_url = match non_empty(&raw.postgres_url) {
            // A URL or libpq's `key=value` form; the value may hold a password.
            Some(text) => match Url::parse(text) {
                Ok(url) if !matches!(url.scheme(), "postgres" | "postgresql") => {
                    return Err(self.err(
                        "usage.postgres_url",
                        "scheme must be postgres:// or postgresql://",
                    ))
                }
                Err(_) if !text.contains('=') => {
                    return Err(self.err(
                        "usage.postgres_url",
                        "expected postgres://… or host=… user=… dbname=…",
                    ))
                }
                _ => Some(Secret::new(text)),
            },
            None => None,
        };
        Ok(UsageConfig {
            postgres_url,
            // Never zero: a zero period makes a timer spin (tokio's interval panics).
            flush_interval: self.positive_duration("usage.flush_interval", &raw.flush_interval)?,
            spool_dir: self.path("usage.spool_dir", &raw.spool_dir)?,
            drain_timeout: self.positive_duration("usage.drain_timeout", &raw.drain_timeout)?,
            prices: self.prices(&raw.prices)?,
        })
    }

    /// `[usage.prices]`: each entry `{ input = <USD per million>, output = <…> }`.
    fn prices(&self, table: &Table) -> Result<Vec<ModelPrice>, ConfigError> {
        let mut prices = Vec::with_capacity(table.len());
        for (model, entry) in table {
            let key = format!("usage.prices.{model:?}");
            let Value::Table(entry) = entry else {
                return Err(self.err_under(
                    "usage.prices",
                    &key,
                    "expected { input = …, output = … }",
                ));
            };
            if model.is_empty() {
                return Err(self.err_under(
                    "usage.prices",
                    &key,
                    "the model name must not be empty",
                ));
            }
            if let Some(unknown) = entry
                .keys()
                .find(|k| !matches!(k.as_str(), "input" | "output"))
            {
                return Err(self.err_under(
                    "usage.prices",
                    &format!("{key}.{unknown}"),
                    "unknown key (known: input, output)",
                ));
            }
            let price = |name: &str| -> Result<u64, ConfigError> {
                let key = format!("{key}.{name}");
                let usd = match entry.get(name) {
                    None => {
                        return Err(self.err_under(
                            "usage.prices",
                            &key,
                            "missing (USD per million tokens)",
                        ))
                    }
                    Some(Value::Float(f)) => *f,
                    Some(Value::Integer(i)) => *i as f64,
                    Some(other) => {
                        return Err(self.err_under(
                            "usage.prices",
                            &key,
                            format!("expected a number, found {}", other.type_str()),
                        ))
                    }
                };
                if !(usd.is_finite() && (0.0..=MAX_PRICE_USD_PER_MILLION).contains(&usd)) {
                    return Err(self.err_under(
                        "usage.prices",
                        &key,
                        format!("must be between 0 and {MAX_PRICE_USD_PER_MILLION}, got {usd}"),
                    ));
                }
                // USD per million tokens = micro-USD per token … × 1e6 = pico-USD per token.
                Ok((usd * 1e6).round() as u64)
            };
            prices.push(ModelPrice {
                model: model.clone(),
                input_pico_usd: price("input")?,
                output_pico_usd: price("output")?,
            });
        }
        Ok(prices)
    }

    /// An error in a nested key, naming the environment variable that set
    /// its section key, if one did.
    fn err_under(&self, section_key: &str, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            env: self.from_env.get(section_key).cloned(),
            message: message.into(),
        }
    }

    fn log(&self, raw: file::Log) -> Result<LogConfig, ConfigError> {
        let format = match raw.format.to_ascii_lowercase().as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            _ => {
                return Err(self.err(
                    "log.format",
                    format!("expected \"json\" or \"text\", got {:?}", raw.format),
                ))
            }
        };
        let level = raw.level.to_ascii_lowercase();
        if !matches!(
            level.as_str(),
            "trace" | "debug" | "info" | "warn" | "error"
        ) {
            return Err(self.err(
                "log.level",
                format!(
                    "expected trace, debug, info, warn or error, got {:?}",
                    raw.level
                ),
            ));
        }
        Ok(LogConfig { format, level })
    }

    fn duration(&self, key: &str, text: &str) -> Result<Duration, ConfigError> {
        humantime::parse_duration(text)
            .map_err(|e| self.err(key, format!("invalid duration {text:?}: {e}")))
    }

    /// For TTLs and periods, where zero would mean "expire at once" or "spin".
    fn positive_duration(&self, key: &str, text: &str) -> Result<Duration, ConfigError> {
        let duration = self.duration(key, text)?;
        if duration.is_zero() {
            return Err(self.err(key, format!("must be longer than zero, got {text:?}")));
        }
        Ok(duration)
    }

    fn socket_addr(&self, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|e| {
            self.err(
                key,
                format!("invalid socket address {text:?} (want ip:port, e.g. 0.0.0.0:8443): {e}"),
            )
        })
    }

    /// An absolute http(s) URL with a host.
    fn web_url(&self, key: &str, text: &str) -> Result<Url, ConfigError> {
        let url =
            Url::parse(text).map_err(|e| self.err(key, format!("invalid URL {text:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(self.err(
                key,
                format!("expected an http:// or https:// URL with a host, got {text:?}"),
            ));
        }
        Ok(url)
    }

    /// An http(s) URL that is only an origin (path "/"): public URLs,
    /// upstreams and frame ancestors, which other URLs are built on.
    fn base_url(&self, key: &str, text: &str) -> Result<Url, ConfigError> {
        let url = self.web_url(key, text)?;
        if url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
            || url.password().is_some()
        {
            return Err(self.err(
                key,
                format!("expected scheme://host[:port] with no path, query or credentials, got {text:?}"),
            ));
        }
        Ok(url)
    }

    fn path(&self, key: &str, text: &str) -> Result<PathBuf, ConfigError> {
        if text.is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        // `join` keeps an absolute path as it is.
        Ok(self.base_dir.join(text))
    }

    /// A signing or client secret: "" = none; shorter than
    /// [`MIN_SECRET_BYTES`] only in development.
    fn secret(&self, key: &str, text: &str, dev: bool) -> Result<Option<Secret>, ConfigError> {
        let Some(text) = non_empty(text) else {
            return Ok(None);
        };
        if text.len() < MIN_SECRET_BYTES && !dev {
            return Err(self.err(
                key,
                format!(
                    "secret is shorter than {MIN_SECRET_BYTES} bytes (allowed only with \
                     tls.dev_self_signed = true)"
                ),
            ));
        }
        Ok(Some(Secret::new(text)))
    }

    /// Table names go into PostgREST paths and `select=`; allow identifiers only.
    fn table_name(&self, key: &str, text: &str) -> Result<String, ConfigError> {
        if text.is_empty() || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(self.err(
                key,
                format!("expected a table name (letters, digits, _), got {text:?}"),
            ));
        }
        Ok(text.into())
    }
}

/// A CIDR, or a bare IP as a single-address network.
fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

/// RFC 6265 cookie-name characters (an RFC 7230 token).
fn is_cookie_token(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped defaults, as chatgate sees them with nothing set.
    const SHIPPED: &str = include_str!("../proxy.toml");

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |var| map.get(var).cloned()
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/chatgate"), &no_env)
    }

    fn load_env(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/chatgate"), &env_of(pairs))
    }

    /// The error's one-line message; fails the test when it loaded.
    fn error(text: &str) -> String {
        error_env(text, &[])
    }

    fn error_env(text: &str, pairs: &[(&str, &str)]) -> String {
        match load_env(text, pairs) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => {
                let message = e.to_string();
                assert!(!message.contains('\n'), "not one line: {message}");
                message
            }
        }
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    const SUPABASE_SECRET: &str = "supabase-jwt-secret-0123456789abcdef";
    const LIBRECHAT_SECRET: &str = "librechat-jwt-secret-0123456789abcdef";
    const CLIENT_SECRET: &str = "oidc-client-secret-0123456789abcdef";

    /// Every key set to something other than its default.
    const FULL: &str = r#"
        [server]
        listen = "127.0.0.1:9443"
        http_listen = "0.0.0.0:8080"
        public_url = "https://chat.example.com"
        trusted_proxies = ["10.0.0.0/8", "192.168.1.7", "fd00::/8"]
        shutdown_grace = "45s"
        max_header_bytes = 65536
        proxy_protocol = true

        [tls]
        cert = "/srv/tls/cert.pem"
        key = "tls/key.pem"
        dev_self_signed = false

        [supabase]
        url = "https://abcdefgh.supabase.co"
        anon_key = "anon-key-value"
        jwt_secret = "supabase-jwt-secret-0123456789abcdef"
        jwks_url = "https://abcdefgh.supabase.co/auth/v1/keys"
        cookie_name = "sb-custom-auth-token"
        cookie_domain = ".example.com"
        issuer = "https://auth.example.com/auth/v1"
        profiles_table = "user_profiles"
        organizations_table = "orgs"
        tenant_cache_ttl = "5m"

        [librechat]
        upstreams = ["http://lc1:3080", "http://lc2:3080/"]
        health_path = "/api/health"
        draining = ["http://lc2:3080"]
        auth_mode = "jwt"
        jwt_secret = "librechat-jwt-secret-0123456789abcdef"
        token_ttl = "2h"
        tenant_header = false
        max_connections_per_instance = 64

        [oidc]
        client_id = "lc"
        client_secret = "oidc-client-secret-0123456789abcdef"
        signing_key = "keys/oidc.pem"
        internal_url = "http://chatgate:8080"
        admin_roles = ["owner", " staff", ""]

        [iframe]
        allowed_origins = ["https://dash.example.com/", "https://APP.example.com:8443", "https://dash.example.com:443"]
        cross_site = true

        [dashboard]
        login_url = "https://dash.example.com/login?next=chat"

        [store]
        redis_url = "redis://:redis-password@redis:6379/0"
        sticky_ttl = "6h"

        [usage]
        postgres_url = "postgres://meter:pg-password@db:5432/usage"
        flush_interval = "500ms"
        spool_dir = "/var/spool/chatgate"
        drain_timeout = "2m"
        prices = { "gpt-4o" = { input = 2.5, output = 10 } }

        [log]
        format = "text"
        level = "warn"
    "#;

    #[test]
    fn every_documented_key_round_trips() {
        let config = load(FULL).unwrap();
        let expected = Config {
            server: ServerConfig {
                listen: "127.0.0.1:9443".parse().unwrap(),
                http_listen: Some("0.0.0.0:8080".parse().unwrap()),
                public_url: url("https://chat.example.com/"),
                trusted_proxies: vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "192.168.1.7/32".parse().unwrap(),
                    "fd00::/8".parse().unwrap(),
                ],
                shutdown_grace: secs(45),
                max_header_bytes: 65536,
                proxy_protocol: true,
            },
            tls: TlsConfig {
                cert: PathBuf::from("/srv/tls/cert.pem"),
                key: PathBuf::from("/etc/chatgate/tls/key.pem"),
                dev_self_signed: false,
            },
            supabase: SupabaseConfig {
                url: url("https://abcdefgh.supabase.co/"),
                anon_key: Some(Secret::new("anon-key-value")),
                jwt_secret: Some(Secret::new(SUPABASE_SECRET)),
                jwks_url: url("https://abcdefgh.supabase.co/auth/v1/keys"),
                cookie_name: "sb-custom-auth-token".into(),
                cookie_domain: Some(".example.com".into()),
                issuer: "https://auth.example.com/auth/v1".into(),
                profiles_table: "user_profiles".into(),
                organizations_table: "orgs".into(),
                tenant_cache_ttl: secs(300),
            },
            librechat: LibreChatConfig {
                upstreams: vec![url("http://lc1:3080"), url("http://lc2:3080")],
                health_path: "/api/health".into(),
                draining: vec![url("http://lc2:3080")],
                auth_mode: AuthMode::Jwt,
                jwt_secret: Some(Secret::new(LIBRECHAT_SECRET)),
                token_ttl: secs(2 * 3600),
                tenant_header: false,
                max_connections_per_instance: 64,
            },
            oidc: OidcConfig {
                client_id: "lc".into(),
                client_secret: Some(Secret::new(CLIENT_SECRET)),
                signing_key: PathBuf::from("/etc/chatgate/keys/oidc.pem"),
                internal_url: Some(url("http://chatgate:8080")),
                admin_roles: vec!["owner".into(), "staff".into()],
            },
            iframe: IframeConfig {
                // Normalized to origins: no trailing slash, lower-case host,
                // default port dropped, duplicates merged.
                allowed_origins: vec![
                    "https://dash.example.com".into(),
                    "https://app.example.com:8443".into(),
                ],
                cross_site: true,
            },
            dashboard: DashboardConfig {
                login_url: Some(url("https://dash.example.com/login?next=chat")),
            },
            store: StoreConfig {
                redis_url: Some(Secret::new("redis://:redis-password@redis:6379/0")),
                sticky_ttl: secs(6 * 3600),
            },
            usage: UsageConfig {
                postgres_url: Some(Secret::new("postgres://meter:pg-password@db:5432/usage")),
                flush_interval: Duration::from_millis(500),
                spool_dir: PathBuf::from("/var/spool/chatgate"),
                drain_timeout: secs(120),
                prices: vec![ModelPrice {
                    model: "gpt-4o".into(),
                    input_pico_usd: 2_500_000,
                    output_pico_usd: 10_000_000,
                }],
            },
            log: LogConfig {
                format: LogFormat::Text,
                level: "warn".into(),
            },
        };
        assert_eq!(config, expected);
        // Nothing left at a default, so nothing to warn about except cross_site's https check (it is https).
        assert_eq!(config.warnings(), Vec::<String>::new());
    }

    /// Every key of the raw shape, as `section.key`.
    fn all_keys(table: &Table) -> Vec<String> {
        let mut keys = Vec::new();
        for (section, value) in table {
            if let Value::Table(inner) = value {
                keys.extend(inner.keys().map(|k| format!("{section}.{k}")));
            }
        }
        keys
    }

    #[test]
    fn the_round_trip_file_sets_every_key() {
        let full: Table = toml::from_str(FULL).unwrap();
        assert_eq!(all_keys(&full), all_keys(&schema().unwrap()));
    }

    #[test]
    fn an_empty_file_gives_the_spec_defaults() {
        let config = Config::from_toml("", Path::new(""), &no_env).unwrap();

        let server = &config.server;
        assert_eq!(server.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(server.http_listen, None);
        assert_eq!(server.public_url.as_str(), "https://localhost:8443/");
        assert!(server.trusted_proxies.is_empty());
        assert_eq!(server.shutdown_grace, secs(30));
        assert_eq!(server.max_header_bytes, 32768);

        assert_eq!(config.tls.cert, PathBuf::from("certs/cert.pem"));
        assert_eq!(config.tls.key, PathBuf::from("certs/key.pem"));
        assert!(config.tls.dev_self_signed);

        let supabase = &config.supabase;
        assert_eq!(supabase.url.as_str(), "http://127.0.0.1:54321/");
        assert_eq!(supabase.anon_key, None);
        assert_eq!(supabase.jwt_secret, None);
        assert_eq!(
            supabase.jwks_url.as_str(),
            "http://127.0.0.1:54321/auth/v1/.well-known/jwks.json"
        );
        assert_eq!(supabase.cookie_name, "sb-127-auth-token");
        assert_eq!(supabase.cookie_domain, None);
        assert_eq!(supabase.issuer, "http://127.0.0.1:54321/auth/v1");
        assert_eq!(supabase.profiles_table, "profiles");
        assert_eq!(supabase.organizations_table, "organizations");
        assert_eq!(supabase.tenant_cache_ttl, secs(60));

        let librechat = &config.librechat;
        assert_eq!(librechat.upstreams, vec![url("http://127.0.0.1:3080")]);
        assert_eq!(librechat.health_path, "/health");
        assert!(librechat.draining.is_empty());
        assert_eq!(librechat.auth_mode, AuthMode::Oidc);
        assert_eq!(librechat.jwt_secret, None);
        assert_eq!(librechat.token_ttl, secs(24 * 3600));
        assert!(librechat.tenant_header);
        assert_eq!(librechat.max_connections_per_instance, 256);

        assert_eq!(config.oidc.client_id, "librechat");
        assert_eq!(config.oidc.client_secret, None);
        assert_eq!(
            config.oidc.signing_key,
            PathBuf::from("certs/oidc-signing.pem")
        );
        assert_eq!(config.oidc.internal_url, None);
        assert_eq!(config.oidc.admin_roles, vec!["super_admin".to_owned()]);

        assert!(config.iframe.allowed_origins.is_empty());
        assert!(!config.iframe.cross_site);
        assert_eq!(config.dashboard.login_url, None);
        assert_eq!(config.store.redis_url, None);
        assert_eq!(config.store.sticky_ttl, secs(12 * 3600));
        assert_eq!(config.usage.postgres_url, None);
        assert_eq!(config.usage.flush_interval, secs(10));
        assert_eq!(config.usage.spool_dir, PathBuf::from("usage-spool"));
        assert_eq!(config.usage.drain_timeout, secs(600));
        assert!(config.usage.prices.is_empty());
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.log.level, "info");
    }

    #[test]
    fn usage_prices_come_from_the_file_or_the_environment_and_bad_ones_are_named() {
        let config = load(
            "[usage.prices]\n\"gpt-4o\" = { input = 2.5, output = 10.0 }\n\"claude-3*\" = { input = 3, output = 15 }\n",
        )
        .unwrap();
        let names: Vec<_> = config
            .usage
            .prices
            .iter()
            .map(|p| p.model.as_str())
            .collect();
        assert_eq!(names, ["claude-3*", "gpt-4o"]);
        assert_eq!(config.usage.prices[0].output_pico_usd, 15_000_000);
        let from_env = load_env(
            "",
            &[(
                "CHATGATE_USAGE_PRICES",
                r#"{ "gpt-4o-mini" = { input = 0.15, output = 0.6 } }"#,
            )],
        )
        .unwrap();
        assert_eq!(from_env.usage.prices[0].input_pico_usd, 150_000);
        assert_eq!(from_env.usage.prices[0].output_pico_usd, 600_000);

        let message = error("[usage.prices]\n\"gpt-4o\" = { input = -1, output = 1 }\n");
        assert!(
            message.contains("usage.prices.\"gpt-4o\".input"),
            "{message}"
        );
        let message = error("[usage.prices]\n\"gpt-4o\" = { input = 1, outptu = 1 }\n");
        assert!(
            message.contains("usage.prices.\"gpt-4o\".outptu"),
            "{message}"
        );
        let message = error("[usage.prices]\n\"gpt-4o\" = 2.5\n");
        assert!(message.contains("usage.prices.\"gpt-4o\""), "{message}");
        let message = error_env(
            "",
            &[(
                "CHATGATE_USAGE_PRICES",
                "{ \"x\" = { input = \"a\", output = 1 } }",
            )],
        );
        assert!(
            message.contains("(from CHATGATE_USAGE_PRICES)"),
            "{message}"
        );
        let message = error_env("", &[("CHATGATE_USAGE_PRICES", "gpt-4o=2")]);
        assert!(message.starts_with("CHATGATE_USAGE_PRICES:"), "{message}");
    }

    #[test]
    fn a_fresh_machine_is_told_what_is_missing() {
        let warnings = load("").unwrap().warnings().join("\n");
        for missing in [
            "supabase.anon_key",
            "supabase.jwt_secret",
            "librechat.jwt_secret",
            "oidc.client_secret",
            "store.redis_url",
            "usage.postgres_url",
            "dashboard.login_url",
        ] {
            assert!(warnings.contains(missing), "{missing} not in:\n{warnings}");
        }
    }

    #[test]
    fn the_shipped_proxy_toml_documents_every_key_with_its_default() {
        let shipped: Table = toml::from_str(SHIPPED).unwrap();
        assert_eq!(all_keys(&shipped), all_keys(&schema().unwrap()));
        assert_eq!(load(SHIPPED).unwrap(), load("").unwrap());
    }

    #[test]
    fn the_shipped_proxy_toml_names_each_override_variable() {
        let schema = schema().unwrap();
        for key in all_keys(&schema) {
            let generic = format!("CHATGATE_{}", key.replace('.', "_").to_ascii_uppercase());
            let shared = SHARED_VARS
                .iter()
                .find(|(_, s, k)| format!("{s}.{k}") == key)
                .map(|(var, ..)| *var);
            let var = shared.unwrap_or(&generic);
            assert!(SHIPPED.contains(var), "proxy.toml does not mention {var}");
        }
    }

    #[test]
    fn docs_configuration_md_has_a_row_for_every_key() {
        const DOC: &str = include_str!("../docs/configuration.md");
        for key in all_keys(&schema().unwrap()) {
            let (section, name) = key.split_once('.').unwrap();
            let heading = format!("## `[{section}]`");
            let start = DOC.find(&heading).unwrap_or_else(|| panic!("no {heading}"));
            let rest = &DOC[start + heading.len()..];
            let part = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
            let row = part
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}`")))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for {key}"));
            let generic = format!("CHATGATE_{}", key.replace('.', "_").to_ascii_uppercase());
            assert!(
                row.contains(&generic),
                "{key}: the row does not name {generic}"
            );
        }
    }

    #[test]
    fn an_unknown_section_is_named() {
        let message = error("[sever]\nlisten = \"0.0.0.0:1\"\n");
        assert!(message.contains("[sever]"), "{message}");
        assert!(
            message.contains("server"),
            "known sections listed: {message}"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_its_section() {
        let message = error("[server]\nlisen = \"0.0.0.0:1\"\n");
        assert!(
            message.contains("unknown key \"server.lisen\""),
            "{message}"
        );
        assert!(message.contains("listen"), "known keys listed: {message}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_key() {
        let message = error("[server]\nlisten = 8443\n");
        assert_eq!(message, "server.listen: expected a string, found integer");
        let message = error("[librechat]\nupstreams = \"http://a:3080\"\n");
        assert!(
            message.starts_with("librechat.upstreams: expected a list of strings"),
            "{message}"
        );
        let message = error("server = 1\n");
        assert!(message.starts_with("server: expected a table"), "{message}");
    }

    #[test]
    fn a_syntax_error_gives_line_and_column_on_one_line() {
        let message = error("[server]\nlisten = \"0.0.0.0:1\n");
        assert!(message.starts_with("line 2, column "), "{message}");
    }

    #[test]
    fn a_bad_duration_names_the_key() {
        let message = error("[server]\nshutdown_grace = \"3x\"\n");
        assert!(
            message.starts_with("server.shutdown_grace: invalid duration \"3x\""),
            "{message}"
        );
        let message = error("[usage]\nflush_interval = \"0s\"\n");
        assert!(message.starts_with("usage.flush_interval:"), "{message}");
    }

    #[test]
    fn a_bad_cidr_names_the_key_and_bare_ips_are_single_hosts() {
        let message = error("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n");
        assert!(message.starts_with("server.trusted_proxies:"), "{message}");
        assert!(message.contains("10.0.0.0/33"), "{message}");

        let config = load("[server]\ntrusted_proxies = [\"::1\", \"10.1.2.3/8\"]\n").unwrap();
        assert_eq!(
            config.server.trusted_proxies,
            vec!["::1/128".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]
        );
    }

    #[test]
    fn draining_an_instance_that_is_not_an_upstream_is_refused() {
        let message = error(
            "[librechat]\nupstreams = [\"http://lc1:3080\"]\ndraining = [\"http://lc9:3080\"]\n",
        );
        assert!(message.starts_with("librechat.draining:"), "{message}");
        assert!(message.contains("http://lc9:3080"), "{message}");
    }

    #[test]
    fn upstreams_must_be_a_non_empty_list_of_distinct_base_urls() {
        assert!(error("[librechat]\nupstreams = []\n").starts_with("librechat.upstreams:"));
        for bad in [
            "ftp://lc1:3080",
            "http://lc1:3080/?x=1",
            "http://lc1:3080/prefix",
            "lc1:3080",
        ] {
            let message = error(&format!("[librechat]\nupstreams = [\"{bad}\"]\n"));
            assert!(
                message.starts_with("librechat.upstreams:"),
                "{bad}: {message}"
            );
        }
        let message = error("[librechat]\nupstreams = [\"http://a:1\", \"http://a:1/\"]\n");
        assert!(message.contains("twice"), "{message}");
    }

    #[test]
    fn public_url_is_an_origin() {
        let message = error("[server]\npublic_url = \"https://chat.example.com/app\"\n");
        assert!(message.starts_with("server.public_url:"), "{message}");
        let message = error("[server]\npublic_url = \"/relative\"\n");
        assert!(message.starts_with("server.public_url:"), "{message}");
    }

    #[test]
    fn frame_ancestors_must_be_origins() {
        let message = error("[iframe]\nallowed_origins = [\"https://dash.example.com/app\"]\n");
        assert!(message.starts_with("iframe.allowed_origins:"), "{message}");
        let message = error("[iframe]\nallowed_origins = [\"dash.example.com\"]\n");
        assert!(message.starts_with("iframe.allowed_origins:"), "{message}");
    }

    #[test]
    fn enumerations_and_bounds_name_the_key() {
        for (text, key) in [
            ("[librechat]\nauth_mode = \"saml\"\n", "librechat.auth_mode"),
            ("[log]\nformat = \"xml\"\n", "log.format"),
            ("[log]\nlevel = \"loud\"\n", "log.level"),
            (
                "[server]\nmax_header_bytes = 0\n",
                "server.max_header_bytes",
            ),
            (
                "[server]\nmax_header_bytes = -1\n",
                "server.max_header_bytes",
            ),
            (
                "[librechat]\nhealth_path = \"health\"\n",
                "librechat.health_path",
            ),
            ("[server]\nlisten = \"localhost:8443\"\n", "server.listen"),
            ("[tls]\ncert = \"\"\n", "tls.cert"),
            (
                "[supabase]\nprofiles_table = \"profiles;drop\"\n",
                "supabase.profiles_table",
            ),
            (
                "[supabase]\ncookie_name = \"a b\"\n",
                "supabase.cookie_name",
            ),
            (
                "[store]\nredis_url = \"http://redis:6379\"\n",
                "store.redis_url",
            ),
            (
                "[usage]\npostgres_url = \"mysql://db\"\n",
                "usage.postgres_url",
            ),
            (
                "[dashboard]\nlogin_url = \"/login\"\n",
                "dashboard.login_url",
            ),
        ] {
            let message = error(text);
            assert!(message.starts_with(&format!("{key}:")), "{text}: {message}");
        }
    }

    #[test]
    fn empty_strings_mean_not_set() {
        let config = load(
            "[server]\nhttp_listen = \"\"\n[dashboard]\nlogin_url = \"\"\n[oidc]\ninternal_url = \"\"\n",
        )
        .unwrap();
        assert_eq!(config.server.http_listen, None);
        assert_eq!(config.dashboard.login_url, None);
        assert_eq!(config.oidc.internal_url, None);
    }

    #[test]
    fn jwt_mode_needs_the_librechat_secret() {
        let message = error("[librechat]\nauth_mode = \"jwt\"\n");
        assert!(message.starts_with("librechat.jwt_secret:"), "{message}");
    }

    #[test]
    fn supabase_url_from_the_environment_moves_every_derived_default() {
        let config = load_env("", &[("SUPABASE_URL", "https://abcdefgh.supabase.co")]).unwrap();
        assert_eq!(config.supabase.cookie_name, "sb-abcdefgh-auth-token");
        assert_eq!(
            config.supabase.issuer,
            "https://abcdefgh.supabase.co/auth/v1"
        );
        assert_eq!(
            config.supabase.jwks_url.as_str(),
            "https://abcdefgh.supabase.co/auth/v1/.well-known/jwks.json"
        );
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let file = "[server]\nlisten = \"127.0.0.1:1\"\n";
        let config = load_env(file, &[("CHATGATE_SERVER_LISTEN", "[::]:9443")]).unwrap();
        assert_eq!(config.server.listen, "[::]:9443".parse().unwrap());

        // The chatgate-specific name wins over the shared one.
        let config = load_env(
            "",
            &[
                ("SUPABASE_URL", "https://shared.supabase.co"),
                ("CHATGATE_SUPABASE_URL", "https://mine.supabase.co"),
            ],
        )
        .unwrap();
        assert_eq!(config.supabase.url.as_str(), "https://mine.supabase.co/");

        // Booleans and integers are parsed.
        let config = load_env(
            "",
            &[
                ("CHATGATE_IFRAME_CROSS_SITE", "true"),
                ("CHATGATE_SERVER_MAX_HEADER_BYTES", "16384"),
            ],
        )
        .unwrap();
        assert!(config.iframe.cross_site);
        assert_eq!(config.server.max_header_bytes, 16384);
    }

    #[test]
    fn an_empty_variable_leaves_the_file_value() {
        let file = "[server]\nlisten = \"127.0.0.1:1\"\n";
        let config = load_env(file, &[("CHATGATE_SERVER_LISTEN", "")]).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn upstreams_from_the_environment_as_a_comma_list_or_an_array() {
        let expected = vec![url("http://lc1:3080"), url("http://lc2:3080")];
        let comma = load_env(
            "",
            &[(
                "CHATGATE_LIBRECHAT_UPSTREAMS",
                "http://lc1:3080, http://lc2:3080",
            )],
        )
        .unwrap();
        assert_eq!(comma.librechat.upstreams, expected);
        let array = load_env(
            "",
            &[(
                "CHATGATE_LIBRECHAT_UPSTREAMS",
                r#"["http://lc1:3080", "http://lc2:3080"]"#,
            )],
        )
        .unwrap();
        assert_eq!(array.librechat.upstreams, expected);
        // `[]` is how the environment empties a list.
        let config = load_env(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
            &[("CHATGATE_SERVER_TRUSTED_PROXIES", "[]")],
        )
        .unwrap();
        assert!(config.server.trusted_proxies.is_empty());
    }

    #[test]
    fn debug_true_forces_the_debug_level() {
        let file = "[log]\nlevel = \"error\"\n";
        let config = load_env(file, &[("DEBUG", "true")]).unwrap();
        assert_eq!(config.log.level, "debug");
        let config = load_env(file, &[("LIBRECHAT_DEBUG", "TRUE")]).unwrap();
        assert_eq!(config.log.level, "debug");
        let config = load_env(file, &[("DEBUG", "false")]).unwrap();
        assert_eq!(config.log.level, "error");
    }

    #[test]
    fn a_bad_environment_value_names_the_variable() {
        let message = error_env("", &[("CHATGATE_SERVER_MAX_HEADER_BYTES", "lots")]);
        assert!(
            message.starts_with("CHATGATE_SERVER_MAX_HEADER_BYTES:"),
            "{message}"
        );
        let message = error_env("", &[("CHATGATE_TLS_DEV_SELF_SIGNED", "maybe")]);
        assert!(
            message.starts_with("CHATGATE_TLS_DEV_SELF_SIGNED:"),
            "{message}"
        );
        let message = error_env("", &[("CHATGATE_LIBRECHAT_UPSTREAMS", "[1, 2]")]);
        assert!(
            message.starts_with("CHATGATE_LIBRECHAT_UPSTREAMS:"),
            "{message}"
        );
        // Parsed fine as a string, refused by validation: key and variable named.
        let message = error_env("", &[("CHATGATE_SERVER_LISTEN", "nowhere")]);
        assert!(
            message
                .starts_with("server.listen (from CHATGATE_SERVER_LISTEN): invalid socket address"),
            "{message}"
        );
    }

    #[test]
    fn a_short_secret_is_refused_in_production() {
        let file = "[tls]\ndev_self_signed = false\n";
        for (var, key) in [
            ("SUPABASE_JWT_SECRET", "supabase.jwt_secret"),
            ("LIBRECHAT_JWT_SECRET", "librechat.jwt_secret"),
            ("CHATGATE_OIDC_CLIENT_SECRET", "oidc.client_secret"),
        ] {
            let message = error_env(file, &[(var, "short-secret")]);
            assert!(
                message.starts_with(&format!("{key} (from {var}):")),
                "{message}"
            );
            assert!(
                !message.contains("short-secret"),
                "secret leaked: {message}"
            );
        }
        // The anon key is public and not strength-checked.
        let config = load_env(file, &[("SUPABASE_ANON_KEY", "anon")]).unwrap();
        assert_eq!(config.supabase.anon_key, Some(Secret::new("anon")));
    }

    #[test]
    fn a_short_secret_is_allowed_in_development_with_a_warning() {
        let config = load_env("", &[("LIBRECHAT_JWT_SECRET", "dev-secret")]).unwrap();
        assert_eq!(config.librechat.jwt_secret, Some(Secret::new("dev-secret")));
        let warnings = config.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("librechat.jwt_secret is shorter than 32 bytes")),
            "{warnings:?}"
        );
        assert!(warnings.iter().all(|w| !w.contains("dev-secret")));

        let long = load_env("", &[("LIBRECHAT_JWT_SECRET", LIBRECHAT_SECRET)]).unwrap();
        assert!(long.warnings().iter().all(|w| !w.contains("shorter")));
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let config = load(FULL).unwrap();
        let printed = format!("{config:?} {config:#?}");
        for secret in [
            "anon-key-value",
            SUPABASE_SECRET,
            LIBRECHAT_SECRET,
            CLIENT_SECRET,
            "redis-password",
            "pg-password",
        ] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
        assert!(printed.contains("[redacted]"));
        assert_eq!(Secret::new("x").to_string(), "[redacted]");
        assert_eq!(Secret::new("x").expose(), "x");
    }

    #[test]
    fn loading_a_file_resolves_paths_beside_it_and_names_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("chatgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("proxy.toml");

        std::fs::write(&path, "[tls]\ncert = \"c.pem\"\nkey = \"/abs/k.pem\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.tls.cert, dir.join("c.pem"));
        assert_eq!(config.tls.key, PathBuf::from("/abs/k.pem"));

        std::fs::write(&path, "[server]\nshutdown_grace = \"3x\"\n").unwrap();
        let message = Config::load(&path).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}: server.shutdown_grace:", path.display())),
            "{message}"
        );

        let missing = dir.join("missing.toml");
        let message = Config::load(&missing).unwrap_err().to_string();
        assert!(message.starts_with(&format!("{}: cannot read", missing.display())));

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
