//! A stand-in LibreChat upstream: a real hyper HTTP/1.1 server on 127.0.0.1 with the routes
//! chatgate's tests need (health, SSE, streamed upload/download, WebSocket, echo, a small
//! browser app) and a log of every request it received.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, SinkExt, StreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Bodies up to this size are echoed back; larger ones are only counted.
pub const ECHO_BODY_LIMIT: usize = 1024 * 1024;

/// `/download` streams chunks of this size.
pub const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// The byte `/download` sends at `offset`, so a test can check what arrived.
pub fn download_byte(offset: u64) -> u8 {
    offset as u8
}

/// The `Set-Cookie` headers `/set-cookie` sends, in order, like LibreChat after a login.
pub const SET_COOKIES: [&str; 2] = [
    "refreshToken=abc; Path=/api; HttpOnly; Secure; SameSite=Strict",
    "token_provider=librechat; Path=/; HttpOnly; SameSite=Strict",
];

/// `data-app` on the `<body>` of the app page ([`APP_PATH`]), so a browser test can tell the
/// stand-in's page from an error page.
pub const APP_MARKER: &str = "chatgate-standin-app";

/// Where the app page always answers (and `/` too, after
/// [`StandInLibreChat::serve_app_at_root`]).
pub const APP_PATH: &str = "/app";

/// The API path the app page's script fetches once it has loaded.
pub const APP_XHR_PATH: &str = "/api/user?from=app";

/// The `Content-Security-Policy` `/csp` sends.
pub const CSP: &str = "default-src 'self'; frame-ancestors 'none'; img-src *";

type ResBody = UnsyncBoxBody<Bytes, io::Error>;

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    /// Lower-case names in the order hyper's `HeaderMap` yields them (values of a repeated
    /// name stay together and in order).
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

struct State {
    id: String,
    id_header: HeaderValue,
    requests: Mutex<Vec<Recorded>>,
    sse_permits: Semaphore,
    upload_started: watch::Sender<bool>,
    /// Browser page loads of `/` get the app page, as LibreChat's SPA answers them.
    app_at_root: AtomicBool,
    /// Connections open now, and the most open at once.
    connections: AtomicUsize,
    max_connections: AtomicUsize,
    /// Connection and WebSocket tasks; `None` once stopped, so nothing new is spawned.
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl State {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap();
        if let Some(set) = tasks.as_mut() {
            while set.try_join_next().is_some() {}
            set.spawn(task);
        }
    }
}

/// A running stand-in LibreChat instance. Dropping it stops it in the background; call
/// [`StandInLibreChat::stop`] to wait until the port is closed.
pub struct StandInLibreChat {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl StandInLibreChat {
    /// Starts an instance named `id` on a free port of 127.0.0.1.
    pub async fn start(id: &str) -> StandInLibreChat {
        Self::start_on(id, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts an instance named `id` on `addr`, e.g. the address of one that was stopped.
    pub async fn start_on(id: &str, addr: SocketAddr) -> StandInLibreChat {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("stand-in LibreChat {id}: bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            id: id.to_owned(),
            id_header: HeaderValue::from_str(id).expect("instance id must be a header value"),
            requests: Mutex::new(Vec::new()),
            sse_permits: Semaphore::new(0),
            upload_started: watch::Sender::new(false),
            app_at_root: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            max_connections: AtomicUsize::new(0),
            tasks: Mutex::new(Some(JoinSet::new())),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, state.clone(), shutdown_rx));
        StandInLibreChat {
            addr,
            state,
            shutdown,
            accept_task: Mutex::new(Some(accept_task)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// Stops accepting and drops every open connection (WebSockets included); when this
    /// returns, connecting to the port is refused.
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        let task = self.accept_task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// The most connections that were open at once.
    pub fn max_connections(&self) -> usize {
        self.state.max_connections.load(Ordering::SeqCst)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Empties the request log (a long run would otherwise keep every request).
    pub fn forget_requests(&self) {
        self.state.requests.lock().unwrap().clear();
    }

    /// Lets `/sse` streams (all of them, together) write `n` more events.
    pub fn release_sse(&self, n: usize) {
        self.state.sse_permits.add_permits(n);
    }

    /// From now on a browser page load of `/` (`GET` accepting `text/html`, what the hand-off
    /// lands on) gets the app page instead of the echo, as LibreChat serves its client there.
    pub fn serve_app_at_root(&self) {
        self.state.app_at_root.store(true, Ordering::Relaxed);
    }

    /// Resolves once any `/upload` has received its first body bytes.
    pub async fn upload_started(&self) {
        let mut started = self.state.upload_started.subscribe();
        let _ = started.wait_for(|started| *started).await;
    }
}

impl Drop for StandInLibreChat {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                state.spawn(serve_connection(tcp, state.clone()));
            }
        }
    }
    drop(listener);
    let tasks = state.tasks.lock().unwrap().take();
    if let Some(mut tasks) = tasks {
        tasks.shutdown().await;
    }
}

async fn serve_connection(tcp: TcpStream, state: Arc<State>) {
    let open = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_connections.fetch_max(open, Ordering::SeqCst);
    struct Closed(Arc<State>);
    impl Drop for Closed {
        fn drop(&mut self) {
            self.0.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _closed = Closed(state.clone());
    let _ = tcp.set_nodelay(true);
    let service = service_fn(move |req| handle(state.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades()
        .await;
}

async fn handle(
    state: Arc<State>,
    mut req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    let recorded = Recorded {
        method: req.method().to_string(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        headers: header_pairs(req.headers()),
    };
    state.requests.lock().unwrap().push(recorded.clone());

    let query = req.uri().query().unwrap_or("").to_owned();
    let app_at_root = state.app_at_root.load(Ordering::Relaxed) && is_page_load(&req);
    if let Some(answer) = super::librechat_lists::answer(req.method(), req.uri(), req.headers()) {
        let mut res = answer.map(full);
        res.headers_mut()
            .insert("x-instance", state.id_header.clone());
        return Ok(res);
    }
    let mut res = match req.uri().path() {
        "/health" => text(StatusCode::OK, "OK"),
        // `/status?code=503`: an answer with that status (a struggling instance).
        "/status" => {
            let code = StatusCode::from_u16(number(&query, "code")).unwrap_or(StatusCode::OK);
            text(code, "status")
        }
        "/" if app_at_root => app_page(&state),
        APP_PATH => app_page(&state),
        "/sse" => sse(&state, number(&query, "events")),
        "/upload" => upload(&state, req.into_body()).await,
        "/download" => download(number(&query, "bytes")),
        "/ws" => websocket(&state, &mut req),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(number(&query, "ms"))).await;
            echo(&state, &recorded, req.into_body()).await
        }
        "/set-cookie" => {
            let mut res = echo(&state, &recorded, req.into_body()).await;
            for cookie in SET_COOKIES {
                res.headers_mut()
                    .append(header::SET_COOKIE, HeaderValue::from_static(cookie));
            }
            res
        }
        // `/vary?n=3`: an echo with `x-vary: value-3`, a header whose value
        // changes between responses (as `date` does each second).
        "/vary" => {
            let n: u32 = number(&query, "n");
            let mut res = echo(&state, &recorded, req.into_body()).await;
            if let Ok(value) = HeaderValue::from_str(&format!("value-{n}")) {
                res.headers_mut().insert("x-vary", value);
            }
            res
        }
        "/csp" => {
            let mut res = echo(&state, &recorded, req.into_body()).await;
            res.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            res
        }
        _ if super::librechat_chat::is_chat(&req) => super::librechat_chat::handle(req).await,
        _ => echo(&state, &recorded, req.into_body()).await,
    };
    // What helmet adds in LibreChat >= 0.8.8, plus which instance answered.
    let headers = res.headers_mut();
    headers.insert(
        header::X_FRAME_OPTIONS,
        HeaderValue::from_static("SAMEORIGIN"),
    );
    headers.insert("x-instance", state.id_header.clone());
    Ok(res)
}

/// A browser navigation: `GET` accepting `text/html`.
fn is_page_load(req: &Request<Incoming>) -> bool {
    req.method() == http::Method::GET
        && req
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")))
}

/// A page like LibreChat's client: its first response sets LibreChat's `SameSite=Strict`
/// cookies ([`SET_COOKIES`]), its script then calls [`APP_XHR_PATH`] on the same origin and
/// shows what this instance received, and leaves the outcome in `window.standInResult` and
/// `<body data-status="ok|failed">`.
fn app_page(state: &State) -> Response<ResBody> {
    let html = APP_PAGE
        .replace("{marker}", APP_MARKER)
        .replace("{instance}", &state.id)
        .replace("{xhr}", APP_XHR_PATH);
    let mut res = Response::new(full(html));
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in SET_COOKIES {
        headers.append(header::SET_COOKIE, HeaderValue::from_static(cookie));
    }
    res
}

const APP_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Stand-in LibreChat</title>
<style>
  body { font: 15px/1.4 sans-serif; margin: 0; padding: 16px; background: #f0fdfa; color: #134e4a; }
  h2 { margin: 0 0 8px; }
  #status { font-weight: bold; }
  body[data-status="ok"] #status { color: #047857; }
  body[data-status="failed"] #status { color: #b91c1c; }
  pre { background: #fff; border: 1px solid #99f6e4; padding: 8px; white-space: pre-wrap; word-break: break-all; }
</style>
</head>
<body data-app="{marker}" data-status="loading">
<h2>Stand-in LibreChat &middot; instance {instance}</h2>
<p id="status">calling {xhr} &hellip;</p>
<pre id="result"></pre>
<script>
(async () => {
  const show = (status, line, result) => {
    window.standInResult = { status, line, ...result };
    document.getElementById("status").textContent = line;
    document.getElementById("result").textContent = JSON.stringify(result, null, 2);
    document.body.dataset.status = status;
  };
  try {
    const res = await fetch("{xhr}", { headers: { accept: "application/json" } });
    const body = await res.json();
    if (!res.ok) {
      show("failed", `XHR answered ${res.status}`, { http_status: res.status, body });
      return;
    }
    const seen = (name) => body.headers.filter(([n]) => n === name).map(([, v]) => v).join("; ");
    show("ok", `XHR ${res.status} from instance ${body.instance}`, {
      http_status: res.status,
      instance: body.instance,
      user_id: seen("x-chatgate-user-id"),
      org_id: seen("x-chatgate-org-id"),
      cookie_received: seen("cookie"),
    });
  } catch (e) {
    show("failed", `XHR failed: ${e}`, { error: String(e) });
  }
})();
</script>
</body>
</html>
"#;

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// The numeric query parameter `name`, 0 when absent or not a number.
fn number<T: std::str::FromStr + Default>(query: &str, name: &str) -> T {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or_default()
}

fn full(body: impl Into<Bytes>) -> ResBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn text(status: StatusCode, body: &'static str) -> Response<ResBody> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

fn json(value: serde_json::Value) -> Response<ResBody> {
    let mut res = Response::new(full(value.to_string()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res
}

/// `data: {"n":i}` for i in 1..=events, each written only after a `release_sse` permit.
fn sse(state: &Arc<State>, events: usize) -> Response<ResBody> {
    let state = state.clone();
    let events = stream::unfold(1, move |n| {
        let state = state.clone();
        async move {
            if n > events {
                return None;
            }
            state.sse_permits.acquire().await.ok()?.forget();
            let event = Bytes::from(format!("data: {{\"n\":{n}}}\n\n"));
            Some((Ok::<_, io::Error>(Frame::data(event)), n + 1))
        }
    });
    let mut res = Response::new(StreamBody::new(events).boxed_unsync());
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

/// Reads the body frame by frame, so a test can see the first bytes arrive before the rest.
async fn upload(state: &State, mut body: Incoming) -> Response<ResBody> {
    let mut bytes = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return text(StatusCode::BAD_REQUEST, "upload body failed");
        };
        if let Ok(data) = frame.into_data() {
            if !data.is_empty() && bytes == 0 {
                state.upload_started.send_replace(true);
            }
            bytes += data.len();
        }
    }
    json(serde_json::json!({ "instance": state.id, "bytes": bytes }))
}

/// Streams `len` bytes of [`download_byte`] in [`DOWNLOAD_CHUNK`]s without holding them all.
fn download(len: u64) -> Response<ResBody> {
    let chunk: Bytes = (0..DOWNLOAD_CHUNK as u64).map(download_byte).collect();
    let chunks = stream::iter((0..len).step_by(DOWNLOAD_CHUNK).map(move |offset| {
        let size = (len - offset).min(DOWNLOAD_CHUNK as u64) as usize;
        Ok::<_, io::Error>(Frame::data(chunk.slice(..size)))
    }));
    let mut res = Response::new(StreamBody::new(chunks).boxed_unsync());
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    res
}

/// Answers a WebSocket upgrade with 101 and echoes every text and binary message.
fn websocket(state: &State, req: &mut Request<Incoming>) -> Response<ResBody> {
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    let (true, Some(key)) = (upgrade, key) else {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    state.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::new(full(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("accept key is base64"),
    );
    res
}

/// `{"instance", "method", "path", "headers": [[name, value], ..], "body", "body_bytes"}`;
/// `body` is null when the body is larger than [`ECHO_BODY_LIMIT`].
async fn echo(state: &State, recorded: &Recorded, mut body: Incoming) -> Response<ResBody> {
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return text(StatusCode::BAD_REQUEST, "request body failed");
        };
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= ECHO_BODY_LIMIT {
                kept.extend_from_slice(&data);
            }
        }
    }
    let echoed_body = if total <= ECHO_BODY_LIMIT {
        serde_json::Value::String(String::from_utf8_lossy(&kept).into_owned())
    } else {
        serde_json::Value::Null
    };
    let headers: Vec<[&str; 2]> = recorded
        .headers
        .iter()
        .map(|(name, value)| [name.as_str(), value.as_str()])
        .collect();
    json(serde_json::json!({
        "instance": state.id,
        "method": recorded.method,
        "path": recorded.path_and_query,
        "headers": headers,
        "body": echoed_body,
        "body_bytes": total,
    }))
}
