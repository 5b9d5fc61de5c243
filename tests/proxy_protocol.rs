//! `server.proxy_protocol` (SPEC sections 3 and 14) with a real haproxy in
//! front of chatgate: `send-proxy` and `send-proxy-v2` in `mode tcp` give
//! chatgate the client's address, `trusted_proxies` applies to that
//! address, a connection without a header is closed before anything
//! reaches LibreChat; and haproxy terminating TLS in front of
//! `server.http_listen` has its `X-Forwarded-For` believed only when it is
//! trusted. Clients connect from 127.0.0.2/127.0.0.3 so that the address a
//! header carries differs from haproxy's own (127.0.0.1).

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use http::Method;
use support::chatgate::{Gate, GateConfig, SignedIn};
use support::client::{self, Alpn, TestClient};
use support::haproxy::{Haproxy, SendProxy};
use support::librechat::{Recorded, StandInLibreChat};
use support::supabase::{SigningKind, StandInSupabase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Guards against a hang in a broken build; never a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const OTHER_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// What a client claims in its own `X-Forwarded-For`.
const SPOOFED: &str = "6.6.6.6";

struct World {
    gate: Gate,
    upstream: StandInLibreChat,
    user: SignedIn,
    _supabase: StandInSupabase,
}

/// A chatgate with both listeners, `proxy_protocol` as given, trusting
/// `trusted`, in front of one stand-in LibreChat, and a signed-in user.
async fn world(proxy_protocol: bool, trusted: &[&str]) -> World {
    let upstream = StandInLibreChat::start("lc-1").await;
    let supabase = StandInSupabase::start(SigningKind::Hs256).await;
    let user = SignedIn::new(&supabase, "ada@acme.example");
    let mut config = GateConfig::new(&[upstream.url()]).with_supabase(&supabase);
    config.http_listen = true;
    config.proxy_protocol = proxy_protocol;
    config.trusted_proxies = trusted.iter().map(|s| (*s).to_owned()).collect();
    config.header_read_timeout = Duration::from_secs(1);
    World {
        gate: Gate::start(config).await,
        upstream,
        user,
        _supabase: supabase,
    }
}

impl World {
    /// The request LibreChat received for `path` (its `/health` probes
    /// never match a test's path).
    fn received(&self, path: &str) -> Option<Recorded> {
        self.upstream
            .requests()
            .into_iter()
            .find(|r| r.path_and_query == path)
    }

    /// `GET path` over TLS from `source` to `addr`, with a spoofed
    /// `X-Forwarded-For`; the `X-Forwarded-For` LibreChat got.
    async fn forwarded_for(
        &self,
        source: IpAddr,
        addr: std::net::SocketAddr,
        alpn: Alpn,
        path: &str,
    ) -> String {
        let mut client = TestClient::connect_from(source, addr, alpn)
            .await
            .unwrap_or_else(|e| panic!("connect to {addr} from {source}: {e}"));
        let headers = [self.user.header(), ("x-forwarded-for", SPOOFED)];
        let (status, _, _) = tokio::time::timeout(HANG_GUARD, client.get(path, &headers))
            .await
            .expect("an answer");
        assert_eq!(status, 200, "{path}");
        self.x_forwarded_for(path)
    }

    fn x_forwarded_for(&self, path: &str) -> String {
        let received = self
            .received(path)
            .unwrap_or_else(|| panic!("{path} did not reach LibreChat"));
        received.header_all("x-forwarded-for").join(", ")
    }
}

#[tokio::test]
async fn send_proxy_v1_gives_chatgate_the_clients_address_and_trust_applies_to_it() {
    // haproxy itself (127.0.0.1) is trusted, the client it names is not.
    let w = world(true, &["127.0.0.1/32"]).await;
    let haproxy = Haproxy::tcp(w.gate.addr(), SendProxy::V1).await;

    let xff = w
        .forwarded_for(CLIENT, haproxy.addr(), Alpn::H1, "/pp/v1")
        .await;

    // Without the header chatgate would see 127.0.0.1, trust it, and keep
    // the spoofed chain; the header's address is the untrusted client.
    assert_eq!(xff, "127.0.0.2");
}

#[tokio::test]
async fn send_proxy_v2_gives_chatgate_the_clients_address_and_a_trusted_one_keeps_its_chain() {
    // The client named in the header is itself a trusted proxy.
    let w = world(true, &["127.0.0.2/32"]).await;
    let haproxy = Haproxy::tcp(w.gate.addr(), SendProxy::V2).await;

    let trusted = w
        .forwarded_for(CLIENT, haproxy.addr(), Alpn::H2, "/pp/v2")
        .await;
    let untrusted = w
        .forwarded_for(OTHER_CLIENT, haproxy.addr(), Alpn::H2, "/pp/v2-other")
        .await;

    assert_eq!(trusted, format!("{SPOOFED}, 127.0.0.2"));
    assert_eq!(untrusted, "127.0.0.3");
}

#[tokio::test]
async fn the_plain_listener_takes_the_header_too() {
    let w = world(true, &[]).await;
    let haproxy = Haproxy::tcp(w.gate.http_addr(), SendProxy::V1).await;

    let request = client::build_request(
        Method::GET,
        "/pp/plain",
        &[w.user.header()],
        bytes::Bytes::new(),
    );
    let response = client::plain_send_from(Some(OTHER_CLIENT), haproxy.addr(), request)
        .await
        .expect("an answer through haproxy");
    assert_eq!(response.status(), 200);

    assert_eq!(w.x_forwarded_for("/pp/plain"), "127.0.0.3");
}

#[tokio::test]
async fn a_connection_without_a_header_is_closed_and_nothing_reaches_librechat() {
    let w = world(true, &[]).await;

    // TLS straight to chatgate: the ClientHello is not a PROXY header.
    let direct = tokio::time::timeout(HANG_GUARD, TestClient::connect(w.gate.addr(), Alpn::H1))
        .await
        .expect("the handshake ends");
    assert!(
        direct.is_err(),
        "a TLS handshake without a PROXY header succeeded"
    );

    // Plain HTTP straight to the plain listener.
    let request = client::build_request(
        Method::GET,
        "/pp/direct",
        &[w.user.header()],
        bytes::Bytes::new(),
    );
    let plain = tokio::time::timeout(HANG_GUARD, client::plain_send(w.gate.http_addr(), request))
        .await
        .expect("the exchange ends");
    assert!(
        plain.is_err(),
        "a request without a PROXY header got {plain:?}"
    );

    // A header begun but never finished: closed once the header read
    // timeout (1 s here) is over.
    let mut slow = client::tcp_connect(None, w.gate.http_addr()).await.unwrap();
    slow.write_all(b"PROXY TCP4 192.0.2.7 ").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(HANG_GUARD, slow.read(&mut buf))
        .await
        .expect("closed by chatgate");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    assert!(w.received("/pp/direct").is_none());
    assert!(
        w.upstream
            .requests()
            .iter()
            .all(|r| r.path_and_query == "/health"),
        "{:?}",
        w.upstream.requests()
    );

    // The control: through haproxy, the same listener serves.
    let haproxy = Haproxy::tcp(w.gate.addr(), SendProxy::V2).await;
    let xff = w
        .forwarded_for(CLIENT, haproxy.addr(), Alpn::H1, "/pp/control")
        .await;
    assert_eq!(xff, "127.0.0.2");
}

#[tokio::test]
async fn haproxy_terminating_tls_has_its_x_forwarded_for_believed_only_when_trusted() {
    for (trusted, expected_for, expected_proto) in [
        (
            &["127.0.0.1/32"][..],
            format!("{SPOOFED}, 127.0.0.2, 127.0.0.1"),
            "https",
        ),
        (&[][..], "127.0.0.1".to_owned(), "http"),
    ] {
        let w = world(false, trusted).await;
        let haproxy = Haproxy::https(w.gate.http_addr()).await;

        let xff = w
            .forwarded_for(CLIENT, haproxy.addr(), Alpn::H2, "/lb/tls")
            .await;

        assert_eq!(xff, expected_for, "trusted_proxies = {trusted:?}");
        let received = w.received("/lb/tls").unwrap();
        assert_eq!(
            received.header("x-forwarded-proto"),
            Some(expected_proto),
            "trusted_proxies = {trusted:?}"
        );
    }
}
