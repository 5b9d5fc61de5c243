//! Operating chatgate (SPEC section 14): `/metrics` names and counts after a
//! known sequence of requests, the access line's fields, and the W3C
//! `traceparent` kept, started and passed to LibreChat.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::chatgate::{eventually, session_cookie, Gate, GateConfig, SignedIn, COOKIE_NAME};
use support::client::{Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::supabase::{SigningKind, StandInSupabase};

/// The value of the sample written exactly as `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} is not in /metrics:\n{text}"))
}

async fn scrape(gate: &Gate) -> String {
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    let (status, headers, body) = client.get("/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn metrics_count_a_known_sequence_of_requests_exactly() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let lc = StandInLibreChat::start("lc-1").await;
    let gate = Gate::start(GateConfig::new(&[lc.url()]).with_supabase(&supabase)).await;
    let app = gate.app();
    let ada = SignedIn::new(&supabase, "ada@acme.example");
    // Ada's pin names an instance that is no longer in the pool: it moves.
    app.store
        .set(
            &chatgate::upstream::sticky::key(ada.session.user_id()),
            Bytes::from_static(b"http://127.0.0.1:1/"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    for _ in 0..2 {
        let (status, _, _) = client.get("/api/convos", &[ada.header()]).await;
        assert_eq!(status, StatusCode::OK);
    }
    // Bob's access token expired ten minutes ago: refreshed once.
    let bob = supabase.sign_in_expired("bob@acme.example", Duration::from_secs(600));
    supabase.set_profile(bob.user_id(), "member", Some(support::chatgate::acme()));
    let bob_cookie = session_cookie(COOKIE_NAME, &bob.to_json());
    let (status, _, _) = client
        .get("/api/convos", &[("cookie", bob_cookie.as_str())])
        .await;
    assert_eq!(status, StatusCode::OK);
    // Cy's organization allows only gpt-4o: o1 is refused.
    let cy = supabase.sign_in("cy@strict.example", Duration::from_secs(3600));
    let strict = json!({"id": "strict", "name": "Strict", "domain": "strict.example",
        "plan_type": "pro", "librechat_config": {"enabled_models": ["gpt-4o"]}});
    supabase.set_profile(cy.user_id(), "member", Some(strict));
    let cy_cookie = session_cookie(COOKIE_NAME, &cy.to_json());
    let (status, _, body) = client
        .request(
            Method::POST,
            "/api/agents/chat/openAI",
            &[
                ("cookie", cy_cookie.as_str()),
                ("content-type", "application/json"),
            ],
            json!({"endpoint": "openAI", "model": "o1", "text": "hi"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body:?}");
    // No session at all.
    let (status, _, _) = client.get("/api/convos", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let text = scrape(&gate).await;
    for (series, value) in [
        ("chatgate_auth_total{outcome=\"valid\"}", 3.0),
        ("chatgate_auth_total{outcome=\"refreshed\"}", 1.0),
        ("chatgate_auth_total{outcome=\"ended\"}", 0.0),
        ("chatgate_auth_total{outcome=\"absent\"}", 1.0),
        ("chatgate_auth_total{outcome=\"unavailable\"}", 0.0),
        ("chatgate_auth_refreshes_total", 1.0),
        ("chatgate_auth_refresh_joins_total", 0.0),
        ("chatgate_org_lookups_total{outcome=\"miss\"}", 3.0),
        ("chatgate_org_lookups_total{outcome=\"hit\"}", 1.0),
        ("chatgate_org_lookups_total{outcome=\"stale\"}", 0.0),
        ("chatgate_org_lookups_total{outcome=\"error\"}", 0.0),
        ("chatgate_sticky_pins_total{outcome=\"moved\"}", 1.0),
        ("chatgate_sticky_pins_total{outcome=\"hit\"}", 1.0),
        ("chatgate_sticky_pins_total{outcome=\"new\"}", 1.0),
        ("chatgate_sticky_pins_total{outcome=\"fallback\"}", 0.0),
        (
            "chatgate_policy_refusals_total{reason=\"model_not_allowed\"}",
            1.0,
        ),
        (
            "chatgate_policy_refusals_total{reason=\"quota_exceeded\"}",
            0.0,
        ),
        ("chatgate_responses_total{class=\"2xx\",route=\"api\"}", 3.0),
        (
            "chatgate_responses_total{class=\"4xx\",route=\"chat\"}",
            1.0,
        ),
        ("chatgate_responses_total{class=\"4xx\",route=\"api\"}", 1.0),
        (
            "chatgate_response_duration_seconds_count{class=\"2xx\",route=\"api\"}",
            3.0,
        ),
        ("chatgate_added_latency_seconds_count", 3.0),
        ("chatgate_upstream_errors_total", 0.0),
        ("chatgate_store_errors_total", 0.0),
        ("chatgate_store_breaker_open", 0.0),
        ("chatgate_draining", 0.0),
        ("chatgate_connections_draining", 0.0),
        ("chatgate_pool_panic", 0.0),
    ] {
        assert_eq!(sample(&text, series), value, "{series}");
    }
    let upstream = format!("{{upstream=\"{}/\"}}", lc.url().trim_end_matches('/'));
    assert_eq!(
        sample(&text, &format!("chatgate_upstream_in_flight{upstream}")),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("chatgate_upstream_connection_waits_total{upstream}")
        ),
        0.0
    );
    assert!(text.contains("# TYPE chatgate_response_duration_seconds histogram"));
    // Every family the example dashboard queries is one chatgate shows
    // (usage metering's only when it is on, so those are checked in the docs).
    let dashboard: Value =
        serde_json::from_str(include_str!("../docs/grafana-dashboard.json")).unwrap();
    let operations = include_str!("../docs/operations.md");
    for target in dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
    {
        let expr = target["expr"].as_str().unwrap();
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("chatgate_"))
        {
            let family = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                operations.contains(&format!("`{family}`")),
                "{family} undocumented"
            );
            if !family.starts_with("chatgate_usage_") {
                assert!(
                    text.contains(&format!("# TYPE {family} ")),
                    "{family} not shown"
                );
            }
        }
    }
    // The scrape itself is counted once it has been answered.
    let again = scrape(&gate).await;
    assert_eq!(
        sample(
            &again,
            "chatgate_responses_total{class=\"2xx\",route=\"chatgate_own\"}"
        ),
        1.0
    );
}

/// A chatgate process logging to a file, for its access lines.
struct Logged {
    child: std::process::Child,
    log: std::path::PathBuf,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Logged {
    fn start(config: GateConfig) -> Logged {
        Logged::start_with(config, &[])
    }

    fn start_with(config: GateConfig, env: &[(&str, &str)]) -> Logged {
        support::init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_port();
        let mut config = config;
        config.listen = format!("127.0.0.1:{port}");
        let path = config.write(dir.path());
        let log = dir.path().join("chatgate.log");
        let child = Command::new(env!("CARGO_BIN_EXE_chatgate"))
            .arg("--config")
            .arg(&path)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Logged {
            child,
            log,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            _dir: dir,
        }
    }

    /// The JSON access line of the request with this id, once written.
    async fn access_line(&self, request_id: &str) -> Value {
        let mut found = None;
        eventually("the access line is written", || {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| l["target"] == "chatgate::access" && l["request_id"] == request_id);
            let done = found.is_some();
            async move { done }
        })
        .await;
        found.unwrap()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_access_line_has_bytes_identity_and_trace_and_the_trace_reaches_librechat() {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let lc = StandInLibreChat::start("lc-1").await;
    let gate = Logged::start(GateConfig::new(&[lc.url()]).with_supabase(&supabase));
    let ada = SignedIn::new(&supabase, "ada@acme.example");
    eventually("chatgate listens", || {
        let addr = gate.addr;
        async move { TestClient::connect(addr, Alpn::H1).await.is_ok() }
    })
    .await;
    let mut client = TestClient::connect(gate.addr, Alpn::H1).await.unwrap();

    // 1. A caller's trace is kept; LibreChat's parent is chatgate's span.
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _, body) = client
        .request(
            Method::POST,
            "/api/messages?secret=hidden",
            &[
                ada.header(),
                ("x-request-id", "obs-1"),
                ("traceparent", incoming),
                ("content-type", "text/plain"),
            ],
            "seventeen bytes!!",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let sent = lc.requests().last().unwrap().clone();
    let passed = sent.header("traceparent").unwrap().to_owned();
    assert!(
        passed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{passed}"
    );
    assert!(passed.ends_with("-01"), "{passed}");
    assert_ne!(
        &passed[36..52],
        "00f067aa0ba902b7",
        "chatgate's own span is the parent"
    );
    let line = gate.access_line("obs-1").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/api/messages", "never the query");
    assert_eq!(line["bytes_in"], 17);
    assert_eq!(line["bytes_out"], body.len() as u64);
    assert!(line["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["user_id"], ada.session.user_id());
    assert_eq!(
        line["organization_id"],
        "7d1c7c6e-0000-4000-8000-00000000acme"
    );
    assert_eq!(line["identified_by"], "cookie");
    assert_eq!(
        line["upstream"].as_str().unwrap().trim_end_matches('/'),
        lc.url().trim_end_matches('/')
    );
    assert_eq!(line["attempts"], 1);
    assert_eq!(line["reason"], Value::Null);

    // 2. A malformed traceparent starts a new trace, passed on and logged.
    let (status, _, _) = client
        .get(
            "/api/convos",
            &[
                ada.header(),
                ("x-request-id", "obs-2"),
                ("traceparent", "00-zz-bad-01"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let sent = lc.requests().last().unwrap().clone();
    let started = sent.header("traceparent").unwrap().to_owned();
    assert_eq!(started.len(), 55, "{started}");
    let line = gate.access_line("obs-2").await;
    assert_eq!(line["trace_id"].as_str().unwrap(), &started[3..35]);
    assert_eq!(line["bytes_in"], 0);

    // 3. A 5xx carries its reason.
    let (status, _, _) = client
        .get(
            "/status?code=500",
            &[ada.header(), ("x-request-id", "obs-3")],
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let line = gate.access_line("obs-3").await;
    assert_eq!(line["status"], 500);
    assert_eq!(line["reason"], "the instance answered with this status");

    // Nothing that could hold a credential is logged.
    let text = std::fs::read_to_string(&gate.log).unwrap();
    assert!(!text.contains("hidden"), "{text}");
    assert!(!text.contains(&ada.session.access_token), "{text}");
}

/// A stand-in OpenTelemetry collector: OTLP/HTTP `POST /v1/traces`, JSON.
struct Collector {
    addr: std::net::SocketAddr,
    received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start() -> Collector {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let ok = req.method() == Method::POST
                                && req.uri().path() == "/v1/traces"
                                && req.headers()["content-type"] == "application/json";
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if ok {
                                store
                                    .lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap());
                            }
                            let status = if ok {
                                StatusCode::OK
                            } else {
                                StatusCode::NOT_FOUND
                            };
                            let mut answer =
                                http::Response::new(http_body_util::Full::new(Bytes::from("{}")));
                            *answer.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        Collector { addr, received }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

#[tokio::test]
async fn spans_go_to_the_otlp_collector_named_by_the_environment() {
    let collector = Collector::start().await;
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let lc = StandInLibreChat::start("lc-1").await;
    let endpoint = format!("http://{}", collector.addr);
    let gate = Logged::start_with(
        GateConfig::new(&[lc.url()]).with_supabase(&supabase),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let ada = SignedIn::new(&supabase, "ada@acme.example");
    eventually("chatgate listens", || {
        let addr = gate.addr;
        async move { TestClient::connect(addr, Alpn::H1).await.is_ok() }
    })
    .await;
    let mut client = TestClient::connect(gate.addr, Alpn::H1).await.unwrap();
    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (status, _, _) = client
        .get(
            "/api/convos",
            &[
                ada.header(),
                ("x-request-id", "otlp-1"),
                ("traceparent", incoming),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let passed = lc
        .requests()
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_owned();
    let mut span = None;
    eventually("the collector receives the span", || {
        span = collector
            .spans()
            .into_iter()
            .find(|s| s["traceId"] == "0af7651916cd43dd8448eb211c80319c");
        let done = span.is_some();
        async move { done }
    })
    .await;
    let span = span.unwrap();
    assert_eq!(
        span["parentSpanId"], "b7ad6b7169203331",
        "the caller's span"
    );
    assert_eq!(
        span["spanId"].as_str().unwrap(),
        &passed[36..52],
        "LibreChat's parent"
    );
    assert_eq!(span["kind"], 2);
    assert_eq!(span["name"], "GET");
    let attributes = span["attributes"].to_string();
    assert!(attributes.contains("\"url.path\""), "{attributes}");
    assert!(
        attributes.contains("/api/convos") && attributes.contains("otlp-1"),
        "{attributes}"
    );
    // A caller that did not ask for sampling (flags 00) is not exported.
    let unsampled = "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    client
        .get("/api/convos", &[ada.header(), ("traceparent", unsampled)])
        .await;
    let (_, _, _) = client
        .get("/api/convos", &[ada.header(), ("x-request-id", "otlp-3")])
        .await;
    eventually("a later sampled span arrives", || {
        let done = collector
            .spans()
            .iter()
            .any(|s| s.to_string().contains("otlp-3"));
        async move { done }
    })
    .await;
    assert!(!collector
        .spans()
        .iter()
        .any(|s| s["traceId"] == "1af7651916cd43dd8448eb211c80319c"));
}
