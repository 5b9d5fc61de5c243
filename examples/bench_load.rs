//! The load tools of `scripts/bench.sh` that wrk and h2load do not cover.
//!
//! ```text
//! bench_load ports N                         N free ports of 127.0.0.1, one a line
//! bench_load sse-upstream --port P           a LibreChat-like upstream: /sse streams events
//!                                            stamped with the time they are written;
//!                                            GET /api/agents/chat/stream/<id> streams a
//!                                            LibreChat-shaped answer (created, stamped
//!                                            on_message_delta events, on_token_usage
//!                                            events, a final event); a chat POST answers
//!                                            LibreChat 0.8.2+'s {streamId, …} JSON; any
//!                                            other path answers 200 "ok"
//! bench_load sse --url URL [--cookie C] [--events N] [--interval-ms I] [--stream-id ID]
//!                                            reads one SSE stream (/sse, or with --stream-id
//!                                            the chat stream ID); per event, the time from
//!                                            the upstream's write to this read
//! bench_load sse-throughput --url URL [--cookie C] [--streams 64] [--events N] [--stream-id ID]
//!                                            reads S chat streams of N events each, written
//!                                            as fast as the upstream can, at once: events/s
//! bench_load storm --target HOST:PORT… --cookie C [--n 200]
//!                                            N TLS connections spread over the targets, then
//!                                            one request each, all at once
//! bench_load get --url URL [--cookie C] [--print-body 1]
//!                                            one GET: prints the status (and the body)
//! bench_load idle --target HOST:PORT [--cookie C] [--n 10000] [--hold-secs S] [--requests R]
//!                [--http2 1]                 opens N TLS keep-alive connections, R requests
//!                                            (1) on each, and holds them for S seconds;
//!                                            with --http2 1 the connections are HTTP/2
//!                                            (ALPN h2 only; fails if the server picks other)
//! ```
//!
//! Results are single lines (`SSE_RESULT k=v …`) that the script parses. The
//! SSE stamps are wall-clock nanoseconds (`CLOCK_REALTIME`), read by both
//! processes on one machine from one kernel clock. TLS certificates are not
//! verified: every peer is a loopback server started by the script.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1 as client_http1;
use hyper::client::conn::http2 as client_http2;
use hyper::server::conn::http1 as server_http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Barrier, Semaphore};
use tokio_rustls::TlsConnector;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        usage();
    };
    let opts = Opts::parse(rest);
    let result = match command.as_str() {
        "ports" => ports(rest.first().and_then(|n| n.parse().ok()).unwrap_or(1)),
        "sse-upstream" => sse_upstream(opts.port()).await,
        "sse" => sse_client(&opts).await,
        "sse-throughput" => sse_throughput(&opts).await,
        "storm" => storm(&opts).await,
        "idle" => idle(&opts).await,
        "get" => get_once(&opts).await,
        _ => usage(),
    };
    if let Err(error) = result {
        eprintln!("bench_load {command}: {error}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: bench_load ports N | sse-upstream --port P | sse --url URL [--cookie C] [--stream-id ID] | sse-throughput --url URL [--streams S] [--events N] | storm --target A --target B --cookie C | get --url URL [--cookie C] | idle --target A [--cookie C] [--http2 1]");
    std::process::exit(2);
}

/// `--key value` pairs; `--target` may repeat.
#[derive(Default)]
struct Opts {
    values: BTreeMap<String, String>,
    targets: Vec<SocketAddr>,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let mut opts = Opts::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(key) = arg.strip_prefix("--") else {
                continue;
            };
            let Some(value) = it.next() else { usage() };
            if key == "target" {
                opts.targets.push(value.parse().unwrap_or_else(|_| usage()));
            } else {
                opts.values.insert(key.to_owned(), value.clone());
            }
        }
        opts
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    fn number(&self, key: &str, default: u64) -> u64 {
        self.get(key)
            .map(|v| v.parse().unwrap_or_else(|_| usage()))
            .unwrap_or(default)
    }

    fn port(&self) -> u16 {
        u16::try_from(self.number("port", 0)).unwrap_or_else(|_| usage())
    }
}

fn ports(n: usize) -> Result<(), Error> {
    // Held together so the N ports differ, released on return.
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<_, _>>()?;
    for listener in &listeners {
        println!("{}", listener.local_addr()?.port());
    }
    Ok(())
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

// ---------------------------------------------------------------------------
// SSE upstream and client

async fn sse_upstream(port: u16) -> Result<(), Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = server_http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(sse_route))
                .await;
        });
    }
}

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn sse_route(req: Request<Incoming>) -> Result<Response<UpstreamBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if req.method() == http::Method::POST && path.starts_with("/api/agents/chat/") {
        return Ok(chat_post(req).await);
    }
    let chat_stream = req.method() == http::Method::GET
        && path.starts_with("/api/agents/chat/stream/")
        && path.len() > "/api/agents/chat/stream/".len();
    if path != "/sse" && !chat_stream {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed()));
    }
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str, default: u64| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    };
    let events = param("events", 100);
    let interval = Duration::from_millis(param("interval_ms", 10));
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    if chat_stream {
        let stream_id = path["/api/agents/chat/stream/".len()..].to_owned();
        tokio::spawn(chat_stream_events(tx, stream_id, events, interval));
    } else {
        tokio::spawn(async move {
            for _ in 0..events {
                tokio::time::sleep(interval).await;
                // Stamped as it is handed to hyper, which writes it at once.
                let event = format!("data: {}\n\n", unix_nanos());
                if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                    return;
                }
            }
        });
    }
    let body = ChannelBody(rx).boxed();
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    Ok(response)
}

/// A chat POST as LibreChat 0.8.2+ answers it: the body read, then
/// `{streamId, conversationId, status: "started"}` (one conversation for
/// every request, so the bench adds one `chat_sessions` row, not thousands).
async fn chat_post(req: Request<Incoming>) -> Response<UpstreamBody> {
    let _ = req.into_body().collect().await;
    let json = r#"{"streamId":"bench-chat-post","conversationId":"bench-chat-post","generationCreatedAt":1764583200000,"status":"started"}"#;
    let mut response = Response::new(Full::new(Bytes::from_static(json.as_bytes())).boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Streams one LibreChat-shaped answer (REFERENCE "Chat requests and
/// streams"): `created`, `events` `on_message_delta` events (each carrying
/// the wall-clock stamp `"t":<ns>`, `interval` apart; 0 = as fast as the
/// connection takes them), an `on_token_usage` event after every quarter,
/// and the final event. Run ids are unique per stream, so no usage event
/// looks like a replay of an earlier stream's.
async fn chat_stream_events(
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    stream_id: String,
    events: u64,
    interval: Duration,
) {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = format!(
        "run-{}-{}",
        unix_nanos(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let send = |text: String| {
        let tx = tx.clone();
        async move { tx.send(Ok(Frame::data(Bytes::from(text)))).await.is_ok() }
    };
    let created = format!(
        "event: message\ndata: {{\"created\":true,\"message\":{{\"conversationId\":\"{stream_id}\",\"text\":\"hello\",\"isCreatedByUser\":true}},\"streamId\":\"{stream_id}\"}}\n\n"
    );
    if !send(created).await {
        return;
    }
    let quarter = (events / 4).max(1);
    let mut seq = 0;
    for i in 1..=events {
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        // Stamped as it is handed to hyper, which writes it at once.
        let delta = format!(
            "event: message\ndata: {{\"event\":\"on_message_delta\",\"data\":{{\"id\":\"step_{run}\",\"t\":{},\"delta\":{{\"content\":[{{\"type\":\"text\",\"text\":\" lorem ipsum\"}}]}}}}}}\n\n",
            unix_nanos()
        );
        if !send(delta).await {
            return;
        }
        if i % quarter == 0 {
            seq += 1;
            let usage = format!(
                "event: message\ndata: {{\"event\":\"on_token_usage\",\"data\":{{\"input_tokens\":100,\"output_tokens\":25,\"total_tokens\":125,\"model\":\"gpt-4o\",\"provider\":\"openAI\",\"runId\":\"{run}\",\"seq\":{seq}}}}}\n\n"
            );
            if !send(usage).await {
                return;
            }
        }
    }
    let last = format!(
        "event: message\ndata: {{\"final\":true,\"conversation\":{{\"conversationId\":\"{stream_id}\",\"endpoint\":\"openAI\",\"model\":\"gpt-4o\",\"title\":\"Bench\"}},\"requestMessage\":{{\"messageId\":\"{run}-q\",\"tokenCount\":100}},\"responseMessage\":{{\"messageId\":\"{run}-a\",\"model\":\"gpt-4o\",\"tokenCount\":25}}}}\n\n"
    );
    send(last).await;
}

struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

async fn sse_client(opts: &Opts) -> Result<(), Error> {
    let url: url::Url = opts.get("url").unwrap_or_else(|| usage()).parse()?;
    let events = opts.number("events", 200);
    let interval = opts.number("interval-ms", 10);
    let mut sender = connect_url(&url).await?;
    let path = match opts.get("stream-id") {
        Some(id) => format!("/api/agents/chat/stream/{id}?events={events}&interval_ms={interval}"),
        None => format!("/sse?events={events}&interval_ms={interval}"),
    };
    let response = sender
        .send_request(get(&path, &url_authority(&url), opts.get("cookie"), true)?)
        .await?;
    if response.status() != StatusCode::OK {
        return Err(format!("{url}: status {}", response.status()).into());
    }
    let mut body = response.into_body();
    let mut pending = Vec::new();
    let mut delays_us: Vec<f64> = Vec::new();
    while let Some(frame) = body.frame().await {
        let read_at = unix_nanos();
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            if let Some(written) = event_stamp(&text) {
                delays_us.push(read_at.saturating_sub(written?) as f64 / 1000.0);
            }
        }
    }
    // The first event also pays for the stream's set-up; the rest are steady state.
    if delays_us.len() > 1 {
        delays_us.remove(0);
    }
    if delays_us.is_empty() {
        return Err("no events read".into());
    }
    delays_us.sort_by(f64::total_cmp);
    let mean = delays_us.iter().sum::<f64>() / delays_us.len() as f64;
    println!(
        "SSE_RESULT events={} p50_us={:.1} p99_us={:.1} mean_us={:.1}",
        delays_us.len(),
        percentile(&delays_us, 50.0),
        percentile(&delays_us, 99.0),
        mean
    );
    Ok(())
}

/// The write stamp of an event: `data: <ns>` (/sse) or `"t":<ns>` inside a
/// chat stream's `on_message_delta`; `None` for events without one.
fn event_stamp(text: &str) -> Option<Result<u128, Error>> {
    let data = text
        .lines()
        .find_map(|line| line.strip_prefix("data: "))?
        .trim();
    if !data.starts_with('{') {
        return Some(data.parse().map_err(Into::into));
    }
    let rest = &data[data.find("\"t\":")? + 4..];
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    Some(digits.parse().map_err(Into::into))
}

/// S chat streams at once, each of N events written without pause: the
/// events (`\n\n`-terminated) read per second over all of them, from the
/// first request to the last stream's end.
async fn sse_throughput(opts: &Opts) -> Result<(), Error> {
    let url: url::Url = opts.get("url").unwrap_or_else(|| usage()).parse()?;
    let streams = opts.number("streams", 64);
    let events = opts.number("events", 2000);
    let prefix = opts.get("stream-id").unwrap_or("bench-tput").to_owned();
    let cookie = opts.get("cookie").map(str::to_owned);
    let authority = url_authority(&url);
    // Connected first, so that only the streams are timed.
    let mut senders = Vec::with_capacity(streams as usize);
    for _ in 0..streams {
        senders.push(connect_url(&url).await?);
    }
    let barrier = Arc::new(Barrier::new(streams as usize + 1));
    let mut tasks = Vec::with_capacity(streams as usize);
    for (i, mut sender) in senders.into_iter().enumerate() {
        let path = format!("/api/agents/chat/stream/{prefix}-{i}?events={events}&interval_ms=0");
        let request = get(&path, &authority, cookie.as_deref(), true)?;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = sender.send_request(request).await?;
            if response.status() != StatusCode::OK {
                return Err(format!("status {}", response.status()).into());
            }
            let mut body = response.into_body();
            let (mut count, mut last_newline) = (0u64, false);
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                for &byte in data.iter() {
                    let newline = byte == b'\n';
                    if newline && last_newline {
                        count += 1;
                    }
                    last_newline = newline && !last_newline;
                }
            }
            Ok::<u64, Error>(count)
        }));
    }
    barrier.wait().await;
    let started = std::time::Instant::now();
    let (mut total, mut failed) = (0u64, 0u64);
    for task in tasks {
        match task.await? {
            Ok(count) => total += count,
            Err(error) => {
                if failed == 0 {
                    eprintln!("sse-throughput: {error}");
                }
                failed += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "SSE_TPUT_RESULT events={total} streams={streams} failed={failed} secs={secs:.3} eps={:.0}",
        total as f64 / secs
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn url_authority(url: &url::Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or("localhost")),
        None => url.host_str().unwrap_or("localhost").to_owned(),
    }
}

async fn get_once(opts: &Opts) -> Result<(), Error> {
    let url: url::Url = opts.get("url").unwrap_or_else(|| usage()).parse()?;
    let mut sender = connect_url(&url).await?;
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let request = get(&path, &url_authority(&url), opts.get("cookie"), false)?;
    let response = sender.send_request(request).await?;
    println!("{}", response.status().as_u16());
    let body = response.into_body().collect().await?.to_bytes();
    if opts.get("print-body").is_some() {
        println!("{}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// An HTTP/1.1 connection to `url`'s host: TLS for `https`, else plain.
async fn connect_url(url: &url::Url) -> Result<client_http1::SendRequest<Empty<Bytes>>, Error> {
    let addr: SocketAddr = url
        .socket_addrs(|| None)?
        .into_iter()
        .next()
        .ok_or("no address")?;
    if url.scheme() == "https" {
        handshake(tls_connect(addr, Alpn::Http1).await?).await
    } else {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        handshake(tcp).await
    }
}

// ---------------------------------------------------------------------------
// Refresh storm

async fn storm(opts: &Opts) -> Result<(), Error> {
    let n = opts.number("n", 200) as usize;
    let cookie = opts.get("cookie").unwrap_or_else(|| usage()).to_owned();
    if opts.targets.is_empty() {
        usage();
    }
    // Every connection is open before any request leaves.
    let barrier = Arc::new(Barrier::new(n));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let target = opts.targets[i % opts.targets.len()];
        let barrier = barrier.clone();
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let connected =
                async { handshake(tls_connect(target, Alpn::Http1).await?).await }.await;
            barrier.wait().await;
            let mut sender = connected?;
            let request = get("/", &target.to_string(), Some(&cookie), false)?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let _ = response.into_body().collect().await;
            Ok::<StatusCode, Error>(status)
        }));
    }
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        match task.await? {
            Ok(status) if status.is_success() => {
                ok += 1;
                *statuses.entry(status.as_u16().to_string()).or_default() += 1;
            }
            Ok(status) => {
                failed += 1;
                *statuses.entry(status.as_u16().to_string()).or_default() += 1;
            }
            Err(error) => {
                failed += 1;
                eprintln!("storm: {error}");
                *statuses.entry("error".to_owned()).or_default() += 1;
            }
        }
    }
    let statuses: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!(
        "STORM_RESULT ok={ok} failed={failed} statuses={}",
        statuses.join(",")
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Idle keep-alive connections

async fn idle(opts: &Opts) -> Result<(), Error> {
    let n = opts.number("n", 10_000) as usize;
    let hold = Duration::from_secs(opts.number("hold-secs", 10));
    let target = *opts.targets.first().unwrap_or_else(|| usage());
    let cookie = opts.get("cookie").map(str::to_owned);
    let requests = opts.number("requests", 1);
    let http2 = opts.number("http2", 0) == 1;
    // Bounded so handshakes do not time out under their own crowd.
    let opening = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let opening = opening.clone();
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await?;
            let held = if http2 {
                idle_http2(target, cookie.as_deref(), requests).await?
            } else {
                idle_http1(target, cookie.as_deref(), requests).await?
            };
            drop(permit);
            Ok::<_, Error>(held)
        }));
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    for task in tasks {
        match task.await? {
            Ok(pair) => held.push(pair),
            Err(error) => {
                if failed == 0 {
                    eprintln!("idle: {error}");
                }
                failed += 1;
            }
        }
    }
    println!("IDLE_READY opened={} failed={failed}", held.len());
    tokio::time::sleep(hold).await;
    let alive = held
        .iter()
        .filter(|(_, driver)| !driver.is_finished())
        .count();
    println!("IDLE_ALIVE alive={alive}");
    Ok(())
}

/// A connection `idle` holds: what keeps it open, and its driving task.
type Held = (Box<dyn std::any::Any + Send>, tokio::task::JoinHandle<()>);

/// Checks a response of `idle`: 2xx, body read to its end.
async fn idle_response(response: Response<Incoming>) -> Result<(), Error> {
    let status = response.status();
    response.into_body().collect().await?;
    if !status.is_success() {
        return Err(format!("status {status}").into());
    }
    Ok(())
}

async fn idle_http1(
    target: SocketAddr,
    cookie: Option<&str>,
    requests: u64,
) -> Result<Held, Error> {
    let tls = tls_connect(target, Alpn::Http1).await?;
    let (mut sender, conn) = client_http1::handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    for _ in 0..requests {
        let request = get("/", &target.to_string(), cookie, false)?;
        idle_response(sender.send_request(request).await?).await?;
    }
    Ok((Box::new(sender), driver))
}

async fn idle_http2(
    target: SocketAddr,
    cookie: Option<&str>,
    requests: u64,
) -> Result<Held, Error> {
    let tls = tls_connect(target, Alpn::H2).await?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!("{target} did not choose h2 by ALPN").into());
    }
    let (mut sender, conn) =
        client_http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    for _ in 0..requests {
        // HTTP/2 carries the authority in `:authority`, from the URI.
        let mut request = get("/", &target.to_string(), cookie, false)?;
        *request.uri_mut() = format!("https://{target}/").parse()?;
        request.headers_mut().remove(header::HOST);
        idle_response(sender.send_request(request).await?).await?;
    }
    Ok((Box::new(sender), driver))
}

// ---------------------------------------------------------------------------
// Connections

fn get(
    path: &str,
    authority: &str,
    cookie: Option<&str>,
    event_stream: bool,
) -> Result<Request<Empty<Bytes>>, Error> {
    let mut builder = Request::get(path).header(header::HOST, authority);
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    if event_stream {
        builder = builder.header(header::ACCEPT, "text/event-stream");
    }
    Ok(builder.body(Empty::new())?)
}

async fn handshake<I>(io: I) -> Result<client_http1::SendRequest<Empty<Bytes>>, Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = client_http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The protocol a TLS connection offers (and only that one) by ALPN.
#[derive(Clone, Copy)]
enum Alpn {
    Http1,
    H2,
}

async fn tls_connect(
    addr: SocketAddr,
    alpn: Alpn,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    static CONFIGS: std::sync::OnceLock<[Arc<ClientConfig>; 2]> = std::sync::OnceLock::new();
    let configs = CONFIGS.get_or_init(|| {
        [b"http/1.1".as_slice(), b"h2"].map(|protocol| {
            let mut config = ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate))
                .with_no_client_auth();
            config.alpn_protocols = vec![protocol.to_vec()];
            Arc::new(config)
        })
    });
    let config = &configs[alpn as usize];
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")?;
    Ok(TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?)
}

/// Loopback peers started by the bench script with a throw-away certificate.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
