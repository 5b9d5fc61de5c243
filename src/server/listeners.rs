//! The accept loops, and the hand-out of accepted connections to the
//! serving threads in turn.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::AcceptBackoff;
use super::workers::Handed;
use super::Apps;

#[derive(Clone)]
pub(super) struct Listeners {
    pub(super) apps: Apps,
    pub(super) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(super) http1: Arc<hyper::server::conn::http1::Builder>,
    pub(super) http2: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
    pub(super) connections: TaskTracker,
    /// `Options::header_read_timeout`, also the longest a connection that
    /// has not sent a request yet may stay parked.
    pub(super) header_read_timeout: Duration,
    pub(super) stop_accepting: CancellationToken,
    pub(super) closing: CancellationToken,
    /// The other workers' queues; empty with one worker.
    pub(super) workers: Arc<[tokio::sync::mpsc::UnboundedSender<Handed>]>,
    /// Whose turn the next accepted connection is (0: this runtime's).
    pub(super) turn: Arc<AtomicUsize>,
    /// Which worker this copy serves on.
    pub(super) index: usize,
}

impl Listeners {
    pub(super) async fn accept(self, listener: TcpListener, acceptor: Option<TlsAcceptor>) {
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
    pub(super) fn take_over(&self, handed: Handed) {
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
}
