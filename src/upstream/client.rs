//! One serving thread's HTTP/1.1 connections to one instance: senders of
//! hyper's connection API on a list, each connection driven by its own
//! task and holding one of the thread's connection slots until it closes.
//!
//! hyper-util's pooled client did the same with a pool keyed by
//! scheme and authority (SipHash per request, twice), a checkout racing a
//! lazy connect, and `Host` formatted per request; with one pool per thread
//! and instance, none of that is needed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::limit::OwnLimit;
use crate::body::ProxyBody;
use crate::error::BoxError;

/// Why a request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (refused, timed out, name not found, or
    /// every slot of the thread in use: see [`super::is_own_limit`]).
    #[error("connecting to the instance failed")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or its answer read.
    #[error("the request to the instance failed")]
    Request(#[source] hyper::Error),
}

impl SendError {
    /// The request never reached the instance.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

pub struct UpstreamClient {
    host: String,
    port: u16,
    /// Written into requests that have none.
    host_header: HeaderValue,
    /// Every open connection's sender: idle ones are ready, busy ones are
    /// still streaming an answer; closed ones are dropped when met.
    senders: Mutex<Vec<SendRequest<ProxyBody>>>,
    /// This thread's share of `max_connections_per_instance`.
    slots: Arc<Semaphore>,
    /// Woken when a sender goes back on the list.
    kept: Notify,
    connect_timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    pub fn new(
        authority: &Authority,
        host_header: HeaderValue,
        max_connections: usize,
        connect_timeout: Duration,
    ) -> Self {
        // `Authority::host` keeps an IPv6 address's brackets; connecting wants it bare.
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Self {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            host_header,
            senders: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            kept: Notify::new(),
            connect_timeout,
        }
    }

    /// Sends `request` on an idle connection, else a new one. A request
    /// that could not be written to a kept connection (the instance had
    /// closed it) is sent again on a new one: it never left.
    pub async fn request(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, SendError> {
        if request.uri().scheme().is_some() {
            // Origin form: an HTTP/1.1 server is asked for the path, not the URL.
            let path = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
        }
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, self.host_header.clone());
        }
        loop {
            let (mut sender, kept) = match self.idle_sender() {
                Some(sender) => (sender, true),
                None => self.free_sender().await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.keep(sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if kept => request = unsent,
                    _ => return Err(SendError::Request(error.into_error())),
                },
            }
        }
    }

    /// A ready sender, taken off the list; closed ones are dropped on the way.
    fn idle_sender(&self) -> Option<SendRequest<ProxyBody>> {
        let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
        senders.retain(|s| !s.is_closed());
        let at = senders.iter().position(SendRequest::is_ready)?;
        Some(senders.swap_remove(at))
    }

    /// Back on the list: ready again once its answer has been read.
    fn keep(&self, sender: SendRequest<ProxyBody>) {
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sender);
        self.kept.notify_one();
    }

    /// A sender when none is idle: a new connection while this thread may
    /// open one, else the first busy connection to finish its answer.
    /// Waiting longer than the connect timeout is chatgate's own limit.
    async fn free_sender(&self) -> Result<(SendRequest<ProxyBody>, bool), SendError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let own_limit = || SendError::Connect(Box::new(OwnLimit));
        loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                return Ok((self.connect(slot).await?, false));
            }
            let busy = {
                let mut senders = self.senders.lock().unwrap_or_else(|e| e.into_inner());
                senders.retain(|s| !s.is_closed());
                senders.pop()
            };
            match busy {
                Some(mut sender) => match tokio::time::timeout_at(deadline, sender.ready()).await {
                    Ok(Ok(())) => return Ok((sender, true)),
                    // Closed: its slot comes free.
                    Ok(Err(_)) => continue,
                    Err(_) => {
                        // Still busy, and still the thread's: back on the list.
                        self.keep(sender);
                        return Err(own_limit());
                    }
                },
                // Every connection is being opened or waited on by another
                // request: a slot, or a connection put back, wakes this one.
                None => {
                    tokio::select! {
                        slot = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()) => {
                            let slot = slot.map_err(|_| own_limit())?.map_err(|_| own_limit())?;
                            return Ok((self.connect(slot).await?, false));
                        }
                        () = self.kept.notified() => {
                            if let Some(sender) = self.idle_sender() {
                                return Ok((sender, true));
                            }
                        }
                    }
                }
            }
        }
    }

    async fn connect(
        &self,
        slot: OwnedSemaphorePermit,
    ) -> Result<SendRequest<ProxyBody>, SendError> {
        let connect_error = |e: BoxError| SendError::Connect(e);
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| {
            connect_error(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )))
        })?
        .map_err(|e| connect_error(Box::new(e)))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_error(Box::new(e)))?;
        tokio::spawn(async move {
            // The slot is this connection's until it closes.
            let _slot = slot;
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::body;

    fn client(addr: std::net::SocketAddr) -> UpstreamClient {
        let authority: Authority = addr.to_string().parse().unwrap();
        let host = HeaderValue::from_str(authority.as_str()).unwrap();
        UpstreamClient::new(&authority, host, 4, Duration::from_secs(5))
    }

    /// An instance that answers each request on a connection with `body`,
    /// and closes the connection after `per_connection` answers.
    async fn instance(per_connection: usize) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    for _ in 0..per_connection {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(byte[0]);
                        }
                        seen.lock().unwrap().push(String::from_utf8(head).unwrap());
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, heads)
    }

    fn get(path: &str) -> Request<ProxyBody> {
        Request::get(format!("http://example.invalid{path}"))
            .body(body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn requests_go_in_origin_form_with_host_on_one_kept_connection() {
        let (addr, heads) = instance(10).await;
        let client = client(addr);
        for path in ["/a?x=1", "/b"] {
            let response = client.request(get(path)).await.unwrap();
            assert_eq!(response.status(), 200);
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap();
        }
        let heads = heads.lock().unwrap().clone();
        assert!(
            heads[0].starts_with("GET /a?x=1 HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(heads[1].starts_with("GET /b HTTP/1.1\r\n"), "{}", heads[1]);
        assert!(
            heads[0].contains(&format!("host: {addr}\r\n")),
            "{}",
            heads[0]
        );
        // Both on one connection: the first was ready again when the second came.
        assert_eq!(client.senders.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_not_used_again() {
        let (addr, heads) = instance(1).await;
        let client = client(addr);
        for _ in 0..3 {
            let response = client.request(get("/")).await.unwrap();
            assert_eq!(response.status(), 200);
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap();
            // Until hyper has read the instance's close (else the next
            // request could race it, as with any kept connection).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !client
                .senders
                .lock()
                .unwrap()
                .iter()
                .all(SendRequest::is_closed)
            {
                assert!(tokio::time::Instant::now() < deadline, "never closed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert_eq!(heads.lock().unwrap().len(), 3);
        assert!(client.idle_sender().is_none());
        assert!(client.senders.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let error = client(addr).request(get("/")).await.unwrap_err();
        assert!(error.is_connect(), "{error:?}");
    }
}
