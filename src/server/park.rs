//! HTTP/1.1 over TLS with idle keep-alive connections parked: hyper lets
//! go of a connection that carries no request, and a new hyper connection
//! takes the TLS stream up again when the client speaks.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::TlsStream;
use super::Listeners;
use crate::body::ProxyBody;
use crate::context::ConnInfo;
use crate::proxy;

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

pin_project_lite::pin_project! {
    /// A request's response future whose body, once there, keeps the
    /// request counted as under way.
    struct Tracked<F> {
        #[pin]
        handled: F,
        active: Option<Active>,
    }
}

impl<F> Future for Tracked<F>
where
    F: Future<Output = Result<http::Response<ProxyBody>, Infallible>>,
{
    type Output = Result<http::Response<ActiveBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.handled.poll(cx));
        let active = this.active.take().expect("polled after completion");
        Poll::Ready(Ok(response.map(|body| ActiveBody {
            body,
            _active: active,
        })))
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

impl Listeners {
    /// HTTP/1.1 over TLS. A connection that has carried no request for
    /// `PARK_AFTER` to `2 × PARK_AFTER` is parked: hyper lets go of it
    /// (its read and write buffers and the dispatcher's state are freed)
    /// and only the TLS stream and this task wait for the client's next
    /// bytes, when a new hyper connection takes it up again, the way nginx
    /// frees a keep-alive connection's buffers. Idle browsers' connections
    /// are most of a proxy's connections.
    pub(super) async fn serve_http1(&self, mut tls: Box<TlsStream>, conn: Arc<ConnInfo>) {
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
                    // Not an `async` block: one awaiting the captured
                    // future would hold it twice over (hyper moves it, too).
                    let handled = proxy::handle(apps.load_full(), conn.clone(), request);
                    Tracked {
                        handled,
                        active: Some(active),
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
}
