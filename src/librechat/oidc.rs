//! chatgate as LibreChat's OpenID provider (`auth_mode = "oidc"`, SPEC
//! section 7): discovery, JWKS, authorization code flow with PKCE S256,
//! token (code and rotating refresh grants), userinfo and logout. Codes
//! and grants live in the store, so any replica can redeem them.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use http::{HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::token::{now, TokenClaims};
use crate::config::Config;
use crate::supabase::refresh::token_hash;

/// Authorization codes live this long (SPEC section 7).
const CODE_TTL: Duration = Duration::from_secs(60);
/// ID and access tokens live this long; LibreChat refreshes them.
const ACCESS_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    #[error("oidc.signing_key: {path}: {message}")]
    Key { path: String, message: String },
}

/// What an authorization code or a refresh token grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub client_id: String,
    pub redirect_uri: String,
    pub user: TokenClaims,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub scope: String,
    pub auth_time: i64,
    /// The user's session generation; a logout since then voids the grant.
    pub generation: i64,
}

/// An OAuth error as RFC 6749 section 5.2 shapes it.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub description: &'static str,
}

impl OAuthError {
    pub fn new(status: StatusCode, code: &'static str, description: &'static str) -> Self {
        Self {
            status,
            code,
            description,
        }
    }

    pub fn body(&self) -> Value {
        json!({ "error": self.code, "error_description": self.description })
    }
}

pub struct OidcProvider {
    pub issuer: String,
    public_base: String,
    internal_base: String,
    public_origin: String,
    pub client_id: String,
    client_secret: Option<String>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    jwks: Value,
    /// `oidc.admin_roles`.
    admin_roles: Vec<String>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// Loads the RS256 signing key, generating one in development.
    pub fn new(config: &Config) -> Result<Self, OidcSetupError> {
        crate::supabase::verify::install_jwt_crypto_provider();
        let path = &config.oidc.signing_key;
        let key_error = |message: String| OidcSetupError::Key {
            path: path.display().to_string(),
            message,
        };
        if !path.exists() && config.tls.dev_self_signed {
            write_new_key(path).map_err(key_error)?;
            tracing::warn!(path = %path.display(), "generated a development OpenID signing key");
        }
        let pem = std::fs::read(path).map_err(|e| key_error(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_pem(&pem).map_err(|e| key_error(e.to_string()))?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)
            .map_err(|e| key_error(e.to_string()))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| key_error(e.to_string()))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| key_error(e.to_string()))?;
        let jwks = serde_json::to_value(JwkSet { keys: vec![jwk] })
            .map_err(|e| key_error(e.to_string()))?;

        let public_base = config
            .server
            .public_url
            .as_str()
            .trim_end_matches('/')
            .to_owned();
        let internal_base = config
            .oidc
            .internal_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_owned())
            .unwrap_or_else(|| public_base.clone());
        Ok(Self {
            issuer: format!("{public_base}/oidc"),
            public_origin: config.server.public_url.origin().ascii_serialization(),
            public_base,
            internal_base,
            client_id: config.oidc.client_id.clone(),
            client_secret: config
                .oidc
                .client_secret
                .as_ref()
                .map(|s| s.expose().to_owned()),
            encoding,
            decoding,
            kid,
            jwks,
            admin_roles: config.oidc.admin_roles.clone(),
        })
    }

    /// SPEC section 7: `["admin"]` for a dashboard role listed in
    /// `oidc.admin_roles` (LibreChat's ADMIN is instance-wide: platform
    /// staff only), `["user"]` for everyone else, organization admins too.
    pub fn roles_for(&self, dashboard_role: &str) -> Value {
        if self.admin_roles.iter().any(|r| r == dashboard_role) {
            json!(["admin"])
        } else {
            json!(["user"])
        }
    }

    /// The discovery document. Browser-facing endpoints use `public_url`;
    /// server-to-server ones `oidc.internal_url` when set.
    pub fn discovery(&self) -> Value {
        let public = &self.public_base;
        let internal = &self.internal_base;
        json!({
            "issuer": self.issuer,
            "authorization_endpoint": format!("{public}/oidc/authorize"),
            "token_endpoint": format!("{internal}/oidc/token"),
            "userinfo_endpoint": format!("{internal}/oidc/userinfo"),
            "jwks_uri": format!("{internal}/oidc/jwks.json"),
            "end_session_endpoint": format!("{public}/oidc/logout"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": ["sub", "email", "email_verified", "name", "preferred_username",
                                 "picture", "role", "roles", "organization", "nonce", "auth_time"],
        })
    }

    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// `redirect_uri` must be on `public_url`'s origin (SPEC section 13).
    pub fn redirect_uri_allowed(&self, redirect_uri: &str) -> bool {
        url::Url::parse(redirect_uri).is_ok_and(|u| {
            u.origin().ascii_serialization() == self.public_origin
                && u.username().is_empty()
                && u.password().is_none()
        })
    }

    /// Checks the client's credentials: HTTP Basic or the form's fields.
    pub fn authenticate_client(
        &self,
        headers: &HeaderMap,
        form: &[(String, String)],
    ) -> Result<(), OAuthError> {
        let invalid = || {
            OAuthError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            )
        };
        let expected = self.client_secret.as_deref().ok_or_else(invalid)?;
        let (id, secret) = match basic_credentials(headers) {
            Some(pair) => pair,
            None => (
                field(form, "client_id").ok_or_else(invalid)?.to_owned(),
                field(form, "client_secret").ok_or_else(invalid)?.to_owned(),
            ),
        };
        let same_secret = aws_lc_rs::constant_time::verify_slices_are_equal(
            secret.as_bytes(),
            expected.as_bytes(),
        )
        .is_ok();
        if id == self.client_id && same_secret {
            Ok(())
        } else {
            Err(invalid())
        }
    }

    /// Signs the ID token and access token for a grant.
    pub fn tokens(
        &self,
        grant: &Grant,
        refresh_token: &str,
        with_nonce: bool,
    ) -> Result<Value, OAuthError> {
        let now = now();
        let exp = now + ACCESS_TTL.as_secs() as i64;
        let user = &grant.user;
        let mut claims = json!({
            "iss": self.issuer,
            "sub": user.sub,
            "aud": grant.client_id,
            "iat": now,
            "exp": exp,
            "auth_time": grant.auth_time,
            "email": user.email,
            "email_verified": true,
            "name": user.name,
            "preferred_username": user.username,
            "picture": user.avatar,
            "id": user.id,
            "username": user.username,
            "avatar": user.avatar,
            "role": user.role,
            "provider": user.provider,
            "organization": user.organization,
            "roles": self.roles_for(&user.role),
        });
        if let (true, Some(nonce)) = (with_nonce, &grant.nonce) {
            claims["nonce"] = Value::String(nonce.clone());
        }
        let id_token = self.sign(&claims)?;
        let mut access = claims.clone();
        access["scope"] = Value::String(grant.scope.clone());
        if let Some(map) = access.as_object_mut() {
            map.remove("nonce");
        }
        let access_token = self.sign(&access)?;
        Ok(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TTL.as_secs(),
            "id_token": id_token,
            "refresh_token": refresh_token,
            "scope": grant.scope,
        }))
    }

    fn sign(&self, claims: &Value) -> Result<String, OAuthError> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|_| {
            OAuthError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing failed",
            )
        })
    }

    /// The claims of an access token chatgate issued, for userinfo.
    pub fn verify_access_token(&self, token: &str) -> Option<Value> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.client_id]);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Value>(token, &self.decoding, &validation).ok()?;
        // An access token carries `scope`; an ID token does not and is no bearer.
        data.claims.get("scope")?;
        Some(data.claims)
    }
}

/// PKCE S256: base64url(SHA-256(verifier)) must equal the challenge.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    aws_lc_rs::constant_time::verify_slices_are_equal(computed.as_bytes(), challenge.as_bytes())
        .is_ok()
}

pub fn code_key(code: &str) -> String {
    format!("chatgate:oidc:code:{}", token_hash(code))
}

pub fn refresh_key(token: &str) -> String {
    format!("chatgate:oidc:refresh:{}", token_hash(token))
}

pub fn code_ttl() -> Duration {
    CODE_TTL
}

pub fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// `Authorization: Basic` with RFC 6749 section 2.3.1's form-encoding.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unform = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unform(id), unform(secret)))
}

fn write_new_key(path: &Path) -> Result<(), String> {
    use aws_lc_rs::encoding::AsDer;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|e| e.to_string())?;
    let der = pair.as_der().map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    // The PEM label is assembled so that no file in the repository looks like a key.
    const LABEL: &str = "PRIVATE KEY";
    let mut pem = format!("-----BEGIN {LABEL}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {LABEL}-----\n"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    // Written whole under a private name, then linked into place: replicas
    // started at once in one directory never read a half-written key, and
    // the one that links second keeps the first one's key.
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut partial = path.as_os_str().to_owned();
    static ATTEMPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let attempt = ATTEMPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    partial.push(format!(".{}-{attempt}.partial", std::process::id()));
    let partial = std::path::PathBuf::from(partial);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| file.write_all(pem.as_bytes()))
        .and_then(|()| match std::fs::hard_link(&partial, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            linked => linked,
        });
    let _ = std::fs::remove_file(&partial);
    written.map_err(|e| e.to_string())
}

/// The JSON body and headers of a token-endpoint answer (no caching).
pub fn no_store_headers() -> [(http::HeaderName, HeaderValue); 2] {
    [
        (
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ),
        (http::header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_started_at_once_share_one_generated_key() {
        let dir = std::env::temp_dir().join(format!("chatgate-oidc-key-{}", std::process::id()));
        let path = dir.join("oidc-signing.pem");
        let _ = std::fs::remove_dir_all(&dir);
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || write_new_key(&path))
            })
            .collect();
        for writer in writers {
            assert_eq!(writer.join().unwrap(), Ok(()));
        }
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN ") && pem.trim_end().ends_with("KEY-----"));
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "partial files left behind: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert!(pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!pkce_matches(
            "wrong",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode("libre%20chat:s%3Acret");
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("libre chat".to_owned(), "s:cret".to_owned()))
        );
    }
}
