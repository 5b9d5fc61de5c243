//! Slow and hostile clients (issue 13, item 4) against a real chatgate:
//! request smuggling over raw HTTP/1.1 and raw HTTP/2 frames, a slowloris
//! head, a silent connection, HTTP/2 stream floods and rapid reset. Every
//! request here carries a valid session, so whatever chatgate lets through
//! would reach the stand-in LibreChat: each case checks the refusal the
//! client sees and that LibreChat received nothing of it.

mod support;

use std::time::Duration;

use bytes::{Buf, BytesMut};
use support::chatgate::{Gate, GateConfig, SignedIn};
use support::client::{self, Alpn, TestClient};
use support::librechat::StandInLibreChat;
use support::supabase::{SigningKind, StandInSupabase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    gate: Gate,
    _supabase: StandInSupabase,
    upstream: StandInLibreChat,
    user: SignedIn,
}

/// A chatgate whose header read timeout is 2 s, so that slow heads are
/// closed quickly; every well-formed head here is sent in one write.
async fn world() -> World {
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let upstream = StandInLibreChat::start("lc-1").await;
    let user = SignedIn::new(&supabase, "ada@acme.example");
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.header_read_timeout = Duration::from_secs(2);
    World {
        gate: Gate::start(config).await,
        _supabase: supabase,
        upstream,
        user,
    }
}

impl World {
    /// Paths of the requests LibreChat received that contain `marker`
    /// (its `/health` probes never do).
    fn forwarded(&self, marker: &str) -> Vec<String> {
        self.upstream
            .requests()
            .into_iter()
            .map(|r| r.path_and_query)
            .filter(|path| path.contains(marker))
            .collect()
    }

    /// A well-formed request on a new connection reaches LibreChat: the
    /// control that makes each "nothing was forwarded" meaningful.
    async fn assert_a_good_request_is_forwarded(&self, alpn: Alpn, path: &str) {
        let mut client = TestClient::connect(self.gate.addr(), alpn).await.unwrap();
        let (status, _, _) = client.get(path, &[self.user.header()]).await;
        assert_eq!(status, 200, "{path} {alpn:?}");
        assert_eq!(self.forwarded(path), [path]);
    }
}

/// The status of the first response in `raw`, if any.
fn first_status(raw: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(raw).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn responses(raw: &[u8]) -> usize {
    String::from_utf8_lossy(raw).matches("HTTP/1.1 ").count()
}

// ---------------------------------------------------------------- HTTP/1.1

#[tokio::test]
async fn obfuscated_transfer_encodings_and_conflicting_lengths_get_400_and_reach_nobody() {
    let w = world().await;
    let cookie = &w.user.cookie;
    // (case, the headers that make the request ambiguous)
    let cases: [(&str, &str); 14] = [
        ("te-xchunked", "Transfer-Encoding: xchunked\r\n"),
        (
            "te-chunked-identity",
            "Transfer-Encoding: chunked, identity\r\n",
        ),
        ("te-identity", "Transfer-Encoding: identity\r\n"),
        (
            "te-two-lines",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
        ("te-space-before-colon", "Transfer-Encoding : chunked\r\n"),
        ("te-folded", "Transfer-Encoding:\r\n chunked\r\n"),
        ("te-vertical-tab", "Transfer-Encoding: \x0bchunked\r\n"),
        ("te-leading-space-line", " Transfer-Encoding: chunked\r\n"),
        (
            "cl-two-values",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
        ),
        ("cl-list", "Content-Length: 5, 6\r\n"),
        ("cl-plus", "Content-Length: +5\r\n"),
        ("cl-negative", "Content-Length: -5\r\n"),
        ("header-nul", "X-Note: a\0b\r\n"),
        ("header-bare-cr", "X-Note: a\rb\r\n"),
    ];
    for (case, headers) in cases {
        let path = format!("/api/hostile/{case}");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n{headers}\r\n\
             0\r\n\r\nGET /api/hostile/smuggled-{case} HTTP/1.1\r\nHost: localhost\r\n\
             Cookie: {cookie}\r\n\r\n"
        );
        let raw = client::raw_exchange_tls(w.gate.addr(), request.as_bytes()).await;
        assert_eq!(
            first_status(&raw),
            Some(400),
            "{case}: {}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(responses(&raw), 1, "{case}: one answer, then closed");
    }
    // The same over HTTP/1.0, where Transfer-Encoding does not exist.
    let request = format!(
        "POST /api/hostile/te-http10 HTTP/1.0\r\nHost: localhost\r\nCookie: {cookie}\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let raw = client::raw_exchange_tls(w.gate.addr(), request.as_bytes()).await;
    assert_eq!(
        first_status(&raw),
        Some(400),
        "{}",
        String::from_utf8_lossy(&raw)
    );

    assert_eq!(w.forwarded("/api/hostile/"), Vec::<String>::new());
    w.assert_a_good_request_is_forwarded(Alpn::H1, "/api/hostile/control")
        .await;
}

/// RFC 9112 section 6.3: with both, `Transfer-Encoding` wins and the
/// connection closes after the response. hyper drops the `Content-Length`,
/// so LibreChat gets the chunked body alone, and the request hidden after
/// the body (what a front end reading `Content-Length` would have seen as
/// the body) is never read.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_read_by_chunks_and_the_rest_is_never_read() {
    let w = world().await;
    let cookie = &w.user.cookie;
    for (case, headers) in [
        (
            "cl-then-te",
            "Content-Length: 44\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "te-then-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 44\r\n",
        ),
    ] {
        let path = format!("/api/hostile/{case}");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n{headers}\r\n\
             0\r\n\r\nGET /api/hostile/smuggled-{case} HTTP/1.1\r\nHost: localhost\r\n\
             Cookie: {cookie}\r\n\r\n"
        );
        let raw = client::raw_exchange_tls(w.gate.addr(), request.as_bytes()).await;
        let text = String::from_utf8_lossy(&raw);
        assert_eq!(responses(&raw), 1, "{case}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{case}: the connection must close after the response: {text}"
        );
        assert_eq!(w.forwarded(&path), std::slice::from_ref(&path), "{case}");
        let received = w
            .upstream
            .requests()
            .into_iter()
            .find(|r| r.path_and_query == path)
            .unwrap();
        assert_eq!(
            received.header("content-length"),
            None,
            "{case}: the client's Content-Length reached LibreChat"
        );
    }
    assert_eq!(w.forwarded("smuggled"), Vec::<String>::new());
}

#[tokio::test]
async fn a_head_sent_a_line_at_a_time_too_slowly_gets_the_connection_closed() {
    let w = world().await;
    let mut tls = client::tls_connect(w.gate.addr(), b"http/1.1")
        .await
        .unwrap();
    let head = format!(
        "GET /api/hostile/slowloris HTTP/1.1\r\nHost: localhost\r\nCookie: {}\r\n",
        w.user.cookie
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // One more header line every 200 ms, never the blank line that ends
    // the head: slowloris. The bound only stops a broken test.
    let mut buf = [0u8; 1024];
    let mut closed = false;
    for line in 0..600 {
        let trickle = format!("X-Slow-{line}: x\r\n");
        if tls.write_all(trickle.as_bytes()).await.is_err() || tls.flush().await.is_err() {
            closed = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => panic!(
                "an answer to a head never finished: {}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(_still_open) => {}
        }
    }
    assert!(closed, "a head trickled for 2 minutes kept its connection");
    assert_eq!(w.forwarded("slowloris"), Vec::<String>::new());
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed() {
    let w = world().await;
    let mut tls = client::tls_connect(w.gate.addr(), b"http/1.1")
        .await
        .unwrap();
    // Silent: nothing written. The server must close it (EOF or an error);
    // the bound only stops a broken test.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(120), tls.read(&mut buf)).await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", &buf[..n]),
        Err(_) => panic!("a silent connection stayed open for 2 minutes"),
    }
    // Another connection, which does send, is served as usual.
    w.assert_a_good_request_is_forwarded(Alpn::H1, "/api/hostile/after-silence")
        .await;
}

// ------------------------------------------------------------------ HTTP/2

/// A raw HTTP/2 client over TLS: frames written by hand (HPACK literals
/// without Huffman), so that it can send what no HTTP/2 library would.
mod raw_h2 {
    use super::*;

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const CONTINUATION: u8 = 0x9;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    /// What became of a stream, as the server said it.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Outcome {
        /// A response head (the header block, HPACK-encoded).
        Answered,
        Reset(u32),
        /// The whole connection: `GOAWAY` with this code.
        GoAway(u32),
        Closed,
    }

    impl Outcome {
        /// Refused: the stream reset, or the connection ended.
        pub fn is_refusal(&self) -> bool {
            !matches!(self, Outcome::Answered)
        }
    }

    pub struct Conn {
        tls: client::TlsStream,
        read: BytesMut,
        pub settings: Vec<(u16, u32)>,
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1).
    fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
        let max = (1usize << n) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        value -= max;
        while value >= 128 {
            out.push((value % 128 + 128) as u8);
            value /= 128;
        }
        out.push(value as u8);
    }

    /// A header block of "literal without indexing, new name" fields: the
    /// bytes go on the wire exactly as given.
    pub fn header_block(fields: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0x00);
            integer(&mut out, 0x00, 7, name.len());
            out.extend_from_slice(name.as_bytes());
            integer(&mut out, 0x00, 7, value.len());
            out.extend_from_slice(value);
        }
        out
    }

    /// `:method`, `:scheme`, `:authority`, `:path`, then `extra`.
    pub fn request(method: &str, path: &[u8], extra: &[(&str, &[u8])]) -> Vec<u8> {
        let mut fields: Vec<(&str, &[u8])> = vec![
            (":method", method.as_bytes()),
            (":scheme", b"https"),
            (":authority", b"localhost"),
            (":path", path),
        ];
        fields.extend_from_slice(extra);
        header_block(&fields)
    }

    /// One field as "literal with incremental indexing, new name": the
    /// first in the server's dynamic table, later blocks on the same
    /// connection name it with the single byte [`FIRST_DYNAMIC_ENTRY`].
    pub fn indexed_literal(name: &str, value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x40];
        integer(&mut out, 0x00, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        integer(&mut out, 0x00, 7, value.len());
        out.extend_from_slice(value);
        out
    }

    /// The indexed field for dynamic table entry 62, the newest.
    pub const FIRST_DYNAMIC_ENTRY: u8 = 0x80 | 62;

    pub fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, block)
    }

    pub fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
        frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, bytes)
    }

    pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    impl Conn {
        /// TLS with ALPN h2, the preface, empty SETTINGS, and the server's
        /// SETTINGS read (and acknowledged).
        pub async fn open(gate: &Gate) -> Conn {
            let tls = client::tls_connect(gate.addr(), b"h2").await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let mut conn = Conn {
                tls,
                read: BytesMut::new(),
                settings: Vec::new(),
            };
            conn.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            conn.send(&frame(SETTINGS, 0, 0, &[])).await;
            loop {
                let frame = conn.next().await.expect("the server's SETTINGS");
                if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                    conn.settings = frame
                        .payload
                        .chunks_exact(6)
                        .map(|s| {
                            (
                                u16::from_be_bytes([s[0], s[1]]),
                                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                            )
                        })
                        .collect();
                    break;
                }
            }
            conn
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            // The server may already have closed: what it sent still counts.
            let _ = self.tls.write_all(bytes).await;
            let _ = self.tls.flush().await;
        }

        /// The next frame; `None` once the connection is closed. SETTINGS
        /// and PING are acknowledged on the way.
        pub async fn next(&mut self) -> Option<Frame> {
            loop {
                if self.read.len() >= 9 {
                    let len =
                        u32::from_be_bytes([0, self.read[0], self.read[1], self.read[2]]) as usize;
                    if self.read.len() >= 9 + len {
                        let head = self.read.split_to(9);
                        let payload = self.read.split_to(len).to_vec();
                        let frame = Frame {
                            kind: head[3],
                            flags: head[4],
                            stream: (&head[5..9]).get_u32() & 0x7fff_ffff,
                            payload,
                        };
                        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
                            self.send(&super::raw_h2::frame(SETTINGS, ACK, 0, &[]))
                                .await;
                        }
                        if frame.kind == PING && frame.flags & ACK == 0 {
                            let pong = super::raw_h2::frame(PING, ACK, 0, &frame.payload);
                            self.send(&pong).await;
                        }
                        return Some(frame);
                    }
                }
                let mut buf = [0u8; 16 * 1024];
                let n = match tokio::time::timeout(Duration::from_secs(60), self.tls.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => 0,
                    Err(_) => panic!("the server said nothing for 60 s"),
                };
                if n == 0 {
                    return None;
                }
                self.read.extend_from_slice(&buf[..n]);
            }
        }

        /// Reads until the server answers, resets or gives up on `stream`.
        pub async fn outcome(&mut self, stream: u32) -> Outcome {
            while let Some(frame) = self.next().await {
                match frame.kind {
                    HEADERS if frame.stream == stream => return Outcome::Answered,
                    RST_STREAM if frame.stream == stream => {
                        return Outcome::Reset(u32::from_be_bytes(
                            frame.payload[..4].try_into().unwrap(),
                        ))
                    }
                    GOAWAY => {
                        return Outcome::GoAway(u32::from_be_bytes(
                            frame.payload[4..8].try_into().unwrap(),
                        ))
                    }
                    _ => {}
                }
            }
            Outcome::Closed
        }
    }
}

use raw_h2::{Conn, Outcome};

#[tokio::test]
async fn http2_header_values_with_cr_lf_or_nul_are_refused_and_reach_nobody() {
    let w = world().await;
    let cookie = w.user.cookie.as_bytes();
    let cases: [(&str, &[u8], &[u8]); 8] = [
        ("value-cr", b"/api/hostile/h2-value-cr", b"a\rb"),
        ("value-lf", b"/api/hostile/h2-value-lf", b"a\nb"),
        (
            "value-crlf",
            b"/api/hostile/h2-value-crlf",
            b"a\r\nx-smuggled: 1",
        ),
        ("value-nul", b"/api/hostile/h2-value-nul", b"a\0b"),
        (
            "path-crlf",
            b"/api/hostile/h2-path-crlf HTTP/1.1\r\nx: y",
            b"ok",
        ),
        ("path-nul", b"/api/hostile/h2-path-nul\0", b"ok"),
        ("path-space", b"/api/hostile/h2-path space", b"ok"),
        ("path-lf", b"/api/hostile/h2-path-lf\nGET /x", b"ok"),
    ];
    for (case, path, value) in cases {
        let mut conn = Conn::open(&w.gate).await;
        let block = raw_h2::request("GET", path, &[("cookie", cookie), ("x-note", value)]);
        conn.send(&raw_h2::headers(1, &block, true)).await;
        let outcome = conn.outcome(1).await;
        assert!(outcome.is_refusal(), "{case}: {outcome:?}");
    }
    // Connection-specific headers, an upper-case name, `te` other than
    // "trailers": malformed in HTTP/2 (RFC 9113 section 8.2).
    let cases: [(&str, &str, &[u8]); 5] = [
        ("transfer-encoding", "transfer-encoding", b"chunked"),
        ("connection", "connection", b"keep-alive"),
        ("upgrade", "upgrade", b"websocket"),
        ("te", "te", b"gzip"),
        ("upper-case", "X-Note", b"1"),
    ];
    for (case, name, value) in cases {
        let mut conn = Conn::open(&w.gate).await;
        let path = format!("/api/hostile/h2-{case}");
        let block = raw_h2::request("GET", path.as_bytes(), &[("cookie", cookie), (name, value)]);
        conn.send(&raw_h2::headers(1, &block, true)).await;
        let outcome = conn.outcome(1).await;
        assert!(outcome.is_refusal(), "{case}: {outcome:?}");
    }
    assert_eq!(w.forwarded("/api/hostile/"), Vec::<String>::new());
    w.assert_a_good_request_is_forwarded(Alpn::H2, "/api/hostile/h2-control")
        .await;
}

#[tokio::test]
async fn http2_content_length_that_disagrees_with_the_data_resets_the_stream() {
    let w = world().await;
    let cookie = w.user.cookie.as_bytes();
    // (case, content-length, data frames)
    type Case<'a> = (&'a str, &'a [u8], &'a [&'a [u8]]);
    let cases: [Case<'_>; 4] = [
        ("longer", b"5", &[b"0123456789"]),
        ("longer-later", b"5", &[b"012", b"345"]),
        ("shorter", b"100", &[b"0123456789"]),
        ("two-lengths", b"10", &[b"0123456789"]),
    ];
    for (case, length, frames) in cases {
        let mut conn = Conn::open(&w.gate).await;
        // A path the stand-in echoes bodies on; the policy does not read it.
        let path = format!("/api/hostile/h2-cl-{case}");
        let mut extra: Vec<(&str, &[u8])> = vec![
            ("cookie", cookie),
            ("content-type", b"application/octet-stream"),
            ("content-length", length),
        ];
        if case == "two-lengths" {
            extra.push(("content-length", b"11"));
        }
        let block = raw_h2::request("POST", path.as_bytes(), &extra);
        let mut bytes = raw_h2::headers(1, &block, false);
        for (i, data) in frames.iter().enumerate() {
            bytes.extend(raw_h2::data(1, data, i + 1 == frames.len()));
        }
        conn.send(&bytes).await;
        let outcome = conn.outcome(1).await;
        assert!(
            matches!(
                outcome,
                Outcome::Reset(raw_h2::PROTOCOL_ERROR) | Outcome::GoAway(_) | Outcome::Closed
            ),
            "{case}: {outcome:?}"
        );
    }
    // What LibreChat may have seen of them is a head whose body broke off,
    // never a complete request.
    for request in w.upstream.requests() {
        if request.path_and_query.contains("/api/hostile/h2-cl-") {
            assert!(
                request.path_and_query.ends_with("-longer")
                    || request.path_and_query.ends_with("-longer-later")
                    || request.path_and_query.ends_with("-shorter"),
                "{}",
                request.path_and_query
            );
        }
    }
    w.assert_a_good_request_is_forwarded(Alpn::H2, "/api/hostile/h2-cl-control")
        .await;
}

#[tokio::test]
async fn http2_streams_beyond_the_advertised_limit_are_refused() {
    let w = world().await;
    let mut conn = Conn::open(&w.gate).await;
    let limit = conn
        .settings
        .iter()
        .find(|(id, _)| *id == raw_h2::SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, value)| *value)
        .expect("chatgate advertises SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(limit, 256);
    // `limit` server-sent event streams that LibreChat holds open, then
    // eight more: those are refused.
    let cookie = w.user.cookie.as_bytes();
    let block = raw_h2::request("GET", b"/sse?events=1", &[("cookie", cookie)]);
    let mut bytes = Vec::new();
    let extra = 8;
    for i in 0..limit + extra {
        bytes.extend(raw_h2::headers(1 + 2 * i, &block, true));
    }
    conn.send(&bytes).await;
    let mut refused = Vec::new();
    let mut answered = 0;
    while answered + refused.len() < (limit + extra) as usize {
        let frame = conn.next().await.expect("connection open");
        match frame.kind {
            raw_h2::HEADERS => answered += 1,
            raw_h2::RST_STREAM => {
                let code = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
                assert_eq!(code, raw_h2::REFUSED_STREAM, "stream {}", frame.stream);
                refused.push(frame.stream);
            }
            raw_h2::GOAWAY => panic!("GOAWAY: {:?}", frame.payload),
            _ => {}
        }
    }
    assert_eq!(refused.len(), extra as usize, "refused: {refused:?}");
    assert_eq!(answered, limit as usize);
    assert!(w.forwarded("/sse").len() <= limit as usize);
    w.upstream.release_sse(1);
}

#[tokio::test]
async fn http2_rapid_reset_ends_the_connection() {
    let w = world().await;
    let mut conn = Conn::open(&w.gate).await;
    let cookie = w.user.cookie.as_bytes();
    let request = raw_h2::request("GET", b"/api/hostile/rapid-reset", &[]);
    // Open a stream and cancel it at once, again and again (CVE-2023-44487).
    // The session cookie is sent once and then named by its table index.
    let floods = 5_000u32;
    let mut bytes = Vec::new();
    for i in 0..floods {
        let stream = 1 + 2 * i;
        let mut block = request.clone();
        if i == 0 {
            block.extend(raw_h2::indexed_literal("cookie", cookie));
        } else {
            block.push(raw_h2::FIRST_DYNAMIC_ENTRY);
        }
        bytes.extend(raw_h2::headers(stream, &block, true));
        bytes.extend(raw_h2::rst_stream(stream, 0x8));
    }
    conn.send(&bytes).await;
    let mut goaway = None;
    while let Some(frame) = conn.next().await {
        if frame.kind == raw_h2::GOAWAY {
            goaway = Some(u32::from_be_bytes(frame.payload[4..8].try_into().unwrap()));
        }
    }
    assert_eq!(goaway, Some(raw_h2::ENHANCE_YOUR_CALM));
    let forwarded = w.forwarded("rapid-reset").len();
    assert!(
        forwarded < 100,
        "{forwarded} of {floods} cancelled requests reached LibreChat"
    );
    w.assert_a_good_request_is_forwarded(Alpn::H2, "/api/hostile/after-reset")
        .await;
}

#[tokio::test]
async fn http2_header_block_continued_without_end_is_cut_off() {
    let w = world().await;
    let mut conn = Conn::open(&w.gate).await;
    let cookie = w.user.cookie.as_bytes();
    // A request head that never ends: CONTINUATION frames of well-formed
    // fields, none with END_HEADERS (CVE-2024-27316's flood), 8 MiB in all.
    let block = raw_h2::request("GET", b"/api/hostile/continuation", &[("cookie", cookie)]);
    let mut bytes = raw_h2::frame(raw_h2::HEADERS, raw_h2::END_STREAM, 1, &block);
    let filler = "f".repeat(100);
    let fields: Vec<(&str, &[u8])> = (0..80).map(|_| ("x-filler", filler.as_bytes())).collect();
    let continuation = raw_h2::header_block(&fields);
    for _ in 0..1000 {
        bytes.extend(raw_h2::frame(raw_h2::CONTINUATION, 0, 1, &continuation));
    }
    conn.send(&bytes).await;
    let outcome = conn.outcome(1).await;
    assert!(
        matches!(
            outcome,
            Outcome::GoAway(_) | Outcome::Closed | Outcome::Reset(_)
        ),
        "{outcome:?}"
    );
    assert_eq!(w.forwarded("continuation"), Vec::<String>::new());
    w.assert_a_good_request_is_forwarded(Alpn::H2, "/api/hostile/after-continuation")
        .await;
}

// ------------------------------------------------- out of file descriptors

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    utime + stime
}

fn clock_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The binary, with its descriptor limit lowered (in its own shell, never
/// in the test process), is flooded with connections until `accept` fails
/// with EMFILE: it backs off instead of spinning a core, and serves again
/// once the flood is gone.
#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_recovers() {
    support::init_crypto();
    let upstream = StandInLibreChat::start("lc-1").await;
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut config = GateConfig::new(&[upstream.url()]);
    config.listen = format!("127.0.0.1:{port}");
    let config_path = config.write(dir.path());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log_path = dir.path().join("chatgate.log");
    let log = std::fs::File::create(&log_path).unwrap();

    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_chatgate"))
        .arg(&config_path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("chatgate starts");
    let pid = child.id();
    let ready = move || async move {
        match TestClient::connect(addr, Alpn::H1).await {
            Ok(mut c) => c.get("/healthz", &[]).await.0 == 200,
            Err(_) => false,
        }
    };
    support::chatgate::eventually("chatgate answers /healthz", ready).await;

    // Plain TCP connections that never start TLS: each holds one of
    // chatgate's descriptors until the handshake times out.
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let logged = |needle: &'static str| {
        let log_path = log_path.clone();
        move || {
            let log_path = log_path.clone();
            async move {
                std::fs::read_to_string(&log_path)
                    .unwrap_or_default()
                    .contains(needle)
            }
        }
    };
    support::chatgate::eventually(
        "accept fails for want of descriptors",
        logged("accept failed"),
    )
    .await;

    // While it cannot accept: a measurement window, not synchronisation.
    let window = Duration::from_secs(2);
    let before = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - before;
    let budget = clock_ticks_per_second() * window.as_secs() / 4;
    assert!(
        used < budget,
        "chatgate used {used} ticks of CPU in {window:?} while out of descriptors (a spinning accept loop)"
    );

    drop(flood);
    support::chatgate::eventually("chatgate serves again", ready).await;
    support::chatgate::eventually(
        "the recovery is logged",
        logged("accepting connections again"),
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
}
