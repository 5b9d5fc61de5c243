//! The request-head rewrite (`proxy::rewrite_request`), as far as it
//! depends on the client alone: whatever headers and target a client
//! sends, no hop-by-hop header, reserved identity header, client tenant,
//! `Host`, untrusted forwarding header or session cookie survives, and no
//! `token` parameter stays in the query.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use chatgate::proxy::rewrite_request::{scrub_client_headers, without_token_param, ClientSide};
use chatgate::supabase::cookie::find_session_cookie;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;

const SESSION: &str = "sb-127-auth-token";
/// Hop-by-hop (RFC 9110 section 7.6.1 and common ones): never forwarded,
/// except `Connection: upgrade` and `Upgrade` of an upgrade chatgate took.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let Some(flags) = lines.next() else {
        return;
    };
    let trusted = flags.first().is_some_and(|b| b & 1 == 1);
    let upgrading = flags.first().is_some_and(|b| b & 2 == 2);
    let target = lines.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let host = headers.get("host").cloned();
    scrub_client_headers(
        &mut headers,
        ClientSide {
            peer: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            trusted,
            tls: true,
            host,
            upgrading,
            session_cookie: SESSION,
        },
    );
    for name in headers.keys() {
        let name = name.as_str();
        let upgrade = upgrading && (name == "connection" || name == "upgrade");
        assert!(!HOP_BY_HOP.contains(&name) || upgrade, "{name} survived");
        assert!(name != "host" && name != "x-tenant-id", "{name} survived");
        for prefix in ["x-chatgate-", "x-user-", "x-organization-"] {
            assert!(!name.starts_with(prefix), "{name} survived");
        }
        if !trusted {
            let ours = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];
            assert!(
                !(name.starts_with("x-forwarded-") && !ours.contains(&name))
                    && name != "forwarded"
                    && name != "x-real-ip",
                "{name} from an untrusted peer survived"
            );
        }
    }
    if let Some(connection) = headers.get("connection") {
        assert_eq!(connection, "upgrade");
    }
    if !trusted {
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7");
    }
    assert!(headers.contains_key("x-forwarded-for"));
    // Nothing the session decoder would read (`name`, `name.N`) is left.
    let kept = headers.get_all("cookie").iter().map(|v| v.as_bytes());
    assert!(
        find_session_cookie(kept, SESSION).is_none(),
        "a session cookie survived: {:?}",
        headers.get_all("cookie")
    );

    if let Ok(uri) = Uri::try_from(target) {
        if let Ok(rewritten) = without_token_param(&uri) {
            for pair in rewritten.query().unwrap_or_default().split('&') {
                let name = pair.split('=').next().unwrap_or_default();
                let decoded = percent_decoded(name);
                assert!(
                    decoded != "token" && decoded != "token[]",
                    "{uri} -> {rewritten}"
                );
            }
        }
    }
});

/// The parameter name as a form decoder reads it.
fn percent_decoded(name: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
