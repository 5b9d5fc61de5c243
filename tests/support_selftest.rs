//! Checks the integration-test support itself: the stand-in LibreChat on every route, the
//! Redis process, and the TLS clients against a small TLS server started here.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use support::client::{self, Alpn, TestClient};
use support::librechat::{self, StandInLibreChat};
use support::redis::{RedisServer, Resp};

/// Bounds every wait on something the test itself arranged, so a bug fails instead of hanging.
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

fn assert_librechat_headers(headers: &http::HeaderMap, id: &str) {
    assert_eq!(header(headers, "x-frame-options"), "SAMEORIGIN");
    assert_eq!(header(headers, "x-instance"), id);
}

/// The next non-empty data frame of a streaming body as text (HTTP/2 may end a stream with
/// an empty DATA frame).
async fn next_text(body: &mut Incoming) -> Option<String> {
    loop {
        let frame = within("next body frame", body.frame())
            .await?
            .expect("body frame");
        let data = frame.into_data().expect("data frame");
        if !data.is_empty() {
            return Some(String::from_utf8(data.to_vec()).unwrap());
        }
    }
}

#[test]
fn free_port_can_be_bound_and_init_crypto_is_idempotent() {
    let port = support::free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("free port binds");
    support::init_crypto();
    support::init_crypto();
}

#[tokio::test]
async fn health_answers_ok_like_librechat() {
    let upstream = StandInLibreChat::start("lc-a").await;
    assert_eq!(upstream.url(), format!("http://{}", upstream.addr()));
    assert_eq!(upstream.id(), "lc-a");

    let (status, headers, body) = client::plain_get(upstream.addr(), "/health", &[]).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "OK");
    assert!(header(&headers, "content-type").starts_with("text/plain"));
    assert_librechat_headers(&headers, "lc-a");
}

#[tokio::test]
async fn echo_returns_and_records_the_request() {
    let upstream = StandInLibreChat::start("lc-echo").await;

    let (status, headers, body) = client::plain_request(
        upstream.addr(),
        Method::POST,
        "/api/agents/chat/openAI?x=1&y=2",
        &[("cookie", "a=1"), ("X-Custom", "one"), ("x-custom", "two")],
        "hello body",
    )
    .await;

    assert_eq!(status, StatusCode::OK);
    assert_librechat_headers(&headers, "lc-echo");
    assert!(header(&headers, "content-type").starts_with("application/json"));
    let echo = json(&body);
    assert_eq!(echo["instance"], "lc-echo");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/api/agents/chat/openAI?x=1&y=2");
    assert_eq!(echo["body"], "hello body");
    assert_eq!(echo["body_bytes"], 10);
    let echoed: Vec<(String, String)> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let customs: Vec<&str> = echoed
        .iter()
        .filter(|(name, _)| name == "x-custom")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(customs, ["one", "two"]);
    assert!(echoed.contains(&("host".into(), upstream.addr().to_string())));

    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].method, "POST");
    assert_eq!(
        recorded[0].path_and_query,
        "/api/agents/chat/openAI?x=1&y=2"
    );
    assert_eq!(recorded[0].headers, echoed);
    assert_eq!(recorded[0].header("X-CUSTOM"), Some("one"));
    assert_eq!(recorded[0].header_all("x-custom"), ["one", "two"]);
    assert_eq!(recorded[0].header("cookie"), Some("a=1"));
}

#[tokio::test]
async fn echo_omits_bodies_over_one_mebibyte() {
    let upstream = StandInLibreChat::start("lc-big").await;
    let big = vec![b'x'; librechat::ECHO_BODY_LIMIT + 1];

    let (status, _, body) =
        client::plain_request(upstream.addr(), Method::PUT, "/big", &[], big).await;

    assert_eq!(status, StatusCode::OK);
    let echo = json(&body);
    assert_eq!(echo["body"], Value::Null);
    assert_eq!(echo["body_bytes"], librechat::ECHO_BODY_LIMIT + 1);
}

#[tokio::test]
async fn set_cookie_sends_two_librechat_cookies() {
    let upstream = StandInLibreChat::start("lc-cookie").await;

    let (status, headers, body) = client::plain_get(upstream.addr(), "/set-cookie", &[]).await;

    assert_eq!(status, StatusCode::OK);
    let cookies: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        [
            "refreshToken=abc; Path=/api; HttpOnly; Secure; SameSite=Strict",
            "token_provider=librechat; Path=/; HttpOnly; SameSite=Strict",
        ]
    );
    assert_librechat_headers(&headers, "lc-cookie");
    assert_eq!(json(&body)["path"], "/set-cookie");
}

#[tokio::test]
async fn the_app_page_sets_strict_cookies_and_moves_to_root_only_when_asked() {
    let upstream = StandInLibreChat::start("lc-app").await;
    let page = [("accept", "text/html,application/xhtml+xml")];

    let (status, headers, body) =
        client::plain_get(upstream.addr(), librechat::APP_PATH, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    let cookies: Vec<&str> = headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies, librechat::SET_COOKIES);
    assert_librechat_headers(&headers, "lc-app");
    let html = String::from_utf8(body.to_vec()).unwrap();
    assert!(html.contains(&format!("data-app=\"{}\"", librechat::APP_MARKER)));
    assert!(html.contains(&format!("fetch(\"{}\"", librechat::APP_XHR_PATH)));

    // `/` stays the echo, even for a page load, until the test asks for the app there.
    let (_, _, body) = client::plain_get(upstream.addr(), "/", &page).await;
    assert_eq!(json(&body)["path"], "/");
    upstream.serve_app_at_root();
    let (_, _, body) = client::plain_get(upstream.addr(), "/", &[]).await;
    assert_eq!(json(&body)["path"], "/", "an API call to / still echoes");
    let (_, headers, body) = client::plain_get(upstream.addr(), "/", &page).await;
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    assert!(String::from_utf8_lossy(&body).contains(librechat::APP_MARKER));
}

#[tokio::test]
async fn csp_sends_a_content_security_policy() {
    let upstream = StandInLibreChat::start("lc-csp").await;

    let (status, headers, body) = client::plain_get(upstream.addr(), "/csp", &[]).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&headers, "content-security-policy"),
        "default-src 'self'; frame-ancestors 'none'; img-src *"
    );
    assert_librechat_headers(&headers, "lc-csp");
    assert_eq!(json(&body)["path"], "/csp");
}

#[tokio::test]
async fn sse_writes_each_event_only_after_a_permit() {
    let upstream = StandInLibreChat::start("lc-sse").await;
    let req = client::build_request(Method::GET, "/sse?events=3", &[], Bytes::new());

    let res = within("SSE head", client::plain_send(upstream.addr(), req))
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(res.headers(), "content-type"), "text/event-stream");
    assert_eq!(
        header(res.headers(), "cache-control"),
        "no-cache, no-transform"
    );
    assert_eq!(header(res.headers(), "x-accel-buffering"), "no");
    assert_librechat_headers(res.headers(), "lc-sse");
    let mut body = res.into_body();
    assert!(
        body.frame().now_or_never().is_none(),
        "no event before a permit"
    );

    upstream.release_sse(1);
    assert_eq!(next_text(&mut body).await.unwrap(), "data: {\"n\":1}\n\n");
    let early = tokio::time::timeout(Duration::from_millis(100), body.frame()).await;
    assert!(early.is_err(), "event 2 arrived before its permit");

    upstream.release_sse(2);
    assert_eq!(next_text(&mut body).await.unwrap(), "data: {\"n\":2}\n\n");
    assert_eq!(next_text(&mut body).await.unwrap(), "data: {\"n\":3}\n\n");
    assert_eq!(
        next_text(&mut body).await,
        None,
        "stream ends after the last event"
    );
}

#[tokio::test]
async fn upload_streams_and_signals_its_first_bytes() {
    let upstream = StandInLibreChat::start("lc-upload").await;
    let (chunks, body) = client::streaming_body();
    let req = Request::post("/upload").body(body).unwrap();
    let response = tokio::spawn(client::plain_send(upstream.addr(), req));

    chunks
        .send(Bytes::from_static(b"first chunk;"))
        .await
        .unwrap();
    within("upload_started", upstream.upload_started()).await;
    assert!(!response.is_finished(), "the upload is still open");
    chunks.send(Bytes::from(vec![7u8; 100_000])).await.unwrap();
    drop(chunks);

    let res = within("upload response", response).await.unwrap().unwrap();
    let (status, headers, body) = client::collect(res).await;
    assert_eq!(status, StatusCode::OK);
    assert_librechat_headers(&headers, "lc-upload");
    let answer = json(&body);
    assert_eq!(answer["instance"], "lc-upload");
    assert_eq!(answer["bytes"], 12 + 100_000);
    assert_eq!(
        upstream.requests()[0].header("transfer-encoding"),
        Some("chunked")
    );
}

#[tokio::test]
async fn download_streams_the_pattern_with_a_content_length() {
    let upstream = StandInLibreChat::start("lc-download").await;
    let len = 3 * librechat::DOWNLOAD_CHUNK as u64 + 1234;
    let req = client::build_request(
        Method::GET,
        &format!("/download?bytes={len}"),
        &[],
        Bytes::new(),
    );

    let res = client::plain_send(upstream.addr(), req).await.unwrap();

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(res.headers(), "content-length"), len.to_string());
    assert_librechat_headers(res.headers(), "lc-download");
    let mut body = res.into_body();
    let mut offset = 0u64;
    while let Some(frame) = within("download frame", body.frame()).await {
        let data = frame.unwrap().into_data().unwrap();
        for byte in &data {
            assert_eq!(*byte, librechat::download_byte(offset), "byte {offset}");
            offset += 1;
        }
    }
    assert_eq!(offset, len);
}

#[tokio::test]
async fn slow_waits_before_the_response_head() {
    let upstream = StandInLibreChat::start("lc-slow").await;
    let started = Instant::now();

    let (status, headers, body) = client::plain_get(upstream.addr(), "/slow?ms=200", &[]).await;

    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(status, StatusCode::OK);
    assert_librechat_headers(&headers, "lc-slow");
    assert_eq!(json(&body)["path"], "/slow?ms=200");
}

#[tokio::test]
async fn ws_echoes_text_and_binary() {
    let upstream = StandInLibreChat::start("lc-ws").await;

    let (mut ws, response) = within(
        "ws handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/ws", upstream.addr())),
    )
    .await
    .unwrap();

    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_librechat_headers(response.headers(), "lc-ws");
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        within("text echo", ws.next()).await.unwrap().unwrap(),
        Message::text("hello")
    );
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        within("binary echo", ws.next()).await.unwrap().unwrap(),
        Message::binary(vec![1, 2, 3])
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn ws_without_upgrade_is_refused() {
    let upstream = StandInLibreChat::start("lc-ws-plain").await;

    let (status, headers, _) = client::plain_get(upstream.addr(), "/ws", &[]).await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_librechat_headers(&headers, "lc-ws-plain");
}

#[tokio::test]
async fn stop_refuses_connections_and_drops_open_ones_then_start_on_reuses_the_port() {
    let upstream = StandInLibreChat::start("lc-1").await;
    let addr = upstream.addr();
    let req = client::build_request(Method::GET, "/sse?events=2", &[], Bytes::new());
    let mut sse = client::plain_send(addr, req).await.unwrap().into_body();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();

    within("stop", upstream.stop()).await;

    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let cut = within("SSE cut", sse.frame()).await;
    assert!(
        !matches!(cut, Some(Ok(_))),
        "open SSE stream was cut: {cut:?}"
    );
    let ws_end = within("ws cut", ws.next()).await;
    assert!(!matches!(ws_end, Some(Ok(Message::Text(_)))), "{ws_end:?}");
    upstream.stop().await; // idempotent

    let again = StandInLibreChat::start_on("lc-2", addr).await;
    assert_eq!(again.addr(), addr);
    let (status, headers, _) = client::plain_get(addr, "/health", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-instance"), "lc-2");
    assert!(again
        .requests()
        .iter()
        .all(|r| r.path_and_query == "/health"));
}

#[test]
fn redis_starts_answers_stops_and_restarts_on_the_same_port() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));

    assert_eq!(redis.command(&["PING"]), Resp::Simple("PONG".into()));
    assert_eq!(
        redis
            .command(&["SET", "chatgate:sticky:u1", "lc-a"])
            .text()
            .as_deref(),
        Some("OK")
    );
    assert_eq!(
        redis
            .command(&["GET", "chatgate:sticky:u1"])
            .text()
            .as_deref(),
        Some("lc-a")
    );
    assert_eq!(redis.command(&["GET", "missing"]), Resp::Bulk(None));
    assert_eq!(redis.command(&["INCR", "n"]), Resp::Integer(1));
    assert!(matches!(redis.command(&["NOSUCHCOMMAND"]), Resp::Error(_)));
    assert!(matches!(redis.command(&["KEYS", "*"]), Resp::Array(Some(keys)) if keys.len() == 2));

    redis.stop();
    let refused = std::net::TcpStream::connect(redis.addr()).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    redis.stop(); // idempotent

    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.command(&["PING"]).text().as_deref(), Some("PONG"));
    assert_eq!(
        redis.command(&["GET", "chatgate:sticky:u1"]),
        Resp::Bulk(None),
        "no persistence"
    );
    redis.restart(); // while running

    let addr = redis.addr();
    drop(redis);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "drop kills redis"
    );
}

// ---- TLS clients, against a small TLS server: h2 is answered here, http/1.1 is tunnelled
// to a stand-in LibreChat (so TLS clients reach the real routes).

/// Serves TLS on a free port with `alpn` offered; h2 connections get an echo of what the
/// server saw, http/1.1 connections are piped to `upstream`.
async fn tls_server(alpn: &[&[u8]], upstream: SocketAddr) -> SocketAddr {
    support::init_crypto();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let service = service_fn(move |req| h2_to_h1(req, upstream));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                } else if let Ok(mut upstream) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                }
            });
        }
    });
    addr
}

/// Forwards one HTTP/2 request to the stand-in over a new HTTP/1.1 connection, streaming
/// both bodies, and tells the stand-in what arrived: `x-seen-version`, `x-seen-authority`
/// and `x-seen-host` (a `host` header sent beside `:authority`).
async fn h2_to_h1(
    req: Request<Incoming>,
    upstream: SocketAddr,
) -> std::io::Result<Response<Incoming>> {
    let (mut parts, body) = req.into_parts();
    let authority = parts.uri.authority().map_or("", |a| a.as_str()).to_owned();
    let seen = [
        ("x-seen-version", format!("{:?}", parts.version)),
        ("x-seen-authority", authority.clone()),
    ];
    for (name, value) in seen {
        parts.headers.insert(name, value.parse().unwrap());
    }
    if let Some(host) = parts.headers.remove("host") {
        parts.headers.insert("x-seen-host", host);
    }
    parts.headers.insert("host", authority.parse().unwrap());
    parts.uri = parts
        .uri
        .path_and_query()
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    parts.version = http::Version::HTTP_11;
    let body = body.map_err(std::io::Error::other).boxed();
    let mut res = client::plain_send(upstream, Request::from_parts(parts, body)).await?;
    for hop_by_hop in ["connection", "keep-alive", "transfer-encoding"] {
        res.headers_mut().remove(hop_by_hop);
    }
    Ok(res)
}

#[tokio::test]
async fn tls_client_speaks_http1_with_alpn() {
    let upstream = StandInLibreChat::start("lc-tls").await;
    let addr = tls_server(&[b"h2", b"http/1.1"], upstream.addr()).await;

    let mut client = TestClient::connect(addr, Alpn::H1).await.unwrap();

    assert_eq!(client.negotiated_alpn().as_deref(), Some(&b"http/1.1"[..]));
    let (status, headers, body) = client.get("/health", &[("x-test", "1")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "OK");
    assert_librechat_headers(&headers, "lc-tls");
    // Same connection again, with an explicit Host and a body.
    let (status, _, body) = client
        .request(
            Method::POST,
            "/echo",
            &[("host", "chat.example.com")],
            "abc",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["body"], "abc");
    assert!(!client.is_closed());

    let recorded = upstream.requests();
    assert_eq!(recorded[0].header("host"), Some("localhost"));
    assert_eq!(recorded[0].header("x-test"), Some("1"));
    assert_eq!(recorded[1].header("host"), Some("chat.example.com"));
}

#[tokio::test]
async fn tls_client_streams_sse_and_uploads_over_http1() {
    let upstream = StandInLibreChat::start("lc-tls-stream").await;
    let addr = tls_server(&[b"http/1.1"], upstream.addr()).await;
    let mut client = TestClient::connect(addr, Alpn::H1).await.unwrap();

    let req = client::build_request(Method::GET, "/sse?events=1", &[], Bytes::new());
    let mut events = client.send(req).await.unwrap().into_body();
    upstream.release_sse(1);
    assert_eq!(next_text(&mut events).await.unwrap(), "data: {\"n\":1}\n\n");
    assert_eq!(next_text(&mut events).await, None);

    let (chunks, body) = client::streaming_body();
    let req = Request::post("/upload").body(body).unwrap();
    let upload = tokio::spawn(async move { (client.send(req).await, client) });
    chunks.send(Bytes::from_static(b"12345")).await.unwrap();
    within("upload_started over TLS", upstream.upload_started()).await;
    drop(chunks);
    let (res, _client) = within("upload answer", upload).await.unwrap();
    let (status, _, body) = client::collect(res.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["bytes"], 5);
}

#[tokio::test]
async fn tls_client_speaks_h2_with_alpn_and_sends_authority() {
    let upstream = StandInLibreChat::start("lc-h2").await;
    let addr = tls_server(&[b"h2", b"http/1.1"], upstream.addr()).await;

    let mut client = TestClient::connect(addr, Alpn::H2).await.unwrap();

    assert_eq!(client.negotiated_alpn().as_deref(), Some(&b"h2"[..]));
    let (status, headers, body) = client.get("/api/models?x=1", &[("x-test", "2")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_librechat_headers(&headers, "lc-h2");
    let echo = json(&body);
    assert_eq!(echo["path"], "/api/models?x=1");
    let seen = &upstream.requests()[0];
    assert_eq!(seen.header("x-seen-version"), Some("HTTP/2.0"));
    assert_eq!(seen.header("x-seen-authority"), Some("localhost"));
    assert_eq!(seen.header("x-seen-host"), None);
    assert_eq!(seen.header("x-test"), Some("2"));

    let (_, _, body) = client
        .request(
            Method::POST,
            "/p",
            &[("host", "chat.example.com")],
            "h2 body",
        )
        .await;
    assert_eq!(json(&body)["body"], "h2 body");
    let seen = &upstream.requests()[1];
    assert_eq!(seen.header("x-seen-authority"), Some("chat.example.com"));
    assert_eq!(
        seen.header("x-seen-host"),
        None,
        "Host moved into :authority"
    );

    let absolute =
        client::build_request(Method::GET, "https://other.example/abs", &[], Bytes::new());
    let (status, _, _) = client::collect(client.send(absolute).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upstream.requests()[2].header("x-seen-authority"),
        Some("other.example")
    );
}

#[tokio::test]
async fn tls_clients_stream_on_both_protocols_after_the_client_is_dropped() {
    let upstream = StandInLibreChat::start("lc-stream").await;
    let addr = tls_server(&[b"h2", b"http/1.1"], upstream.addr()).await;
    for alpn in [Alpn::H1, Alpn::H2] {
        // SSE: each event arrives before the next is released.
        let mut client = TestClient::connect(addr, alpn).await.unwrap();
        let req = Request::get("/sse?events=2").body(client::empty()).unwrap();
        let res = within("SSE head", client.send(req)).await.unwrap();
        assert_eq!(
            res.headers()["content-type"],
            "text/event-stream",
            "{alpn:?}"
        );
        drop(client);
        let mut events = res.into_body();
        upstream.release_sse(1);
        assert_eq!(next_text(&mut events).await.unwrap(), "data: {\"n\":1}\n\n");
        upstream.release_sse(1);
        assert_eq!(next_text(&mut events).await.unwrap(), "data: {\"n\":2}\n\n");
        assert_eq!(next_text(&mut events).await, None);

        // Upload: the stand-in sees the first chunk while the client still holds the rest;
        // the client moves into the task and is gone before the answer is read.
        let mut client = TestClient::connect(addr, alpn).await.unwrap();
        let (chunks, body) = client::streaming_body();
        let req = Request::post("/upload").body(body).unwrap();
        let response = tokio::spawn(async move { client.send(req).await });
        chunks
            .send(Bytes::from(vec![b'x'; 256 * 1024]))
            .await
            .unwrap();
        within("upload_started", upstream.upload_started()).await;
        chunks
            .send(Bytes::from(vec![b'y'; 256 * 1024]))
            .await
            .unwrap();
        drop(chunks);
        let res = within("upload answer", response).await.unwrap().unwrap();
        let (status, _, body) = client::collect(res).await;
        assert_eq!(status, StatusCode::OK, "{alpn:?}");
        assert_eq!(json(&body)["bytes"], 512 * 1024, "{alpn:?}");

        // Download: streamed, and readable after the client is dropped.
        let mut client = TestClient::connect(addr, alpn).await.unwrap();
        let req = Request::get("/download?bytes=1000000")
            .body(client::empty())
            .unwrap();
        let res = client.send(req).await.unwrap();
        drop(client);
        let (status, _, body) = within("download", client::collect(res)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 1_000_000, "{alpn:?}");
        assert!(body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == librechat::download_byte(i as u64)));
    }
}

#[tokio::test]
async fn tls_client_fails_when_the_asked_alpn_is_not_negotiated() {
    let upstream = StandInLibreChat::start("lc-alpn").await;
    let h1_only = tls_server(&[b"http/1.1"], upstream.addr()).await;
    let no_alpn = tls_server(&[], upstream.addr()).await;

    assert!(TestClient::connect(h1_only, Alpn::H2).await.is_err());
    let error = TestClient::connect(no_alpn, Alpn::H2)
        .await
        .err()
        .expect("no ALPN refused");
    assert!(
        error.to_string().contains("negotiated ALPN None"),
        "{error}"
    );
    assert!(TestClient::connect(no_alpn, Alpn::H1).await.is_err());
}

#[tokio::test]
async fn raw_exchange_tls_returns_what_the_server_wrote() {
    let upstream = StandInLibreChat::start("lc-raw").await;
    let addr = tls_server(&[b"http/1.1"], upstream.addr()).await;

    let ok = client::raw_exchange_tls(
        addr,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let ok = String::from_utf8_lossy(&ok);
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.ends_with("\r\n\r\nOK"), "{ok}");

    let bad = client::raw_exchange_tls(addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(
        String::from_utf8_lossy(&bad).starts_with("HTTP/1.1 400"),
        "{bad:?}"
    );
}

#[tokio::test]
async fn websocket_tls_echoes_through_tls() {
    let upstream = StandInLibreChat::start("lc-wss").await;
    let addr = tls_server(&[b"h2", b"http/1.1"], upstream.addr()).await;

    let mut ws = client::websocket_tls(addr, "/ws?room=1", &[("cookie", "sb=1")]).await;

    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(
        within("wss echo", ws.next()).await.unwrap().unwrap(),
        Message::text("over tls")
    );
    let recorded = &upstream.requests()[0];
    assert_eq!(recorded.path_and_query, "/ws?room=1");
    assert_eq!(recorded.header("cookie"), Some("sb=1"));
    assert_eq!(recorded.header("host"), Some("localhost"));

    let (_, response) = client::try_websocket_tls(addr, "/ws", &[]).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    match client::try_websocket_tls(addr, "/not-ws", &[]).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::OK),
        other => panic!(
            "expected a refused upgrade, got {:?}",
            other.map(|(_, r)| r)
        ),
    }
}
