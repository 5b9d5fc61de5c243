//! Organization policy at the edge (SPEC section 10) and tenancy inside
//! LibreChat (sections 7 and 8), on a real chatgate in front of a stand-in
//! LibreChat. Chat bodies are made by LibreChat's own client code
//! (`createPayload` of the npm package `librechat-data-provider`, through
//! `tests/js/chat_payloads.mjs`), so what is checked is what the web client
//! really posts.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::chatgate::{eventually, Gate, GateConfig, COOKIE_NAME};
use support::client::{self, Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::librechat_lists;
use support::supabase::{SigningKind, StandInSupabase};

struct World {
    gate: Gate,
    supabase: StandInSupabase,
    upstream: StandInLibreChat,
}

async fn world(tweak: impl FnOnce(GateConfig) -> GateConfig) -> World {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let config = tweak(GateConfig::new(&[upstream.url()]).with_supabase(&supabase));
    World {
        gate: Gate::start(config).await,
        supabase,
        upstream,
    }
}

/// A signed-in member of an organization with this `librechat_config`.
struct Member {
    cookie: String,
    user_id: String,
}

impl Member {
    fn header(&self) -> (&'static str, &str) {
        ("cookie", &self.cookie)
    }
}

fn organization(id: &str, config: Value) -> Value {
    json!({"id": id, "name": id.to_uppercase(), "domain": format!("{id}.example"),
           "plan_type": "pro", "librechat_config": config})
}

fn member(w: &World, email: &str, role: &str, org: Value) -> Member {
    let session = w.supabase.sign_in(email, Duration::from_secs(3600));
    w.supabase.set_profile(session.user_id(), role, Some(org));
    Member {
        cookie: support::chatgate::session_cookie(COOKIE_NAME, &session.to_json()),
        user_id: session.user_id().to_owned(),
    }
}

/// The restrictive organization most tests use.
fn restrictive() -> Value {
    json!({
        "allowed_endpoints": ["openAI", "anthropic", "agents", "OpenRouter"],
        "enabled_models": ["gpt-4o", "claude-3-5"],
        "mcp_servers": ["github"],
        "knowledge_bases": [],
        "features": {"file_upload": false, "image_generation": false, "voice_chat": false, "code_interpreter": false}
    })
}

/// What `createPayload` builds for each description: (name, path, body).
async fn payloads(descriptions: Value) -> Vec<(String, String, Bytes)> {
    let built = tokio::task::spawn_blocking(move || {
        support::ssr::node("chat_payloads.mjs", "payloads", &descriptions)
    })
    .await
    .unwrap();
    built
        .as_array()
        .expect("a list of payloads")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["server"].as_str().unwrap().to_owned(),
                // `body` is what the browser sends: the payload without nullish values.
                Bytes::from(p["body"].to_string()),
            )
        })
        .collect()
}

async fn send(
    gate: &Gate,
    alpn: Alpn,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut client = TestClient::connect(gate.addr(), alpn).await.unwrap();
    client.request(method, path, headers, body).await
}

async fn post_json(
    gate: &Gate,
    who: &Member,
    path: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, Value) {
    let (status, _, body) = send(
        gate,
        Alpn::H1,
        Method::POST,
        path,
        &[who.header(), ("content-type", "application/json")],
        body,
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn echoed<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .map(|headers| {
            headers
                .iter()
                .filter(|p| p[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
                .filter_map(|p| p[1].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// Requests LibreChat received, health probes aside.
fn forwarded(upstream: &StandInLibreChat) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.path_and_query != "/health")
        .count()
}

/// Asserts that `path` with `body` is refused with `code`, naming `what`,
/// and that LibreChat saw nothing of it.
async fn assert_refused(w: &World, who: &Member, path: &str, body: &Bytes, code: &str, what: &str) {
    let before = forwarded(&w.upstream);
    let (status, answer) = post_json(&w.gate, who, path, body.clone()).await;
    let expected = match code {
        "bad_request" => StatusCode::BAD_REQUEST,
        "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "quota_exceeded" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::FORBIDDEN,
    };
    assert_eq!(status, expected, "{path}: {answer}");
    assert_eq!(answer["error"], code, "{path}: {answer}");
    let message = answer["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(what),
        "{path}: {message:?} should name {what:?}"
    );
    assert!(answer["request_id"].is_string());
    assert_eq!(
        forwarded(&w.upstream),
        before,
        "{path}: a refused request reached LibreChat"
    );
}

#[tokio::test]
async fn librechat_client_bodies_are_allowed_or_refused_by_the_organization_policy() {
    let w = world(|c| c).await;
    let ada = member(
        &w,
        "ada@acme.example",
        "member",
        organization("acme", restrictive()),
    );
    let built = payloads(json!([
        {"name": "openai", "endpoint": "openAI", "model": "gpt-4o", "promptPrefix": "Be brief."},
        {"name": "openai-mini", "endpoint": "openAI", "model": "gpt-4o-mini"},
        {"name": "openai-turbo", "endpoint": "openAI", "model": "gpt-4-turbo"},
        {"name": "anthropic", "endpoint": "anthropic", "model": "claude-3-5-sonnet-20241022"},
        {"name": "anthropic-opus", "endpoint": "anthropic", "model": "claude-3-opus-20240229"},
        {"name": "google", "endpoint": "google", "model": "gemini-1.5-pro"},
        {"name": "custom", "endpoint": "OpenRouter", "endpointType": "custom", "model": "meta-llama/llama-3-70b"},
        {"name": "agent", "endpoint": "agents", "agent_id": "agent_abc"},
        {"name": "added-ok", "endpoint": "openAI", "model": "gpt-4o",
         "addedConvo": {"endpoint": "anthropic", "model": "claude-3-5-sonnet-20241022"}},
        {"name": "added-refused", "endpoint": "openAI", "model": "gpt-4o",
         "addedConvo": {"endpoint": "anthropic", "model": "claude-2.1"}},
        {"name": "mcp-ok", "endpoint": "openAI", "model": "gpt-4o", "ephemeralAgent": {"mcp": ["github"]}},
        {"name": "mcp-refused", "endpoint": "openAI", "model": "gpt-4o", "ephemeralAgent": {"mcp": ["github", "slack"]}},
        {"name": "code", "endpoint": "openAI", "model": "gpt-4o", "ephemeralAgent": {"execute_code": true}},
        {"name": "file-search", "endpoint": "openAI", "model": "gpt-4o", "ephemeralAgent": {"file_search": true}},
        {"name": "regenerate", "endpoint": "openAI", "model": "gpt-4o", "isRegenerate": true},
        {"name": "continue", "endpoint": "anthropic", "model": "claude-3-5-sonnet-20241022", "isContinued": true},
        {"name": "spec-fast", "endpoint": "openAI", "model": "gpt-4o-mini", "spec": "fast"},
        {"name": "spec-opus", "endpoint": "openAI", "model": "gpt-4o", "spec": "opus"},
        {"name": "spec-coder", "endpoint": "openAI", "model": "gpt-4o", "spec": "coder"},
        {"name": "spec-unknown", "endpoint": "openAI", "model": "gpt-4o", "spec": "nope"}
    ]))
    .await;
    let refusals = [
        ("openai-turbo", "model_not_allowed", "gpt-4-turbo"),
        (
            "anthropic-opus",
            "model_not_allowed",
            "claude-3-opus-20240229",
        ),
        ("google", "model_not_allowed", "google"),
        ("custom", "model_not_allowed", "meta-llama/llama-3-70b"),
        ("added-refused", "model_not_allowed", "claude-2.1"),
        ("mcp-refused", "feature_disabled", "slack"),
        ("code", "feature_disabled", "code_interpreter"),
        ("file-search", "feature_disabled", "knowledge base"),
        ("spec-opus", "model_not_allowed", "opus"),
        ("spec-coder", "feature_disabled", "coder"),
        ("spec-unknown", "model_not_allowed", "nope"),
    ];
    for (name, path, body) in &built {
        if let Some((_, code, what)) = refusals.iter().find(|(n, _, _)| n == name) {
            assert_refused(&w, &ada, path, body, code, what).await;
            continue;
        }
        let (status, echo) = post_json(&w.gate, &ada, path, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{name}: {echo}");
        // Without custom instructions the body arrives byte for byte.
        assert_eq!(
            echo["body"].as_str().unwrap().as_bytes(),
            &body[..],
            "{name}"
        );
        assert_eq!(echoed(&echo, "x-tenant-id"), ["acme"], "{name}");
        assert_eq!(echoed(&echo, "accept-encoding"), ["identity"], "{name}");
    }
}

#[tokio::test]
async fn legacy_and_assistants_chat_routes_are_checked_too() {
    let w = world(|c| c).await;
    let ada = member(
        &w,
        "ada@acme.example",
        "member",
        organization("acme", restrictive()),
    );
    let cases = [
        (
            "/api/ask/openAI",
            json!({"endpoint": "openAI", "model": "gpt-4-turbo", "text": "hi"}),
            "gpt-4-turbo",
        ),
        (
            "/api/edit/anthropic",
            json!({"endpoint": "anthropic", "model": "claude-2.1"}),
            "claude-2.1",
        ),
        (
            "/api/assistants/v2/chat",
            json!({"endpoint": "assistants", "model": "gpt-4o", "assistant_id": "asst_1"}),
            "assistants",
        ),
        // An Assistants chat without an endpoint is an `assistants` chat.
        (
            "/api/assistants/v2/chat",
            json!({"model": "gpt-4o", "assistant_id": "asst_1"}),
            "assistants",
        ),
        // Odd spellings of a chat path are still chats.
        (
            "/API/agents//chat/openAI/",
            json!({"endpoint": "openAI", "model": "o1"}),
            "o1",
        ),
    ];
    for (path, body, what) in cases {
        let body = Bytes::from(body.to_string());
        assert_refused(&w, &ada, path, &body, "model_not_allowed", what).await;
    }
    let (status, _) = post_json(
        &w.gate,
        &ada,
        "/api/ask/openAI",
        Bytes::from(json!({"endpoint": "openAI", "model": "gpt-4o"}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn custom_instructions_go_before_the_prompt_prefix_except_for_agents() {
    let w = world(|c| c).await;
    let config = json!({"custom_instructions": "Answer in French."});
    let ada = member(
        &w,
        "ada@acme.example",
        "member",
        organization("acme", config),
    );
    let built = payloads(json!([
        {"name": "openai", "endpoint": "openAI", "model": "gpt-4o", "promptPrefix": "Be brief."},
        {"name": "no-prefix", "endpoint": "anthropic", "model": "claude-3-5-sonnet-20241022",
         "addedConvo": {"endpoint": "openAI", "model": "gpt-4o", "promptPrefix": "Second."}},
        {"name": "agent", "endpoint": "agents", "agent_id": "agent_abc"}
    ]))
    .await;
    for (name, path, body) in &built {
        let (status, echo) = post_json(&w.gate, &ada, path, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{name}: {echo}");
        let sent: Value = serde_json::from_slice(body).unwrap();
        let arrived: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
        let mut expected = sent.clone();
        match name.as_str() {
            "openai" => expected["promptPrefix"] = json!("Answer in French.\n\nBe brief."),
            "no-prefix" => {
                expected["promptPrefix"] = json!("Answer in French.");
                expected["addedConvo"]["promptPrefix"] = json!("Answer in French.\n\nSecond.");
            }
            _ => {
                // A saved agent keeps its own instructions: not a byte changes.
                assert_eq!(echo["body"].as_str().unwrap().as_bytes(), &body[..]);
            }
        }
        assert_eq!(arrived, expected, "{name}");
        let length: usize = echoed(&echo, "content-length")[0].parse().unwrap();
        assert_eq!(
            length,
            echo["body_bytes"].as_u64().unwrap() as usize,
            "{name}"
        );
    }
}

#[tokio::test]
async fn two_organizations_each_reach_librechat_as_their_own_tenant() {
    let w = world(|c| c).await;
    let ada = member(
        &w,
        "ada@acme.example",
        "member",
        organization("acme", json!({})),
    );
    let bob = member(
        &w,
        "bob@globex.example",
        "admin",
        organization("globex", json!({})),
    );
    for alpn in [Alpn::H1, Alpn::H2] {
        for (who, tenant) in [(&ada, "acme"), (&bob, "globex")] {
            let spoofs = [
                ("x-tenant-id", "evil"),
                ("X-Tenant-Id", "other-org"),
                ("X-TENANT-ID", "globex"),
            ];
            let mut headers = vec![who.header()];
            headers.extend(spoofs);
            let (status, _, body) =
                send(&w.gate, alpn, Method::GET, "/api/convos", &headers, "").await;
            assert_eq!(status, StatusCode::OK);
            let echo: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(echoed(&echo, "x-tenant-id"), [tenant], "{alpn:?}");
            assert_eq!(echoed(&echo, "x-chatgate-user-id"), [who.user_id.as_str()]);
        }
    }
    // SPEC 10: with no restriction a chat body is not read, so one over
    // 1 MiB goes through whole (the 413 applies only while a restriction does).
    let big =
        json!({"endpoint": "openAI", "model": "gpt-4o", "text": "a".repeat(1_200_000)}).to_string();
    let (status, echo) = post_json(&w.gate, &ada, "/api/agents/chat/openAI", big.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["body_bytes"].as_u64(), Some(big.len() as u64));
}

/// A browser's `GET` that accepts compressed answers.
async fn get(gate: &Gate, who: &Member, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    let headers = [who.header(), ("accept-encoding", "gzip, deflate, br")];
    send(gate, Alpn::H2, Method::GET, path, &headers, "").await
}

#[tokio::test]
async fn lists_are_narrowed_and_asked_for_uncompressed() {
    let w = world(|c| c).await;
    let ada = member(
        &w,
        "ada@acme.example",
        "member",
        organization("acme", restrictive()),
    );
    let open = member(
        &w,
        "eve@open.example",
        "member",
        organization("open", json!({})),
    );
    let (status, headers, body) = get(&w.gate, &ada, "/api/models").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("content-encoding"));
    assert!(!headers.contains_key("etag"));
    let models: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        models,
        json!({"openAI": ["gpt-4o", "gpt-4o-mini"], "anthropic": ["claude-3-5-sonnet-20241022"],
               "OpenRouter": [], "agents": []})
    );
    let asked = w.upstream.requests().last().cloned().unwrap();
    assert_eq!(asked.path_and_query, "/api/models");
    assert_eq!(asked.header("accept-encoding"), Some("identity"));

    let (_, _, body) = get(&w.gate, &ada, "/api/endpoints").await;
    let endpoints: Value = serde_json::from_slice(&body).unwrap();
    let mut names: Vec<&str> = endpoints
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["OpenRouter", "agents", "anthropic", "openAI"]);

    let (_, _, body) = get(&w.gate, &ada, "/api/mcp/tools").await;
    let tools: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        tools["servers"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["github"]
    );
    let (_, _, body) = get(&w.gate, &ada, "/api/mcp/servers").await;
    let servers: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        servers.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["github"]
    );

    // An organization without restrictions gets LibreChat's answer untouched, compressed as asked.
    let (status, headers, body) = get(&w.gate, &open, "/api/models").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-encoding"], "gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        librechat_lists::models()
    );
}

#[tokio::test]
async fn a_policy_change_applies_within_the_tenant_cache_ttl() {
    let w = world(|mut c| {
        c.tenant_cache_ttl = "1s".to_owned();
        c
    })
    .await;
    let ada = member(
        &w,
        "ada@acme.example",
        "member",
        organization("acme", json!({})),
    );
    let body =
        Bytes::from(json!({"endpoint": "openAI", "model": "gpt-4o", "text": "hi"}).to_string());
    let (status, _) = post_json(&w.gate, &ada, "/api/agents/chat/openAI", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    w.supabase.set_profile(
        &ada.user_id,
        "member",
        Some(organization(
            "acme",
            json!({"enabled_models": ["claude-3-5"]}),
        )),
    );
    eventually("the new policy refuses gpt-4o", || {
        let body = body.clone();
        let (gate, ada) = (&w.gate, &ada);
        async move {
            post_json(gate, ada, "/api/agents/chat/openAI", body)
                .await
                .0
                == StatusCode::FORBIDDEN
        }
    })
    .await;
}

#[tokio::test]
async fn bad_chat_bodies_get_a_clear_4xx_and_never_reach_librechat() {
    let w = world(|c| c).await;
    let ada = member(
        &w,
        "ada@acme.example",
        "member",
        organization("acme", restrictive()),
    );
    let path = "/api/agents/chat/openAI";
    let cases: Vec<(Bytes, &str, &str)> = vec![
        (Bytes::from_static(b"hello"), "bad_request", "JSON object"),
        (
            Bytes::from_static(b"{\"endpoint\":\"openAI\",\"model\":\"gpt-4o\""),
            "bad_request",
            "not valid JSON",
        ),
        (
            Bytes::from_static(b"{\"endpoint\":\"openAI\",\"model\":4}"),
            "bad_request",
            "`model` must be a string",
        ),
        (
            Bytes::from_static(
                b"{\"endpoint\":\"openAI\",\"model\":\"gpt-4o\",\"addedConvo\":\"x\"}",
            ),
            "bad_request",
            "addedConvo",
        ),
        // The last of two keys wins, as in LibreChat's JSON.parse.
        (
            Bytes::from_static(b"{\"endpoint\":\"openAI\",\"model\":\"gpt-4o\",\"model\":\"o1\"}"),
            "model_not_allowed",
            "o1",
        ),
        // The body's endpoint wins over the path's.
        (
            Bytes::from(json!({"endpoint": "google", "model": "gpt-4o"}).to_string()),
            "model_not_allowed",
            "google",
        ),
        (
            Bytes::from(format!(
                "{{\"endpoint\":\"openAI\",\"model\":\"gpt-4o\",\"addedConvo\":{}1{}}}",
                "[".repeat(5000),
                "]".repeat(5000)
            )),
            "bad_request",
            "addedConvo",
        ),
        (
            Bytes::from(format!(
                "{{\"endpoint\":\"openAI\",\"model\":\"gpt-4o\",\"text\":\"{}\"}}",
                "a".repeat(1024 * 1024)
            )),
            "payload_too_large",
            "1048576",
        ),
    ];
    for (body, code, what) in &cases {
        assert_refused(&w, &ada, path, body, code, what).await;
    }
    // The same two keys the other way round pass.
    let (status, _) = post_json(
        &w.gate,
        &ada,
        path,
        &b"{\"endpoint\":\"openAI\",\"model\":\"o1\",\"model\":\"gpt-4o\"}"[..],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A chunked body without a length, larger than 1 MiB: 413 once it passes the limit.
    let before = forwarded(&w.upstream);
    let mut client = TestClient::connect(w.gate.addr(), Alpn::H1).await.unwrap();
    let (tx, body) = client::streaming_body();
    let mut request = http::Request::post(path).body(body).unwrap();
    request
        .headers_mut()
        .insert("cookie", ada.cookie.parse().unwrap());
    let writer = tokio::spawn(async move {
        for _ in 0..40 {
            if tx.send(Bytes::from(vec![b' '; 64 * 1024])).await.is_err() {
                break;
            }
        }
    });
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    drop(response);
    writer.abort();
    assert_eq!(forwarded(&w.upstream), before);
}

#[tokio::test]
async fn feature_routes_and_agents_follow_the_policy() {
    let w = world(|c| c).await;
    let ada = member(
        &w,
        "ada@acme.example",
        "member",
        organization("acme", restrictive()),
    );
    let empty = Bytes::from_static(b"{}");
    for (path, code, what) in [
        ("/api/files", "feature_disabled", "file_upload"),
        ("/api/files/images", "feature_disabled", "file_upload"),
        ("/api/files/speech/stt", "feature_disabled", "voice_chat"),
        (
            "/api/agents/tools/execute_code/call",
            "feature_disabled",
            "code_interpreter",
        ),
        ("/api/agents/tools/dalle/call", "feature_disabled", "dalle"),
        ("/api/mcp/slack/reinitialize", "feature_disabled", "slack"),
    ] {
        assert_refused(&w, &ada, path, &empty, code, what).await;
    }
    for path in ["/api/files/images/avatar", "/api/mcp/github/reinitialize"] {
        let (status, _) = post_json(&w.gate, &ada, path, empty.clone()).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let agent = |value: Value| Bytes::from(value.to_string());
    for (refused, code, what) in [
        (
            json!({"provider": "google", "model": "gemini-1.5-pro"}),
            "model_not_allowed",
            "google",
        ),
        (
            json!({"provider": "openAI", "model": "gpt-4o", "tools": ["dalle"]}),
            "feature_disabled",
            "dalle",
        ),
        (
            json!({"provider": "openAI", "model": "gpt-4o", "tools": ["x_mcp_slack"]}),
            "feature_disabled",
            "slack",
        ),
    ] {
        assert_refused(&w, &ada, "/api/agents", &agent(refused), code, what).await;
    }
    let ok = agent(
        json!({"provider": "openAI", "model": "gpt-4o", "tools": ["web_search", "x_mcp_github"]}),
    );
    let (status, echo) = post_json(&w.gate, &ada, "/api/agents", ok.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["body"].as_str().unwrap().as_bytes(), &ok[..]);
    // PATCH changes an agent the same way.
    let (status, _, _) = send(
        &w.gate,
        Alpn::H2,
        Method::PATCH,
        "/api/agents/agent_ok",
        &[ada.header()],
        agent(json!({"model": "o1"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A duplicate copies the stored agent: the image-tool agent cannot be copied.
    let before = forwarded(&w.upstream);
    let (status, answer) = post_json(
        &w.gate,
        &ada,
        "/api/agents/agent_dalle/duplicate",
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    let seen: Vec<_> = w
        .upstream
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query != "/health")
        .collect();
    assert_eq!(seen.len(), before + 1, "only the lookup reached LibreChat");
    assert_eq!(seen.last().unwrap().method, "GET");
    assert_eq!(seen.last().unwrap().header("x-tenant-id"), Some("acme"));
    assert!(
        seen.last().unwrap().header("cookie").is_none(),
        "no Supabase cookie in the lookup"
    );
    let (status, _) = post_json(
        &w.gate,
        &ada,
        "/api/agents/agent_ok/duplicate",
        Bytes::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_organization_over_its_monthly_tokens_gets_429_until_next_month() {
    let w = world(|c| c).await;
    let config = json!({"max_tokens": 1000});
    let ada = member(
        &w,
        "ada@acme.example",
        "member",
        organization("acme", config),
    );
    let body = Bytes::from(json!({"endpoint": "openAI", "model": "gpt-4o"}).to_string());
    let (status, _) = post_json(&w.gate, &ada, "/api/agents/chat/openAI", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "under the quota");
    let key = chatgate::policy::quota::quota_key("acme", std::time::SystemTime::now());
    w.gate
        .app()
        .store
        .incr(&key, 1000, Duration::from_secs(3600))
        .await
        .unwrap();
    eventually("the counter is read again", || {
        let body = body.clone();
        let (gate, ada) = (&w.gate, &ada);
        async move {
            let (status, headers, _) = send(
                gate,
                Alpn::H1,
                Method::POST,
                "/api/agents/chat/openAI",
                &[ada.header()],
                body,
            )
            .await;
            status == StatusCode::TOO_MANY_REQUESTS
                && headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
                    > 0
        }
    })
    .await;
    assert_refused(
        &w,
        &ada,
        "/api/agents/chat/openAI",
        &body,
        "quota_exceeded",
        "1000",
    )
    .await;
    // Other routes are not metered.
    let (status, _, _) = send(
        &w.gate,
        Alpn::H1,
        Method::GET,
        "/api/convos",
        &[ada.header()],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}
