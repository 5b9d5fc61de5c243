//! Model specs (SPEC section 10): a chat may name a `spec` instead of an
//! endpoint and model; LibreChat resolves it through its `modelSpecs`,
//! which any instance serves at `GET /api/config` (no sign-in needed). The
//! list is read from a healthy instance when a chat first names a spec and
//! kept for `tenant_cache_ttl`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::body;
use crate::upstream::Pool;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// LibreChat's startup config is a few KiB; refuse anything absurd.
const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// A spec's preset, as far as the policy cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preset {
    pub endpoint: Option<String>,
    pub model: Option<String>,
    pub agent_id: Option<String>,
    /// Tools the preset switches on by itself.
    pub execute_code: bool,
    pub file_search: bool,
    pub mcp_servers: Vec<String>,
}

/// Spec name → preset.
pub type ModelSpecs = HashMap<String, Preset>;

/// Reads `modelSpecs.list[]` of a `GET /api/config` answer.
pub fn parse_model_specs(config: &Value) -> ModelSpecs {
    let mut specs = ModelSpecs::new();
    let Some(list) = config.pointer("/modelSpecs/list").and_then(Value::as_array) else {
        return specs;
    };
    for spec in list {
        let Some(name) = spec.get("name").and_then(Value::as_str) else {
            continue;
        };
        let preset = spec.get("preset").unwrap_or(&Value::Null);
        let text = |key: &str| preset.get(key).and_then(Value::as_str).map(str::to_owned);
        let flag = |key: &str| preset.get(key).and_then(Value::as_bool).unwrap_or(false);
        specs.insert(
            name.to_owned(),
            Preset {
                endpoint: text("endpoint"),
                model: text("model"),
                agent_id: text("agent_id"),
                execute_code: flag("executeCode"),
                file_search: flag("fileSearch"),
                mcp_servers: preset
                    .get("mcpServers")
                    .and_then(Value::as_array)
                    .map(|servers| {
                        servers
                            .iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            },
        );
    }
    specs
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("model specs unavailable: {0}")]
pub struct SpecsUnavailable(String);

/// The specs of the pool, fetched once per TTL (concurrent misses share one fetch).
#[derive(Debug)]
pub struct SpecCache {
    cache: moka::future::Cache<(), Arc<ModelSpecs>>,
}

impl SpecCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(1)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub async fn get(&self, pool: &Pool) -> Result<Arc<ModelSpecs>, SpecsUnavailable> {
        self.cache
            .try_get_with((), fetch(pool))
            .await
            .map_err(|e| (*e).clone())
    }
}

async fn fetch(pool: &Pool) -> Result<Arc<ModelSpecs>, SpecsUnavailable> {
    let upstream = pool
        .least_loaded(None)
        .ok_or_else(|| SpecsUnavailable("no LibreChat instance is available".to_owned()))?;
    let mut request = Request::new(body::empty());
    *request.uri_mut() = upstream.uri_for(http::uri::PathAndQuery::from_static("/api/config"));
    request.headers_mut().insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    let exchange = async {
        let response = upstream
            .client()
            .request(request)
            .await
            .map_err(|e| SpecsUnavailable(crate::error::error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(SpecsUnavailable(format!(
                "{} answered {} to /api/config",
                upstream.url,
                response.status()
            )));
        }
        let bytes = Limited::new(response.into_body(), MAX_CONFIG_BYTES)
            .collect()
            .await
            .map_err(|e| SpecsUnavailable(e.to_string()))?
            .to_bytes();
        let config: Value = serde_json::from_slice(&bytes)
            .map_err(|e| SpecsUnavailable(format!("/api/config is not JSON: {e}")))?;
        Ok(Arc::new(parse_model_specs(&config)))
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| SpecsUnavailable("/api/config did not answer in time".to_owned()))?
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn presets_are_read_from_the_startup_config() {
        let specs = parse_model_specs(&json!({
            "modelSpecs": {"enforce": false, "list": [
                {"name": "fast", "label": "Fast", "preset": {"endpoint": "openAI", "model": "gpt-4o-mini"}},
                {"name": "coder", "preset": {"endpoint": "anthropic", "model": "claude-3-5-sonnet-20241022",
                                             "executeCode": true, "mcpServers": ["github"]}},
                {"label": "no name"}
            ]}
        }));
        assert_eq!(specs.len(), 2);
        assert_eq!(specs["fast"].model.as_deref(), Some("gpt-4o-mini"));
        assert!(specs["coder"].execute_code);
        assert_eq!(specs["coder"].mcp_servers, vec!["github".to_owned()]);
        assert!(parse_model_specs(&json!({})).is_empty());
    }
}
