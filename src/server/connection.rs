//! One connection: the TLS handshake (on the TLS listener), then hyper's
//! HTTP/1.1 + HTTP/2 serving with upgrades until it closes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use super::limits::HANDSHAKE_TIMEOUT;
use super::proxy_protocol;
use super::Listeners;
use crate::context::ConnInfo;
use crate::proxy;

pub(super) type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

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

impl Listeners {
    /// Serves one connection on this thread's runtime: the TLS handshake,
    /// then HTTP until it closes.
    pub(super) fn spawn_connection(
        &self,
        mut stream: tokio::net::TcpStream,
        peer: SocketAddr,
        acceptor: Option<TlsAcceptor>,
    ) {
        let this = self.clone();
        let (metrics, proxy_protocol) = {
            let app = self.apps.load();
            (app.metrics.clone(), app.config.server.proxy_protocol)
        };
        let worker = self.index;
        metrics.connection_opened(worker);
        self.connections.spawn(async move {
            let _closed = defer(move || metrics.connection_closed(worker));
            let peer = if proxy_protocol {
                // Boxed for the same reason as the handshake below.
                let read = Box::pin(this.client_address(&mut stream, peer)).await;
                let Some(client) = read else { return };
                client
            } else {
                peer
            };
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
                        Box::pin(this.serve_h2(tls, conn)).await
                    } else {
                        this.serve_http1(tls, conn).await
                    }
                }
            }
        });
    }

    /// `server.proxy_protocol`: the client's address from the PROXY
    /// header the connection starts with, read within the header read
    /// timeout; `None` (close) without a valid one.
    async fn client_address(
        &self,
        stream: &mut tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> Option<SocketAddr> {
        let read = tokio::time::timeout(
            self.header_read_timeout,
            proxy_protocol::read_header(stream),
        );
        match read.await {
            Ok(Ok(header)) => Some(header.source.unwrap_or(peer)),
            Ok(Err(error)) => {
                tracing::debug!(%peer, %error, "PROXY protocol header refused");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "PROXY protocol header timed out");
                None
            }
        }
    }

    /// HTTP/2 over TLS: hyper's HTTP/2 connection on the boxed stream.
    async fn serve_h2(&self, tls: Box<TlsStream>, conn: Arc<ConnInfo>) {
        let apps = self.apps.clone();
        // Boxed: hyper moves each stream's future several times to spawn
        // its task (into `H2Stream`, into the executor, into the task's
        // cell); boxed, what moves is a pointer, not the handler's 1 KiB.
        let service = service_fn(move |request| {
            Box::pin(proxy::handle(apps.load_full(), conn.clone(), request))
        });
        let connection = self.http2.serve_connection(TokioIo::new(tls), service);
        self.until_closed(connection, |c| c.graceful_shutdown())
            .await;
    }

    /// The plain listener: HTTP/1.1 or HTTP/2, whichever the client speaks.
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
        self.until_closed(connection, |c| c.graceful_shutdown())
            .await;
    }

    /// Runs a hyper connection to its end; when the server begins to close,
    /// asks it (`shutdown`) to finish what is under way and stop.
    async fn until_closed<C, E>(&self, connection: C, shutdown: impl FnOnce(Pin<&mut C>))
    where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = self.closing.cancelled() => {
                shutdown(connection.as_mut());
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}
