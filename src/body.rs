//! The body type every response and forwarded request uses, and the idle
//! timeout that ends a stream whose peer went silent (SPEC section 8).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::time::{Instant, Sleep};

/// The error a body stream (and most of what carries one) ends with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body of any origin: upstream responses, client uploads, or
/// chatgate's own small answers.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A client's request body on its way upstream: streamed as it arrives, or
/// already read whole by a phase that had to look at it (the policy's chat
/// and agent checks).
#[derive(Debug)]
pub enum RequestBody {
    Streaming(hyper::body::Incoming),
    Read(Bytes),
}

impl RequestBody {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        match self {
            RequestBody::Streaming(incoming) => incoming.is_end_stream(),
            RequestBody::Read(bytes) => bytes.is_empty(),
        }
    }

    /// The body for the upstream request; a streamed one ends after
    /// `idle` without a frame. `seen` counts its bytes as they pass (the
    /// access line's `bytes_in`).
    pub fn into_upstream(self, idle: Duration, seen: Arc<AtomicU64>) -> ProxyBody {
        match self {
            RequestBody::Streaming(incoming) => with_idle_timeout(
                Counted {
                    inner: incoming,
                    seen,
                },
                idle,
                (),
            ),
            RequestBody::Read(bytes) => {
                seen.store(bytes.len() as u64, Ordering::Relaxed);
                full(bytes)
            }
        }
    }
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadBodyError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body could not be read: {0}")]
    Failed(String),
}

/// How long a client may take to send a body chatgate reads whole (a
/// policed chat or agent body, a body for chatgate's own routes).
pub const READ_WHOLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads a client's body whole, refusing it once it passes `limit` bytes
/// (nothing beyond the limit is buffered), within `timeout`. A refused
/// body is read on and dropped in the background (see [`discard`]).
pub async fn read_whole(
    mut body: hyper::body::Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ReadBodyError> {
    match tokio::time::timeout(timeout, read_into(&mut body, limit)).await {
        Err(_) => Err(ReadBodyError::Failed(
            "the client sent its body too slowly".to_owned(),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(error)) => {
            if matches!(error, ReadBodyError::TooLarge(_)) {
                discard(body);
            }
            Err(error)
        }
    }
}

/// Reads and drops what is left of a refused body, for a bounded time and
/// size, so the client, still sending, receives the refusal instead of a
/// reset connection (nginx's lingering close).
pub fn discard(mut body: hyper::body::Incoming) {
    const MAX_DISCARD: usize = 64 * 1024 * 1024;
    const MAX_TIME: Duration = Duration::from_secs(10);
    tokio::spawn(async move {
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > MAX_DISCARD {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(MAX_TIME, drain).await;
    });
}

/// Reads a streamed body whole, up to `limit` bytes (a frame-by-frame
/// loop: `Limited` over a boxed body trips a higher-ranked lifetime bound
/// inside hyper's service future).
pub async fn collect_limited(mut body: ProxyBody, limit: usize) -> Result<Bytes, ReadBodyError> {
    read_into(&mut body, limit).await
}

/// The frames of `body` gathered, refused once they pass `limit` bytes.
async fn read_into<B>(body: &mut B, limit: usize) -> Result<Bytes, ReadBodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadBodyError::Failed(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(ReadBodyError::TooLarge(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Wraps a body so that a gap of more than `idle` between two frames ends it
/// with an error. There is no total limit: SSE streams may last for hours.
/// `guard` lives as long as the body (an upstream's in-flight count).
pub fn with_idle_timeout<B, G>(inner: B, idle: Duration, guard: G) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    G: Send + 'static,
{
    IdleTimeout {
        inner,
        idle,
        deadline: None,
        stale: false,
        _guard: guard,
    }
    .boxed_unsync()
}

pin_project_lite::pin_project! {
    /// Adds the length of each data frame to `seen`.
    struct Counted<B> {
        #[pin]
        inner: B,
        seen: Arc<AtomicU64>,
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.seen.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("stream idle for more than {0:?}")]
pub struct IdleTimedOut(Duration);

pin_project_lite::pin_project! {
    /// The timer is made the first time the body has to wait, and re-armed
    /// only when it waits again after a frame: a body that is ready whenever
    /// it is polled (most responses: the upstream's answer is already read)
    /// never allocates a timer nor registers one with the runtime.
    struct IdleTimeout<B, G> {
        #[pin]
        inner: B,
        idle: Duration,
        deadline: Option<Pin<Box<Sleep>>>,
        // A frame came since the timer was armed: re-arm before waiting.
        stale: bool,
        _guard: G,
    }
}

impl<B, G> Body for IdleTimeout<B, G>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                *this.stale = true;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                // The silence starts now: the frame before was just taken.
                let idle = *this.idle;
                let deadline = match this.deadline {
                    Some(deadline) => {
                        if *this.stale {
                            deadline.as_mut().reset(Instant::now() + idle);
                        }
                        deadline
                    }
                    None => this.deadline.insert(Box::pin(tokio::time::sleep(idle))),
                };
                *this.stale = false;
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimedOut(idle))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_ends_after_the_idle_limit() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = tokio_stream_from(rx);
        let mut body = with_idle_timeout(StreamBody::new(stream), Duration::from_secs(300), ());
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        // Nothing more is sent; the paused clock jumps to the deadline.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("idle"), "{err}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_closer_than_the_limit_keep_the_stream_alive() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let mut body = with_idle_timeout(
            StreamBody::new(tokio_stream_from(rx)),
            Duration::from_secs(300),
            (),
        );
        let writer = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(200)).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"e"))))
                    .await
                    .unwrap();
            }
        });
        // 1000 s in all, never 300 s without a frame.
        for _ in 0..5 {
            let frame = body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "e");
        }
        writer.await.unwrap();
        assert!(body.frame().await.is_none(), "ends when the sender is gone");
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
