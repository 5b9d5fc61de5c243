//! `librechat.max_connections_per_instance` at the connection level (SPEC
//! section 9): a connector that opens a connection only while it holds one
//! of a fixed number of slots, and keeps the slot until the connection
//! closes — whether it is busy or idle in the pool. Together with the
//! per-request slots of `Upstream::connection_slot` this bounds what a
//! thread ever has open to an instance, even when a new request races a
//! connection on its way back to the pool.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::BoxError;

/// Waiting for a connection slot took longer than the connect timeout:
/// chatgate's own limit, never the instance's failure.
#[derive(Debug, thiserror::Error)]
#[error("every connection this replica may open to the instance is in use")]
pub struct OwnLimit;

/// Whether `error` (anywhere in its chain) is chatgate's own connection limit.
pub fn is_own_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<OwnLimit>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[derive(Clone, Debug)]
pub struct LimitedConnector {
    inner: HttpConnector,
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl LimitedConnector {
    pub fn new(inner: HttpConnector, max_connections: usize, wait: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            wait,
        }
    }
}

impl tower_service::Service<Uri> for LimitedConnector {
    type Response = LimitedConnection;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<LimitedConnection, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut inner = self.inner.clone();
        let slots = self.slots.clone();
        let wait = self.wait;
        Box::pin(async move {
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => tokio::time::timeout(wait, slots.acquire_owned())
                    .await
                    .map_err(|_| Box::new(OwnLimit) as BoxError)?
                    .map_err(|_| Box::new(OwnLimit) as BoxError)?,
            };
            let io = inner.call(uri).await?;
            Ok(LimitedConnection { io, _slot: slot })
        })
    }
}

/// A connection holding its slot until it is dropped.
#[derive(Debug)]
pub struct LimitedConnection {
    io: TokioIo<TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl Connection for LimitedConnection {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
