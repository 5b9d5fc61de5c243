//! The decisions on a chat body and an agent body (SPEC section 10), as
//! pure functions of the organization's config, the body and the pool's
//! model specs.

use serde_json::Value;

use super::chat_body::{BadBody, ChatBody, Conversation};
use super::config::{Feature, LibreChatConfig};
use super::rules::{self, Refusal};
use super::specs::ModelSpecs;

/// Why a checked body does not go upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefusal {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Bad(#[from] BadBody),
}

/// Endpoints whose conversations keep their own instructions: a saved
/// agent's, an assistant's.
const OWN_INSTRUCTIONS: [&str; 3] = ["agents", "assistants", "azureAssistants"];

/// Whether `custom_instructions` go in front of this conversation's `promptPrefix`.
pub fn takes_instructions(conversation: &Conversation) -> bool {
    conversation
        .endpoint
        .as_deref()
        .is_none_or(|e| !OWN_INSTRUCTIONS.contains(&e))
        && conversation.agent_id.as_deref().is_none_or(str::is_empty)
}

/// Whether any conversation of the body names a model spec.
pub fn names_a_spec(body: &ChatBody) -> bool {
    std::iter::once(&body.conversation)
        .chain(body.added_convo.as_ref())
        .any(|c| c.spec.as_deref().is_some_and(|s| !s.is_empty()))
}

/// A chat request: every conversation of the body (the body itself and
/// `addedConvo`), then the ephemeral agent's tools. `specs` is needed only
/// when [`names_a_spec`]; `assistants` when the route is an Assistants chat.
pub fn check_chat(
    config: &LibreChatConfig,
    body: &ChatBody,
    specs: Option<&ModelSpecs>,
    assistants: bool,
) -> Result<(), Refusal> {
    if !config.restricts_chat() {
        return Ok(());
    }
    check_conversation(config, &body.conversation, specs, assistants)?;
    if let Some(added) = &body.added_convo {
        check_conversation(config, added, specs, false)?;
    }
    if let Some(agent) = &body.ephemeral_agent {
        if agent.execute_code {
            rules::check_feature(config, Feature::CodeInterpreter)?;
        }
        if agent.file_search {
            rules::check_file_search(config)?;
        }
        for server in &agent.mcp {
            rules::check_mcp_server(config, server)?;
        }
    }
    Ok(())
}

fn check_conversation(
    config: &LibreChatConfig,
    conversation: &Conversation,
    specs: Option<&ModelSpecs>,
    assistants: bool,
) -> Result<(), Refusal> {
    let non_empty = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let endpoint =
        non_empty(&conversation.endpoint).or_else(|| assistants.then(|| "assistants".to_owned()));
    let agent_id = non_empty(&conversation.agent_id);
    let spec = non_empty(&conversation.spec);
    match &endpoint {
        Some(endpoint) => rules::check_endpoint(config, endpoint)?,
        None if config.allowed_endpoints.is_some() => {
            return Err(Refusal::ModelNotAllowed(
                "the chat names no endpoint, and your organization allows only some".to_owned(),
            ))
        }
        None => {}
    }
    if let Some(agent_id) = &agent_id {
        rules::check_endpoint(config, "agents").map_err(|_| {
            Refusal::ModelNotAllowed(format!(
                "the agent \"{agent_id}\" cannot be used: agents are not enabled for your organization"
            ))
        })?;
    }
    if let Some(name) = &spec {
        let preset = specs.and_then(|s| s.get(name)).ok_or_else(|| {
            Refusal::ModelNotAllowed(format!("the model spec \"{name}\" is unknown"))
        })?;
        let in_spec = |refusal: Refusal| match refusal {
            Refusal::ModelNotAllowed(m) => {
                Refusal::ModelNotAllowed(format!("model spec \"{name}\": {m}"))
            }
            Refusal::FeatureDisabled(m) => {
                Refusal::FeatureDisabled(format!("model spec \"{name}\": {m}"))
            }
        };
        if let Some(endpoint) = &preset.endpoint {
            rules::check_endpoint(config, endpoint).map_err(in_spec)?;
        }
        if let Some(model) = &preset.model {
            rules::check_model(config, model).map_err(in_spec)?;
        }
        if preset.agent_id.is_some() {
            rules::check_endpoint(config, "agents").map_err(in_spec)?;
        }
        if preset.execute_code {
            rules::check_feature(config, Feature::CodeInterpreter).map_err(in_spec)?;
        }
        if preset.file_search {
            rules::check_file_search(config).map_err(in_spec)?;
        }
        for server in &preset.mcp_servers {
            rules::check_mcp_server(config, server).map_err(in_spec)?;
        }
    }
    match non_empty(&conversation.model) {
        Some(model) => rules::check_model(config, &model)?,
        // A saved agent or a spec carries its model; otherwise LibreChat
        // would fall back to a default the policy has not seen.
        None if config.enabled_models.is_some()
            && agent_id.is_none()
            && spec.is_none()
            && endpoint.as_deref() != Some("agents") =>
        {
            return Err(Refusal::ModelNotAllowed(
                "the chat names no model, and your organization allows only some".to_owned(),
            ))
        }
        None => {}
    }
    Ok(())
}

/// An agent being created or changed (`POST /api/agents`, `PATCH
/// /api/agents/<id>`), or the agent a duplicate or revert copies: its
/// `provider`, `model` and `tools`, each when present.
pub fn check_agent(config: &LibreChatConfig, agent: &Value) -> Result<(), BodyRefusal> {
    let Some(map) = agent.as_object() else {
        return Err(BadBody("an agent must be a JSON object".to_owned()).into());
    };
    let text = |key: &str| -> Result<Option<&str>, BadBody> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(BadBody(format!("the agent's `{key}` must be a string"))),
        }
    };
    if let Some(provider) = text("provider")? {
        rules::check_endpoint(config, provider)?;
    }
    if let Some(model) = text("model")? {
        rules::check_model(config, model)?;
    }
    match map.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(tools)) => {
            for tool in tools {
                let name = tool
                    .as_str()
                    .ok_or_else(|| BadBody("the agent's `tools` must be names".to_owned()))?;
                rules::check_agent_tool(config, name)?;
            }
        }
        Some(_) => return Err(BadBody("the agent's `tools` must be a list".to_owned()).into()),
    }
    Ok(())
}

/// Whether an agent body needs reading at all under this config.
pub fn restricts_agents(config: &LibreChatConfig) -> bool {
    config.allowed_endpoints.is_some()
        || config.enabled_models.is_some()
        || config.mcp_servers.is_some()
        || config.knowledge_bases.is_some()
        || !config.allows(Feature::CodeInterpreter)
        || !config.allows(Feature::ImageGeneration)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::specs::Preset;
    use super::*;

    fn config(value: Value) -> LibreChatConfig {
        LibreChatConfig::from_json(Some(&value))
    }

    fn chat(value: Value) -> ChatBody {
        ChatBody::parse(value.to_string().as_bytes()).unwrap()
    }

    fn refusal(config: &LibreChatConfig, body: Value) -> Option<String> {
        let specs: ModelSpecs = [
            (
                "fast".to_owned(),
                Preset {
                    endpoint: Some("openAI".into()),
                    model: Some("gpt-4o-mini".into()),
                    ..Preset::default()
                },
            ),
            (
                "coder".to_owned(),
                Preset {
                    endpoint: Some("openAI".into()),
                    model: Some("gpt-4-turbo".into()),
                    execute_code: true,
                    ..Preset::default()
                },
            ),
        ]
        .into_iter()
        .collect();
        check_chat(config, &chat(body), Some(&specs), false)
            .err()
            .map(|r| r.to_string())
    }

    #[test]
    fn endpoint_and_model_of_the_body_decide() {
        let c =
            config(json!({"allowed_endpoints": ["openAI", "agents"], "enabled_models": ["gpt-4"]}));
        assert_eq!(
            refusal(&c, json!({"endpoint": "openAI", "model": "gpt-4-turbo"})),
            None
        );
        let r = refusal(&c, json!({"endpoint": "openAI", "model": "gpt-4o"})).unwrap();
        assert!(r.contains("\"gpt-4o\""), "{r}");
        let r = refusal(&c, json!({"endpoint": "anthropic", "model": "gpt-4"})).unwrap();
        assert!(r.contains("\"anthropic\""), "{r}");
        assert!(refusal(&c, json!({"model": "gpt-4"}))
            .unwrap()
            .contains("no endpoint"));
        assert!(refusal(&c, json!({"endpoint": "openAI"}))
            .unwrap()
            .contains("no model"));
    }

    #[test]
    fn a_saved_agent_needs_the_agents_endpoint() {
        let c = config(json!({"allowed_endpoints": ["openAI"]}));
        let r = refusal(
            &c,
            json!({"endpoint": "openAI", "model": "gpt-4o", "agent_id": "agent_1"}),
        )
        .unwrap();
        assert!(r.contains("agent_1"), "{r}");
        let agents = config(json!({"allowed_endpoints": ["agents"], "enabled_models": ["gpt-4o"]}));
        assert_eq!(
            refusal(
                &agents,
                json!({"endpoint": "agents", "agent_id": "agent_1"})
            ),
            None
        );
    }

    #[test]
    fn added_convo_is_checked_like_the_body() {
        let c = config(json!({"allowed_endpoints": ["openAI"], "enabled_models": ["gpt-4o"]}));
        assert_eq!(
            refusal(
                &c,
                json!({"endpoint": "openAI", "model": "gpt-4o", "addedConvo": {"endpoint": "openAI", "model": "gpt-4o"}})
            ),
            None
        );
        let r = refusal(&c, json!({"endpoint": "openAI", "model": "gpt-4o",
                                   "addedConvo": {"endpoint": "anthropic", "model": "claude-3-opus"}}))
        .unwrap();
        assert!(r.contains("anthropic"), "{r}");
        let r = refusal(
            &c,
            json!({"endpoint": "openAI", "model": "gpt-4o",
                                   "addedConvo": {"endpoint": "openAI", "model": "o1"}}),
        )
        .unwrap();
        assert!(r.contains("\"o1\""), "{r}");
    }

    #[test]
    fn specs_resolve_to_their_preset() {
        let c = config(
            json!({"enabled_models": ["gpt-4o-mini"], "features": {"code_interpreter": false}}),
        );
        assert_eq!(
            refusal(&c, json!({"endpoint": "openAI", "spec": "fast"})),
            None
        );
        assert!(refusal(&c, json!({"endpoint": "openAI", "spec": "coder"}))
            .unwrap()
            .contains("coder"));
        assert!(refusal(&c, json!({"endpoint": "openAI", "spec": "nope"}))
            .unwrap()
            .contains("unknown"));
        // No restriction at all: any spec passes, known or not.
        assert_eq!(
            refusal(&LibreChatConfig::default(), json!({"spec": "nope"})),
            None
        );
    }

    #[test]
    fn ephemeral_agent_tools_need_their_feature() {
        let c = config(
            json!({"mcp_servers": ["github"], "knowledge_bases": [], "features": {"code_interpreter": false}}),
        );
        let base = |agent: Value| json!({"endpoint": "openAI", "model": "gpt-4o", "ephemeralAgent": agent});
        assert_eq!(
            refusal(&c, base(json!({"mcp": ["github"], "web_search": true}))),
            None
        );
        assert!(refusal(&c, base(json!({"mcp": ["github", "slack"]})))
            .unwrap()
            .contains("slack"));
        assert!(refusal(&c, base(json!({"execute_code": true})))
            .unwrap()
            .contains("code_interpreter"));
        assert!(refusal(&c, base(json!({"file_search": true})))
            .unwrap()
            .contains("knowledge base"));
        assert_eq!(
            refusal(
                &c,
                base(json!({"execute_code": false, "file_search": null}))
            ),
            None
        );
    }

    #[test]
    fn instructions_skip_agents_and_assistants() {
        let conv = |value: Value| chat(value).conversation;
        assert!(takes_instructions(&conv(json!({"endpoint": "openAI"}))));
        assert!(takes_instructions(&conv(
            json!({"endpoint": "OpenRouter", "endpointType": "custom"})
        )));
        assert!(!takes_instructions(&conv(json!({"endpoint": "agents"}))));
        assert!(!takes_instructions(&conv(
            json!({"endpoint": "assistants"})
        )));
        assert!(!takes_instructions(&conv(
            json!({"endpoint": "openAI", "agent_id": "a"})
        )));
    }

    #[test]
    fn agents_are_checked_by_provider_model_and_tools() {
        let c = config(json!({
            "allowed_endpoints": ["openAI", "agents"], "enabled_models": ["gpt-4o*"],
            "mcp_servers": ["github"], "features": {"image_generation": false}
        }));
        assert!(check_agent(&c, &json!({"provider": "openAI", "model": "gpt-4o", "tools": ["web_search", "x_mcp_github"]})).is_ok());
        assert!(check_agent(&c, &json!({"name": "only a rename"})).is_ok());
        let refused = |agent: Value| check_agent(&c, &agent).unwrap_err().to_string();
        assert!(refused(json!({"provider": "anthropic"})).contains("anthropic"));
        assert!(refused(json!({"model": "gpt-4-turbo"})).contains("gpt-4-turbo"));
        assert!(refused(json!({"tools": ["dalle"]})).contains("dalle"));
        assert!(refused(json!({"tools": ["x_mcp_slack"]})).contains("slack"));
        assert!(refused(json!({"provider": 5})).contains("must be a string"));
        assert!(refused(json!([1])).contains("object"));
        assert!(!restricts_agents(&LibreChatConfig::default()));
        assert!(restricts_agents(&c));
    }
}
