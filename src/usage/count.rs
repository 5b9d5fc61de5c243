//! SPEC section 11's counting rules, as pure functions over one stream's
//! events: which chat requests count as a message, which events carry
//! tokens and cost, and how a replayed event is recognised.
//!
//! Rules for bad input (the documented ones):
//! - A token count must be a JSON integer from 0 to [`MAX_TOKENS_PER_EVENT`]
//!   (a float with no fraction, such as `12.0`, is accepted); a missing
//!   count is 0. An `on_token_usage` event or final event with any other
//!   count (negative, larger, fractional, a string, …) is rejected whole:
//!   it counts nothing and is logged.
//! - A `cost` must be a finite number from 0 to [`MAX_COST_USD_PER_EVENT`];
//!   any other `cost` is ignored and the price list is used instead.
//! - `data` that is not JSON, or JSON that is not an object, is skipped.
//! - Only `on_token_usage` events, final events (`"final": true` without
//!   `"reconcile": true`) and the first `created` event are read; the
//!   rest are not even parsed.

use serde_json::Value;

use super::sse::SseEvent;
use crate::policy::route;

/// The largest token count one event may report; more is taken as garbage.
pub const MAX_TOKENS_PER_EVENT: u64 = 10_000_000;
/// The largest cost one event may report, in USD.
pub const MAX_COST_USD_PER_EVENT: f64 = 10_000.0;
/// Nano-dollars per dollar: costs are counted in integer nano-USD so that
/// sums are exact.
pub const NANOS_PER_USD: f64 = 1e9;

/// The chat routes of SPEC section 11 (see REFERENCE "Chat requests").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatRoute {
    /// A chat POST: its answer is the SSE (≤ 0.8.1, Assistants) or the JSON
    /// `{streamId, conversationId}` of a resumable stream (≥ 0.8.2).
    Post,
    /// `GET /api/agents/chat/stream/<streamId>`: a resumable stream.
    Stream { stream_id: String },
}

/// Which chat route `method path` is, if any: the policy's own route
/// matching, so a path spelled oddly (case, `//`, escapes) is counted
/// exactly when it is checked.
pub fn classify(method: &http::Method, path: &str) -> Option<ChatRoute> {
    if let Some(stream_id) = route::chat_stream(method, path) {
        return Some(ChatRoute::Stream { stream_id });
    }
    matches!(
        route::classify(method, path),
        Some(route::PolicyRoute::Chat { .. })
    )
    .then_some(ChatRoute::Post)
}

/// Tokens (and maybe cost) one event reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub model: Option<String>,
    /// The event's own cost in nano-USD, when it sent a valid one.
    pub cost_nanos: Option<i64>,
    /// What makes a replay of this event recognisable, without the
    /// conversation (`run:<runId>:<seq>` or `final:<messageId>`).
    pub replay_key: Option<String>,
}

/// What one event means to the meter.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// `{created: true, message: {conversationId}}`.
    Created { conversation: Option<String> },
    /// An `on_token_usage` event.
    TokenUsage(Tokens),
    /// The final event; `tokens` is its fallback usage, if any.
    Final {
        conversation: Option<String>,
        endpoint: Option<String>,
        model: Option<String>,
        tokens: Option<Tokens>,
    },
    /// An event with a count that breaks the rules above.
    Rejected(&'static str),
}

/// Reads one SSE event; `None` for events that mean nothing to the meter.
pub fn read_event(event: SseEvent<'_>) -> Option<Seen> {
    let data = event.data;
    if !may_count(data) {
        return None;
    }
    let value: Value = serde_json::from_slice(data).ok()?;
    let object = value.as_object()?;
    if object.get("event").and_then(Value::as_str) == Some("on_token_usage") {
        let data = object.get("data")?;
        return Some(match token_usage(data) {
            Ok(tokens) => Seen::TokenUsage(tokens),
            Err(why) => Seen::Rejected(why),
        });
    }
    if object.get("final").and_then(Value::as_bool) == Some(true) {
        if object.get("reconcile").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        let conversation = object.get("conversation");
        let field = |name: &str| {
            conversation
                .and_then(|c| c.get(name))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let tokens = match final_usage(object) {
            Ok(tokens) => tokens,
            Err(why) => return Some(Seen::Rejected(why)),
        };
        return Some(Seen::Final {
            conversation: field("conversationId"),
            endpoint: field("endpoint"),
            model: field("model"),
            tokens,
        });
    }
    if object.get("created").and_then(Value::as_bool) == Some(true) {
        let conversation = object
            .get("message")
            .and_then(|m| m.get("conversationId"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && *s != "new")
            .map(str::to_owned);
        return Some(Seen::Created { conversation });
    }
    None
}

/// Whether an event whose first `data` line is `line` may count: `false`
/// only for LibreChat's graph events other than `on_token_usage`, known by
/// their first bytes (`{"event":"on_…`). Given to the SSE parser, it keeps
/// the stream's many content deltas from being copied at all.
pub fn may_matter(line: &[u8]) -> bool {
    match line.strip_prefix(GRAPH_EVENT) {
        Some(name) => name.starts_with(TOKEN_USAGE),
        None => true,
    }
}

/// How LibreChat's graph events begin, and the rest of the one that counts.
const GRAPH_EVENT: &[u8] = b"{\"event\":\"on_";
const TOKEN_USAGE: &[u8] = b"token_usage\"";

/// Cheap filters before any JSON parsing: most events are content deltas.
/// LibreChat writes `{"event":"on_…","data":…}` with `event` first, so a
/// graph event other than `on_token_usage` is known by its first bytes;
/// anything else is parsed only when it names a key the meter reads.
fn may_count(data: &[u8]) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"on_token_usage"));
    static FINAL: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"final\""));
    static CREATED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"created\""));
    if let Some(name) = data.strip_prefix(GRAPH_EVENT) {
        return name.starts_with(TOKEN_USAGE);
    }
    USAGE.find(data).is_some() || FINAL.find(data).is_some() || CREATED.find(data).is_some()
}

fn token_usage(data: &Value) -> Result<Tokens, &'static str> {
    let input = count(data.get("input_tokens"))?;
    let output = count(data.get("output_tokens"))?;
    let run = data.get("runId").and_then(Value::as_str);
    let seq = data.get("seq").and_then(|v| match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    });
    let replay_key = match (run, seq) {
        (Some(run), Some(seq)) => Some(format!("run:{run}:{seq}")),
        _ => None,
    };
    Ok(Tokens {
        input,
        output,
        model: data.get("model").and_then(Value::as_str).map(str::to_owned),
        cost_nanos: cost(data.get("cost")),
        replay_key,
    })
}

/// The final event's usage: `responseMessage.metadata.usage`, else the two
/// messages' `tokenCount`s; `None` when it has neither.
fn final_usage(object: &serde_json::Map<String, Value>) -> Result<Option<Tokens>, &'static str> {
    let response = object.get("responseMessage");
    let model = response
        .and_then(|r| r.get("model"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let replay_key = response
        .and_then(|r| r.get("messageId"))
        .and_then(Value::as_str)
        .map(|id| format!("final:{id}"));
    if let Some(usage) = response
        .and_then(|r| r.get("metadata"))
        .and_then(|m| m.get("usage"))
        .filter(|u| u.is_object())
    {
        return Ok(Some(Tokens {
            input: count(usage.get("input"))?,
            output: count(usage.get("output"))?,
            model,
            cost_nanos: cost(usage.get("cost")),
            replay_key,
        }));
    }
    let request_count = object
        .get("requestMessage")
        .and_then(|m| m.get("tokenCount"));
    let response_count = response.and_then(|r| r.get("tokenCount"));
    if request_count.is_none() && response_count.is_none() {
        return Ok(None);
    }
    Ok(Some(Tokens {
        input: count(request_count)?,
        output: count(response_count)?,
        model,
        cost_nanos: None,
        replay_key,
    }))
}

/// A token count by the rules at the top of this file.
fn count(value: Option<&Value>) -> Result<u64, &'static str> {
    let Some(value) = value else { return Ok(0) };
    if value.is_null() {
        return Ok(0);
    }
    let Value::Number(n) = value else {
        return Err("a token count that is not a number");
    };
    let whole = if let Some(u) = n.as_u64() {
        u
    } else if n.as_i64().is_some() {
        return Err("a negative token count");
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        if !(f.is_finite() && f >= 0.0 && f.fract() == 0.0) {
            return Err("a token count that is not a whole number");
        }
        if f > MAX_TOKENS_PER_EVENT as f64 {
            return Err("a token count over the per-event limit");
        }
        f as u64
    };
    if whole > MAX_TOKENS_PER_EVENT {
        return Err("a token count over the per-event limit");
    }
    Ok(whole)
}

/// An event's `cost` in nano-USD, or `None` when absent or not sane.
fn cost(value: Option<&Value>) -> Option<i64> {
    let usd = value?.as_f64()?;
    if !(usd.is_finite() && (0.0..=MAX_COST_USD_PER_EVENT).contains(&usd)) {
        return None;
    }
    Some((usd * NANOS_PER_USD).round() as i64)
}

/// What a stream has shown so far; decides what each of its events counts.
#[derive(Debug, Default, Clone)]
pub struct StreamState {
    /// The conversation, from the request, the `created` or the final event.
    pub conversation: Option<String>,
    pub endpoint: Option<String>,
    pub model: Option<String>,
    /// An `on_token_usage` event was seen: the final event's usage is then
    /// not counted (it sums the same model calls).
    pub saw_token_usage: bool,
    /// Events rejected by the rules above.
    pub rejected: u64,
}

/// What a stream's event asks the meter to count.
#[derive(Debug, Clone, PartialEq)]
pub struct Count {
    pub tokens: Tokens,
}

impl StreamState {
    /// Applies one event; returns the tokens it adds, if any.
    pub fn apply(&mut self, seen: Seen) -> Option<Count> {
        match seen {
            Seen::Created { conversation } => {
                if self.conversation.is_none() {
                    self.conversation = conversation;
                }
                None
            }
            Seen::TokenUsage(tokens) => {
                self.saw_token_usage = true;
                if self.model.is_none() {
                    self.model.clone_from(&tokens.model);
                }
                Some(Count { tokens })
            }
            Seen::Final {
                conversation,
                endpoint,
                model,
                tokens,
            } => {
                if self.conversation.is_none() {
                    self.conversation = conversation;
                }
                if endpoint.is_some() {
                    self.endpoint = endpoint;
                }
                if model.is_some() {
                    self.model = model;
                }
                let tokens = tokens.filter(|_| !self.saw_token_usage)?;
                Some(Count { tokens })
            }
            Seen::Rejected(_) => {
                self.rejected += 1;
                None
            }
        }
    }
}

/// Whether a `[usage.prices]` entry names `model`: the organization
/// policy's matching (SPEC section 10).
pub use crate::policy::rules::model_matches;

/// Cost in nano-USD of `tokens` by the price list: the exact entry wins,
/// else the longest matching one; no entry = 0.
pub fn priced(prices: &[crate::config::ModelPrice], tokens: &Tokens) -> i64 {
    let Some(model) = tokens.model.as_deref() else {
        return 0;
    };
    let best = prices
        .iter()
        .filter(|p| model_matches(&p.model, model))
        .max_by_key(|p| (p.model == model, p.model.len()));
    let Some(price) = best else { return 0 };
    // pico-USD per token × tokens / 1000 = nano-USD, rounded half up.
    let pico = u128::from(tokens.input) * u128::from(price.input_pico_usd)
        + u128::from(tokens.output) * u128::from(price.output_pico_usd);
    i64::try_from((pico + 500) / 1000).unwrap_or(i64::MAX)
}

#[cfg(test)]
/// A recorded LibreChat 0.8.7 agents stream: created, deltas, two model
/// calls' usage, the final event and a reconcile frame.
pub(crate) const RECORDED: &str = concat!(
    "event: message\ndata: {\"created\":true,\"message\":{\"messageId\":\"u1\",\"conversationId\":\"conv-1\",\"text\":\"hi\"},\"streamId\":\"conv-1\"}\n\n",
    ": ping\n\n",
    "event: message\ndata: {\"event\":\"on_run_step\",\"data\":{\"id\":\"step_1\",\"runId\":\"run-1\"}}\n\n",
    "event: message\ndata: {\"event\":\"on_message_delta\",\"data\":{\"id\":\"step_1\",\"delta\":{\"content\":[{\"type\":\"text\",\"text\":\"Hel\"}]}}}\n\n",
    "event: message\r\ndata: {\"event\":\"on_message_delta\",\"data\":{\"id\":\"step_1\",\"delta\":{\"content\":[{\"type\":\"text\",\"text\":\"lo ✓\"}]}}}\r\n\r\n",
    "event: message\ndata: {\"event\":\"on_token_usage\",\"data\":{\"input_tokens\":812,\"output_tokens\":95,\"total_tokens\":907,\"input_token_details\":{\"cache_creation\":0,\"cache_read\":0},\"model\":\"gpt-4o\",\"provider\":\"openAI\",\"runId\":\"run-1\",\"seq\":0,\"cost\":0.003}}\n\n",
    "retry: 1000\n\n",
    "event: message\ndata: {\"event\":\"on_token_usage\",\"data\":{\"input_tokens\":40,\"output_tokens\":8,\"total_tokens\":48,\"model\":\"gpt-4o-mini\",\"provider\":\"openAI\",\"usage_type\":\"title\",\"runId\":\"run-1\",\"seq\":1}}\n\n",
    "event: message\ndata: {\"final\":true,\"conversation\":{\"conversationId\":\"conv-1\",\"endpoint\":\"openAI\",\"model\":\"gpt-4o\",\"title\":\"Hello\"},\"requestMessage\":{\"messageId\":\"u1\",\"tokenCount\":12},\"responseMessage\":{\"messageId\":\"a1\",\"model\":\"gpt-4o\",\"tokenCount\":95,\"metadata\":{\"usage\":{\"input\":852,\"output\":103}}}}\n\n",
    "event: message\ndata: {\"final\":true,\"reconcile\":true}\n\n",
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::sse::SseParser;

    fn seen(data: &str) -> Option<Seen> {
        read_event(SseEvent {
            name: b"message",
            data: data.as_bytes(),
        })
    }

    fn usage(json: &str) -> Seen {
        seen(&format!(r#"{{"event":"on_token_usage","data":{json}}}"#)).unwrap()
    }

    #[test]
    fn prices_match_models_as_policy_entries_do() {
        assert!(model_matches("gpt-4", "gpt-4-turbo"));
        assert!(!model_matches("gpt-4", "gpt-4o"));
        assert!(model_matches("gpt-4o*", "gpt-4o-mini"));
        assert!(model_matches("*sonnet*", "claude-3-5-sonnet-20241022"));
        assert!(!model_matches("claude*opus", "claude-3-5-sonnet"));
        let price = |model: &str, input, output| crate::config::ModelPrice {
            model: model.into(),
            input_pico_usd: input,
            output_pico_usd: output,
        };
        let prices = [
            price("gpt-4o*", 1, 1),
            price("gpt-4o", 2_500_000, 10_000_000),
        ];
        let tokens = |model: &str| Tokens {
            input: 1000,
            output: 100,
            model: Some(model.into()),
            cost_nanos: None,
            replay_key: None,
        };
        // 1000 × $2.5/M + 100 × $10/M = $0.0035
        assert_eq!(priced(&prices, &tokens("gpt-4o")), 3_500_000);
        assert_eq!(priced(&prices, &tokens("gpt-4o-mini")), 1);
        assert_eq!(priced(&prices, &tokens("llama")), 0);
    }

    #[test]
    fn chat_routes_are_told_apart() {
        use http::Method;
        for path in [
            "/api/agents/chat",
            "/api/agents/chat/openAI",
            "/api/agents/chat/my%20custom",
            "/api/ask/openAI",
            "/api/edit/anthropic",
            "/api/assistants/v2/chat",
            "/API/Agents/chat/openAI/",
        ] {
            assert_eq!(
                classify(&Method::POST, path),
                Some(ChatRoute::Post),
                "{path}"
            );
        }
        for path in [
            "/api/agents/chat/abort",
            "/api/agents/chat/status/c1",
            "/api/agents",
            "/api/convos",
        ] {
            assert_eq!(classify(&Method::POST, path), None, "{path}");
        }
        assert_eq!(
            classify(&Method::GET, "/api/agents/chat/stream/s-1"),
            Some(ChatRoute::Stream {
                stream_id: "s-1".into()
            })
        );
        assert_eq!(classify(&Method::GET, "/api/agents/chat/stream/"), None);
        assert_eq!(classify(&Method::GET, "/api/agents/chat/openAI"), None);
    }

    #[test]
    fn an_on_token_usage_event_counts_its_tokens_cost_and_replay_key() {
        let seen = usage(
            r#"{"input_tokens":120,"output_tokens":30,"total_tokens":150,"model":"gpt-4o","provider":"openAI","runId":"r1","seq":2,"cost":0.00123}"#,
        );
        assert_eq!(
            seen,
            Seen::TokenUsage(Tokens {
                input: 120,
                output: 30,
                model: Some("gpt-4o".into()),
                cost_nanos: Some(1_230_000),
                replay_key: Some("run:r1:2".into()),
            })
        );
    }

    #[test]
    fn bad_counts_reject_the_event_and_bad_costs_fall_back_to_prices() {
        for bad in [
            r#"{"input_tokens":-5,"output_tokens":1}"#,
            r#"{"input_tokens":"12","output_tokens":1}"#,
            r#"{"input_tokens":1e30,"output_tokens":1}"#,
            r#"{"input_tokens":10000001,"output_tokens":1}"#,
            r#"{"input_tokens":1.5,"output_tokens":1}"#,
            r#"{"input_tokens":[1],"output_tokens":1}"#,
        ] {
            assert!(matches!(usage(bad), Seen::Rejected(_)), "{bad}");
        }
        let Seen::TokenUsage(t) = usage(r#"{"input_tokens":3.0,"cost":-1}"#) else {
            panic!()
        };
        assert_eq!((t.input, t.output, t.cost_nanos), (3, 0, None));
        let Seen::TokenUsage(t) = usage(r#"{"input_tokens":3,"cost":"free"}"#) else {
            panic!()
        };
        assert_eq!(t.cost_nanos, None);
    }

    #[test]
    fn non_json_and_uninteresting_events_are_skipped() {
        assert_eq!(seen("not json with on_token_usage in it"), None);
        assert_eq!(seen("[\"final\"]"), None);
        assert_eq!(seen(r#"{"event":"on_message_delta","data":{}}"#), None);
        // A delta that talks about usage is still a delta.
        let chatty =
            r#"{"event":"on_message_delta","data":{"text":"on_token_usage \"final\":true"}}"#;
        assert_eq!(seen(chatty), None);
        assert_eq!(seen(r#"{"final":true,"reconcile":true}"#), None);
    }

    #[test]
    fn the_final_event_falls_back_from_usage_to_token_counts() {
        let with_usage = r#"{"final":true,"conversation":{"conversationId":"c1","endpoint":"openAI","model":"gpt-4o"},"requestMessage":{"tokenCount":10},"responseMessage":{"messageId":"m1","model":"gpt-4o","tokenCount":20,"metadata":{"usage":{"input":100,"output":40,"cost":0.5}}}}"#;
        let Some(Seen::Final {
            conversation,
            endpoint,
            tokens: Some(t),
            ..
        }) = seen(with_usage)
        else {
            panic!()
        };
        assert_eq!(conversation.as_deref(), Some("c1"));
        assert_eq!(endpoint.as_deref(), Some("openAI"));
        assert_eq!(
            (t.input, t.output, t.cost_nanos),
            (100, 40, Some(500_000_000))
        );
        assert_eq!(t.replay_key.as_deref(), Some("final:m1"));

        let counts_only = r#"{"final":true,"requestMessage":{"tokenCount":10},"responseMessage":{"tokenCount":20}}"#;
        let Some(Seen::Final {
            tokens: Some(t), ..
        }) = seen(counts_only)
        else {
            panic!()
        };
        assert_eq!((t.input, t.output, t.cost_nanos), (10, 20, None));

        let nothing = r#"{"final":true,"conversation":{"conversationId":"c2"}}"#;
        assert!(matches!(
            seen(nothing),
            Some(Seen::Final { tokens: None, .. })
        ));
    }

    #[test]
    fn a_final_event_after_token_usage_events_adds_no_tokens() {
        let mut state = StreamState::default();
        let counted = state.apply(usage(
            r#"{"input_tokens":5,"output_tokens":6,"runId":"r","seq":1}"#,
        ));
        assert_eq!(counted.unwrap().tokens.input, 5);
        let last = seen(r#"{"final":true,"conversation":{"conversationId":"c","endpoint":"agents"},"responseMessage":{"metadata":{"usage":{"input":5,"output":6}}}}"#).unwrap();
        assert_eq!(state.apply(last), None);
        assert_eq!(state.conversation.as_deref(), Some("c"));
        assert_eq!(state.endpoint.as_deref(), Some("agents"));
    }

    fn run(pieces: &[&[u8]]) -> (StreamState, Vec<Count>) {
        let mut parser = SseParser::default();
        let mut state = StreamState::default();
        let mut counts = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut |event| {
                if let Some(count) = read_event(event).and_then(|s| state.apply(s)) {
                    counts.push(count);
                }
            });
        }
        (state, counts)
    }

    #[test]
    fn every_split_point_of_a_recorded_stream_counts_the_same() {
        let bytes = RECORDED.as_bytes();
        let (state, counts) = run(&[bytes]);
        let total: u64 = counts
            .iter()
            .map(|c| c.tokens.input + c.tokens.output)
            .sum();
        assert_eq!(total, 812 + 95 + 40 + 8);
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[0].tokens.cost_nanos, Some(3_000_000));
        assert_eq!(state.conversation.as_deref(), Some("conv-1"));
        assert_eq!(state.endpoint.as_deref(), Some("openAI"));
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            let (s, c) = run(&[a, b]);
            assert_eq!(c, counts, "split at {split}");
            assert_eq!(s.conversation, state.conversation, "split at {split}");
            for second in (split..=bytes.len()).step_by(37) {
                let (b1, b2) = b.split_at(second - split);
                assert_eq!(run(&[a, b1, b2]).1, counts, "splits at {split}, {second}");
            }
        }
    }
}
