//! Phase 6: the headers the browser receives. Hop-by-hop headers of the
//! upstream connection stop here (RFC 9110 section 7.6.1), except the pair
//! that completes an `Upgrade`.

use http::header;
use http::{HeaderValue, Response, StatusCode};

use super::rewrite_request::remove_hop_by_hop;
use crate::app::App;
use crate::body::ProxyBody;
use crate::context::RequestContext;

pub fn rewrite(
    _app: &App,
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
    response
}
