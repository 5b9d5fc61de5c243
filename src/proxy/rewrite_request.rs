//! Phase 4: the request LibreChat receives. Hop-by-hop headers go (RFC 9110
//! section 7.6.1); forwarding headers are believed only from trusted
//! proxies; identity headers come from chatgate alone; a hand-off `token` in
//! the query never leaves (SPEC section 8).

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{self, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request};
use hyper::upgrade::OnUpgrade;

use crate::app::App;
use crate::body::RequestBody;
use crate::config::AuthMode;
use crate::context::RequestContext;
use crate::error::ProxyError;
use crate::identify::handoff::without_params;
use crate::identify::user_switch::CHATGATE_COOKIES;
use crate::identity::Identity;
use crate::supabase::cookie::strip_cookies_into;
use crate::trace::TRACEPARENT;

/// Everything `forward` needs to send (and, when safe, re-send) a request.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    /// `None` when the client sent no body: such a request can be re-sent.
    pub body: Option<RequestBody>,
    /// The client side of a protocol upgrade (WebSocket), when one was asked.
    pub upgrade: Option<OnUpgrade>,
}

/// Hop-by-hop headers of RFC 9110 section 7.6.1, plus the non-standard ones
/// proxies commonly meet.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_CHATGATE_USER_ID: HeaderName = HeaderName::from_static("x-chatgate-user-id");
static X_CHATGATE_ORG_ID: HeaderName = HeaderName::from_static("x-chatgate-org-id");
static X_CHATGATE_ROLE: HeaderName = HeaderName::from_static("x-chatgate-role");
/// LibreChat's multi-tenancy header (SPEC sections 7 and 8).
pub static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");

/// Header prefixes only chatgate may send upstream (SPEC section 8).
const RESERVED_PREFIXES: [&str; 3] = ["x-chatgate-", "x-user-", "x-organization-"];

pub fn rewrite(
    app: &App,
    ctx: &RequestContext,
    identity: &Identity,
    request: Request<RequestBody>,
) -> Result<UpstreamRequest, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let upgrade = take_upgrade(&mut parts);
    let path_and_query = rewrite_head(app, ctx, identity, &mut parts, upgrade.is_some())?;
    let body = (!body.is_empty()).then_some(body);
    Ok(UpstreamRequest {
        method: parts.method,
        path_and_query,
        headers: parts.headers,
        body,
        upgrade,
    })
}

/// The head's part of `rewrite`: the headers LibreChat gets and the path
/// and query without `token`. `upgrading`: the client's upgrade was taken.
pub fn rewrite_head(
    app: &App,
    ctx: &RequestContext,
    identity: &Identity,
    parts: &mut http::request::Parts,
    upgrading: bool,
) -> Result<PathAndQuery, ProxyError> {
    let host = original_host(parts);
    let peer = ctx.conn.peer.ip();
    let client = ClientSide {
        peer,
        trusted: is_trusted(app, peer),
        tls: ctx.conn.tls,
        host,
        upgrading,
        session_cookie: &app.supabase.cookie_name,
    };
    let headers = &mut parts.headers;
    scrub_client_headers(headers, client);
    headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    // LibreChat's spans join the caller's trace under chatgate's span.
    headers.insert(TRACEPARENT.clone(), ctx.trace.header());
    set_identity_headers(headers, identity);
    if app.config.librechat.tenant_header {
        if let Some(id) = identity.organization().id_header() {
            headers.insert(X_TENANT_ID.clone(), id.clone());
        }
    }
    if app.config.librechat.auth_mode == AuthMode::Jwt {
        // jwt mode: LibreChat trusts chatgate's token, never the client's bearer.
        let minted = app
            .librechat_tokens
            .for_identity(identity)
            .map_err(|e| ProxyError::AuthUnavailable(e.to_string()))?;
        let value = HeaderValue::from_str(&format!("Bearer {}", minted.token))
            .map_err(|_| ProxyError::AuthUnavailable("unusable token".to_owned()))?;
        headers.insert(header::AUTHORIZATION, value);
    }

    without_token_param(&parts.uri)
}

/// What `scrub_client_headers` needs to know of the connection and config.
#[derive(Debug, Clone)]
pub struct ClientSide<'a> {
    pub peer: IpAddr,
    /// The peer is one of `server.trusted_proxies`.
    pub trusted: bool,
    pub tls: bool,
    /// The `Host` (or HTTP/2 `:authority`) the client asked for.
    pub host: Option<HeaderValue>,
    /// The client's upgrade was taken (see `rewrite`).
    pub upgrading: bool,
    /// `supabase.cookie_name`.
    pub session_cookie: &'a str,
}

/// The part of `rewrite_head` that depends only on what the client sent:
/// hop-by-hop headers, `Host`, reserved identity prefixes, the client's
/// `X-Tenant-Id`, forwarding headers from untrusted peers, and the session
/// cookies all go; `X-Forwarded-*` are set. Public for the fuzz target.
pub fn scrub_client_headers(headers: &mut HeaderMap, client: ClientSide<'_>) {
    let upgrade_protocol = client
        .upgrading
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    // One pass over the names finds what goes: hop-by-hop headers, `Host`
    // (hyper writes the upstream's), the reserved identity prefixes, a
    // client's own `X-Tenant-Id` (only chatgate names the tenant), and
    // forwarding headers an untrusted peer sent.
    remove_named_by_connection(headers);
    let trusted = client.trusted;
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name) || is_client_forbidden(name, trusted))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade_protocol {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    set_forwarding_headers(
        headers,
        client.trusted,
        client.peer,
        client.tls,
        client.host,
    );
    strip_session_cookies(headers, client.session_cookie);
}

/// The client's half of an `Upgrade` (HTTP/1.1 only; HTTP/2 has none).
fn take_upgrade(parts: &mut http::request::Parts) -> Option<OnUpgrade> {
    let asks_upgrade = parts.headers.contains_key(header::UPGRADE)
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"));
    if !asks_upgrade {
        return None;
    }
    parts.extensions.remove::<OnUpgrade>()
}

fn original_host(parts: &http::request::Parts) -> Option<HeaderValue> {
    if let Some(authority) = parts.uri.authority() {
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    parts.headers.get(header::HOST).cloned()
}

pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_named_by_connection(headers);
    // One pass over the names notes which hop-by-hop names are there; only
    // those are removed. Most heads carry none, an upstream's response
    // usually `Connection` alone: not a lookup for each of the nine.
    let present = headers
        .keys()
        .filter_map(hop_by_hop_index)
        .fold(0u16, |bits, i| bits | 1 << i);
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(name);
        }
    }
}

/// Headers named in `Connection` are hop-by-hop too. `close` and the
/// hop-by-hop names themselves (`keep-alive`) go anyway, so they are
/// neither parsed into names nor looked up here.
fn remove_named_by_connection(headers: &mut HeaderMap) {
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|name| token.eq_ignore_ascii_case(name.as_str()))
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in &named {
        headers.remove(name);
    }
}

/// Where `name` is in `HOP_BY_HOP`, if it is.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    // The lengths of the names in HOP_BY_HOP: most names are ruled out here.
    if !matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) {
        return None;
    }
    HOP_BY_HOP.iter().position(|hop| hop == name)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some()
}

/// What a client may not send LibreChat: `Host`, the reserved prefixes,
/// `X-Tenant-Id`, and, from an untrusted peer, forwarding headers.
fn is_client_forbidden(name: &HeaderName, trusted: bool) -> bool {
    let text = name.as_str();
    name == header::HOST
        || RESERVED_PREFIXES.iter().any(|p| text.starts_with(p))
        || *name == X_TENANT_ID
        || (!trusted
            && (text.starts_with("x-forwarded-") || *name == FORWARDED || *name == X_REAL_IP))
}

/// SPEC section 8: who the user is, said by chatgate alone (client-sent
/// headers with these prefixes are already gone).
fn set_identity_headers(headers: &mut HeaderMap, identity: &Identity) {
    let pairs = [
        (&X_CHATGATE_USER_ID, Some(identity.user_id())),
        (&X_CHATGATE_ROLE, identity.role()),
    ];
    for (name, value) in pairs {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name.clone(), value);
        }
    }
    if let Some(id) = identity.organization().id_header() {
        headers.insert(X_CHATGATE_ORG_ID.clone(), id.clone());
    }
}

/// Removes the Supabase session chunks and `chatgate_session` from `Cookie`
/// (SPEC section 13: Supabase tokens never reach LibreChat). HTTP/2 clients
/// may send one `Cookie` header per cookie; HTTP/1.1 upstreams get them
/// joined into one (RFC 9113 section 8.2.3).
fn strip_session_cookies(headers: &mut HeaderMap, session_cookie: &str) {
    let mut kept = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        strip_cookies_into(
            value.as_bytes(),
            session_cookie,
            CHATGATE_COOKIES,
            &mut kept,
        );
    }
    headers.remove(header::COOKIE);
    if kept.is_empty() {
        return;
    }
    // Taken over as it is (no copy): its bytes came from header values.
    if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)) {
        headers.insert(header::COOKIE, value);
    }
}

fn is_trusted(app: &App, peer: IpAddr) -> bool {
    let peer = canonical(peer);
    app.config
        .server
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&peer))
}

/// IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn set_forwarding_headers(
    headers: &mut HeaderMap,
    trusted: bool,
    peer: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
) {
    let mut text = String::with_capacity(15);
    crate::logging::push_ip(&mut text, canonical(peer));
    let peer = text;
    if trusted {
        // Append the peer to the chain the trusted proxy sent.
        let mut chain = BytesMut::new();
        for value in headers.get_all(&X_FORWARDED_FOR) {
            if !chain.is_empty() {
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(value.as_bytes());
        }
        if !chain.is_empty() {
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(peer.as_bytes());
        if let Ok(value) = HeaderValue::from_maybe_shared(chain.freeze()) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    } else {
        // The peer's own forwarding headers are already gone (`scrub_client_headers`).
        if let Ok(value) = HeaderValue::from_str(&peer) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = if tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
}

/// The path and query without any `token` parameter: a hand-off token is
/// chatgate's business and must never reach LibreChat (SPEC section 13).
pub fn without_token_param(uri: &http::Uri) -> Result<PathAndQuery, ProxyError> {
    without_params(uri, &["token"])
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_query_parameter_never_survives() {
        let cases = [
            ("/c/new?token=abc&org=x", "/c/new?org=x"),
            ("/?token=abc", "/"),
            ("/a?x=1&token=2&y=3", "/a?x=1&y=3"),
            ("/a?tokens=1", "/a?tokens=1"),
            ("/a?x=1", "/a?x=1"),
            ("/a?%74oken=1&b=2", "/a?b=2"),
            ("/a", "/a"),
        ];
        for (input, expected) in cases {
            let uri: http::Uri = input.parse().unwrap();
            assert_eq!(
                without_token_param(&uri).unwrap().as_str(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn connection_named_headers_are_hop_by_hop() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("accept"));
    }

    #[test]
    fn only_the_hop_by_hop_headers_present_go_and_every_value_of_them() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Private"),
        );
        headers.append(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.append(header::TRAILER, HeaderValue::from_static("a"));
        headers.append(header::TRAILER, HeaderValue::from_static("b"));
        headers.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
        headers.insert("server", HeaderValue::from_static("nginx"));
        headers.insert("date", HeaderValue::from_static("today"));
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["date", "server"]);
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn reserved_identity_prefixes_are_removed() {
        let mut headers = HeaderMap::new();
        headers.append("X-Chatgate-User-Id", HeaderValue::from_static("evil"));
        headers.append("x-user-email", HeaderValue::from_static("evil"));
        headers.append("X-Organization-Id", HeaderValue::from_static("evil"));
        headers.append("x-organization-id", HeaderValue::from_static("evil2"));
        headers.append("x-useragent-ish", HeaderValue::from_static("kept"));
        scrub_client_headers(&mut headers, untrusted_client());
        assert!(headers.contains_key("x-useragent-ish"));
        for name in ["x-chatgate-user-id", "x-user-email", "x-organization-id"] {
            assert!(!headers.contains_key(name), "{name}");
        }
    }

    fn untrusted_client() -> ClientSide<'static> {
        ClientSide {
            peer: "::ffff:10.0.0.5".parse().unwrap(),
            trusted: false,
            tls: true,
            host: Some(HeaderValue::from_static("chat.example.com")),
            upgrading: false,
            session_cookie: "sb-x-auth-token",
        }
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        headers.insert("x-forwarded-port", HeaderValue::from_static("1"));
        headers.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        headers.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        scrub_client_headers(&mut headers, untrusted_client());
        assert_eq!(headers["x-forwarded-for"], "10.0.0.5");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "chat.example.com");
        assert!(!headers.contains_key("x-forwarded-port"));
        assert!(!headers.contains_key("forwarded"));
        assert!(!headers.contains_key("x-real-ip"));
    }

    #[test]
    fn trusted_forwarding_chain_is_extended() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        headers.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        set_forwarding_headers(&mut headers, true, peer, false, None);
        assert_eq!(headers["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.5");
        assert_eq!(headers["x-forwarded-proto"], "https");
    }
}
