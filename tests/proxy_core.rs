//! The proxy core over real sockets: a real chatgate (TLS, port 0) in front
//! of stand-in LibreChat instances. Each test reads "given … when … then".

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use support::chatgate::{eventually, Gate, GateConfig, SignedIn};
use support::client::{self, Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::supabase::{SigningKind, StandInSupabase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// Guards against a hang in a broken build; never a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// A chatgate in front of `upstreams`, a stand-in Supabase, and a user of
/// organization "acme" signed in to the dashboard.
struct World {
    gate: Gate,
    _supabase: StandInSupabase,
    user: SignedIn,
}

async fn world(upstreams: &[&StandInLibreChat]) -> World {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let user = SignedIn::new(&supabase, "ada@acme.example");
    World {
        gate: Gate::start(config(upstreams, &supabase)).await,
        _supabase: supabase,
        user,
    }
}

fn config(upstreams: &[&StandInLibreChat], supabase: &StandInSupabase) -> GateConfig {
    let urls: Vec<String> = upstreams.iter().map(|u| u.url()).collect();
    GateConfig::new(&urls).with_supabase(supabase)
}

fn echo(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("echo JSON: {e}: {body:?}"))
}

fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .expect("headers array")
        .iter()
        .filter(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .filter_map(|pair| pair[1].as_str())
        .collect()
}

#[tokio::test]
async fn both_alpn_protocols_reach_the_upstream() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&upstream]).await;
    for alpn in [Alpn::H1, Alpn::H2] {
        let mut client = TestClient::connect(gate.addr(), alpn).await.unwrap();
        let expected: &[u8] = if alpn == Alpn::H2 { b"h2" } else { b"http/1.1" };
        assert_eq!(client.negotiated_alpn().as_deref(), Some(expected));
        let (status, headers, body) = client.get("/api/config?x=1", &[user.header()]).await;
        assert_eq!(status, StatusCode::OK, "{alpn:?}");
        let echo = echo(&body);
        assert_eq!(echo["instance"], "lc-1");
        assert_eq!(echo["path"], "/api/config?x=1");
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(header(&echo, "x-forwarded-proto"), ["https"]);
        assert_eq!(header(&echo, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(header(&echo, "x-forwarded-host"), ["localhost"]);
        assert_eq!(header(&echo, "x-request-id").len(), 1);
    }
}

#[tokio::test]
async fn hop_by_hop_and_reserved_headers_stop_at_chatgate() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&upstream]).await;
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    let (_, _, body) = client
        .get(
            "/c/new",
            &[
                ("connection", "keep-alive, x-drop-me"),
                ("x-drop-me", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-chatgate-user-id", "spoofed"),
                ("X-User-Email", "spoofed@example.com"),
                ("x-organization-id", "spoofed"),
                ("x-request-id", "trace-abc-123"),
                ("user-agent", "Mozilla/5.0 test"),
                user.header(),
            ],
        )
        .await;
    let echo = echo(&body);
    for name in [
        "x-drop-me",
        "keep-alive",
        "proxy-authorization",
        "x-user-email",
        "x-organization-id",
    ] {
        assert!(
            header(&echo, name).is_empty(),
            "{name} reached the upstream"
        );
    }
    assert_eq!(
        header(&echo, "x-chatgate-user-id"),
        [user.session.user_id()],
        "chatgate's identity header replaces the client's"
    );
    assert_eq!(
        header(&echo, "x-request-id"),
        ["trace-abc-123"],
        "a plain incoming id is kept"
    );
    assert_eq!(
        header(&echo, "user-agent"),
        ["Mozilla/5.0 test"],
        "LibreChat checks the browser's UA"
    );
}

#[tokio::test]
async fn a_token_in_the_query_never_reaches_the_upstream() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&upstream]).await;
    let mut client = TestClient::connect(gate.addr(), Alpn::H2).await.unwrap();
    let (_, _, body) = client
        .get("/c/new?token=eyJsecret&org=acme", &[user.header()])
        .await;
    assert_eq!(echo(&body)["path"], "/c/new?org=acme");
}

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let user = SignedIn::new(&supabase, "ada@acme.example");
    let spoof = [
        user.header(),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "evil.example"),
        ("x-real-ip", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
    ];

    // Untrusted peer: everything it claims is replaced.
    let mut config = config(&[&upstream], &supabase);
    config.http_listen = true;
    let gate = Gate::start(config.clone()).await;
    let (_, _, body) = client::plain_get(gate.http_addr(), "/", &spoof).await;
    let echo_untrusted = echo(&body);
    assert_eq!(header(&echo_untrusted, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&echo_untrusted, "x-forwarded-proto"), ["http"]);
    assert_ne!(
        header(&echo_untrusted, "x-forwarded-host"),
        ["evil.example"]
    );
    assert!(header(&echo_untrusted, "x-real-ip").is_empty());
    assert!(header(&echo_untrusted, "forwarded").is_empty());

    // Trusted load balancer: its chain is kept and extended.
    config.trusted_proxies = vec!["127.0.0.0/8".to_owned()];
    let gate = Gate::start(config).await;
    let (_, _, body) = client::plain_get(
        gate.http_addr(),
        "/",
        &[
            user.header(),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let echo_trusted = echo(&body);
    assert_eq!(
        header(&echo_trusted, "x-forwarded-for"),
        ["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(header(&echo_trusted, "x-forwarded-proto"), ["https"]);
}

#[tokio::test]
async fn oversized_headers_get_431_on_both_protocols() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let mut config = GateConfig::new(&[upstream.url()]);
    config.max_header_bytes = 8192;
    let gate = Gate::start(config).await;
    let big = "a".repeat(9000);
    for alpn in [Alpn::H1, Alpn::H2] {
        let mut client = TestClient::connect(gate.addr(), alpn).await.unwrap();
        let (status, _, body) = client.get("/", &[("x-big", &big)]).await;
        assert_eq!(
            status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "{alpn:?}"
        );
        assert_eq!(echo(&body)["error"], "bad_request");
        // Far beyond the buffer, hyper itself refuses; still 431 on HTTP/1.1.
    }
    let huge = "b".repeat(100_000);
    let raw =
        format!("GET / HTTP/1.1\r\nhost: localhost\r\nx-huge: {huge}\r\nconnection: close\r\n\r\n");
    let answer = client::raw_exchange_tls(gate.addr(), raw.as_bytes()).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.path_and_query == "/health"),
        "nothing oversized was forwarded"
    );
}

#[tokio::test]
async fn a_50_mb_upload_streams_before_the_client_finishes() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&upstream]).await;
    for alpn in [Alpn::H1, Alpn::H2] {
        let mut client = TestClient::connect(gate.addr(), alpn).await.unwrap();
        let (tx, body) = client::streaming_body();
        let request = Request::post("/upload")
            .header("cookie", &user.cookie)
            .body(body)
            .unwrap();
        let response = tokio::spawn(async move { client.send(request).await });
        let chunk = Bytes::from(vec![b'x'; 1024 * 1024]);
        tx.send(chunk.clone()).await.unwrap();
        // The upstream sees bytes while 49 MB are still unsent: nothing is held whole.
        tokio::time::timeout(HANG_GUARD, upstream.upload_started())
            .await
            .expect("upload reached the upstream before the client finished");
        for _ in 1..50 {
            tx.send(chunk.clone()).await.unwrap();
        }
        drop(tx);
        let response = response.await.unwrap().unwrap();
        let (status, _, body) = client::collect(response).await;
        assert_eq!(status, StatusCode::OK, "{alpn:?}");
        assert_eq!(echo(&body)["bytes"], 50 * 1024 * 1024);
    }
}

#[tokio::test]
async fn a_50_mb_download_streams_through() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&upstream]).await;
    let mut client = TestClient::connect(gate.addr(), Alpn::H2).await.unwrap();
    let request = Request::get("/download?bytes=52428800")
        .header("cookie", &user.cookie)
        .body(client::empty())
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut total = 0u64;
    let mut largest_frame = 0usize;
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap_or_default();
        for (i, byte) in data.iter().enumerate() {
            if *byte != support::librechat::download_byte(total + i as u64) {
                panic!("byte {} differs", total + i as u64);
            }
        }
        largest_frame = largest_frame.max(data.len());
        total += data.len() as u64;
    }
    assert_eq!(total, 52_428_800);
    assert!(
        largest_frame < 4 * 1024 * 1024,
        "frames of {largest_frame} bytes: body was buffered"
    );
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&upstream]).await;
    for alpn in [Alpn::H1, Alpn::H2] {
        let mut client = TestClient::connect(gate.addr(), alpn).await.unwrap();
        let request = Request::get("/sse?events=3")
            .header("cookie", &user.cookie)
            .body(client::empty())
            .unwrap();
        upstream.release_sse(1);
        let response = client.send(request).await.unwrap();
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body();
        let mut seen = String::new();
        for n in 1..=3 {
            // Event n must arrive while the upstream is still waiting to send n+1.
            while !seen.contains(&format!("\"n\":{n}")) {
                let frame = tokio::time::timeout(HANG_GUARD, body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("{alpn:?}: event {n} was held back"))
                    .expect("stream still open")
                    .unwrap();
                if let Some(data) = frame.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(data));
                }
            }
            assert!(!seen.contains(&format!("\"n\":{}", n + 1)));
            if n < 3 {
                upstream.release_sse(1);
            }
        }
        // HTTP/2 may close the stream with an empty DATA frame.
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            assert!(
                frame.data_ref().is_none_or(|d| d.is_empty()),
                "nothing after the last event"
            );
        }
    }
}

#[tokio::test]
async fn websocket_echo_is_tunnelled() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&upstream]).await;
    let mut ws = client::websocket_tls(gate.addr(), "/ws", &[user.header()]).await;
    for text in ["hello", "second message"] {
        ws.send(Message::Text(text.into())).await.unwrap();
        let reply = tokio::time::timeout(HANG_GUARD, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply, Message::Text(text.into()));
    }
    ws.send(Message::Binary(vec![0, 1, 2, 255])).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply, Message::Binary(vec![0, 1, 2, 255]));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn readyz_follows_the_upstream_down_and_back() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let addr = upstream.addr();
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&upstream]).await;
    let readyz = || async {
        let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
        client.get("/readyz", &[]).await
    };
    eventually("readyz 200", || async {
        readyz().await.0 == StatusCode::OK
    })
    .await;
    let (_, _, body) = readyz().await;
    assert_eq!(echo(&body)["status"], "ready");

    upstream.stop().await;
    eventually("readyz 503", || async {
        readyz().await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (_, _, body) = readyz().await;
    let reasons = echo(&body)["reasons"].to_string();
    assert!(reasons.contains("upstreams"), "{reasons}");

    // No healthy instance: 503 at once, not after a connect timeout.
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    let (status, _, body) = client.get("/api/convos", &[user.header()]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(echo(&body)["error"], "upstream_unavailable");

    let _back = StandInLibreChat::start_on("lc-1", addr).await;
    eventually("readyz 200 again", || async {
        readyz().await.0 == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_get_is_retried_on_another_instance_when_the_first_refuses() {
    let a = StandInLibreChat::start("lc-a").await;
    let b = StandInLibreChat::start("lc-b").await;
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&a, &b]).await;
    eventually("both healthy", || async {
        gate.app().pool.healthy_count() == 2
    })
    .await;
    a.stop().await;
    // Before the health checker notices, requests that hit the dead
    // instance are retried on the live one.
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    for _ in 0..4 {
        let (status, _, body) = client.get("/api/convos", &[user.header()]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(echo(&body)["instance"], "lc-b");
    }
}

#[tokio::test]
async fn upstream_response_headers_pass_and_hop_by_hop_do_not() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        user,
        _supabase,
    } = world(&[&upstream]).await;
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
    let (status, headers, _) = client.get("/set-cookie", &[user.header()]).await;
    assert_eq!(status, StatusCode::OK);
    let cookies: Vec<_> = headers
        .get_all("set-cookie")
        .iter()
        .filter(|c| !c.to_str().unwrap().starts_with("chatgate_"))
        .collect();
    assert_eq!(cookies.len(), 2, "both LibreChat cookies pass: {cookies:?}");
    assert_eq!(headers["x-instance"], "lc-1");
    assert!(!headers.contains_key("keep-alive"));
}

#[tokio::test]
async fn connections_are_handed_to_every_worker_in_turn_and_each_serves_them() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        _supabase,
        user,
    } = world(&[&upstream]).await;
    let mut clients = Vec::new();
    for n in 0..4 {
        let alpn = if n % 2 == 0 { Alpn::H1 } else { Alpn::H2 };
        let mut client = TestClient::connect(gate.addr(), alpn).await.unwrap();
        let (status, headers, _) = client.get("/api/config", &[user.header()]).await;
        assert_eq!(status, StatusCode::OK, "connection {n}");
        assert_eq!(headers["x-instance"], "lc-1");
        clients.push(client);
    }
    let (_, _, body) = clients[0].get("/metrics", &[]).await;
    let text = String::from_utf8_lossy(&body);
    let open: Vec<u64> = text
        .lines()
        .filter(|line| line.starts_with("chatgate_connections_open{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(open, [2, 2], "4 connections over 2 workers: {text}");
    drop(clients);
    eventually("the gauges fall back to 0", || async {
        let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();
        let (_, _, body) = client.get("/metrics", &[]).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        // The asking connection itself is open on one of them.
        text.contains("chatgate_connections_open{worker=\"0\"} 0")
            != text.contains("chatgate_connections_open{worker=\"1\"} 0")
    })
    .await;
}

/// `chatgate_connections_parked`, asked on a connection of its own.
async fn parked(gate: &Gate) -> u64 {
    let mut client = TestClient::connect(gate.addr(), Alpn::H2).await.unwrap();
    let (_, _, body) = client.get("/metrics", &[]).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|line| line.strip_prefix("chatgate_connections_parked "))
        .unwrap_or_else(|| panic!("no parked gauge: {text}"))
        .parse()
        .unwrap()
}

/// A raw HTTP/1.1 TLS connection that has been answered once and is now
/// the one parked connection.
async fn parked_raw_connection(gate: &Gate) -> client::TlsStream {
    let mut raw = client::tls_connect(gate.addr(), b"http/1.1").await.unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.ends_with(b"\r\n\r\nok") {
        let n = raw.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    }
    eventually("the connection is parked", || async {
        parked(gate).await == 1
    })
    .await;
    raw
}

#[tokio::test]
async fn an_idle_http1_connection_is_parked_and_serves_again_but_a_stream_is_never_parked() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        _supabase,
        user,
    } = world(&[&upstream]).await;
    let mut client = TestClient::connect(gate.addr(), Alpn::H1).await.unwrap();

    // A stream that stays open, silent, for longer than parking waits.
    let response = client
        .send(client::build_request(
            Method::GET,
            "/sse?events=2",
            &[user.header()],
            Bytes::new(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    upstream.release_sse(1);
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: {\"n\":1}\n\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        parked(&gate).await,
        0,
        "a connection with a stream open was parked"
    );
    upstream.release_sse(1);
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&second[..], b"data: {\"n\":2}\n\n");
    assert!(
        body.frame().await.is_none(),
        "the stream ends after 2 events"
    );

    // Idle now: parked, and the same connection serves the next request.
    eventually("the idle connection is parked", || async {
        parked(&gate).await == 1
    })
    .await;
    assert!(!client.is_closed());
    let (status, headers, _) = client.get("/api/config", &[user.header()]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-instance"], "lc-1");
    assert_eq!(parked(&gate).await, 0);
    drop(client);

    // A pipelined pair sent to a parked connection is answered in order.
    let mut raw = parked_raw_connection(&gate).await;
    raw.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut received = Vec::new();
    raw.read_to_end(&mut received).await.unwrap();
    let text = String::from_utf8_lossy(&received);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert_eq!(parked(&gate).await, 0);
}

/// Issue 15: chatgate's HPACK encoder (vendor/h2) sends a header it has
/// sent before as an index into the client's table, and for a name with
/// several values in the table tries the entry it used last first. Over one
/// connection, every response's CSP, HSTS, `Cache-Control` and
/// `Set-Cookie` headers decode to the same bytes as the first's, and a
/// header whose value changes and comes back (as `date` does) decodes to the
/// value sent each time.
#[tokio::test]
async fn http2_response_headers_decode_the_same_on_every_request_of_a_connection() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        _supabase,
        user,
    } = world(&[&upstream]).await;
    let mut client = TestClient::connect(gate.addr(), Alpn::H2).await.unwrap();
    assert_eq!(client.negotiated_alpn().as_deref(), Some(&b"h2"[..]));
    let all = |headers: &http::HeaderMap, name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let mut first: Option<http::HeaderMap> = None;
    let mut request_ids = Vec::new();
    // x-vary's values: new ones, the last one again, older ones again.
    for (round, n) in [1, 2, 2, 3, 1, 3, 3, 2, 1, 1].into_iter().enumerate() {
        let (status, headers, _) = client.get(&format!("/vary?n={n}"), &[user.header()]).await;
        assert_eq!(status, StatusCode::OK, "round {round}");
        assert_eq!(
            all(&headers, "x-vary"),
            [format!("value-{n}")],
            "round {round}"
        );
        assert_eq!(
            all(&headers, "strict-transport-security"),
            ["max-age=31536000"],
            "round {round}"
        );
        let csp = all(&headers, "content-security-policy");
        assert_eq!(csp.len(), 1, "round {round}: {csp:?}");
        assert!(csp[0].starts_with("frame-ancestors 'self'"), "{csp:?}");
        request_ids.push(all(&headers, "x-request-id"));
        let cookies = all(&headers, "set-cookie");
        assert!(
            cookies.iter().any(|c| c.starts_with("chatgate_bind=")),
            "round {round}: {cookies:?}"
        );
        let (status, cookie_headers, _) = client.get("/set-cookie", &[user.header()]).await;
        assert_eq!(status, StatusCode::OK, "round {round}");
        let cookies = all(&cookie_headers, "set-cookie");
        for expected in support::librechat::SET_COOKIES {
            assert!(cookies.iter().any(|c| c == expected), "{cookies:?}");
        }
        match &first {
            None => first = Some(headers),
            Some(first) => {
                for name in [
                    "content-security-policy",
                    "strict-transport-security",
                    "cache-control",
                    "set-cookie",
                    "x-instance",
                ] {
                    assert_eq!(
                        all(&headers, name),
                        all(first, name),
                        "round {round}: {name}"
                    );
                }
            }
        }
    }
    // Never sent indexed: each response has its own.
    request_ids.sort();
    request_ids.dedup();
    assert_eq!(request_ids.len(), 10, "{request_ids:?}");
}

/// Issue 15: an HTTP/2 connection with no stream frees its read, write and
/// HPACK buffers each time it waits (chatgate's patch to h2, vendor/h2), and
/// takes them up again for the next request: the same connection serves
/// requests of every size after each idle spell, its HPACK tables (both
/// ways) intact, and a stream left open is not disturbed.
#[tokio::test]
async fn an_idle_http2_connection_serves_again_after_freeing_its_buffers() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate,
        _supabase,
        user,
    } = world(&[&upstream]).await;
    let mut client = TestClient::connect(gate.addr(), Alpn::H2).await.unwrap();
    assert_eq!(client.negotiated_alpn().as_deref(), Some(&b"h2"[..]));
    // Larger than h2's 16 KiB write buffer and one frame: sent as a HEADERS
    // frame and CONTINUATION frames, which the read side reassembles.
    let big = "b".repeat(20 * 1024);
    let upload: Bytes = (0..200_000u32).map(|i| i as u8).collect::<Vec<_>>().into();
    for round in 0..3 {
        // The client's HPACK encoder indexes these in the first round and
        // refers to them by index after: the server's table must hold.
        let marker = format!("round-{round}");
        let (status, headers, body) = client
            .get(
                &format!("/echo?round={round}"),
                &[
                    user.header(),
                    ("x-marker", "same every round"),
                    ("x-big", &big),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "round {round}");
        assert_eq!(headers["x-instance"], "lc-1", "round {round}");
        let echoed = echo(&body);
        assert_eq!(echoed["path"], format!("/echo?round={round}"));
        assert_eq!(header(&echoed, "x-marker"), ["same every round"]);
        assert_eq!(header(&echoed, "x-big"), [big.as_str()], "round {round}");
        assert!(
            header(&echoed, "cookie").is_empty(),
            "the session cookie is stripped"
        );

        // Bodies of many frames both ways: the write buffer taken up again
        // carries DATA frames as before.
        let (status, _, body) = client
            .get(
                &format!("/download?bytes=300000&{marker}"),
                &[user.header()],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "round {round}");
        assert_eq!(body.len(), 300_000, "round {round}");
        assert!(body
            .iter()
            .enumerate()
            .all(|(offset, byte)| *byte == support::librechat::download_byte(offset as u64)));
        let (status, _, body) = client
            .request(Method::POST, "/echo", &[user.header()], upload.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "round {round}");
        assert_eq!(echo(&body)["body_bytes"], 200_000, "round {round}");
    }

    // A stream open across the connection's waits: its events arrive
    // whole, and the connection serves again once it has ended.
    let response = client
        .send(client::build_request(
            Method::GET,
            "/sse?events=2",
            &[user.header()],
            Bytes::new(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    for n in 1..=2 {
        upstream.release_sse(1);
        let event = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(event, format!("data: {{\"n\":{n}}}\n\n"));
    }
    // HTTP/2 may end it with an empty DATA frame.
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(rest.is_empty(), "the stream ends after 2 events: {rest:?}");
    let (status, headers, _) = client.get("/api/config", &[user.header()]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-instance"], "lc-1");
    assert!(!client.is_closed());
}

#[tokio::test]
async fn the_drain_closes_a_parked_connection_cleanly() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let gate = Gate::start(config(&[&upstream], &supabase)).await;
    let mut raw = parked_raw_connection(&gate).await;
    let mut buf = [0u8; 64];

    let Gate { running, .. } = gate;
    running.shutdown();
    // A hang guard only: the drain closes it a third of the grace in.
    let closed = tokio::time::timeout(Duration::from_secs(30), raw.read(&mut buf))
        .await
        .expect("the parked connection was closed");
    // `Ok(0)`: a TLS close_notify, not a socket dropped mid-stream.
    assert_eq!(closed.unwrap(), 0);
    running.wait().await;
}

#[tokio::test]
async fn admin_routes_answer_without_an_upstream() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let World {
        gate, _supabase, ..
    } = world(&[&upstream]).await;
    let mut client = TestClient::connect(gate.addr(), Alpn::H2).await.unwrap();
    let (status, _, body) = client.get("/healthz", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let (status, headers, body) = client.get("/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("chatgate_responses_total{class=\"2xx\",route="),
        "{text}"
    );
    assert!(
        text.contains("chatgate_upstream_healthy{upstream="),
        "{text}"
    );
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.path_and_query == "/health"));
    let (status, _, _) = client
        .request(Method::POST, "/healthz", &[], Bytes::from_static(b"x"))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "POST /healthz is not an admin route: it needs a session like any forwarded request"
    );
}
