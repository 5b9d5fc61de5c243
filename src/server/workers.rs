//! The serving threads: each runs a single-threaded runtime and serves
//! the connections the accept loop hands it.

use std::net::SocketAddr;

use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Listeners, StartError};

/// An accepted connection on its way to the worker that serves it.
pub(super) struct Handed {
    pub(super) stream: std::net::TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) acceptor: Option<TlsAcceptor>,
}

/// Starts `workers - 1` threads, each with a single-threaded runtime that
/// serves the connections handed to it (nginx's worker processes, as
/// threads): a request is read, authenticated, forwarded and answered on
/// one thread, without hand-offs between threads. The caller's runtime
/// accepts and is the first worker. The threads end once `done` is
/// cancelled, at the end of the drain.
pub(super) fn spawn_workers(
    listeners: &Listeners,
    workers: usize,
    done: &CancellationToken,
) -> Result<Vec<tokio::sync::mpsc::UnboundedSender<Handed>>, StartError> {
    let mut senders = Vec::with_capacity(workers.saturating_sub(1));
    for index in 1..workers {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(crate::proxy::flush_deferred)
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
                crate::proxy::stop_deferring();
            })
            .map_err(StartError::Worker)?;
        senders.push(sender);
    }
    Ok(senders)
}
