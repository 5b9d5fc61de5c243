//! The stand-in LibreChat's lists and config, shaped as LibreChat 0.8.x
//! answers them (`GET /api/models`, `/api/endpoints`, `/api/mcp/tools`,
//! `/api/mcp/servers`, `/api/config` with model specs, `GET
//! /api/agents/<id>`), compressed with gzip when the request accepts it, as
//! LibreChat's Express `compression` does.

use std::io::Write as _;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

/// Every model the stand-in offers, by endpoint.
pub fn models() -> Value {
    json!({
        "openAI": ["gpt-4o", "gpt-4o-mini", "gpt-4-turbo", "gpt-4", "gpt-3.5-turbo", "o1"],
        "anthropic": ["claude-3-5-sonnet-20241022", "claude-3-opus-20240229", "claude-2.1"],
        "google": ["gemini-1.5-pro"],
        "OpenRouter": ["meta-llama/llama-3-70b"],
        "agents": []
    })
}

pub fn endpoints() -> Value {
    json!({
        "openAI": {"order": 0, "userProvide": false},
        "anthropic": {"order": 2, "userProvide": false},
        "google": {"order": 3, "userProvide": true},
        "OpenRouter": {"order": 4, "type": "custom", "userProvide": false},
        "agents": {"order": 1, "userProvide": false},
        "assistants": null
    })
}

pub fn mcp_tools() -> Value {
    json!({"servers": {
        "github": {"name": "github", "authenticated": true, "tools": [{"name": "create_issue", "pluginKey": "create_issue_mcp_github"}]},
        "slack": {"name": "slack", "authenticated": true, "tools": [{"name": "post", "pluginKey": "post_mcp_slack"}]}
    }})
}

pub fn mcp_servers() -> Value {
    json!({
        "github": {"type": "streamable-http", "url": "https://mcp.github.example"},
        "slack": {"type": "sse", "url": "https://mcp.slack.example"}
    })
}

pub fn startup_config() -> Value {
    json!({
        "appTitle": "LibreChat",
        "modelSpecs": {"enforce": false, "prioritize": true, "list": [
            {"name": "fast", "label": "Fast", "preset": {"endpoint": "openAI", "model": "gpt-4o-mini"}},
            {"name": "opus", "label": "Opus", "preset": {"endpoint": "anthropic", "model": "claude-3-opus-20240229"}},
            {"name": "coder", "label": "Coder", "preset": {"endpoint": "openAI", "model": "gpt-4o", "executeCode": true}}
        ]}
    })
}

/// A saved agent, as `GET /api/agents/<id>` answers it: `agent_dalle`
/// uses an image tool, any other id is a plain gpt-4o agent.
pub fn agent(id: &str) -> Value {
    let tools = if id == "agent_dalle" {
        json!(["dalle"])
    } else {
        json!(["web_search"])
    };
    json!({"id": id, "name": "Helper", "provider": "openAI", "model": "gpt-4o", "tools": tools})
}

/// The answer for `method path`, when it is one of these routes. A request
/// with a query string is left to the echo, so tests can still see what
/// arrived on these paths.
pub fn answer(method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Option<Response<Bytes>> {
    if uri.query().is_some() {
        return None;
    }
    let body = match (method, uri.path()) {
        (&Method::GET, "/api/models") => models(),
        (&Method::GET, "/api/endpoints") => endpoints(),
        (&Method::GET, "/api/mcp/tools") => mcp_tools(),
        (&Method::GET, "/api/mcp/servers") => mcp_servers(),
        (&Method::GET, "/api/config") => startup_config(),
        (&Method::GET, p) if p.starts_with("/api/agents/agent_") && p.matches('/').count() == 3 => {
            agent(&p["/api/agents/".len()..])
        }
        _ => return None,
    };
    let text = body.to_string();
    let gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("gzip")));
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::OK;
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    out.insert(header::ETAG, HeaderValue::from_static("W/\"stand-in\""));
    let bytes = if gzip {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        out.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).expect("gzip");
        Bytes::from(encoder.finish().expect("gzip"))
    } else {
        Bytes::from(text)
    };
    *response.body_mut() = bytes;
    Some(response)
}
