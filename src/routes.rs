//! The routes chatgate answers itself behind authentication (SPEC section
//! 4): the seed's `/api/librechat/auth` (GET and POST), `/api/auth/verify`,
//! `/api/librechat/logout`, the OpenID provider under `/oidc/`, and, in
//! `auth_mode = "jwt"`, LibreChat's `POST /api/auth/refresh`.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::app::App;
use crate::body::{self, ProxyBody};
use crate::config::AuthMode;
use crate::context::{RequestContext, RequestLine};
use crate::error::ProxyError;
use crate::identify::{self, handoff, user_switch};
use crate::identity::Identity;
use crate::librechat::oidc::{self, Grant, OAuthError};
use crate::librechat::token::{now, TokenClaims, TokenError};

/// Forms and JSON chatgate reads are small.
const MAX_BODY: usize = 64 * 1024;

/// A route chatgate answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnRoute {
    AuthUrl,
    AuthToken,
    Verify,
    Logout,
    Discovery,
    Jwks,
    Authorize,
    Token,
    UserInfo,
    OidcLogout,
    JwtRefresh,
}

/// Which own route a request is, by exact path (no normalisation: a path
/// that only resolves to one of these after `..` handling is not one).
pub fn own_route(app: &App, method: &Method, path: &str) -> Option<OwnRoute> {
    let oidc = app.config.librechat.auth_mode == AuthMode::Oidc;
    let route = match (method, path) {
        (&Method::GET, "/api/librechat/auth") => OwnRoute::AuthUrl,
        (&Method::POST, "/api/librechat/auth") => OwnRoute::AuthToken,
        (&Method::GET, "/api/auth/verify") => OwnRoute::Verify,
        (&Method::POST, "/api/librechat/logout") => OwnRoute::Logout,
        (&Method::GET, "/oidc/.well-known/openid-configuration") if oidc => OwnRoute::Discovery,
        (&Method::GET, "/oidc/jwks.json") if oidc => OwnRoute::Jwks,
        (&Method::GET, "/oidc/authorize") if oidc => OwnRoute::Authorize,
        (&Method::POST, "/oidc/token") if oidc => OwnRoute::Token,
        (&Method::GET | &Method::POST, "/oidc/userinfo") if oidc => OwnRoute::UserInfo,
        (&Method::GET, "/oidc/logout") if oidc => OwnRoute::OidcLogout,
        (&Method::POST, "/api/auth/refresh") if !oidc => OwnRoute::JwtRefresh,
        _ => return None,
    };
    Some(route)
}

pub async fn answer(
    app: &App,
    ctx: &mut RequestContext,
    line: &RequestLine,
    route: OwnRoute,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    match route {
        OwnRoute::AuthUrl => {
            let identity =
                identify::from_supabase_bearer_or_cookie(app, ctx, request.headers()).await?;
            auth_url(app, &identity)
        }
        OwnRoute::AuthToken => {
            let identity =
                identify::from_supabase_bearer_or_cookie(app, ctx, request.headers()).await?;
            auth_token(app, &identity)
        }
        OwnRoute::Verify => verify(app, request.headers()),
        OwnRoute::Logout => logout(app, ctx, request.headers()).await,
        OwnRoute::Discovery => Ok(json_response(StatusCode::OK, app.oidc()?.discovery())),
        OwnRoute::Jwks => Ok(json_response(StatusCode::OK, app.oidc()?.jwks().clone())),
        OwnRoute::Authorize => authorize(app, ctx, line, request.headers()).await,
        OwnRoute::Token => token(app, request).await,
        OwnRoute::UserInfo => userinfo(app, request.headers()),
        OwnRoute::OidcLogout => oidc_logout(app, ctx, line, request.headers()).await,
        OwnRoute::JwtRefresh => {
            let identity = identify::identify(app, ctx, line, request.headers()).await?;
            jwt_refresh(app, &identity)
        }
    }
}

fn mint(
    app: &App,
    identity: &Identity,
) -> Result<std::sync::Arc<crate::librechat::token::Minted>, ProxyError> {
    app.librechat_tokens
        .for_identity(identity)
        .map_err(|e| match e {
            TokenError::NoSecret => {
                ProxyError::AuthUnavailable("librechat.jwt_secret is not set".to_owned())
            }
            other => ProxyError::AuthUnavailable(other.to_string()),
        })
}

/// `GET /api/librechat/auth`: the iframe URL with a fresh hand-off token.
fn auth_url(app: &App, identity: &Identity) -> Result<Response<ProxyBody>, ProxyError> {
    let minted = mint(app, identity)?;
    let org = identity.organization();
    let mut url = app.config.server.public_url.clone();
    url.set_path("/");
    url.query_pairs_mut()
        .append_pair("token", &minted.token)
        .append_pair("org", &org.domain);
    Ok(json_response(
        StatusCode::OK,
        json!({
            "url": url.as_str(),
            "organization": {"id": org.id, "name": org.name, "domain": org.domain, "plan_type": org.plan_type},
        }),
    ))
}

/// `POST /api/librechat/auth`: the token and the user, in the seed's shape.
fn auth_token(app: &App, identity: &Identity) -> Result<Response<ProxyBody>, ProxyError> {
    let minted = mint(app, identity)?;
    Ok(json_response(
        StatusCode::OK,
        json!({ "token": minted.token, "user": seed_user(&minted.claims) }),
    ))
}

fn seed_user(c: &TokenClaims) -> Value {
    json!({
        "id": c.id, "email": c.email, "name": c.name, "username": c.username,
        "avatar": c.avatar, "role": c.role, "organization": c.organization,
    })
}

/// `GET /api/auth/verify`: the claims of a chatgate token.
fn verify(app: &App, headers: &HeaderMap) -> Result<Response<ProxyBody>, ProxyError> {
    let token = bearer(headers).ok_or(ProxyError::Unauthenticated)?;
    let claims = app
        .librechat_tokens
        .verify(token)
        .map_err(|_| ProxyError::Unauthenticated)?;
    let value =
        serde_json::to_value(&claims).map_err(|e| ProxyError::AuthUnavailable(e.to_string()))?;
    Ok(json_response(StatusCode::OK, value))
}

/// `POST /api/librechat/logout`: ends every chatgate session and OpenID
/// grant of the user, and clears chatgate's and LibreChat's cookies.
async fn logout(
    app: &App,
    ctx: &mut RequestContext,
    headers: &HeaderMap,
) -> Result<Response<ProxyBody>, ProxyError> {
    let identity = identify::from_supabase_bearer_or_cookie(app, ctx, headers).await?;
    handoff::end_all(app, identity.user_id()).await?;
    if let Some(id) = handoff::session_id(headers) {
        handoff::end(app, id).await;
    }
    ctx.set_cookies.push(handoff::clear_session_cookie());
    ctx.set_cookies.extend(user_switch::clear_all());
    Ok(json_response(StatusCode::OK, json!({ "success": true })))
}

/// `GET /oidc/authorize` (SPEC section 7).
async fn authorize(
    app: &App,
    ctx: &mut RequestContext,
    line: &RequestLine,
    headers: &HeaderMap,
) -> Result<Response<ProxyBody>, ProxyError> {
    let provider = app.oidc()?;
    let query = oidc::parse_form(line.uri.query().unwrap_or_default().as_bytes());
    let get = |name| oidc::field(&query, name);
    // Until client and redirect_uri are known good, errors are a page, never a redirect.
    if get("client_id") != Some(provider.client_id.as_str()) {
        return Ok(error_page(StatusCode::BAD_REQUEST, "unknown client_id"));
    }
    let Some(redirect_uri) = get("redirect_uri").filter(|u| provider.redirect_uri_allowed(u))
    else {
        return Ok(error_page(
            StatusCode::BAD_REQUEST,
            "redirect_uri must be on chatgate's public origin",
        ));
    };
    let redirect_error = |code: &str| redirect_with(redirect_uri, &[("error", code)], get("state"));
    if get("response_type") != Some("code") {
        return redirect_error("unsupported_response_type");
    }
    let scope = get("scope").unwrap_or_default();
    if !scope.split(' ').any(|s| s == "openid") {
        return redirect_error("invalid_scope");
    }
    let challenge = get("code_challenge");
    if challenge.is_some() && get("code_challenge_method") != Some("S256") {
        return redirect_error("invalid_request");
    }
    let identity = identify::identify(app, ctx, line, headers).await?;
    let user = TokenClaims::for_identity(&identity, now(), app.librechat_tokens.ttl());
    let grant = Grant {
        client_id: provider.client_id.clone(),
        redirect_uri: redirect_uri.to_owned(),
        generation: handoff::generation(app, &user.sub).await?,
        user,
        nonce: get("nonce").map(str::to_owned),
        code_challenge: challenge.map(str::to_owned),
        scope: scope.to_owned(),
        auth_time: now(),
    };
    let code = handoff::new_session_id();
    let bytes =
        serde_json::to_vec(&grant).map_err(|e| ProxyError::AuthUnavailable(e.to_string()))?;
    app.store
        .set(&oidc::code_key(&code), Bytes::from(bytes), oidc::code_ttl())
        .await
        .map_err(|e| ProxyError::AuthUnavailable(e.to_string()))?;
    redirect_with(redirect_uri, &[("code", &code)], get("state"))
}

fn redirect_with(
    uri: &str,
    params: &[(&str, &str)],
    state: Option<&str>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut url =
        url::Url::parse(uri).map_err(|_| ProxyError::BadRequest("invalid redirect_uri"))?;
    {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in params {
            pairs.append_pair(k, v);
        }
        if let Some(state) = state {
            pairs.append_pair("state", state);
        }
    }
    let location = HeaderValue::from_str(url.as_str())
        .map_err(|_| ProxyError::BadRequest("invalid redirect_uri"))?;
    Err(ProxyError::Redirect {
        status: StatusCode::FOUND,
        location,
    })
}

/// `POST /oidc/token`: the code and refresh grants.
async fn token(app: &App, request: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
    let provider = app.oidc()?;
    let (parts, body) = request.into_parts();
    let body = read_body(body).await?;
    let form = oidc::parse_form(&body);
    let result = async {
        provider.authenticate_client(&parts.headers, &form)?;
        let invalid_grant = |d| OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", d);
        let (grant, with_nonce) = match oidc::field(&form, "grant_type") {
            Some("authorization_code") => {
                let code =
                    oidc::field(&form, "code").ok_or_else(|| invalid_grant("code is missing"))?;
                let grant = take_grant(app, &oidc::code_key(code))
                    .await?
                    .ok_or_else(|| invalid_grant("the code is unknown, used or expired"))?;
                if oidc::field(&form, "redirect_uri") != Some(grant.redirect_uri.as_str()) {
                    return Err(invalid_grant("redirect_uri does not match"));
                }
                if let Some(challenge) = &grant.code_challenge {
                    let verifier = oidc::field(&form, "code_verifier").unwrap_or_default();
                    if !oidc::pkce_matches(verifier, challenge) {
                        return Err(invalid_grant("PKCE verification failed"));
                    }
                }
                (grant, true)
            }
            Some("refresh_token") => {
                let token = oidc::field(&form, "refresh_token")
                    .ok_or_else(|| invalid_grant("refresh_token is missing"))?;
                // Taking it makes it single use: rotation.
                let grant = take_grant(app, &oidc::refresh_key(token))
                    .await?
                    .ok_or_else(|| {
                        invalid_grant("the refresh token is unknown, used or expired")
                    })?;
                (grant, false)
            }
            _ => {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "grant_type must be authorization_code or refresh_token",
                ))
            }
        };
        if grant.client_id != provider.client_id {
            return Err(invalid_grant("the grant belongs to another client"));
        }
        let current = handoff::generation(app, &grant.user.sub)
            .await
            .map_err(|_| store_unavailable())?;
        if current != grant.generation {
            return Err(invalid_grant("the user signed out"));
        }
        let refresh_token = handoff::new_session_id();
        let bytes = serde_json::to_vec(&grant).unwrap_or_default();
        app.store
            .set(
                &oidc::refresh_key(&refresh_token),
                Bytes::from(bytes),
                app.librechat_tokens.ttl(),
            )
            .await
            .map_err(|_| store_unavailable())?;
        provider.tokens(&grant, &refresh_token, with_nonce)
    }
    .await;
    let mut response = match result {
        Ok(tokens) => json_response(StatusCode::OK, tokens),
        Err(error) => {
            let mut response = json_response(error.status, error.body());
            if error.status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"chatgate\""),
                );
            }
            response
        }
    };
    for (name, value) in oidc::no_store_headers() {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

fn store_unavailable() -> OAuthError {
    OAuthError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "store unavailable",
    )
}

async fn take_grant(app: &App, key: &str) -> Result<Option<Grant>, OAuthError> {
    let bytes = app.store.take(key).await.map_err(|_| store_unavailable())?;
    Ok(bytes.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// `GET|POST /oidc/userinfo` with the access token as bearer.
fn userinfo(app: &App, headers: &HeaderMap) -> Result<Response<ProxyBody>, ProxyError> {
    let provider = app.oidc()?;
    let claims = bearer(headers).and_then(|t| provider.verify_access_token(t));
    let Some(claims) = claims else {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_token", "error_description": "the access token is invalid or expired"}),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return Ok(response);
    };
    let keep = [
        "sub",
        "email",
        "email_verified",
        "name",
        "preferred_username",
        "picture",
        "id",
        "username",
        "avatar",
        "role",
        "provider",
        "organization",
        "roles",
    ];
    let info: serde_json::Map<String, Value> = claims
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    Ok(json_response(StatusCode::OK, Value::Object(info)))
}

/// `GET /oidc/logout`: ends this browser's chatgate session and returns to
/// `post_logout_redirect_uri` when it is on chatgate's origin.
async fn oidc_logout(
    app: &App,
    ctx: &mut RequestContext,
    line: &RequestLine,
    headers: &HeaderMap,
) -> Result<Response<ProxyBody>, ProxyError> {
    let provider = app.oidc()?;
    if let Some(id) = handoff::session_id(headers) {
        handoff::end(app, id).await;
        ctx.set_cookies.push(handoff::clear_session_cookie());
    }
    let query = oidc::parse_form(line.uri.query().unwrap_or_default().as_bytes());
    match oidc::field(&query, "post_logout_redirect_uri") {
        Some(uri) if provider.redirect_uri_allowed(uri) => {
            redirect_with(uri, &[], oidc::field(&query, "state"))
        }
        _ => Ok(error_page(StatusCode::OK, "You are signed out of chat.")),
    }
}

/// `POST /api/auth/refresh` in jwt mode: LibreChat's `{token, user}`.
fn jwt_refresh(app: &App, identity: &Identity) -> Result<Response<ProxyBody>, ProxyError> {
    let minted = mint(app, identity)?;
    let c = &minted.claims;
    Ok(json_response(
        StatusCode::OK,
        json!({
            "token": minted.token,
            "user": {
                "_id": c.id, "id": c.id, "email": c.email, "name": c.name, "username": c.username,
                "avatar": c.avatar, "role": c.role, "provider": c.provider, "emailVerified": true,
                "organization": c.organization,
            },
        }),
    ))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

async fn read_body(body: Incoming) -> Result<Bytes, ProxyError> {
    // Within a time limit: a client that stalls its body must not hold a
    // connection and this request open for ever.
    body::read_whole(body, MAX_BODY, body::READ_WHOLE_TIMEOUT)
        .await
        .map_err(|_| ProxyError::BadRequest("the request body is too large, broken or too slow"))
}

pub fn json_response(status: StatusCode, value: Value) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A plain page for errors that must not redirect (SPEC section 13).
fn error_page(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let html = format!("<!doctype html><title>chatgate</title><p>{escaped}</p>\n");
    let mut response = Response::new(body::full(Bytes::from(html)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
