//! SPEC section 10's rules, one small pure function each: what an
//! organization's [`LibreChatConfig`] allows. No I/O, no server: the table
//! tests below are the proof of each rule.

use serde_json::Value;

use super::config::{Feature, LibreChatConfig};

/// Why a request was refused; the message names what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 403 `model_not_allowed`: an endpoint, model, spec or agent.
    #[error("{0}")]
    ModelNotAllowed(String),
    /// 403 `feature_disabled`: a feature, an MCP server, file search.
    #[error("{0}")]
    FeatureDisabled(String),
}

/// SPEC 10 "Model names": equal, `<entry>-` family prefix, or a `*` glob.
/// Case-sensitive, as LibreChat compares.
pub fn model_matches(entry: &str, model: &str) -> bool {
    if entry.contains('*') {
        return glob_matches(entry.as_bytes(), model.as_bytes());
    }
    model == entry
        || (model.len() > entry.len()
            && model.starts_with(entry)
            && model.as_bytes()[entry.len()] == b'-')
}

/// `*` stands for any run of characters (also none); everything else is literal.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it is trying to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

pub fn model_allowed(config: &LibreChatConfig, model: &str) -> bool {
    config
        .enabled_models
        .as_ref()
        .is_none_or(|entries| entries.iter().any(|e| model_matches(e, model)))
}

pub fn endpoint_allowed(config: &LibreChatConfig, endpoint: &str) -> bool {
    config
        .allowed_endpoints
        .as_ref()
        .is_none_or(|names| names.iter().any(|n| n == endpoint))
}

pub fn mcp_server_allowed(config: &LibreChatConfig, server: &str) -> bool {
    config
        .mcp_servers
        .as_ref()
        .is_none_or(|names| names.iter().any(|n| n == server))
}

/// File search needs a knowledge base; absent `knowledge_bases` restricts nothing.
pub fn file_search_allowed(config: &LibreChatConfig) -> bool {
    config
        .knowledge_bases
        .as_ref()
        .is_none_or(|bases| !bases.is_empty())
}

pub fn check_endpoint(config: &LibreChatConfig, endpoint: &str) -> Result<(), Refusal> {
    if endpoint_allowed(config, endpoint) {
        Ok(())
    } else {
        Err(Refusal::ModelNotAllowed(format!(
            "the endpoint \"{endpoint}\" is not enabled for your organization"
        )))
    }
}

pub fn check_model(config: &LibreChatConfig, model: &str) -> Result<(), Refusal> {
    if model_allowed(config, model) {
        Ok(())
    } else {
        Err(Refusal::ModelNotAllowed(format!(
            "the model \"{model}\" is not enabled for your organization"
        )))
    }
}

pub fn check_feature(config: &LibreChatConfig, feature: Feature) -> Result<(), Refusal> {
    if config.allows(feature) {
        Ok(())
    } else {
        Err(Refusal::FeatureDisabled(format!(
            "the feature \"{}\" is disabled for your organization",
            feature.key()
        )))
    }
}

pub fn check_mcp_server(config: &LibreChatConfig, server: &str) -> Result<(), Refusal> {
    if mcp_server_allowed(config, server) {
        Ok(())
    } else {
        Err(Refusal::FeatureDisabled(format!(
            "the MCP server \"{server}\" is not enabled for your organization"
        )))
    }
}

pub fn check_file_search(config: &LibreChatConfig) -> Result<(), Refusal> {
    if file_search_allowed(config) {
        Ok(())
    } else {
        Err(Refusal::FeatureDisabled(
            "file search needs a knowledge base, and your organization has none".to_owned(),
        ))
    }
}

/// LibreChat's image tools (SPEC 10), gated by `image_generation`.
const IMAGE_TOOLS: [&str; 6] = [
    "dalle",
    "flux",
    "image_gen_oai",
    "image_edit_oai",
    "gemini_image_gen",
    "stable-diffusion",
];

/// What a tool name of an agent asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ToolKind<'a> {
    CodeInterpreter,
    FileSearch,
    Image,
    /// A tool of this MCP server (`<tool>_mcp_<server>` or a whole-server marker).
    Mcp(&'a str),
    Other,
}

pub fn tool_kind(tool: &str) -> ToolKind<'_> {
    if tool == "execute_code" {
        return ToolKind::CodeInterpreter;
    }
    if tool == "file_search" {
        return ToolKind::FileSearch;
    }
    if IMAGE_TOOLS.contains(&tool) {
        return ToolKind::Image;
    }
    for marker in ["sys__server__sys_mcp_", "sys__all__sys_mcp_"] {
        if let Some(server) = tool.strip_prefix(marker) {
            return ToolKind::Mcp(server);
        }
    }
    // LibreChat's delimiter; a server name never holds it, a tool name may.
    if let Some(at) = tool.rfind("_mcp_") {
        return ToolKind::Mcp(&tool[at + "_mcp_".len()..]);
    }
    ToolKind::Other
}

/// An agent's `tools` (SPEC 10, "Agents, tools and other routes").
pub fn check_agent_tool(config: &LibreChatConfig, tool: &str) -> Result<(), Refusal> {
    match tool_kind(tool) {
        ToolKind::CodeInterpreter => check_feature(config, Feature::CodeInterpreter),
        ToolKind::FileSearch => check_file_search(config),
        ToolKind::Image => check_feature(config, Feature::ImageGeneration).map_err(|_| {
            Refusal::FeatureDisabled(format!(
                "the image tool \"{tool}\" is disabled for your organization"
            ))
        }),
        ToolKind::Mcp(server) => check_mcp_server(config, server),
        ToolKind::Other => Ok(()),
    }
}

/// `GET /api/models` (`{endpoint: [model…]}`): endpoints and models the
/// organization may use. Other shapes are left as they are.
pub fn filter_models(config: &LibreChatConfig, body: &mut Value) {
    let Some(map) = body.as_object_mut() else {
        return;
    };
    map.retain(|endpoint, _| endpoint_allowed(config, endpoint));
    if config.enabled_models.is_none() {
        return;
    }
    for models in map.values_mut() {
        if let Some(list) = models.as_array_mut() {
            list.retain(|m| m.as_str().is_some_and(|m| model_allowed(config, m)));
        }
    }
}

/// `GET /api/endpoints` (`{endpoint: config}`): allowed endpoints only.
pub fn filter_endpoints(config: &LibreChatConfig, body: &mut Value) {
    if let Some(map) = body.as_object_mut() {
        map.retain(|endpoint, _| endpoint_allowed(config, endpoint));
    }
}

/// `GET /api/mcp/tools` (`{servers: {name: …}}`) and `GET /api/mcp/servers`
/// (`{name: config}`; older versions a list of `{name|serverName}`):
/// allowed servers only.
pub fn filter_mcp(config: &LibreChatConfig, body: &mut Value) {
    if config.mcp_servers.is_none() {
        return;
    }
    let target = match body.get_mut("servers") {
        Some(servers) if servers.is_object() || servers.is_array() => servers,
        _ => body,
    };
    match target {
        Value::Object(map) => map.retain(|name, _| mcp_server_allowed(config, name)),
        Value::Array(items) => items.retain(|item| {
            item.get("serverName")
                .or_else(|| item.get("name"))
                .and_then(Value::as_str)
                .is_some_and(|name| mcp_server_allowed(config, name))
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(value: Value) -> LibreChatConfig {
        LibreChatConfig::from_json(Some(&value))
    }

    #[test]
    fn model_names_match_exactly_by_family_or_by_glob() {
        let cases = [
            // (entry, model, matches)
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4", "gpt-4-turbo", true),
            ("gpt-4", "gpt-4-0613", true),
            ("gpt-4", "gpt-4o", false),
            ("gpt-4", "gpt-4o-mini", false),
            ("gpt-4", "gpt-4", true),
            ("gpt-4", "gpt-4-", true),
            ("gpt-4", "gpt-3.5-turbo", false),
            ("claude-3", "claude-3-5-sonnet-20241022", true),
            ("claude-3", "claude-3-opus-20240229", true),
            ("claude-3", "claude-3.5-sonnet", false),
            ("claude-3-5", "claude-3-5-sonnet-20241022", true),
            ("claude-3-5", "claude-3-opus-20240229", false),
            ("gpt-4o*", "gpt-4o", true),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4-turbo", false),
            ("*sonnet*", "claude-3-5-sonnet-20241022", true),
            ("*", "anything", true),
            ("gemini-*-pro", "gemini-1.5-pro", true),
            ("gemini-*-pro", "gemini-1.5-pro-002", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("GPT-4", "gpt-4", false),
            ("gpt-4", "GPT-4-turbo", false),
            ("", "gpt-4", false),
        ];
        for (entry, model, expected) in cases {
            assert_eq!(model_matches(entry, model), expected, "{entry} vs {model}");
        }
    }

    #[test]
    fn an_absent_list_allows_all_an_empty_one_nothing() {
        let open = config(json!({}));
        let closed =
            config(json!({"enabled_models": [], "allowed_endpoints": [], "mcp_servers": []}));
        assert!(model_allowed(&open, "gpt-4o"));
        assert!(endpoint_allowed(&open, "openAI"));
        assert!(mcp_server_allowed(&open, "github"));
        assert!(!model_allowed(&closed, "gpt-4o"));
        assert!(!endpoint_allowed(&closed, "openAI"));
        assert!(!mcp_server_allowed(&closed, "github"));
    }

    #[test]
    fn endpoints_compare_exactly() {
        let config = config(json!({"allowed_endpoints": ["openAI", "OpenRouter"]}));
        assert!(check_endpoint(&config, "openAI").is_ok());
        assert!(check_endpoint(&config, "OpenRouter").is_ok());
        assert!(check_endpoint(&config, "openai").is_err());
        assert!(check_endpoint(&config, "azureOpenAI").is_err());
        let err = check_endpoint(&config, "anthropic").unwrap_err();
        assert!(err.to_string().contains("\"anthropic\""), "{err}");
    }

    #[test]
    fn file_search_needs_a_knowledge_base() {
        assert!(file_search_allowed(&config(json!({}))));
        assert!(file_search_allowed(&config(
            json!({"knowledge_bases": ["kb1"]})
        )));
        assert!(!file_search_allowed(&config(
            json!({"knowledge_bases": []})
        )));
    }

    #[test]
    fn tool_names_are_classified() {
        assert_eq!(tool_kind("execute_code"), ToolKind::CodeInterpreter);
        assert_eq!(tool_kind("file_search"), ToolKind::FileSearch);
        assert_eq!(tool_kind("dalle"), ToolKind::Image);
        assert_eq!(tool_kind("stable-diffusion"), ToolKind::Image);
        assert_eq!(
            tool_kind("create_issue_mcp_github"),
            ToolKind::Mcp("github")
        );
        assert_eq!(
            tool_kind("get_mcp_info_mcp_my_server"),
            ToolKind::Mcp("my_server")
        );
        assert_eq!(
            tool_kind("sys__server__sys_mcp_github"),
            ToolKind::Mcp("github")
        );
        assert_eq!(tool_kind("sys__all__sys_mcp_slack"), ToolKind::Mcp("slack"));
        assert_eq!(tool_kind("web_search"), ToolKind::Other);
        assert_eq!(tool_kind("calculator"), ToolKind::Other);
    }

    #[test]
    fn agent_tools_follow_features_and_servers() {
        let config = config(json!({
            "mcp_servers": ["github"],
            "knowledge_bases": [],
            "features": {"code_interpreter": false, "image_generation": false}
        }));
        let refused = |tool: &str| check_agent_tool(&config, tool).is_err();
        assert!(refused("execute_code"));
        assert!(refused("file_search"));
        assert!(refused("dalle"));
        assert!(refused("flux"));
        assert!(refused("search_mcp_slack"));
        assert!(refused("sys__server__sys_mcp_slack"));
        assert!(!refused("search_mcp_github"));
        assert!(!refused("sys__all__sys_mcp_github"));
        assert!(!refused("calculator"));
        let open = LibreChatConfig::default();
        for tool in ["execute_code", "file_search", "dalle", "x_mcp_slack"] {
            assert!(check_agent_tool(&open, tool).is_ok(), "{tool}");
        }
    }

    #[test]
    fn model_lists_are_filtered_by_endpoint_and_family() {
        let config = config(
            json!({"allowed_endpoints": ["openAI", "anthropic"], "enabled_models": ["gpt-4", "claude-3"]}),
        );
        let mut models = json!({
            "openAI": ["gpt-4o", "gpt-4-turbo", "gpt-4", "gpt-3.5-turbo"],
            "anthropic": ["claude-3-5-sonnet-20241022", "claude-2.1"],
            "google": ["gemini-1.5-pro"],
            "agents": []
        });
        filter_models(&config, &mut models);
        assert_eq!(
            models,
            json!({"openAI": ["gpt-4-turbo", "gpt-4"], "anthropic": ["claude-3-5-sonnet-20241022"]})
        );
    }

    #[test]
    fn model_lists_without_a_model_restriction_keep_every_model() {
        let config = config(json!({"allowed_endpoints": ["openAI"]}));
        let mut models = json!({"openAI": ["gpt-4o", "o1"], "google": ["gemini"]});
        filter_models(&config, &mut models);
        assert_eq!(models, json!({"openAI": ["gpt-4o", "o1"]}));
    }

    #[test]
    fn endpoint_configs_are_filtered() {
        let config = config(json!({"allowed_endpoints": ["agents"]}));
        let mut endpoints =
            json!({"openAI": {"order": 0}, "agents": {"order": 1}, "assistants": null});
        filter_endpoints(&config, &mut endpoints);
        assert_eq!(endpoints, json!({"agents": {"order": 1}}));
    }

    #[test]
    fn mcp_lists_are_filtered_in_every_shape() {
        let config = config(json!({"mcp_servers": ["github"]}));
        let mut tools = json!({"servers": {"github": {"tools": []}, "slack": {"tools": []}}});
        filter_mcp(&config, &mut tools);
        assert_eq!(tools, json!({"servers": {"github": {"tools": []}}}));
        let mut servers = json!({"github": {"type": "sse"}, "slack": {"type": "sse"}});
        filter_mcp(&config, &mut servers);
        assert_eq!(servers, json!({"github": {"type": "sse"}}));
        let mut listed = json!([{"name": "github"}, {"serverName": "slack"}, {"other": 1}]);
        filter_mcp(&config, &mut listed);
        assert_eq!(listed, json!([{"name": "github"}]));
        let mut untouched = json!({"servers": {"slack": {}}});
        filter_mcp(&LibreChatConfig::default(), &mut untouched);
        assert_eq!(untouched, json!({"servers": {"slack": {}}}));
    }
}
