//! The chatgate token: the seed's `LibreChatJWT` (SPEC section 7), HS256
//! with `librechat.jwt_secret`. It is the hand-off token of
//! `/api/librechat/auth`, and the bearer LibreChat receives in
//! `auth_mode = "jwt"`. Minted tokens are reused per user until 10 % of
//! their life is left, so the hot path signs rarely.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// The organization inside the token (the seed's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenOrganization {
    pub id: String,
    pub name: String,
    pub domain: String,
    pub plan_type: Option<String>,
    pub librechat_config: Option<serde_json::Value>,
}

/// Every claim of the seed's `LibreChatJWT`, plus `id` (= `sub`) and
/// `provider` as LibreChat's own tokens carry them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub sub: String,
    pub id: String,
    pub email: String,
    pub name: String,
    pub username: String,
    pub avatar: String,
    pub role: String,
    pub provider: String,
    pub organization: TokenOrganization,
    pub iat: i64,
    pub exp: i64,
}

impl TokenClaims {
    /// The claims for `identity`, valid from `iat` for `ttl`.
    pub fn for_identity(identity: &Identity, iat: i64, ttl: Duration) -> Self {
        let email = identity.email().unwrap_or_default().to_owned();
        let local_part = email.split('@').next().unwrap_or_default().to_owned();
        let metadata = identity.user_metadata();
        let text = |keys: &[&str]| {
            keys.iter().find_map(|k| {
                metadata
                    .and_then(|m| m.get(*k))
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
            })
        };
        let name = text(&["full_name", "name"]).unwrap_or_else(|| local_part.clone());
        let avatar = text(&["avatar_url", "picture"]).unwrap_or_else(|| default_avatar(&name));
        let org = identity.organization();
        Self {
            sub: identity.user_id().to_owned(),
            id: identity.user_id().to_owned(),
            email,
            username: local_part,
            avatar,
            name,
            role: identity.role().unwrap_or("user").to_owned(),
            provider: "supabase".to_owned(),
            organization: TokenOrganization {
                id: org.id.clone(),
                name: org.name.clone(),
                domain: org.domain.clone(),
                plan_type: org.plan_type.clone(),
                librechat_config: org.librechat_config.clone(),
            },
            iat,
            exp: iat + ttl.as_secs() as i64,
        }
    }

    /// Whether two claim sets describe the same user and organization
    /// (a cached token is reused only then).
    fn same_subject(&self, other: &TokenClaims) -> bool {
        let strip = |c: &TokenClaims| TokenClaims {
            iat: 0,
            exp: 0,
            ..c.clone()
        };
        strip(self) == strip(other)
    }
}

/// SPEC section 7: ui-avatars with the brand colours when no picture is known.
pub fn default_avatar(name: &str) -> String {
    let encoded =
        percent_encoding::utf8_percent_encode(name, crate::supabase::cookie::URI_COMPONENT);
    format!("https://ui-avatars.com/api/?name={encoded}&background=0D9488&color=fff")
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("librechat.jwt_secret is not set")]
    NoSecret,
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(String),
}

/// A minted token and its claims.
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub claims: TokenClaims,
}

pub struct TokenIssuer {
    keys: Option<(EncodingKey, DecodingKey)>,
    ttl: Duration,
    cache: moka::sync::Cache<String, Arc<Minted>>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("ttl", &self.ttl)
            .field("secret", &self.keys.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl TokenIssuer {
    pub fn new(secret: Option<&str>, ttl: Duration) -> Self {
        crate::supabase::verify::install_jwt_crypto_provider();
        let keys = secret.filter(|s| !s.is_empty()).map(|s| {
            (
                EncodingKey::from_secret(s.as_bytes()),
                DecodingKey::from_secret(s.as_bytes()),
            )
        });
        Self {
            keys,
            ttl,
            cache: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The user's token: the cached one while more than 10 % of its life is
    /// left and it still describes them, else a new one.
    pub fn for_identity(&self, identity: &Identity) -> Result<Arc<Minted>, TokenError> {
        let now = now();
        let fresh = TokenClaims::for_identity(identity, now, self.ttl);
        if let Some(cached) = self.cache.get(identity.user_id()) {
            let life = cached.claims.exp - cached.claims.iat;
            if cached.claims.exp - now > life / 10 && cached.claims.same_subject(&fresh) {
                return Ok(cached);
            }
        }
        let minted = Arc::new(Minted {
            token: self.sign(&fresh)?,
            claims: fresh,
        });
        self.cache
            .insert(identity.user_id().to_owned(), minted.clone());
        Ok(minted)
    }

    pub fn sign(&self, claims: &TokenClaims) -> Result<String, TokenError> {
        let (encoding, _) = self.keys.as_ref().ok_or(TokenError::NoSecret)?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Checks signature (HS256 only) and expiry (no leeway: chatgate issued it).
    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let (_, decoding) = self.keys.as_ref().ok_or(TokenError::NoSecret)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match jsonwebtoken::decode::<TokenClaims>(token, decoding, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(e) => Err(TokenError::Invalid(e.to_string())),
        }
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, iat: i64, exp: i64) -> TokenClaims {
        TokenClaims {
            sub: sub.to_owned(),
            id: sub.to_owned(),
            email: "ada@acme.example".to_owned(),
            name: "ada".to_owned(),
            username: "ada".to_owned(),
            avatar: default_avatar("ada"),
            role: "member".to_owned(),
            provider: "supabase".to_owned(),
            organization: TokenOrganization {
                id: "o1".to_owned(),
                name: "Acme".to_owned(),
                domain: "acme.example".to_owned(),
                plan_type: Some("pro".to_owned()),
                librechat_config: None,
            },
            iat,
            exp,
        }
    }

    #[test]
    fn signed_tokens_verify_and_forged_or_expired_ones_do_not() {
        let issuer = TokenIssuer::new(
            Some("a-secret-of-at-least-32-bytes-long!"),
            Duration::from_secs(60),
        );
        let token = issuer.sign(&claims("u1", now(), now() + 60)).unwrap();
        assert_eq!(issuer.verify(&token).unwrap().sub, "u1");
        let other = TokenIssuer::new(
            Some("another-secret-of-32-bytes-long!!!"),
            Duration::from_secs(60),
        );
        assert!(matches!(other.verify(&token), Err(TokenError::Invalid(_))));
        let expired = issuer.sign(&claims("u1", now() - 100, now() - 10)).unwrap();
        assert!(matches!(issuer.verify(&expired), Err(TokenError::Expired)));
        assert!(matches!(
            issuer.verify("a.b.c"),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn the_avatar_falls_back_to_ui_avatars() {
        assert_eq!(
            default_avatar("Ada Lovelace"),
            "https://ui-avatars.com/api/?name=Ada%20Lovelace&background=0D9488&color=fff"
        );
    }

    #[test]
    fn without_a_secret_nothing_is_minted() {
        let issuer = TokenIssuer::new(None, Duration::from_secs(60));
        assert!(matches!(
            issuer.sign(&claims("u", 0, 1)),
            Err(TokenError::NoSecret)
        ));
    }
}
