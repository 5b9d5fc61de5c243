//! A LibreChat session belongs to the dashboard user who created it (SPEC
//! section 7). chatgate binds the browser's LibreChat cookies to the user
//! with a `chatgate_bind` cookie; when the dashboard user changes, the old
//! user's LibreChat cookies are cleared and never forwarded, and the browser
//! goes through sign-in again, so one user never sees another's chats.

use std::cell::RefCell;

use http::header;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::context::{RequestContext, RequestLine};
use crate::cookies;
use crate::error::ProxyError;
use crate::identity::Identity;
use crate::recent::Recent;

/// Cookies chatgate sets for itself; none of them reaches LibreChat.
pub const CHATGATE_COOKIES: &[&str] = &[super::handoff::SESSION_COOKIE, BIND_COOKIE];

const BIND_COOKIE: &str = "chatgate_bind";

/// LibreChat's session cookies (REFERENCE.md), plus every `openid_*`.
const LIBRECHAT_COOKIES: [&str; 3] = ["refreshToken", "token_provider", "connect.sid"];

fn is_librechat_cookie(name: &[u8]) -> bool {
    LIBRECHAT_COOKIES.iter().any(|c| c.as_bytes() == name) || name.starts_with(b"openid_")
}

/// Checks the binding; on a user change clears LibreChat's cookies and
/// either redirects a page load to itself (it reloads signed out of
/// LibreChat, which then signs the new user in) or forwards the request
/// without the old user's cookies and bearer.
pub fn check(
    ctx: &mut RequestContext,
    line: &RequestLine,
    identity: &Identity,
    headers: &mut HeaderMap,
) -> Result<(), ProxyError> {
    let bound_to = bind_value(identity.user_id());
    if cookies::all(headers)
        .any(|p| p.has_value && p.name == BIND_COOKIE.as_bytes() && p.value == bound_to.as_bytes())
    {
        return Ok(());
    }
    let stale: Vec<String> = cookies::all(headers)
        .filter(|p| p.has_value && is_librechat_cookie(p.name))
        .map(|p| String::from_utf8_lossy(p.name).into_owned())
        .collect();
    // Not `format!`: once per request of a client without the binding.
    const ATTRIBUTES: &str = "; Path=/; HttpOnly; SameSite=Lax";
    let mut set_bind =
        String::with_capacity(BIND_COOKIE.len() + 1 + bound_to.len() + ATTRIBUTES.len());
    set_bind.push_str(BIND_COOKIE);
    set_bind.push('=');
    set_bind.push_str(&bound_to);
    set_bind.push_str(ATTRIBUTES);
    ctx.set_cookies.push(set_bind);
    if stale.is_empty() {
        return Ok(());
    }
    tracing::info!(
        request_id = ctx.request_id_str(),
        "dashboard user changed: clearing LibreChat's session cookies"
    );
    for name in &stale {
        ctx.set_cookies.push(format!("{name}=; Path=/; Max-Age=0"));
    }
    if line.page_load {
        let location = line
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/");
        return Err(ProxyError::Redirect {
            status: StatusCode::SEE_OTHER,
            location: HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/")),
        });
    }
    strip_librechat_session(headers);
    Ok(())
}

/// `Set-Cookie` values that delete LibreChat's session cookies and the
/// binding (a logout).
pub fn clear_all() -> Vec<String> {
    LIBRECHAT_COOKIES
        .iter()
        .chain(
            [
                "openid_user_id",
                "openid_access_token",
                "openid_id_token",
                BIND_COOKIE,
            ]
            .iter(),
        )
        .map(|name| format!("{name}=; Path=/; Max-Age=0"))
        .collect()
}

/// Removes LibreChat's cookies and its bearer (the old user's) from a request.
fn strip_librechat_session(headers: &mut HeaderMap) {
    let mut kept = Vec::new();
    for pair in cookies::all(headers).filter(|p| !(p.has_value && is_librechat_cookie(p.name))) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair.whole);
    }
    headers.remove(header::COOKIE);
    headers.remove(header::AUTHORIZATION);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_bytes(&kept) {
            headers.insert(header::COOKIE, value);
        }
    }
}

/// Users whose binding tag a serving thread keeps: a SHA-256 per request
/// was 2 % of a forwarded request's instructions, and a thread serves the
/// same few users' requests over and over (a page load is dozens).
const RECENT_USERS: usize = 16;

/// An opaque tag of the user: the first 128 bits of a SHA-256, in hex.
fn bind_value(user_id: &str) -> String {
    thread_local! {
        static RECENT: RefCell<Recent<(Box<str>, String), RECENT_USERS>> =
            const { RefCell::new(Recent::new()) };
    }
    RECENT.with_borrow_mut(|recent| {
        if let Some((_, tag)) = recent.find(|(user, _)| **user == *user_id, |_| true) {
            return tag.clone();
        }
        let tag = bind_digest(user_id);
        recent.remember((user_id.into(), tag.clone()));
        tag
    })
}

fn bind_digest(user_id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(b"chatgate-bind:");
    context.update(user_id.as_bytes());
    let digest = context.finish();
    let mut hex = String::with_capacity(32);
    for byte in &digest.as_ref()[..16] {
        hex.push(HEX[usize::from(byte >> 4)] as char);
        hex.push(HEX[usize::from(byte & 0xf)] as char);
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librechat_cookies_and_bearer_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static(
                "refreshToken=a; theme=dark; openid_id_token=b; connect.sid=c",
            ),
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer old"),
        );
        strip_librechat_session(&mut headers);
        assert_eq!(headers[header::COOKIE], "theme=dark");
        assert!(!headers.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn bind_value_is_sha256_hex() {
        // printf 'chatgate-bind:u' | sha256sum | cut -c1-32
        assert_eq!(bind_value("u"), expected_bind("u"));
    }

    fn expected_bind(user: &str) -> String {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("chatgate-bind:{user}").as_bytes(),
        );
        digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn the_remembered_tags_are_the_computed_ones() {
        // More users than a thread keeps, twice: evicted ones come back right.
        for _ in 0..2 {
            for i in 0..RECENT_USERS + 3 {
                let user = format!("user-{i}");
                assert_eq!(bind_value(&user), expected_bind(&user));
            }
        }
    }

    #[test]
    fn bind_values_differ_per_user_and_hide_the_id() {
        assert_ne!(bind_value("a"), bind_value("b"));
        assert_eq!(bind_value("a").len(), 32);
        assert!(!bind_value("user-123").contains("user"));
    }
}
