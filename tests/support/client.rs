//! Test clients that talk to chatgate (or a stand-in) on real sockets: HTTP/1.1 and HTTP/2
//! over TLS with a chosen ALPN, plain HTTP/1.1, raw TLS bytes and WebSocket over TLS.
#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response as WsResponse;
use tokio_tungstenite::WebSocketStream;

/// Request body type of every client here.
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, io::Error>;

/// A client-side TLS connection to chatgate.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A WebSocket over TLS, as [`websocket_tls`] returns it.
pub type WsTls = WebSocketStream<TlsStream>;

/// The SNI name and default `Host`/`:authority` the TLS clients use.
pub const SERVER_NAME: &str = "localhost";

pub fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A request body the test writes piece by piece: each `send` is one frame, dropping the
/// sender ends the body.
pub fn streaming_body() -> (mpsc::Sender<Bytes>, BoxBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody(rx).boxed())
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// Which protocol [`TestClient::connect`] offers in ALPN (and only that one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    H1,
    H2,
}

impl Alpn {
    fn protocol(self) -> &'static [u8] {
        match self {
            Alpn::H1 => b"http/1.1",
            Alpn::H2 => b"h2",
        }
    }
}

enum Sender {
    H1(http1::SendRequest<BoxBody>),
    H2(http2::SendRequest<BoxBody>),
}

/// One TLS connection to chatgate speaking HTTP/1.1 or HTTP/2. The connection is driven by a
/// spawned task that ends once the client and every response body it returned are dropped.
pub struct TestClient {
    sender: Sender,
    alpn: Option<Vec<u8>>,
}

impl TestClient {
    /// Connects over TLS (SNI `localhost`, any certificate accepted) offering only `alpn`;
    /// fails if the server did not negotiate it.
    pub async fn connect(addr: SocketAddr, alpn: Alpn) -> io::Result<TestClient> {
        Self::open(None, addr, alpn).await
    }

    /// Like [`TestClient::connect`], from `source` (any 127.0.0.0/8 address works on
    /// loopback): a proxy in front of chatgate then sees a client other than itself.
    pub async fn connect_from(
        source: IpAddr,
        addr: SocketAddr,
        alpn: Alpn,
    ) -> io::Result<TestClient> {
        Self::open(Some(source), addr, alpn).await
    }

    async fn open(source: Option<IpAddr>, addr: SocketAddr, alpn: Alpn) -> io::Result<TestClient> {
        let tls = tls_connect_from(source, addr, alpn.protocol()).await?;
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if negotiated.as_deref() != Some(alpn.protocol()) {
            return Err(io::Error::other(format!(
                "{addr} negotiated ALPN {:?}, asked for {:?}",
                negotiated.as_deref().map(String::from_utf8_lossy),
                String::from_utf8_lossy(alpn.protocol()),
            )));
        }
        let io = TokioIo::new(tls);
        let sender = match alpn {
            Alpn::H1 => {
                let (sender, conn) = http1::handshake(io).await.map_err(io::Error::other)?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                Sender::H1(sender)
            }
            Alpn::H2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(io::Error::other)?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Sender::H2(sender)
            }
        };
        Ok(TestClient {
            sender,
            alpn: negotiated,
        })
    }

    pub fn negotiated_alpn(&self) -> Option<Vec<u8>> {
        self.alpn.clone()
    }

    /// True once the server (or an error) closed the connection.
    pub fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::H1(sender) => sender.is_closed(),
            Sender::H2(sender) => sender.is_closed(),
        }
    }

    /// Sends `req` and returns the response as soon as its head arrives; the body streams.
    /// HTTP/1.1: adds `Host: localhost` when absent. HTTP/2: a relative URI becomes
    /// `https://<Host header or localhost><path>` (the `Host` header is removed), so
    /// `:authority` is sent.
    pub async fn send(&mut self, mut req: Request<BoxBody>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::H1(sender) => {
                if !req.headers().contains_key(HOST) {
                    req.headers_mut()
                        .insert(HOST, HeaderValue::from_static(SERVER_NAME));
                }
                *req.version_mut() = Version::HTTP_11;
                sender.ready().await?;
                sender.send_request(req).await
            }
            Sender::H2(sender) => {
                if req.uri().authority().is_none() {
                    let authority = req
                        .headers_mut()
                        .remove(HOST)
                        .and_then(|host| host.to_str().ok().map(str::to_owned))
                        .unwrap_or_else(|| SERVER_NAME.to_owned());
                    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                    *req.uri_mut() = format!("https://{authority}{path}")
                        .parse()
                        .expect("absolute URI");
                }
                *req.version_mut() = Version::HTTP_2;
                sender.ready().await?;
                sender.send_request(req).await
            }
        }
    }

    /// `GET path` with `headers`; panics on a transport error.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Bytes) {
        self.request(Method::GET, path, headers, Bytes::new()).await
    }

    /// Any method with a whole body (empty = no body); panics on a transport error.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let req = build_request(method.clone(), path, headers, body.into());
        let res = self
            .send(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        collect(res).await
    }
}

/// Builds a request from parts; an empty body is sent as no body.
pub fn build_request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<BoxBody> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = if body.is_empty() { empty() } else { full(body) };
    builder
        .body(body)
        .unwrap_or_else(|e| panic!("bad test request {path} {headers:?}: {e}"))
}

/// Reads a whole response; panics if the body fails.
pub async fn collect(res: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("response body ({}): {e}", parts.status))
        .to_bytes();
    (parts.status, parts.headers, body)
}

/// Sends one request over a new plain-TCP HTTP/1.1 connection (`Host: <addr>` when absent)
/// and returns the streaming response.
pub async fn plain_send(addr: SocketAddr, req: Request<BoxBody>) -> io::Result<Response<Incoming>> {
    plain_send_from(None, addr, req).await
}

/// [`plain_send`] from `source` (see [`TestClient::connect_from`]) when given.
pub async fn plain_send_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    mut req: Request<BoxBody>,
) -> io::Result<Response<Incoming>> {
    let tcp = tcp_connect(source, addr).await?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    if !req.headers().contains_key(HOST) {
        let host =
            HeaderValue::from_str(&addr.to_string()).expect("socket address is a header value");
        req.headers_mut().insert(HOST, host);
    }
    sender.send_request(req).await.map_err(io::Error::other)
}

/// One request over plain HTTP/1.1; panics on a transport error.
pub async fn plain_request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let req = build_request(method.clone(), path, headers, body.into());
    let res = plain_send(addr, req)
        .await
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"));
    collect(res).await
}

/// `GET path` over plain HTTP/1.1; panics on a transport error.
pub async fn plain_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    plain_request(addr, Method::GET, path, headers, Bytes::new()).await
}

/// Writes `request_bytes` as-is over TLS (ALPN http/1.1) and returns everything read until
/// the server closes or 5 s pass. Send `Connection: close` when the request is well formed.
pub async fn raw_exchange_tls(addr: SocketAddr, request_bytes: &[u8]) -> Vec<u8> {
    let mut tls = tls_connect(addr, b"http/1.1")
        .await
        .unwrap_or_else(|e| panic!("TLS connect to {addr}: {e}"));
    // The server may answer and close before reading everything; what it sent still counts.
    let _ = tls.write_all(request_bytes).await;
    let _ = tls.flush().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
        received.extend_from_slice(&buf[..n]);
    }
    received
}

/// Opens a WebSocket to `wss://localhost<path>` on `addr` with extra `headers`; panics if the
/// handshake fails.
pub async fn websocket_tls(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> WsTls {
    match try_websocket_tls(addr, path, headers).await {
        Ok((ws, _response)) => ws,
        Err(e) => panic!("WebSocket wss://localhost{path} via {addr}: {e}"),
    }
}

/// Like [`websocket_tls`] but returns the handshake error (a refused upgrade is
/// `tungstenite::Error::Http(response)`) and, on success, the 101 response.
pub async fn try_websocket_tls(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(WsTls, WsResponse), tokio_tungstenite::tungstenite::Error> {
    let tls = tls_connect(addr, b"http/1.1").await?;
    let mut req = format!("wss://{SERVER_NAME}{path}").into_client_request()?;
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
        let value = HeaderValue::from_str(value).expect("header value");
        req.headers_mut().append(name, value);
    }
    tokio_tungstenite::client_async(req, tls).await
}

/// TCP + TLS to `addr` with SNI `localhost`, offering the single ALPN protocol `alpn`.
pub async fn tls_connect(addr: SocketAddr, alpn: &[u8]) -> io::Result<TlsStream> {
    tls_connect_from(None, addr, alpn).await
}

/// [`tls_connect`] from `source` when given.
pub async fn tls_connect_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
    alpn: &[u8],
) -> io::Result<TlsStream> {
    let tcp = tcp_connect(source, addr).await?;
    let server_name = ServerName::try_from(SERVER_NAME).expect("valid server name");
    TlsConnector::from(client_config(alpn))
        .connect(server_name, tcp)
        .await
}

/// TCP to `addr`, bound to `source` when given, without Nagle's delay.
pub async fn tcp_connect(source: Option<IpAddr>, addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = match source {
        None => TcpStream::connect(addr).await?,
        Some(source) => {
            let socket = match source {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(addr).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

fn client_config(alpn: &[u8]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// Accepts chatgate's self-signed dev certificate (test only) but still checks that the
/// handshake was signed by the key of the certificate presented.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
