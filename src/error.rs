//! One error type for everything a request can fail with, and the one place
//! that turns it into the SPEC's JSON error body (section 4).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

pub use crate::body::BoxError;
use crate::body::{self, ProxyBody};

/// Why chatgate answered a request itself instead of forwarding it.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("sign in to continue")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("your account is not part of an organization")]
    NoOrganization,
    #[error("{0}")]
    BadRequest(&'static str),
    /// A body chatgate must read (a chat, an agent) that it cannot read.
    #[error("{0}")]
    InvalidBody(String),
    #[error("the request body is larger than the {limit} bytes chatgate checks")]
    PayloadTooLarge { limit: usize },
    /// SPEC section 10: an endpoint, model, spec or agent the organization does not allow.
    #[error("{0}")]
    ModelNotAllowed(String),
    /// SPEC section 10: a feature, MCP server or file search that is off.
    #[error("{0}")]
    FeatureDisabled(String),
    #[error("your organization has used its {max_tokens} tokens for this month")]
    QuotaExceeded { max_tokens: u64, retry_after: u64 },
    #[error("request headers are larger than the {limit} bytes allowed")]
    HeadersTooLarge { limit: usize },
    #[error("no route for this request")]
    NotFound,
    #[error("no LibreChat instance is available")]
    NoHealthyUpstream,
    #[error("the LibreChat instance could not be reached")]
    UpstreamConnect(#[source] BoxError),
    #[error("the LibreChat instance failed before answering")]
    UpstreamFailed(#[source] BoxError),
    #[error("the LibreChat instance did not answer in time")]
    UpstreamTimeout,
    /// Every one of `librechat.max_connections_per_instance` was in use for
    /// the whole connect timeout.
    #[error("the LibreChat instance is busy; try again")]
    UpstreamBusy { upstream: String, limit: usize },
    #[error("chatgate is shutting down")]
    Draining,
    #[error("sign-in could not be checked right now; try again")]
    AuthUnavailable(String),
    /// Not a failure: a phase answers with a redirect (the hand-off's 303).
    #[error("redirect")]
    Redirect {
        status: StatusCode,
        location: HeaderValue,
    },
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_)
            | Self::NoOrganization
            | Self::ModelNotAllowed(_)
            | Self::FeatureDisabled(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) | Self::InvalidBody(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::UpstreamConnect(_) | Self::UpstreamFailed(_) => StatusCode::BAD_GATEWAY,
            Self::NoHealthyUpstream
            | Self::Draining
            | Self::AuthUnavailable(_)
            | Self::UpstreamBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Redirect { status, .. } => *status,
        }
    }

    /// The machine-readable `error` code of the JSON body (SPEC section 4).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NoOrganization => "no_organization",
            Self::BadRequest(_) | Self::InvalidBody(_) | Self::HeadersTooLarge { .. } => {
                "bad_request"
            }
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::FeatureDisabled(_) => "feature_disabled",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::NotFound => "not_found",
            Self::NoHealthyUpstream
            | Self::UpstreamConnect(_)
            | Self::UpstreamFailed(_)
            | Self::Draining
            | Self::AuthUnavailable(_)
            | Self::UpstreamBusy { .. } => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Redirect { .. } => "redirect",
        }
    }

    /// Whether the request may be retried on another instance because the
    /// upstream cannot have seen it.
    pub fn is_connect_failure(&self) -> bool {
        matches!(self, Self::UpstreamConnect(_))
    }

    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        if let Self::Redirect { status, location } = self {
            let mut response = Response::new(body::empty());
            *response.status_mut() = status;
            response.headers_mut().insert(header::LOCATION, location);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return response;
        }
        let retry_after = match self {
            Self::QuotaExceeded { retry_after, .. } => Some(retry_after),
            _ => None,
        };
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "request_id": request_id,
        });
        let mut response = Response::new(body::full(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    /// What the client's message leaves out, for the log: why sign-in could
    /// not be checked, which instance was busy.
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::AuthUnavailable(reason) => Some(reason.clone()),
            Self::UpstreamBusy { upstream, limit } => Some(format!(
                "all {limit} connections to {upstream} (librechat.max_connections_per_instance) stayed in use for the connect timeout"
            )),
            _ => None,
        }
    }

    /// A refusal the organization's policy made (logged as such, not as a failure).
    pub fn is_policy_refusal(&self) -> bool {
        matches!(
            self,
            Self::ModelNotAllowed(_)
                | Self::FeatureDisabled(_)
                | Self::QuotaExceeded { .. }
                | Self::PayloadTooLarge { .. }
                | Self::InvalidBody(_)
        )
    }
}

/// "outer: inner: innermost", for one-line messages.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn error_body_is_the_spec_json_shape() {
        let response = ProxyError::NoHealthyUpstream.into_response("req-1");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"], "upstream_unavailable");
        assert_eq!(json["request_id"], "req-1");
        assert!(json["message"].as_str().unwrap().contains("LibreChat"));
    }

    #[test]
    fn a_quota_refusal_says_when_to_retry() {
        let response = ProxyError::QuotaExceeded {
            max_tokens: 10,
            retry_after: 3600,
        }
        .into_response("r");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3600");
    }

    #[test]
    fn each_spec_code_has_its_status() {
        let cases = [
            (ProxyError::Unauthenticated, 401, "unauthenticated"),
            (ProxyError::Forbidden("no"), 403, "forbidden"),
            (ProxyError::NoOrganization, 403, "no_organization"),
            (ProxyError::BadRequest("bad"), 400, "bad_request"),
            (ProxyError::UpstreamTimeout, 504, "upstream_timeout"),
            (ProxyError::Draining, 503, "upstream_unavailable"),
            (
                ProxyError::PayloadTooLarge { limit: 1 },
                413,
                "payload_too_large",
            ),
            (
                ProxyError::ModelNotAllowed("m".into()),
                403,
                "model_not_allowed",
            ),
            (
                ProxyError::FeatureDisabled("f".into()),
                403,
                "feature_disabled",
            ),
            (ProxyError::InvalidBody("b".into()), 400, "bad_request"),
            (
                ProxyError::QuotaExceeded {
                    max_tokens: 1,
                    retry_after: 5,
                },
                429,
                "quota_exceeded",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.code(), code, "{error:?}");
        }
    }
}
