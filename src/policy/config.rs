//! An organization's `librechat_config` (the seed's `LibreChatConfig`),
//! read once when the profile is loaded and kept typed beside it (SPEC
//! sections 6 and 10). A leaf: it depends on nothing of chatgate's, so the
//! organization lookup below the policy phase can hold it.
//!
//! Reading rules, so a typo never opens what it meant to close:
//! - a key that is absent or `null` restricts nothing;
//! - a list keeps its string items; a list key holding something else
//!   (a string, a number, an object) counts as an empty list: nothing allowed;
//! - `max_tokens` is a non-negative integer (or a string of one); anything
//!   else counts as 0: chats are refused until it is fixed;
//! - a feature is allowed unless it is `false`; a non-boolean counts as `false`.
//!
//! Each such reading is listed in [`LibreChatConfig::problems`] and logged
//! once per lookup.

use serde_json::Value;

/// The organization's policy. `None` = not restricted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LibreChatConfig {
    pub enabled_models: Option<Vec<String>>,
    pub allowed_endpoints: Option<Vec<String>>,
    /// Tokens per UTC month, for the whole organization.
    pub max_tokens: Option<u64>,
    pub mcp_servers: Option<Vec<String>>,
    /// Only its emptiness matters to chatgate: file search needs one.
    pub knowledge_bases: Option<Vec<String>>,
    pub custom_instructions: Option<String>,
    pub features: Features,
    /// What could not be read as the seed's shape, and how it was taken.
    pub problems: Vec<String>,
}

/// `features {…}`: `None` (absent) and `Some(true)` allow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub file_upload: Option<bool>,
    pub image_generation: Option<bool>,
    pub voice_chat: Option<bool>,
    pub code_interpreter: Option<bool>,
}

/// One of the four switches of `features`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    FileUpload,
    ImageGeneration,
    VoiceChat,
    CodeInterpreter,
}

impl Feature {
    pub fn key(self) -> &'static str {
        match self {
            Feature::FileUpload => "file_upload",
            Feature::ImageGeneration => "image_generation",
            Feature::VoiceChat => "voice_chat",
            Feature::CodeInterpreter => "code_interpreter",
        }
    }
}

impl LibreChatConfig {
    /// Reads `organizations.librechat_config`; `None` or `null` restricts nothing.
    pub fn from_json(value: Option<&Value>) -> Self {
        let mut config = Self::default();
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return config;
        };
        let Some(map) = value.as_object() else {
            config.problems.push(
                "librechat_config is not an object: every restriction applies with nothing allowed"
                    .to_owned(),
            );
            config.enabled_models = Some(Vec::new());
            config.allowed_endpoints = Some(Vec::new());
            config.mcp_servers = Some(Vec::new());
            config.knowledge_bases = Some(Vec::new());
            return config;
        };
        let problems = &mut config.problems;
        config.enabled_models = string_list(map.get("enabled_models"), "enabled_models", problems);
        config.allowed_endpoints =
            string_list(map.get("allowed_endpoints"), "allowed_endpoints", problems);
        config.mcp_servers = string_list(map.get("mcp_servers"), "mcp_servers", problems);
        config.knowledge_bases = knowledge_bases(map.get("knowledge_bases"), problems);
        config.max_tokens = max_tokens(map.get("max_tokens"), problems);
        config.custom_instructions = match map.get("custom_instructions") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.trim().is_empty() => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => {
                problems.push("custom_instructions is not a string: ignored".to_owned());
                None
            }
        };
        config.features = features(map.get("features"), problems);
        config
    }

    /// Whether any key limits what a chat may ask for (endpoints, models,
    /// tools): then a chat body must be read whole and checked.
    pub fn restricts_chat(&self) -> bool {
        self.enabled_models.is_some()
            || self.allowed_endpoints.is_some()
            || self.mcp_servers.is_some()
            || self.knowledge_bases.is_some()
            || self.features.code_interpreter.is_some()
    }

    pub fn allows(&self, feature: Feature) -> bool {
        let switch = match feature {
            Feature::FileUpload => self.features.file_upload,
            Feature::ImageGeneration => self.features.image_generation,
            Feature::VoiceChat => self.features.voice_chat,
            Feature::CodeInterpreter => self.features.code_interpreter,
        };
        switch != Some(false)
    }
}

fn string_list(
    value: Option<&Value>,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<Vec<String>> {
    match value? {
        Value::Null => None,
        Value::Array(items) => {
            let strings: Vec<String> = items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect();
            if strings.len() != items.len() {
                problems.push(format!("{key}: items that are not strings are ignored"));
            }
            Some(strings)
        }
        _ => {
            problems.push(format!("{key} is not a list: nothing is allowed"));
            Some(Vec::new())
        }
    }
}

/// Knowledge bases may be ids or objects; each item counts.
fn knowledge_bases(value: Option<&Value>, problems: &mut Vec<String>) -> Option<Vec<String>> {
    match value? {
        Value::Null => None,
        Value::Array(items) => Some(
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.clone(),
                    other => other
                        .get("id")
                        .and_then(Value::as_str)
                        .map_or_else(|| other.to_string(), str::to_owned),
                })
                .collect(),
        ),
        _ => {
            problems.push("knowledge_bases is not a list: file search is off".to_owned());
            Some(Vec::new())
        }
    }
}

fn max_tokens(value: Option<&Value>, problems: &mut Vec<String>) -> Option<u64> {
    let value = value?;
    let read = match value {
        Value::Null => return None,
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    if read.is_none() {
        problems.push("max_tokens is not a non-negative number: taken as 0".to_owned());
    }
    Some(read.unwrap_or(0))
}

fn features(value: Option<&Value>, problems: &mut Vec<String>) -> Features {
    let mut features = Features::default();
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return features;
    };
    let Some(map) = value.as_object() else {
        problems.push("features is not an object: ignored".to_owned());
        return features;
    };
    for (feature, slot) in [
        (Feature::FileUpload, &mut features.file_upload),
        (Feature::ImageGeneration, &mut features.image_generation),
        (Feature::VoiceChat, &mut features.voice_chat),
        (Feature::CodeInterpreter, &mut features.code_interpreter),
    ] {
        *slot = match map.get(feature.key()) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(on)) => Some(*on),
            Some(_) => {
                problems.push(format!(
                    "features.{} is not true or false: taken as false",
                    feature.key()
                ));
                Some(false)
            }
        };
    }
    features
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn absent_and_null_restrict_nothing() {
        for value in [
            None,
            Some(json!(null)),
            Some(json!({})),
            Some(json!({"enabled_models": null, "features": null})),
        ] {
            let config = LibreChatConfig::from_json(value.as_ref());
            assert_eq!(config, LibreChatConfig::default(), "{value:?}");
            assert!(config.problems.is_empty());
        }
    }

    #[test]
    fn the_seed_shape_is_read() {
        let config = LibreChatConfig::from_json(Some(&json!({
            "enabled_models": ["gpt-4", "claude-3"],
            "max_tokens": 100000,
            "knowledge_bases": [],
            "mcp_servers": ["github"],
            "custom_instructions": "Answer in French.",
            "allowed_endpoints": ["openAI", "anthropic"],
            "features": {"file_upload": true, "image_generation": false, "voice_chat": false, "code_interpreter": true}
        })));
        assert_eq!(
            config.enabled_models.as_deref(),
            Some(&["gpt-4".to_owned(), "claude-3".to_owned()][..])
        );
        assert_eq!(config.max_tokens, Some(100_000));
        assert_eq!(config.knowledge_bases, Some(Vec::new()));
        assert_eq!(
            config.custom_instructions.as_deref(),
            Some("Answer in French.")
        );
        assert!(config.allows(Feature::FileUpload));
        assert!(!config.allows(Feature::ImageGeneration));
        assert!(!config.allows(Feature::VoiceChat));
        assert!(config.allows(Feature::CodeInterpreter));
        assert!(config.problems.is_empty());
    }

    #[test]
    fn an_empty_list_allows_nothing_and_an_absent_one_everything() {
        let config = LibreChatConfig::from_json(Some(&json!({"enabled_models": []})));
        assert_eq!(config.enabled_models, Some(Vec::new()));
        assert_eq!(config.allowed_endpoints, None);
        assert!(config.restricts_chat());
    }

    #[test]
    fn wrong_types_close_rather_than_open() {
        let config = LibreChatConfig::from_json(Some(&json!({
            "enabled_models": "gpt-4",
            "max_tokens": "lots",
            "features": {"voice_chat": "no"},
            "custom_instructions": 5
        })));
        assert_eq!(config.enabled_models, Some(Vec::new()));
        assert_eq!(config.max_tokens, Some(0));
        assert!(!config.allows(Feature::VoiceChat));
        assert_eq!(config.custom_instructions, None);
        assert_eq!(config.problems.len(), 4, "{:?}", config.problems);
        let not_object = LibreChatConfig::from_json(Some(&json!(["gpt-4"])));
        assert_eq!(not_object.allowed_endpoints, Some(Vec::new()));
    }

    #[test]
    fn max_tokens_as_a_numeric_string_is_read() {
        let config = LibreChatConfig::from_json(Some(&json!({"max_tokens": " 5000 "})));
        assert_eq!(config.max_tokens, Some(5000));
    }
}
