//! Phase 6: the headers the browser receives (SPEC section 8). Hop-by-hop
//! headers of the upstream connection stop here (RFC 9110 section 7.6.1),
//! except the pair that completes an `Upgrade`; LibreChat's framing ban
//! (`X-Frame-Options`, helmet's default since 0.8.8) gives way to a CSP
//! `frame-ancestors` naming exactly the dashboard origins.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::rewrite_request::remove_hop_by_hop;
use crate::app::App;
use crate::body::ProxyBody;
use crate::context::RequestContext;

static X_FRAME_OPTIONS: HeaderName = HeaderName::from_static("x-frame-options");
static HSTS_VALUE: HeaderValue = HeaderValue::from_static("max-age=31536000");

pub fn rewrite(
    app: &App,
    _ctx: &RequestContext,
    mut response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let upgraded = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    let protocol = upgraded
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    remove_hop_by_hop(headers);
    if let Some(protocol) = protocol {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    headers.remove(&X_FRAME_OPTIONS);
    if headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        merge_frame_ancestors(headers, &app.frame_ancestors);
    } else {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            app.frame_ancestors_header.clone(),
        );
    }
    response
}

/// Keeps every directive of the upstream's CSP but its `frame-ancestors`,
/// and adds ours; without an upstream CSP, ours alone.
fn merge_frame_ancestors(headers: &mut HeaderMap, directive: &str) {
    let policies: Vec<HeaderValue> = headers
        .get_all(header::CONTENT_SECURITY_POLICY)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::CONTENT_SECURITY_POLICY);
    let mut ours_added = false;
    for policy in policies {
        let Ok(text) = policy.to_str() else { continue };
        let mut kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .filter(|d| {
                let name = d.split_ascii_whitespace().next().unwrap_or("");
                !name.eq_ignore_ascii_case("frame-ancestors")
            })
            .collect();
        if !ours_added {
            kept.push(directive);
            ours_added = true;
        }
        if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
            headers.append(header::CONTENT_SECURITY_POLICY, value);
        }
    }
    if !ours_added {
        if let Ok(value) = HeaderValue::from_str(directive) {
            headers.insert(header::CONTENT_SECURITY_POLICY, value);
        }
    }
}

/// Headers every response gets, chatgate's own included: a CSP
/// `frame-ancestors`, HSTS over TLS,
/// and with `iframe.cross_site` every cookie made usable in a third-party
/// frame (`SameSite=None; Secure; Partitioned`, CHIPS).
pub fn finish_headers(app: &App, ctx: &RequestContext, headers: &mut HeaderMap) {
    // chatgate's own answers (the hand-off redirect, errors) are framed only
    // by the dashboard too; forwarded ones already carry the merged policy.
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            app.frame_ancestors_header.clone(),
        );
    }
    if ctx.conn.tls {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HSTS_VALUE.clone());
    }
    if app.config.iframe.cross_site && headers.contains_key(header::SET_COOKIE) {
        let cookies: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        for cookie in cookies {
            headers.append(header::SET_COOKIE, cross_site_cookie(&cookie));
        }
    }
}

/// Rewrites one `Set-Cookie` to `SameSite=None; Secure; Partitioned`,
/// replacing whatever of those the upstream set (LibreChat: `Strict`).
/// Public for the fuzz target.
///
/// Hand-written rather than `cookie::Cookie::parse` + `Display`: that
/// round trip reorders the attributes, drops the ones it does not know
/// (`Priority=High`), takes the dot off `Domain=.example.com` and refuses a
/// cookie without a name, where this keeps every byte but the three
/// attributes it replaces (`docs/architecture.md`, "Crates not used").
pub fn cross_site_cookie(cookie: &HeaderValue) -> HeaderValue {
    let Ok(text) = cookie.to_str() else {
        return cookie.clone();
    };
    let mut parts: Vec<&str> = text
        .split(';')
        .enumerate()
        .filter(|(i, part)| {
            let name = part.split('=').next().unwrap_or("").trim();
            *i == 0
                || !(name.eq_ignore_ascii_case("samesite")
                    || name.eq_ignore_ascii_case("secure")
                    || name.eq_ignore_ascii_case("partitioned"))
        })
        .map(|(_, part)| part.trim())
        .collect();
    parts.extend(["SameSite=None", "Secure", "Partitioned"]);
    HeaderValue::from_str(&parts.join("; ")).unwrap_or_else(|_| cookie.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::frame_ancestors_directive;

    #[test]
    fn upstream_csp_keeps_its_directives_and_loses_its_frame_ancestors() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self'; FRAME-ANCESTORS 'none'; img-src *"),
        );
        let directive = frame_ancestors_directive(&["https://dash.example.com".to_owned()]);
        merge_frame_ancestors(&mut headers, &directive);
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            "default-src 'self'; img-src *; frame-ancestors 'self' https://dash.example.com"
        );
    }

    #[test]
    fn without_an_upstream_csp_ours_stands_alone() {
        let mut headers = HeaderMap::new();
        merge_frame_ancestors(&mut headers, "frame-ancestors 'self'");
        assert_eq!(
            headers[header::CONTENT_SECURITY_POLICY],
            "frame-ancestors 'self'"
        );
    }

    #[test]
    fn cookies_become_cross_site() {
        let cases = [
            (
                "refreshToken=abc; Path=/api; HttpOnly; Secure; SameSite=Strict",
                "refreshToken=abc; Path=/api; HttpOnly; SameSite=None; Secure; Partitioned",
            ),
            ("a=b", "a=b; SameSite=None; Secure; Partitioned"),
            (
                "a=b; samesite=lax; partitioned; Max-Age=0",
                "a=b; Max-Age=0; SameSite=None; Secure; Partitioned",
            ),
            // What a parse-and-print with the `cookie` crate would change:
            // unknown attributes, a Domain's leading dot, a nameless cookie.
            (
                "id=1; Priority=High; Domain=.example.com; Path=/",
                "id=1; Priority=High; Domain=.example.com; Path=/; SameSite=None; Secure; Partitioned",
            ),
            ("nameless", "nameless; SameSite=None; Secure; Partitioned"),
        ];
        for (input, expected) in cases {
            let out = cross_site_cookie(&HeaderValue::from_static(input));
            assert_eq!(out, expected, "{input}");
        }
    }
}
