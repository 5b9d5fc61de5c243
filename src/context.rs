//! Per-request state, created when a request arrives and passed `&mut` to
//! each phase of `proxy::handle` (the single context of STYLE.md).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Uri, Version};

use crate::identity::Identity;
use crate::metrics::RouteClass;
use crate::trace::TraceParent;
use crate::upstream::Upstream;

/// What is known about the connection a request came in on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The request reached chatgate over TLS (else the plain `http_listen`).
    pub tls: bool,
}

/// What was asked, kept after the request itself is consumed: for the
/// access log and for answering a refusal (redirect or JSON).
#[derive(Debug)]
pub struct RequestLine {
    pub method: Method,
    /// A `Uri` clone shares its bytes; no copy of the path is made.
    pub uri: Uri,
    pub version: Version,
    /// A browser navigation (`GET` accepting `text/html`): refused ones are
    /// redirected to the dashboard's login instead of getting JSON.
    pub page_load: bool,
}

impl RequestLine {
    pub fn of<B>(request: &Request<B>) -> Self {
        let page_load = request.method() == Method::GET
            && request.headers().get_all(header::ACCEPT).iter().any(|v| {
                v.as_bytes()
                    .windows(9)
                    .any(|w| w.eq_ignore_ascii_case(b"text/html"))
            });
        Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            page_load,
        }
    }
}

/// One request's journey through the phases.
#[derive(Debug)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    pub started: Instant,
    pub conn: Arc<ConnInfo>,
    /// Set by the identify phase; forwarding requires it.
    pub identity: Option<Identity>,
    /// Set by the pick phase; the instance that answered last.
    pub upstream: Option<Arc<Upstream>>,
    /// Number of upstream attempts (a retry makes it 2).
    pub attempts: u8,
    /// `Set-Cookie` values chatgate adds to whatever response goes out
    /// (a refreshed or cleared Supabase session).
    pub set_cookies: Vec<String>,
    /// How the user was identified (SPEC section 14): `cookie` (the
    /// Supabase session cookie), `session` (`chatgate_session`), `handoff`
    /// (a `?token=` exchanged), `bearer` (a Supabase access token).
    pub identified_by: Option<&'static str>,
    /// A chat request's body as the policy phase read it (SPEC section 10);
    /// usage metering (section 11) attributes the answer's stream with it.
    pub chat: Option<ChatRequest>,
    /// The `route` label, when a phase knows it (chatgate's own routes, a
    /// chat); else the response decides (`proxy::route_class`).
    pub route: Option<RouteClass>,
    /// The W3C trace this request belongs to, with chatgate's span id.
    pub trace: TraceParent,
    /// Why a request failed with a 5xx, for its access line.
    pub failure: Option<String>,
    /// Body bytes sent on to LibreChat, counted as they pass; made only
    /// for a request that has a body.
    pub bytes_in: Option<Arc<AtomicU64>>,
}

/// What a chat request (`POST /api/agents/chat[/…]`, `/api/ask|edit/…`,
/// `/api/assistants/v1|v2/chat`) asked for, read from its JSON body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatRequest {
    /// `body.endpoint` (LibreChat's endpoint name; the body wins over the path).
    pub endpoint: Option<String>,
    /// `body.model`.
    pub model: Option<String>,
    /// `body.conversationId`; `None` for a new chat (`null` or `"new"`).
    pub conversation_id: Option<String>,
    /// `body.agent_id`, a saved agent.
    pub agent_id: Option<String>,
}

impl RequestContext {
    pub fn new(
        conn: Arc<ConnInfo>,
        incoming_id: Option<&HeaderValue>,
        incoming_trace: Option<&HeaderValue>,
    ) -> Self {
        let request_id = incoming_id
            .filter(|v| is_valid_request_id(v))
            .cloned()
            .unwrap_or_else(new_request_id);
        Self {
            request_id,
            started: Instant::now(),
            conn,
            identity: None,
            upstream: None,
            attempts: 0,
            set_cookies: Vec::new(),
            identified_by: None,
            chat: None,
            route: None,
            trace: TraceParent::of(incoming_trace),
            failure: None,
            bytes_in: None,
        }
    }

    pub fn request_id_str(&self) -> &str {
        // Only ever built from validated ASCII, so this cannot fail.
        self.request_id.to_str().unwrap_or("-")
    }
}

/// An incoming `X-Request-Id` is kept when it is short and plain, so ids can
/// be followed across the load balancer, chatgate and LibreChat without
/// letting a client inject log-breaking bytes.
fn is_valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A process-unique id without a syscall: a random prefix drawn once, then a
/// counter; 20 hex digits written in place (no `format!` per request).
fn new_request_id() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let prefix = *PREFIX.get_or_init(|| uuid::Uuid::new_v4().as_u128() as u32);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // `{prefix:08x}{n:012x}`: the prefix's 32 bits, then the counter's low 48.
    let digits = (u128::from(prefix) << 48) | u128::from(n & 0xffff_ffff_ffff);
    let mut id = [0u8; 20];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = HEX[((digits >> (4 * (19 - i))) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_plain() {
        assert!(is_valid_request_id(&HeaderValue::from_static(
            "abc-123_x.y"
        )));
        assert!(!is_valid_request_id(&HeaderValue::from_static("")));
        assert!(!is_valid_request_id(&HeaderValue::from_static("a b")));
        assert!(!is_valid_request_id(&HeaderValue::from_static("a\"b")));
        let long = "a".repeat(129);
        assert!(!is_valid_request_id(&HeaderValue::from_str(&long).unwrap()));
    }

    #[test]
    fn generated_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn generated_ids_are_twenty_hex_digits_counting_up() {
        let a = new_request_id();
        let b = new_request_id();
        for id in [&a, &b] {
            assert_eq!(id.len(), 20);
            assert!(is_valid_request_id(id));
            assert!(id.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
        }
        assert_eq!(a.as_bytes()[..8], b.as_bytes()[..8], "same process prefix");
        let counter = |v: &HeaderValue| {
            u64::from_str_radix(std::str::from_utf8(&v.as_bytes()[8..]).unwrap(), 16).unwrap()
        };
        assert!(counter(&b) > counter(&a));
    }
}
