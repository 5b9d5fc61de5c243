//! Phase 3b, SPEC section 10: the organization's `librechat_config`
//! enforced before a request reaches LibreChat. The decisions are the pure
//! functions of `crate::policy`; this phase reads the body they need, asks
//! them, and returns the [`ResponseFilter`] that narrows the lists LibreChat
//! answers with. It runs between `identify` and `rewrite_request`.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::app::App;
use crate::body::{self, ProxyBody, ReadBodyError, RequestBody};
use crate::config::AuthMode;
use crate::context::{ChatRequest, RequestContext};
use crate::error::ProxyError;
use crate::identity::Identity;
use crate::metrics::RouteClass;
use crate::policy::chat_body::ChatBody;
use crate::policy::config::LibreChatConfig;
use crate::policy::decide;
use crate::policy::route::{self, ListKind, PolicyRoute};
use crate::policy::rules::{self, Refusal};

/// The largest chat or agent body chatgate reads (SPEC 10).
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a client may take to send a body chatgate must read.
const READ_TIMEOUT: Duration = body::READ_WHOLE_TIMEOUT;
/// The largest list answer chatgate filters.
const MAX_LIST: usize = 8 * 1024 * 1024;

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::ModelNotAllowed(message) => ProxyError::ModelNotAllowed(message),
            Refusal::FeatureDisabled(message) => ProxyError::FeatureDisabled(message),
        }
    }
}

impl From<decide::BodyRefusal> for ProxyError {
    fn from(refusal: decide::BodyRefusal) -> Self {
        match refusal {
            decide::BodyRefusal::Refused(refusal) => refusal.into(),
            decide::BodyRefusal::Bad(bad) => ProxyError::InvalidBody(bad.0),
        }
    }
}

/// What happens to the instance's answer after the policy let a request through.
#[derive(Debug, Default)]
pub enum ResponseFilter {
    #[default]
    None,
    /// Keep only what the organization may use.
    List(ListKind, Box<LibreChatConfig>),
}

/// Checks the request against the organization's policy; refused requests
/// never reach LibreChat. A chat body may come back rewritten (custom
/// instructions).
pub async fn apply(
    app: &App,
    ctx: &mut RequestContext,
    identity: &Identity,
    request: Request<Incoming>,
) -> Result<(Request<RequestBody>, ResponseFilter), ProxyError> {
    let Some(route) = route::classify(request.method(), request.uri().path()) else {
        return Ok((request.map(RequestBody::Streaming), ResponseFilter::None));
    };
    // Boxed: reading and checking a body takes a 4.7 KiB future, which
    // every request's future would otherwise carry (and hyper move twice).
    Box::pin(apply_to(app, ctx, identity, request, route)).await
}

async fn apply_to(
    app: &App,
    ctx: &mut RequestContext,
    identity: &Identity,
    request: Request<Incoming>,
    route: PolicyRoute,
) -> Result<(Request<RequestBody>, ResponseFilter), ProxyError> {
    let organization = identity.organization();
    let config = organization.policy();
    let (mut parts, incoming) = request.into_parts();
    let mut body = RequestBody::Streaming(incoming);
    let mut filter = ResponseFilter::None;
    match route {
        PolicyRoute::Feature(feature) => rules::check_feature(config, feature)?,
        PolicyRoute::McpServer(server) => rules::check_mcp_server(config, &server)?,
        PolicyRoute::Tool(tool) => rules::check_agent_tool(config, &tool)?,
        PolicyRoute::List(kind) => {
            if filters(config, kind) {
                // A compressed or conditional answer could not be filtered.
                parts.headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
                parts.headers.remove(header::IF_NONE_MATCH);
                parts.headers.remove(header::IF_MODIFIED_SINCE);
                // List routes are a few per page load: the copy is cheap.
                filter = ResponseFilter::List(kind, Box::new(config.clone()));
            }
        }
        PolicyRoute::Chat { assistants } => {
            parts.headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            if let Some(max_tokens) = config.max_tokens {
                if let Some(retry_after) = app.quota.exceeded(&organization.id, max_tokens).await {
                    return Err(ProxyError::QuotaExceeded {
                        max_tokens,
                        retry_after,
                    });
                }
            }
            if config.restricts_chat() || config.custom_instructions.is_some() {
                body = check_chat(app, ctx, config, &mut parts, body, assistants).await?;
            }
        }
        PolicyRoute::AgentWrite => {
            if decide::restricts_agents(config) {
                let bytes = read(&parts, body).await?;
                let agent: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    ProxyError::InvalidBody(format!("the agent is not valid JSON: {e}"))
                })?;
                decide::check_agent(config, &agent)?;
                body = RequestBody::Read(bytes);
            }
        }
        PolicyRoute::AgentCopy => {
            if decide::restricts_agents(config) {
                check_agent_copy(app, identity, &parts).await?;
            }
        }
    }
    Ok((Request::from_parts(parts, body), filter))
}

/// Whether a list of this kind is narrowed under `config`.
fn filters(config: &LibreChatConfig, kind: ListKind) -> bool {
    match kind {
        ListKind::Models => config.allowed_endpoints.is_some() || config.enabled_models.is_some(),
        ListKind::Endpoints => config.allowed_endpoints.is_some(),
        ListKind::McpTools | ListKind::McpServers => config.mcp_servers.is_some(),
    }
}

/// Reads a body the policy must see whole; 413 beyond [`MAX_BODY`] (a
/// declared `Content-Length` is refused before anything is read).
async fn read(parts: &http::request::Parts, body: RequestBody) -> Result<Bytes, ProxyError> {
    let incoming = match body {
        RequestBody::Read(bytes) => return Ok(bytes),
        RequestBody::Streaming(incoming) => incoming,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        body::discard(incoming);
        return Err(ProxyError::PayloadTooLarge { limit: MAX_BODY });
    }
    body::read_whole(incoming, MAX_BODY, READ_TIMEOUT)
        .await
        .map_err(|e| match e {
            ReadBodyError::TooLarge(limit) => ProxyError::PayloadTooLarge { limit },
            ReadBodyError::Failed(error) => {
                ProxyError::InvalidBody(format!("the request body could not be read: {error}"))
            }
        })
}

async fn check_chat(
    app: &App,
    ctx: &mut RequestContext,
    config: &LibreChatConfig,
    parts: &mut http::request::Parts,
    body: RequestBody,
    assistants: bool,
) -> Result<RequestBody, ProxyError> {
    ctx.route = Some(RouteClass::Chat);
    let bytes = read(parts, body).await?;
    let chat = ChatBody::parse(&bytes).map_err(|bad| ProxyError::InvalidBody(bad.0))?;
    let specs = if config.restricts_chat() && decide::names_a_spec(&chat) {
        Some(app.model_specs.get(&app.pool).await.map_err(|e| {
            tracing::warn!(request_id = ctx.request_id_str(), error = %e, "model specs could not be read");
            ProxyError::ModelNotAllowed(
                "the model spec could not be checked right now; try again".to_owned(),
            )
        })?)
    } else {
        None
    };
    decide::check_chat(config, &chat, specs.as_deref(), assistants)?;
    ctx.chat = Some(ChatRequest {
        endpoint: chat.conversation.endpoint.clone(),
        model: chat.conversation.model.clone(),
        conversation_id: chat.conversation.conversation_id.clone(),
        agent_id: chat.conversation.agent_id.clone(),
    });
    let rewritten = config
        .custom_instructions
        .as_deref()
        .and_then(|instructions| {
            chat.with_instructions(&bytes, instructions, decide::takes_instructions)
        });
    let bytes = match rewritten {
        Some(changed) => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(changed.len()));
            changed
        }
        None => bytes,
    };
    Ok(RequestBody::Read(bytes))
}

/// `POST /api/agents/<id>/duplicate|revert` makes an agent from a stored
/// one, so the stored one is what is checked: asked of LibreChat with the
/// user's own LibreChat credentials, never chatgate's or Supabase's.
async fn check_agent_copy(
    app: &App,
    identity: &Identity,
    parts: &http::request::Parts,
) -> Result<(), ProxyError> {
    let path = parts.uri.path();
    let agent_path = path
        .rsplit_once('/')
        .map(|(prefix, _)| prefix)
        .unwrap_or(path);
    let upstream = app
        .pins
        .pick(&app.pool, identity.user_id(), None)
        .await
        .ok_or(ProxyError::NoHealthyUpstream)?;
    let mut lookup = Request::new(body::empty());
    *lookup.uri_mut() = upstream.uri_for(
        agent_path
            .parse()
            .map_err(|_| ProxyError::BadRequest("the request target is not valid"))?,
    );
    let headers = lookup.headers_mut();
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    // The credentials the copy itself will carry: LibreChat's own bearer
    // (oidc), or chatgate's token for this user (jwt).
    let authorization = match app.config.librechat.auth_mode {
        AuthMode::Oidc => parts.headers.get(header::AUTHORIZATION).cloned(),
        AuthMode::Jwt => app
            .librechat_tokens
            .for_identity(identity)
            .ok()
            .and_then(|minted| HeaderValue::from_str(&format!("Bearer {}", minted.token)).ok()),
    };
    if let Some(value) = authorization {
        headers.insert(header::AUTHORIZATION, value);
    }
    if app.config.librechat.tenant_header {
        if let Some(id) = identity.organization().id_header() {
            headers.insert(
                crate::proxy::rewrite_request::X_TENANT_ID.clone(),
                id.clone(),
            );
        }
    }
    let response = tokio::time::timeout(READ_TIMEOUT, upstream.client().request(lookup))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout)?
        .map_err(|e| ProxyError::UpstreamFailed(Box::new(e)))?;
    if !response.status().is_success() {
        // LibreChat will answer the copy itself the same way (not found, not allowed).
        return Ok(());
    }
    let bytes = Limited::new(response.into_body(), MAX_LIST)
        .collect()
        .await
        .map_err(|e| ProxyError::UpstreamFailed(e.to_string().into()))?
        .to_bytes();
    let agent: Value = serde_json::from_slice(&bytes).map_err(|_| {
        ProxyError::ModelNotAllowed("the agent to copy could not be checked".to_owned())
    })?;
    decide::check_agent(identity.organization().policy(), &agent).map_err(|refusal| match refusal {
        decide::BodyRefusal::Bad(_) => {
            ProxyError::ModelNotAllowed("the agent to copy could not be checked".to_owned())
        }
        other => other.into(),
    })
}

impl ResponseFilter {
    /// Narrows a list answer to what the organization may use. An answer
    /// chatgate cannot read (compressed although identity was asked, not
    /// JSON) is refused rather than shown whole.
    pub async fn apply(
        self,
        response: Response<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let ResponseFilter::List(kind, config) = self else {
            return Ok(response);
        };
        // Boxed for the same reason as `apply_to`: only list answers read a body.
        Box::pin(filter_list(kind, config, response)).await
    }
}

async fn filter_list(
    kind: ListKind,
    config: Box<LibreChatConfig>,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if response.status() != StatusCode::OK {
        return Ok(response);
    }
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(unreadable_list("it came compressed"));
    }
    let (mut parts, body) = response.into_parts();
    let bytes = body::collect_limited(body, MAX_LIST)
        .await
        .map_err(|e| ProxyError::UpstreamFailed(Box::new(e)))?;
    let mut list: Value =
        serde_json::from_slice(&bytes).map_err(|_| unreadable_list("it is not JSON"))?;
    match kind {
        ListKind::Models => rules::filter_models(&config, &mut list),
        ListKind::Endpoints => rules::filter_endpoints(&config, &mut list),
        ListKind::McpTools | ListKind::McpServers => rules::filter_mcp(&config, &mut list),
    }
    let filtered = Bytes::from(list.to_string());
    let headers = &mut parts.headers;
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(filtered.len()));
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::TRANSFER_ENCODING);
    // The instance's validators describe the unfiltered list.
    headers.remove(header::ETAG);
    headers.remove(header::LAST_MODIFIED);
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    Ok(Response::from_parts(parts, body::full(filtered)))
}

fn unreadable_list(why: &str) -> ProxyError {
    ProxyError::UpstreamFailed(format!("LibreChat's list could not be filtered: {why}").into())
}
