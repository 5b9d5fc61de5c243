//! Reading a chat request's JSON body the way LibreChat reads it (SPEC
//! section 10): only the fields the policy needs are decoded, everything
//! else is skipped without being built, a repeated key counts by its last
//! occurrence (as `JSON.parse` does), and where `promptPrefix` sits is
//! remembered so custom instructions can be put in front of it while every
//! other byte of the body goes upstream unchanged.

use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A body that cannot be checked: 400 `bad_request`, naming why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadBody(pub String);

/// One conversation of a chat request: the body itself, or its `addedConvo`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub endpoint: Option<String>,
    pub endpoint_type: Option<String>,
    pub model: Option<String>,
    pub spec: Option<String>,
    pub agent_id: Option<String>,
    pub conversation_id: Option<String>,
    /// The current `promptPrefix`, when it is a string.
    pub prompt_prefix: Option<String>,
    /// Where the (last) `promptPrefix` value is in the whole body.
    prompt_prefix_span: Option<Range<usize>>,
    /// Where this object's `{` is in the whole body.
    object_start: usize,
    /// Whether the object has at least one member.
    has_members: bool,
}

/// `ephemeralAgent`: the tools a chat switches on without a saved agent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EphemeralAgent {
    pub execute_code: bool,
    pub file_search: bool,
    pub mcp: Vec<String>,
}

/// What the policy reads of a chat body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChatBody {
    pub conversation: Conversation,
    pub added_convo: Option<Conversation>,
    pub ephemeral_agent: Option<EphemeralAgent>,
}

impl ChatBody {
    pub fn parse(body: &[u8]) -> Result<ChatBody, BadBody> {
        let text = std::str::from_utf8(body)
            .map_err(|_| BadBody("the request body is not UTF-8 JSON".to_owned()))?;
        let fields = parse_object(text, text, true)?;
        let mut chat = ChatBody {
            conversation: fields.conversation,
            ..ChatBody::default()
        };
        if let Some(raw) = fields.added_convo {
            if raw.get() != "null" {
                if !raw.get().starts_with('{') {
                    return Err(BadBody("addedConvo must be an object".to_owned()));
                }
                chat.added_convo = Some(parse_object(text, raw.get(), false)?.conversation);
            }
        }
        if let Some(raw) = fields.ephemeral_agent {
            chat.ephemeral_agent = parse_ephemeral_agent(raw.get())?;
        }
        Ok(chat)
    }

    /// The body with `instructions` put before `promptPrefix` (separated by
    /// a blank line) of each conversation `applies` says yes to; `None` when
    /// nothing changes.
    pub fn with_instructions(
        &self,
        body: &[u8],
        instructions: &str,
        applies: impl Fn(&Conversation) -> bool,
    ) -> Option<Bytes> {
        let mut edits: Vec<(Range<usize>, String)> = Vec::new();
        for conversation in std::iter::once(&self.conversation).chain(self.added_convo.as_ref()) {
            if !applies(conversation) {
                continue;
            }
            let text = match conversation.prompt_prefix.as_deref() {
                Some(prefix) if !prefix.is_empty() => format!("{instructions}\n\n{prefix}"),
                _ => instructions.to_owned(),
            };
            let value = serde_json::to_string(&text).ok()?;
            match &conversation.prompt_prefix_span {
                Some(span) => edits.push((span.clone(), value)),
                None => {
                    let at = conversation.object_start + 1;
                    let comma = if conversation.has_members { "," } else { "" };
                    edits.push((at..at, format!("\"promptPrefix\":{value}{comma}")));
                }
            }
        }
        if edits.is_empty() {
            return None;
        }
        edits.sort_by_key(|(span, _)| span.start);
        let added: usize = edits.iter().map(|(_, text)| text.len()).sum();
        let mut out = BytesMut::with_capacity(body.len() + added);
        let mut at = 0;
        for (span, text) in edits {
            out.extend_from_slice(&body[at..span.start]);
            out.extend_from_slice(text.as_bytes());
            at = span.end;
        }
        out.extend_from_slice(&body[at..]);
        Some(out.freeze())
    }
}

/// The fields of one object; `addedConvo` and `ephemeralAgent` stay raw.
struct Fields<'a> {
    conversation: Conversation,
    added_convo: Option<&'a RawValue>,
    ephemeral_agent: Option<&'a RawValue>,
}

/// Parses `object` (a slice of `whole`) as one conversation object.
fn parse_object<'a>(whole: &'a str, object: &'a str, top: bool) -> Result<Fields<'a>, BadBody> {
    let base = object.as_ptr() as usize - whole.as_ptr() as usize;
    let leading = object.len() - object.trim_start().len();
    if !object.trim_start().starts_with('{') {
        return Err(BadBody(if top {
            "the request body must be a JSON object".to_owned()
        } else {
            "addedConvo must be an object".to_owned()
        }));
    }
    let mut de = serde_json::Deserializer::from_str(object);
    let visitor = FieldsVisitor { whole };
    let mut fields = de
        .deserialize_map(visitor)
        .map_err(|e| BadBody(format!("the request body is not valid JSON: {e}")))?;
    de.end()
        .map_err(|e| BadBody(format!("the request body is not valid JSON: {e}")))?;
    fields.conversation.object_start = base + leading;
    Ok(fields)
}

struct FieldsVisitor<'a> {
    whole: &'a str,
}

impl<'de> Visitor<'de> for FieldsVisitor<'de> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields {
            conversation: Conversation::default(),
            added_convo: None,
            ephemeral_agent: None,
        };
        let c = &mut fields.conversation;
        while let Some(key) = map.next_key::<Key>()? {
            c.has_members = true;
            match key {
                Key::Endpoint => c.endpoint = text_field(&mut map, "endpoint")?,
                Key::EndpointType => c.endpoint_type = text_field(&mut map, "endpointType")?,
                Key::Model => c.model = text_field(&mut map, "model")?,
                Key::Spec => c.spec = text_field(&mut map, "spec")?,
                Key::AgentId => c.agent_id = text_field(&mut map, "agent_id")?,
                Key::ConversationId => {
                    let raw: &RawValue = map.next_value()?;
                    c.conversation_id = serde_json::from_str::<String>(raw.get())
                        .ok()
                        .filter(|id| !id.is_empty() && id != "new");
                }
                Key::PromptPrefix => {
                    let raw: &'de RawValue = map.next_value()?;
                    let start = raw.get().as_ptr() as usize - self.whole.as_ptr() as usize;
                    c.prompt_prefix_span = Some(start..start + raw.get().len());
                    c.prompt_prefix = serde_json::from_str::<String>(raw.get()).ok();
                }
                Key::AddedConvo => fields.added_convo = Some(map.next_value()?),
                Key::EphemeralAgent => fields.ephemeral_agent = Some(map.next_value()?),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// A string field; `null` is absent, any other type refuses the body.
fn text_field<'de, A: MapAccess<'de>>(map: &mut A, name: &str) -> Result<Option<String>, A::Error> {
    let value: Option<serde_json::Value> = map.next_value()?;
    match value {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(de::Error::custom(format!(
            "`{name}` must be a string, not {}",
            json_type(&other)
        ))),
    }
}

fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

enum Key {
    Endpoint,
    EndpointType,
    Model,
    Spec,
    AgentId,
    ConversationId,
    PromptPrefix,
    AddedConvo,
    EphemeralAgent,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            // Keys arrive unescaped, so `"mod\u0065l"` is `model`, as for JSON.parse.
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "endpoint" => Key::Endpoint,
                    "endpointType" => Key::EndpointType,
                    "model" => Key::Model,
                    "spec" => Key::Spec,
                    "agent_id" => Key::AgentId,
                    "conversationId" => Key::ConversationId,
                    "promptPrefix" => Key::PromptPrefix,
                    "addedConvo" => Key::AddedConvo,
                    "ephemeralAgent" => Key::EphemeralAgent,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

/// `ephemeralAgent`: a flag counts when JavaScript would find it truthy.
fn parse_ephemeral_agent(raw: &str) -> Result<Option<EphemeralAgent>, BadBody> {
    let value: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| BadBody(format!("ephemeralAgent is not valid JSON: {e}")))?;
    let map = match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(map) => map,
        _ => return Err(BadBody("ephemeralAgent must be an object".to_owned())),
    };
    let truthy = |key: &str| map.get(key).is_some_and(is_truthy);
    let mcp = match map.get("mcp") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| BadBody("ephemeralAgent.mcp must list server names".to_owned()))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(BadBody("ephemeralAgent.mcp must be a list".to_owned())),
    };
    Ok(Some(EphemeralAgent {
        execute_code: truthy("execute_code"),
        file_search: truthy("file_search"),
        mcp,
    }))
}

fn is_truthy(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        serde_json::Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn parse(value: &Value) -> ChatBody {
        ChatBody::parse(value.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_fields_the_policy_needs_are_read() {
        let body = parse(&json!({
            "text": "hello", "endpoint": "openAI", "endpointType": null, "model": "gpt-4o",
            "conversationId": "new", "promptPrefix": "Be brief.",
            "addedConvo": {"endpoint": "anthropic", "model": "claude-3-5-sonnet-20241022", "agent_id": "a1"},
            "ephemeralAgent": {"execute_code": true, "file_search": false, "mcp": ["github"], "web_search": true},
            "files": [{"file_id": "f"}], "isRegenerate": true
        }));
        assert_eq!(body.conversation.endpoint.as_deref(), Some("openAI"));
        assert_eq!(body.conversation.model.as_deref(), Some("gpt-4o"));
        assert_eq!(
            body.conversation.conversation_id, None,
            "\"new\" is a new chat"
        );
        assert_eq!(
            body.conversation.prompt_prefix.as_deref(),
            Some("Be brief.")
        );
        let added = body.added_convo.as_ref().unwrap();
        assert_eq!(added.endpoint.as_deref(), Some("anthropic"));
        assert_eq!(added.agent_id.as_deref(), Some("a1"));
        let agent = body.ephemeral_agent.unwrap();
        assert!(agent.execute_code && !agent.file_search);
        assert_eq!(agent.mcp, vec!["github".to_owned()]);
    }

    #[test]
    fn a_repeated_key_counts_by_its_last_value_as_in_json_parse() {
        let body =
            ChatBody::parse(br#"{"model":"gpt-4o-mini","model":"gpt-4o","endpoint":"openAI"}"#)
                .unwrap();
        assert_eq!(body.conversation.model.as_deref(), Some("gpt-4o"));
        let escaped = ChatBody::parse(br#"{"model":"a","mod\u0065l":"b"}"#).unwrap();
        assert_eq!(escaped.conversation.model.as_deref(), Some("b"));
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        for (body, reason) in [
            (&b"not json"[..], "must be a JSON object"),
            (b"{\"model\": \"gpt-4o\"", "not valid JSON"),
            (b"[1,2]", "must be a JSON object"),
            (b"\"text\"", "must be a JSON object"),
            (b"{\"model\": 4}", "`model` must be a string"),
            (
                b"{\"endpoint\": [\"openAI\"]}",
                "`endpoint` must be a string",
            ),
            (b"{\"addedConvo\": 5}", "addedConvo must be an object"),
            (
                b"{\"ephemeralAgent\": {\"mcp\": \"github\"}}",
                "must be a list",
            ),
            (b"{\"ephemeralAgent\": {\"mcp\": [1]}}", "server names"),
            (b"{\"a\":1} {\"b\":2}", "not valid JSON"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let err = ChatBody::parse(body).unwrap_err();
            assert!(
                err.0.contains(reason),
                "{:?}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!(
            "{{\"addedConvo\": {}1{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(ChatBody::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn instructions_go_before_the_prompt_prefix_and_nothing_else_changes() {
        let body = br#"{ "text":"hi","promptPrefix":"Be brief.","model":"gpt-4o","z":[1, 2] }"#;
        let parsed = ChatBody::parse(body).unwrap();
        let out = parsed
            .with_instructions(body, "Answer in French.", |_| true)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "text":"hi","promptPrefix":"Answer in French.\n\nBe brief.","model":"gpt-4o","z":[1, 2] }"#
        );
    }

    #[test]
    fn a_missing_prompt_prefix_is_added_and_added_convo_gets_its_own() {
        let body = br#"{"text":"hi","addedConvo":{},"endpoint":"openAI"}"#;
        let parsed = ChatBody::parse(body).unwrap();
        let out = parsed
            .with_instructions(body, "Say \"hi\".", |_| true)
            .unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["promptPrefix"], "Say \"hi\".");
        assert_eq!(value["addedConvo"]["promptPrefix"], "Say \"hi\".");
        assert_eq!(value["text"], "hi");
        assert!(parsed.with_instructions(body, "x", |_| false).is_none());
    }

    #[test]
    fn with_a_repeated_prompt_prefix_the_last_one_is_changed() {
        let body = br#"{"promptPrefix":"old","promptPrefix":"new"}"#;
        let parsed = ChatBody::parse(body).unwrap();
        let out = parsed.with_instructions(body, "I", |_| true).unwrap();
        assert_eq!(
            &out[..],
            br#"{"promptPrefix":"old","promptPrefix":"I\n\nnew"}"#
        );
    }
}
