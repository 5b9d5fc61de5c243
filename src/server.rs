//! Listeners and connections: TLS accept, hyper's automatic HTTP/1.1 +
//! HTTP/2 serving with upgrades, and the graceful drain of SPEC section 12.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Options};
use crate::body::ProxyBody;
use crate::config::Config;
use crate::context::ConnInfo;
use crate::tls::{self, CertResolver};
use crate::{proxy, upstream};

mod limits;

pub use limits::HEADER_READ_TIMEOUT;
use limits::{AcceptBackoff, HANDSHAKE_TIMEOUT};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("cannot start a serving thread: {0}")]
    Worker(std::io::Error),
}

/// The App requests are served with; a reload swaps it whole, and each
/// request takes the current one.
pub type Apps = Arc<ArcSwap<App>>;

/// A started chatgate: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub tls_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    apps: Apps,
    options: Options,
    resolver: Arc<CertResolver>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    reloading: tokio::sync::Mutex<()>,
}

impl Running {
    /// The App serving requests now.
    pub fn app(&self) -> Arc<App> {
        self.apps.load_full()
    }

    /// Begins the graceful shutdown (what SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the drain is over and every listener is closed.
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Re-reads `tls.cert` / `tls.key`. Connections already open keep their
    /// certificate.
    pub fn reload_certificates(&self) -> Result<(), tls::TlsError> {
        self.resolver.reload(&self.app().config.tls)
    }

    /// What SIGHUP does (SPEC section 12): re-reads the config file and the
    /// certificate and swaps them in without dropping a connection. A bad
    /// new config or certificate changes nothing.
    pub async fn reload(&self) -> Result<(), String> {
        let path = self
            .options
            .config_path
            .as_ref()
            .ok_or("no config file to re-read")?;
        let config = Config::load(path).map_err(|e| e.to_string())?;
        self.reload_with(config).await
    }

    /// Swaps in `config` (see `reload`).
    pub async fn reload_with(&self, config: Config) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.apps.load_full();
        if old.is_draining() {
            return Err("shutting down".to_owned());
        }
        for (key, was, now) in [
            (
                "server.listen",
                Some(old.config.server.listen),
                Some(config.server.listen),
            ),
            (
                "server.http_listen",
                old.config.server.http_listen,
                config.server.http_listen,
            ),
        ] {
            if was != now {
                tracing::warn!(
                    key,
                    "a changed listen address takes effect at the next restart"
                );
            }
        }
        let key = tls::load_certified_key(&config.tls).map_err(|e| e.to_string())?;
        // Counters and open tunnels belong to the process, not to one config.
        let mut app = App::with_metrics(config, old.metrics.clone()).await?;
        app.tunnels = old.tunnels.clone();
        // The meter (its spool and tasks) belongs to the process as well.
        app.usage = old.usage.clone();
        if app.config.usage != old.config.usage {
            tracing::warn!("changed [usage] settings take effect at the next restart");
        }
        let app = Arc::new(app);
        spawn_health_checks(&app, self.options.health_interval);
        self.resolver.set(key);
        self.apps.store(app);
        old.background.cancel();
        tracing::info!("config reloaded");
        Ok(())
    }
}

fn spawn_health_checks(app: &Arc<App>, interval: Duration) {
    tokio::spawn(upstream::health::run(
        app.pool.clone(),
        app.config.librechat.health_path.clone(),
        interval,
        app.background.clone(),
    ));
}

/// Binds the listeners and starts serving in the background.
pub async fn start(config: Config, options: Options) -> Result<Running, StartError> {
    tls::install_crypto_provider();
    if tls::ensure_certificate(&config.tls)? {
        tracing::warn!(
            cert = %config.tls.cert.display(),
            key = %config.tls.key.display(),
            "no certificate found: generated a self-signed development certificate for localhost"
        );
    }
    let resolver = Arc::new(CertResolver::new(tls::load_certified_key(&config.tls)?));
    let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(resolver.clone())));

    let tls_listener = bind("server.listen", config.server.listen).await?;
    let http_listener = match config.server.http_listen {
        Some(addr) => Some(bind("server.http_listen", addr).await?),
        None => None,
    };
    let tls_addr = local_addr("server.listen", &tls_listener)?;
    let http_addr = match &http_listener {
        Some(l) => Some(local_addr("server.http_listen", l)?),
        None => None,
    };

    let mut app = App::new(config).await.map_err(StartError::Config)?;
    app.usage = crate::usage::Meter::start(&app.config.usage, app.store.clone())
        .map_err(|e| StartError::Config(e.to_string()))?;
    let app = Arc::new(app);
    let max_header_bytes = app.config.server.max_header_bytes;
    let builder = Arc::new(limits::http_builder(
        max_header_bytes,
        options.header_read_timeout,
    ));
    let http1 = Arc::new(limits::http1_builder(
        max_header_bytes,
        options.header_read_timeout,
    ));
    let shutdown = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let closing = CancellationToken::new();
    let connections = TaskTracker::new();
    spawn_health_checks(&app, options.health_interval);
    let apps: Apps = Arc::new(ArcSwap::new(app));
    tokio::spawn(watch_certificates(
        apps.clone(),
        resolver.clone(),
        shutdown.clone(),
    ));

    let accepting = TaskTracker::new();
    let workers_done = CancellationToken::new();
    let mut listeners = Listeners {
        apps: apps.clone(),
        builder,
        http1,
        connections: connections.clone(),
        header_read_timeout: options.header_read_timeout,
        stop_accepting: stop_accepting.clone(),
        closing: closing.clone(),
        workers: Arc::new([]),
        turn: Arc::new(AtomicUsize::new(0)),
        index: 0,
    };
    apps.load().metrics.set_workers(options.workers);
    crate::upstream::set_serving_threads(options.workers);
    listeners.workers = spawn_workers(&listeners, options.workers, &workers_done)?.into();
    accepting.spawn(listeners.clone().accept(tls_listener, Some(acceptor)));
    if let Some(listener) = http_listener {
        accepting.spawn(listeners.accept(listener, None));
    }
    tracing::info!(%tls_addr, http_addr = ?http_addr, workers = options.workers.max(1), "chatgate listening");

    let task = tokio::spawn(drain_on_shutdown(
        apps.clone(),
        shutdown.clone(),
        stop_accepting,
        closing,
        connections,
        accepting,
        workers_done,
    ));
    Ok(Running {
        tls_addr,
        http_addr,
        apps,
        options,
        resolver,
        shutdown,
        task,
        reloading: tokio::sync::Mutex::new(()),
    })
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// How long an HTTP/1.1 connection must carry no request before it is
/// parked (`Listeners::serve_http1`); it is checked this often, so parking
/// happens between one and two periods after the last response ended.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Requests under way on one connection, for `serve_http1`: begun in the
/// service, ended when hyper drops the response body (sent, or abandoned).
#[derive(Debug, Default)]
struct Activity {
    active: AtomicUsize,
    started: AtomicUsize,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        Active(self.clone())
    }

    fn idle(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }
}

struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as under way.
struct ActiveBody {
    body: ProxyBody,
    _active: Active,
}

impl hyper::body::Body for ActiveBody {
    type Data = Bytes;
    type Error = crate::error::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// The TLS stream as `serve_http1` hands it to hyper: bytes a previous
/// hyper connection had read but not used come first, and while parking,
/// hyper's shutdown is skipped so that the connection stays open.
struct ClientIo {
    unread: Bytes,
    /// Boxed so that handing it between hyper and `serve_http1` moves a
    /// pointer, and the connection's task keeps no copies of it.
    tls: Box<TlsStream>,
    keep_open: Arc<AtomicBool>,
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.unread.is_empty() {
            return Pin::new(&mut self.tls).poll_read(cx, buf);
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.keep_open.load(Ordering::Relaxed) {
            return Pin::new(&mut self.tls).poll_flush(cx);
        }
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// The TLS stream and the bytes read but not used, out of a finished hyper
/// connection's parts; the unused bytes are copied out of hyper's buffer.
fn take_back<S>(
    parts: hyper::server::conn::http1::Parts<TokioIo<ClientIo>, S>,
) -> (Box<TlsStream>, Bytes) {
    let io = parts.io.into_inner();
    let unread = match (io.unread.is_empty(), parts.read_buf.is_empty()) {
        (true, true) => Bytes::new(),
        (false, true) => io.unread,
        _ => [&io.unread[..], &parts.read_buf[..]].concat().into(),
    };
    (io.tls, unread)
}

/// The TLS handshake, within `HANDSHAKE_TIMEOUT`.
async fn accept_tls(
    acceptor: TlsAcceptor,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<Box<TlsStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Runs `f` when dropped.
fn defer<F: FnOnce()>(f: F) -> impl Drop {
    struct Defer<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Defer<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Defer(Some(f))
}

/// An accepted connection on its way to the worker that serves it.
struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
}

/// Starts `workers - 1` threads, each with a single-threaded runtime that
/// serves the connections handed to it (nginx's worker processes, as
/// threads): a request is read, authenticated, forwarded and answered on
/// one thread, without hand-offs between threads. The caller's runtime
/// accepts and is the first worker. The threads end once `done` is
/// cancelled, at the end of the drain.
fn spawn_workers(
    listeners: &Listeners,
    workers: usize,
    done: &CancellationToken,
) -> Result<Vec<tokio::sync::mpsc::UnboundedSender<Handed>>, StartError> {
    let mut senders = Vec::with_capacity(workers.saturating_sub(1));
    for index in 1..workers {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Worker)?;
        let (sender, mut handed) = tokio::sync::mpsc::unbounded_channel::<Handed>();
        let listeners = Listeners {
            index,
            ..listeners.clone()
        };
        let done = done.clone();
        std::thread::Builder::new()
            .name(format!("chatgate-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        tokio::select! {
                            _ = done.cancelled() => return,
                            next = handed.recv() => match next {
                                Some(next) => listeners.take_over(next),
                                None => break,
                            },
                        }
                    }
                    done.cancelled().await;
                });
            })
            .map_err(StartError::Worker)?;
        senders.push(sender);
    }
    Ok(senders)
}

fn local_addr(key: &'static str, listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        key,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// SPEC section 12: `/readyz` turns 503 at once, listeners close after a
/// third of the grace, and open requests, streams and tunnels get the rest.
async fn drain_on_shutdown(
    apps: Apps,
    shutdown: CancellationToken,
    stop_accepting: CancellationToken,
    closing: CancellationToken,
    connections: TaskTracker,
    accepting: TaskTracker,
    workers_done: CancellationToken,
) {
    shutdown.cancelled().await;
    let app = apps.load_full();
    let grace = app.config.server.shutdown_grace;
    app.start_draining();
    tracing::info!(?grace, "shutdown: draining");
    tokio::time::sleep(grace / 3).await;

    stop_accepting.cancel();
    accepting.close();
    accepting.wait().await;
    tracing::info!(open = connections.len(), "shutdown: listeners closed");
    closing.cancel();
    connections.close();
    app.tunnels.close();
    let rest = grace - grace / 3;
    let deadline = tokio::time::Instant::now() + rest;
    let finished = tokio::time::timeout(rest, async {
        connections.wait().await;
        app.tunnels.wait().await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            connections = connections.len(),
            tunnels = app.tunnels.len(),
            "shutdown: grace over, closing what is left"
        );
    }
    // SPEC section 11: the last counts are flushed (or stay spooled) within the grace.
    if let Some(meter) = &apps.load_full().usage {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        meter.close(left.max(Duration::from_secs(1))).await;
    }
    apps.load_full().background.cancel();
    workers_done.cancel();
    tracing::info!("shutdown: done");
}

#[derive(Clone)]
struct Listeners {
    apps: Apps,
    builder: Arc<auto::Builder<TokioExecutor>>,
    http1: Arc<hyper::server::conn::http1::Builder>,
    connections: TaskTracker,
    /// `Options::header_read_timeout`, also the longest a connection that
    /// has not sent a request yet may stay parked.
    header_read_timeout: Duration,
    stop_accepting: CancellationToken,
    closing: CancellationToken,
    /// The other workers' queues; empty with one worker.
    workers: Arc<[tokio::sync::mpsc::UnboundedSender<Handed>]>,
    /// Whose turn the next accepted connection is (0: this runtime's).
    turn: Arc<AtomicUsize>,
    /// Which worker this copy serves on.
    index: usize,
}

impl Listeners {
    async fn accept(self, listener: TcpListener, acceptor: Option<TlsAcceptor>) {
        let mut backoff = AcceptBackoff::default();
        loop {
            let (stream, peer) = tokio::select! {
                _ = self.stop_accepting.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        let wait = backoff.failed(&error);
                        if !wait.is_zero() {
                            tokio::select! {
                                _ = self.stop_accepting.cancelled() => return,
                                _ = tokio::time::sleep(wait) => {}
                            }
                        }
                        continue;
                    }
                },
            };
            backoff.accepted();
            let _ = stream.set_nodelay(true);
            self.dispatch(stream, peer, acceptor.clone());
        }
    }

    /// Hands accepted connections to the workers in turn, this runtime
    /// included: every worker gets as many, whichever woke first.
    fn dispatch(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        acceptor: Option<TlsAcceptor>,
    ) {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % (self.workers.len() + 1);
        let Some(worker) = turn.checked_sub(1).and_then(|i| self.workers.get(i)) else {
            return self.spawn_connection(stream, peer, acceptor);
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => return tracing::warn!(%peer, %error, "cannot hand a connection over"),
        };
        if let Err(unsent) = worker.send(Handed {
            stream,
            peer,
            acceptor,
        }) {
            // That worker has stopped (the drain is ending): serve it here.
            self.take_over(unsent.0);
        }
    }

    /// Serves a connection handed over from another thread's runtime.
    fn take_over(&self, handed: Handed) {
        let Handed {
            stream,
            peer,
            acceptor,
        } = handed;
        match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => self.spawn_connection(stream, peer, acceptor),
            Err(error) => tracing::warn!(%peer, %error, "cannot take a connection over"),
        }
    }

    /// Serves one connection on this thread's runtime: the TLS handshake,
    /// then HTTP until it closes.
    fn spawn_connection(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        acceptor: Option<TlsAcceptor>,
    ) {
        let this = self.clone();
        let metrics = self.apps.load().metrics.clone();
        let worker = self.index;
        metrics.connection_opened(worker);
        self.connections.spawn(async move {
            let _closed = defer(move || metrics.connection_closed(worker));
            let conn = Arc::new(ConnInfo {
                peer,
                tls: acceptor.is_some(),
            });
            match acceptor {
                // Boxed, like HTTP/2 below: a connection served by
                // `serve_http1` does not carry their larger state.
                None => Box::pin(this.serve(stream, conn)).await,
                Some(acceptor) => {
                    // Boxed and finished before serving begins, and only a
                    // pointer comes out: the handshake's state is not kept
                    // beside the connection's for as long as it stays open.
                    let Some(tls) = Box::pin(accept_tls(acceptor, stream, peer)).await else {
                        return;
                    };
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        Box::pin(this.serve(*tls, conn)).await
                    } else {
                        this.serve_http1(tls, conn).await
                    }
                }
            }
        });
    }

    /// HTTP/1.1 over TLS. A connection that has carried no request for
    /// `PARK_AFTER` to `2 × PARK_AFTER` is parked: hyper lets go of it
    /// (its read and write buffers and the dispatcher's state are freed)
    /// and only the TLS stream and this task wait for the client's next
    /// bytes, when a new hyper connection takes it up again, the way nginx
    /// frees a keep-alive connection's buffers. Idle browsers' connections
    /// are most of a proxy's connections.
    async fn serve_http1(&self, mut tls: Box<TlsStream>, conn: Arc<ConnInfo>) {
        let keep_open = Arc::new(AtomicBool::new(false));
        let mut unread = Bytes::new();
        let mut may_park = true;
        // Until the first request begins, parking does not stop the clock of
        // the header timeout: a client that connects and stays silent is
        // closed as one that sends its head too slowly would be.
        let mut silent_until = Some(tokio::time::Instant::now() + self.header_read_timeout);
        loop {
            let activity = Arc::new(Activity::default());
            let service = {
                let apps = self.apps.clone();
                let conn = conn.clone();
                let activity = activity.clone();
                service_fn(move |request| {
                    let active = activity.begin();
                    let handled = proxy::handle(apps.load_full(), conn.clone(), request);
                    async move {
                        let response = handled.await?;
                        Ok::<_, Infallible>(response.map(|body| ActiveBody {
                            body,
                            _active: active,
                        }))
                    }
                })
            };
            keep_open.store(false, Ordering::Relaxed);
            let io = ClientIo {
                unread: std::mem::take(&mut unread),
                tls,
                keep_open: keep_open.clone(),
            };
            let mut connection = Box::pin(
                self.http1
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            );
            let mut check =
                tokio::time::interval_at(tokio::time::Instant::now() + PARK_AFTER, PARK_AFTER);
            let (mut seen, mut parking, mut closing) = (0, false, false);
            let result = loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    _ = self.closing.cancelled(), if !closing => {
                        closing = true;
                        keep_open.store(false, Ordering::Relaxed);
                        connection.as_mut().graceful_shutdown();
                    }
                    _ = check.tick(), if !closing && !parking => {
                        let started = activity.started();
                        if activity.idle() && started == seen && (may_park || started > 0) {
                            parking = true;
                            keep_open.store(true, Ordering::Relaxed);
                            connection.as_mut().graceful_shutdown();
                        }
                        seen = started;
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
                return;
            }
            if activity.started() > 0 {
                silent_until = None;
            }
            if !parking || closing {
                return;
            }
            // `None`: upgraded; the tunnel has the stream.
            let Some(parts) = Pin::into_inner(connection).into_parts() else {
                return;
            };
            // In a function, so that hyper's read buffer (what parking
            // frees) and the rest of its parts are dropped before waiting.
            (tls, unread) = take_back(parts);
            // A request head had begun: serve it at once, and park again
            // only once a request has begun, so that a slow head still meets
            // hyper's header timeout.
            may_park = unread.is_empty();
            if !may_park {
                continue;
            }
            let metrics = self.apps.load().metrics.clone();
            metrics.connection_parked();
            let silent_for_too_long = async {
                match silent_until {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let woken = tokio::select! {
                readable = tls.get_ref().0.readable() => readable.is_ok(),
                _ = silent_for_too_long => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut *tls).await;
                    false
                }
                _ = self.closing.cancelled() => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut *tls).await;
                    false
                }
            };
            metrics.connection_unparked();
            if !woken {
                return;
            }
        }
    }

    async fn serve<I>(&self, io: I, conn: Arc<ConnInfo>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let apps = self.apps.clone();
        let service =
            service_fn(move |request| proxy::handle(apps.load_full(), conn.clone(), request));
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = self.closing.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

/// SPEC section 12: a change of the certificate files reloads them. Polled,
/// because an inotify watch misses files replaced by rename on some systems.
async fn watch_certificates(apps: Apps, resolver: Arc<CertResolver>, stop: CancellationToken) {
    let stamp = |app: &App| {
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (
            modified(&app.config.tls.cert),
            modified(&app.config.tls.key),
        )
    };
    let mut seen = stamp(&apps.load());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CERT_POLL) => {}
        }
        let app = apps.load_full();
        let now = stamp(&app);
        if now == seen {
            continue;
        }
        seen = now;
        match resolver.reload(&app.config.tls) {
            Ok(()) => tracing::info!("certificate files changed: reloaded"),
            // Often a half-written pair: the next change retries.
            Err(error) => {
                tracing::warn!(%error, "certificate files changed but do not load; keeping the old one")
            }
        }
    }
}

/// How often the certificate files' modification times are compared.
const CERT_POLL: Duration = Duration::from_secs(5);

/// Runs until SIGTERM or SIGINT has drained chatgate; SIGHUP reloads the
/// config and the certificate.
pub async fn run_until_signalled(running: Running) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match running.reload().await {
                Ok(()) => tracing::info!("SIGHUP: config and certificate reloaded"),
                Err(error) => tracing::error!(%error, "SIGHUP: reload refused, keeping the running config"),
            },
        }
    }
    running.shutdown();
    running.wait().await;
    Ok(())
}
