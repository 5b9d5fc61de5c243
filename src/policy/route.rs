//! Which of SPEC section 10's routes a request is, from its method and
//! path. LibreChat's router (Express) matches paths case-insensitively and
//! tolerates a trailing slash, so this does too; percent-escapes, repeated
//! slashes and dot segments are resolved first, so a path spelled oddly is
//! checked like its plain form rather than slipping past.

use std::borrow::Cow;

use http::Method;

use super::config::Feature;

/// A route the policy has a say on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyRoute {
    /// A chat (`POST /api/agents/chat[/<endpoint>]`, `/api/ask|edit/<endpoint>`,
    /// `/api/assistants/v1|v2/chat`): the JSON body decides.
    Chat { assistants: bool },
    /// Creating or changing an agent: the body's provider, model and tools.
    AgentWrite,
    /// `POST /api/agents/<id>/duplicate|revert`: the agent it copies.
    AgentCopy,
    /// A route that one feature switches on or off.
    Feature(Feature),
    /// A route of one MCP server.
    McpServer(String),
    /// `POST /api/agents/tools/<tool>/call`: one tool run directly.
    Tool(String),
    /// A list filtered to what the organization may use.
    List(ListKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Models,
    Endpoints,
    McpTools,
    McpServers,
}

/// Path segments under `/api/` that are MCP routes of no single server.
const MCP_SHARED: [&str; 4] = ["tools", "servers", "connection", "oauth"];

/// The policy route of a request, if it is one.
pub fn classify(method: &Method, path: &str) -> Option<PolicyRoute> {
    // Everything the policy governs is under /api/; pages and assets pay
    // only this comparison.
    let bytes = path.as_bytes();
    if bytes.len() < 5 || !(bytes[..5].eq_ignore_ascii_case(b"/api/") || needs_normalizing(path)) {
        return None;
    }
    if !needs_normalizing(path) {
        // The common case, without allocating: a plain path of few segments.
        let mut buf = [""; 8];
        let mut len = 0;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if len == buf.len() {
                return classify_normalized(method, path);
            }
            buf[len] = part;
            len += 1;
        }
        return classify_segments(method, &buf[..len]);
    }
    classify_normalized(method, path)
}

/// The stream id of `GET /api/agents/chat/stream/<streamId>` (LibreChat
/// 0.8.2+'s resumable chat stream), matched as [`classify`] matches paths.
/// Not a policy route (the chat POST before it was checked); usage
/// metering counts it (SPEC section 11).
pub fn chat_stream(method: &Method, path: &str) -> Option<String> {
    if method != Method::GET {
        return None;
    }
    let bytes = path.as_bytes();
    if bytes.len() < 5 || !(bytes[..5].eq_ignore_ascii_case(b"/api/") || needs_normalizing(path)) {
        return None;
    }
    let segments = segments(path);
    let is = |i: usize, word: &str| {
        segments
            .get(i)
            .is_some_and(|s| s.eq_ignore_ascii_case(word))
    };
    let stream =
        segments.len() == 5 && is(0, "api") && is(1, "agents") && is(2, "chat") && is(3, "stream");
    stream.then(|| segments[4].clone().into_owned())
}

fn classify_normalized(method: &Method, path: &str) -> Option<PolicyRoute> {
    let segments = segments(path);
    let seg: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();
    classify_segments(method, &seg)
}

fn classify_segments(method: &Method, seg: &[&str]) -> Option<PolicyRoute> {
    let is = |i: usize, word: &str| seg.get(i).is_some_and(|s| s.eq_ignore_ascii_case(word));
    if !is(0, "api") {
        return None;
    }
    let post = method == Method::POST;
    let get = method == Method::GET;
    match seg.len() {
        2 if get && is(1, "models") => return Some(PolicyRoute::List(ListKind::Models)),
        2 if get && is(1, "endpoints") => return Some(PolicyRoute::List(ListKind::Endpoints)),
        _ => {}
    }
    if is(1, "agents") {
        return agents_route(method, seg, &is);
    }
    if post && (is(1, "ask") || is(1, "edit")) && seg.len() == 3 {
        return Some(PolicyRoute::Chat { assistants: false });
    }
    if post
        && is(1, "assistants")
        && seg.len() == 4
        && (is(2, "v1") || is(2, "v2"))
        && is(3, "chat")
    {
        return Some(PolicyRoute::Chat { assistants: true });
    }
    if is(1, "files") {
        return files_route(method, seg, &is);
    }
    if is(1, "mcp") {
        return mcp_route(method, seg, &is);
    }
    None
}

fn agents_route(
    method: &Method,
    seg: &[&str],
    is: &dyn Fn(usize, &str) -> bool,
) -> Option<PolicyRoute> {
    let post = method == Method::POST;
    if is(2, "chat") {
        // `/api/agents/chat` and `/api/agents/chat/<endpoint>`; not `/abort`.
        let chat = post && (seg.len() == 3 || (seg.len() == 4 && !is(3, "abort")));
        return chat.then_some(PolicyRoute::Chat { assistants: false });
    }
    if is(2, "tools") {
        if post && seg.len() == 5 && is(4, "call") {
            return Some(PolicyRoute::Tool(seg[3].to_owned()));
        }
        return None;
    }
    match seg.len() {
        2 if post => Some(PolicyRoute::AgentWrite),
        3 if method == Method::PATCH || method == Method::PUT => Some(PolicyRoute::AgentWrite),
        4 if post && (is(3, "duplicate") || is(3, "revert")) => Some(PolicyRoute::AgentCopy),
        _ => None,
    }
}

fn files_route(
    method: &Method,
    seg: &[&str],
    is: &dyn Fn(usize, &str) -> bool,
) -> Option<PolicyRoute> {
    if is(2, "speech") {
        return Some(PolicyRoute::Feature(Feature::VoiceChat));
    }
    if is(2, "code") {
        return Some(PolicyRoute::Feature(Feature::CodeInterpreter));
    }
    let upload = method == Method::POST && (seg.len() == 2 || (seg.len() == 3 && is(2, "images")));
    upload.then_some(PolicyRoute::Feature(Feature::FileUpload))
}

fn mcp_route(
    method: &Method,
    seg: &[&str],
    is: &dyn Fn(usize, &str) -> bool,
) -> Option<PolicyRoute> {
    let get = method == Method::GET;
    if seg.len() == 3 && get && is(2, "tools") {
        return Some(PolicyRoute::List(ListKind::McpTools));
    }
    if seg.len() == 3 && get && is(2, "servers") {
        return Some(PolicyRoute::List(ListKind::McpServers));
    }
    // `/api/mcp/servers/<name>…` and `/api/mcp/connection/status/<name>`.
    if is(2, "servers") && seg.len() >= 4 {
        return Some(PolicyRoute::McpServer(seg[3].to_owned()));
    }
    if is(2, "connection") && is(3, "status") && seg.len() >= 5 {
        return Some(PolicyRoute::McpServer(seg[4].to_owned()));
    }
    let name = seg.get(2)?;
    if MCP_SHARED.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        return None;
    }
    Some(PolicyRoute::McpServer((*name).to_owned()))
}

fn needs_normalizing(path: &str) -> bool {
    path.contains('%') || path.contains("//") || path.contains("/.")
}

/// The path's segments, percent-decoded, with empty and `.` segments
/// dropped and `..` applied. The original case is kept (MCP server names).
fn segments(path: &str) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = Vec::with_capacity(6);
    for raw in path.split('/') {
        let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
        // A decoded `%2F` separates segments too, as a normalizing proxy in front would make it.
        if decoded.contains('/') {
            for part in decoded.split('/') {
                push_segment(&mut out, Cow::Owned(part.to_owned()));
            }
        } else {
            push_segment(&mut out, decoded);
        }
    }
    out
}

fn push_segment<'a>(out: &mut Vec<Cow<'a, str>>, segment: Cow<'a, str>) {
    match segment.as_ref() {
        "" | "." => {}
        ".." => {
            out.pop();
        }
        _ => out.push(segment),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str) -> Option<PolicyRoute> {
        classify(&method.parse().unwrap(), path)
    }

    const CHAT: Option<PolicyRoute> = Some(PolicyRoute::Chat { assistants: false });

    #[test]
    fn chat_routes_in_every_spelling() {
        for path in [
            "/api/agents/chat",
            "/api/agents/chat/openAI",
            "/api/agents/chat/agents",
            "/api/agents/chat/My%20Endpoint",
            "/api/agents/chat/openAI/",
            "/API/Agents/Chat/openAI",
            "/api//agents/chat/openAI",
            "/api/x/../agents/chat/openAI",
            "/api/%61gents/chat/openAI",
            "/api/agents%2Fchat/openAI",
            "/api/ask/openAI",
            "/api/edit/anthropic",
        ] {
            assert_eq!(route("POST", path), CHAT, "{path}");
        }
        assert_eq!(
            route("POST", "/api/assistants/v2/chat"),
            Some(PolicyRoute::Chat { assistants: true })
        );
        assert_eq!(
            route("POST", "/api/assistants/v1/chat"),
            Some(PolicyRoute::Chat { assistants: true })
        );
    }

    #[test]
    fn other_chat_neighbours_are_not_chats() {
        assert_eq!(route("POST", "/api/agents/chat/abort"), None);
        assert_eq!(route("GET", "/api/agents/chat/stream/abc"), None);
        assert_eq!(route("GET", "/api/agents/chat/active"), None);
        assert_eq!(route("GET", "/api/agents/chat/openAI"), None);
        assert_eq!(route("POST", "/api/convos/update"), None);
        assert_eq!(route("GET", "/c/new"), None);
        assert_eq!(route("GET", "/assets/index.js"), None);
    }

    #[test]
    fn agent_writes() {
        assert_eq!(route("POST", "/api/agents"), Some(PolicyRoute::AgentWrite));
        assert_eq!(
            route("PATCH", "/api/agents/agent_abc"),
            Some(PolicyRoute::AgentWrite)
        );
        assert_eq!(
            route("POST", "/api/agents/agent_abc/duplicate"),
            Some(PolicyRoute::AgentCopy)
        );
        assert_eq!(
            route("POST", "/api/agents/agent_abc/revert"),
            Some(PolicyRoute::AgentCopy)
        );
        assert_eq!(route("GET", "/api/agents/agent_abc"), None);
        assert_eq!(route("DELETE", "/api/agents/agent_abc"), None);
        assert_eq!(
            route("POST", "/api/agents/tools/execute_code/call"),
            Some(PolicyRoute::Tool("execute_code".into()))
        );
    }

    #[test]
    fn feature_routes() {
        let upload = Some(PolicyRoute::Feature(Feature::FileUpload));
        assert_eq!(route("POST", "/api/files"), upload);
        assert_eq!(route("POST", "/api/files/images"), upload);
        assert_eq!(route("POST", "/api/files/images/avatar"), None);
        assert_eq!(route("POST", "/api/files/images/agents/a1/avatar"), None);
        assert_eq!(route("GET", "/api/files"), None);
        let voice = Some(PolicyRoute::Feature(Feature::VoiceChat));
        assert_eq!(route("POST", "/api/files/speech/stt"), voice);
        assert_eq!(route("POST", "/api/files/speech/tts/manual"), voice);
        assert_eq!(route("GET", "/api/files/speech/config/get"), voice);
        let code = Some(PolicyRoute::Feature(Feature::CodeInterpreter));
        assert_eq!(route("GET", "/api/files/code/download/s/f"), code);
    }

    #[test]
    fn mcp_routes() {
        assert_eq!(
            route("GET", "/api/mcp/tools"),
            Some(PolicyRoute::List(ListKind::McpTools))
        );
        assert_eq!(
            route("GET", "/api/mcp/servers"),
            Some(PolicyRoute::List(ListKind::McpServers))
        );
        let github = Some(PolicyRoute::McpServer("github".into()));
        assert_eq!(route("POST", "/api/mcp/github/reinitialize"), github);
        assert_eq!(route("GET", "/api/mcp/github/oauth/initiate"), github);
        assert_eq!(route("GET", "/api/mcp/servers/github"), github);
        assert_eq!(route("GET", "/api/mcp/connection/status/github"), github);
        assert_eq!(route("GET", "/api/mcp/connection/status"), None);
        assert_eq!(route("GET", "/api/mcp/oauth/status/flow"), None);
        assert_eq!(
            route("POST", "/api/mcp/My%20Server/reinitialize"),
            Some(PolicyRoute::McpServer("My Server".into()))
        );
    }

    #[test]
    fn chat_streams_in_every_spelling() {
        for path in [
            "/api/agents/chat/stream/s-1",
            "/API/Agents/chat/stream/s-1/",
            "/api//agents/chat/stream/s-1",
            "/api/agents/chat/stream/%73-1",
        ] {
            assert_eq!(
                chat_stream(&Method::GET, path).as_deref(),
                Some("s-1"),
                "{path}"
            );
        }
        assert_eq!(
            chat_stream(&Method::POST, "/api/agents/chat/stream/s-1"),
            None
        );
        assert_eq!(chat_stream(&Method::GET, "/api/agents/chat/stream/"), None);
        assert_eq!(chat_stream(&Method::GET, "/api/agents/chat/openAI"), None);
        assert_eq!(chat_stream(&Method::GET, "/assets/index.js"), None);
    }

    #[test]
    fn lists() {
        assert_eq!(
            route("GET", "/api/models"),
            Some(PolicyRoute::List(ListKind::Models))
        );
        assert_eq!(
            route("GET", "/api/endpoints/"),
            Some(PolicyRoute::List(ListKind::Endpoints))
        );
        assert_eq!(route("POST", "/api/models"), None);
    }
}
