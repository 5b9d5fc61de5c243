//! A stand-in Supabase for chatgate's integration tests: a real hyper HTTP/1.1 server on
//! 127.0.0.1 that answers like Kong + GoTrue (`/auth/v1`) + PostgREST (`/rest/v1`) wherever
//! chatgate depends on the answer. GoTrue and PostgREST cannot run here; this can.
//!
//! What it reproduces, and from which upstream source:
//! - Kong `key-auth`: every route wants `apikey: <anon key>`; without it 401
//!   `{"message":"No API key found in request"}`, with a wrong one 401
//!   `{"message":"Invalid API key"}`.
//! - GoTrue refresh (`internal/tokens/service.go` `RefreshTokenGrant`,
//!   `internal/models/refresh_token.go`): the presented token is revoked and a child issued
//!   (12 lower-case base32 characters, like `crypto.SecureAlphanumeric(12)`). A revoked token
//!   whose child is the session's active token gets that active token back, at any time. Any
//!   other revoked token inside the reuse interval (measured from when it was revoked) gets a
//!   new child; outside it, every live token of the session is revoked and the answer is 400
//!   `refresh_token_already_used`. Like upstream, that family revocation stamps the revoked
//!   tokens with "now", so the formerly active token still works for one more reuse interval.
//! - GoTrue errors (`internal/api/errors.go` `HandleResponseError`, `apiversions.go`): header
//!   `x-sb-error-code: <code>`; with `X-Supabase-Api-Version` ≥ 2024-01-01 the body is
//!   `{"code":"<code>","message":"…"}` and the header is echoed back, otherwise
//!   `{"code":<status>,"error_code":"<code>","msg":"…"}` (plus `error_id` on a 5xx). OAuth-style
//!   errors (missing `refresh_token`, unknown grant type) are `{"error":…,"error_description":…}`
//!   with no `x-sb-error-code`.
//! - GoTrue `/user` (`internal/api/auth.go`): no bearer → 401 `no_authorization`, a token that
//!   does not verify or is expired (no leeway) → 403 `bad_jwt`, unknown user → 403
//!   `user_not_found`, ended session → 403 `session_not_found`.
//! - PostgREST (`src/PostgREST/Error.hs`, `src/PostgREST/Auth.hs`): a bad JWT → 401 `PGRST301`,
//!   a failed claim check (`exp` past by more than the 30 s skew PostgREST allows) → 401
//!   `PGRST303`, both with `WWW-Authenticate: Bearer error="invalid_token", …`; the `profiles`
//!   table has the policy "a row is visible when its `id` is the token's `sub`" (`service_role`
//!   sees all, `anon` nothing); `Accept: application/vnd.pgrst.object+json` with zero or several
//!   rows → 406 `PGRST116`.
//!
//! A test reads like a story:
//! ```ignore
//! let supabase = StandInSupabase::start(SigningKind::Es256).await;
//! let alice = supabase.sign_in_expired("alice@example.com", Duration::from_secs(120));
//! supabase.set_profile(alice.user_id(), "member", Some(json!({"id": "…", "domain": "acme.com"})));
//! // … a request through chatgate with alice's cookie …
//! assert_eq!(supabase.refresh_calls(), 1);
//! ```
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{request, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// GoTrue's default access-token lifetime (`GOTRUE_JWT_EXP`).
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(3600);

/// Hosted Supabase's refresh-token reuse interval (`GOTRUE_SECURITY_REFRESH_TOKEN_REUSE_INTERVAL`).
pub const DEFAULT_REUSE_INTERVAL: Duration = Duration::from_secs(10);

/// Clock skew PostgREST tolerates on `exp`, `nbf` and `iat` (`allowedSkewSeconds`).
pub const POSTGREST_SKEW_SECONDS: i64 = 30;

/// The one `select` chatgate sends (SPEC section 6), decoded.
pub const PROFILE_SELECT: &str =
    "role,organization:organizations(id,name,domain,plan_type,librechat_config)";

const PROFILE_COLUMNS: [&str; 3] = ["id", "role", "organization_id"];
const ORGANIZATION_COLUMNS: [&str; 5] = ["id", "name", "domain", "plan_type", "librechat_config"];
const OBJECT_MEDIA_TYPE: &str = "application/vnd.pgrst.object+json";
const API_VERSION_HEADER: &str = "x-supabase-api-version";

/// How the stand-in signs access tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningKind {
    /// The legacy JWT secret ([`StandInSupabase::jwt_secret`]); tokens carry no `kid`.
    Hs256,
    /// A P-256 signing key published at the JWKS route.
    Es256,
    /// A 2048-bit RSA signing key published at the JWKS route.
    Rs256,
}

/// The routes the stand-in counts and records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /auth/v1/token?grant_type=refresh_token`
    Refresh,
    /// `GET /auth/v1/.well-known/jwks.json`
    Jwks,
    /// `GET /auth/v1/health`
    Health,
    /// `GET /auth/v1/user`
    User,
    /// `GET /rest/v1/profiles`
    Profiles,
    /// Anything else.
    Other,
}

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path_and_query: String,
    /// Lower-case names, in the order hyper's `HeaderMap` yields them.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A Supabase session as GoTrue returns it and `@supabase/ssr` stores it in the cookie.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at: i64,
    pub expires_in: i64,
    pub token_type: String,
    pub user: Value,
}

impl Session {
    /// The session JSON (what `@supabase/ssr` base64url-encodes into the cookie).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("session serializes")
    }

    /// Parses a session JSON, e.g. a refresh answer or a cookie chatgate wrote back.
    pub fn from_json(json: &str) -> Option<Session> {
        serde_json::from_str(json).ok()
    }

    /// `user.id`
    pub fn user_id(&self) -> &str {
        self.user["id"].as_str().unwrap_or_default()
    }

    /// The access token's claims, decoded without verification (a base for bad-token tables).
    pub fn claims(&self) -> Value {
        jwt_part(&self.access_token, 1).unwrap_or(Value::Null)
    }
}

/// A running stand-in Supabase. Dropping it stops it in the background; call
/// [`StandInSupabase::stop`] to wait until the port is closed.
pub struct StandInSupabase {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

impl StandInSupabase {
    /// Starts a stand-in on a free port of 127.0.0.1, signing access tokens per `signing`.
    pub async fn start(signing: SigningKind) -> StandInSupabase {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("stand-in Supabase: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let url = format!("http://{addr}");
        let keys = match signing {
            SigningKind::Hs256 => Vec::new(),
            kind => vec![SigningKey::generate(kind)],
        };
        let state = Arc::new(State {
            kind: signing,
            issuer: format!("{url}/auth/v1"),
            url,
            jwt_secret: random_alphanumeric(40),
            anon_key: format!("sb_publishable_{}", random_alphanumeric(24)),
            world: Mutex::new(World {
                keys,
                users: Vec::new(),
                sessions: HashMap::new(),
                refresh_tokens: Vec::new(),
                profiles: HashMap::new(),
                calls: HashMap::new(),
                last: HashMap::new(),
                failures: (0, 500),
                refresh_delay: Duration::ZERO,
                postgrest_silent: false,
                gotrue_down: false,
                reuse_interval: DEFAULT_REUSE_INTERVAL,
                access_ttl: DEFAULT_ACCESS_TTL,
            }),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, state.clone(), shutdown_rx));
        StandInSupabase {
            addr,
            state,
            shutdown,
            accept_task: Mutex::new(Some(accept_task)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.state.url.clone()
    }

    /// The legacy HS256 secret (40 random characters, fresh per server).
    pub fn jwt_secret(&self) -> String {
        self.state.jwt_secret.clone()
    }

    /// The key Kong wants in `apikey` on every route (random, not a JWT).
    pub fn anon_key(&self) -> String {
        self.state.anon_key.clone()
    }

    /// `{url}/auth/v1`, the `iss` of every token.
    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    pub fn signing(&self) -> SigningKind {
        self.state.kind
    }

    /// The `kid` new tokens carry (`None` for HS256).
    pub fn current_kid(&self) -> Option<String> {
        self.world().keys.last().map(|key| key.kid.clone())
    }

    /// The JWKS document the JWKS route serves.
    pub fn jwks(&self) -> Value {
        jwks_document(&self.world())
    }

    /// Signs in `email` (registering the user, id = uuid v4, on first use) and returns a new
    /// session whose access token lives `access_ttl`.
    pub fn sign_in(&self, email: &str, access_ttl: Duration) -> Session {
        let iat = unix_now();
        self.state
            .open_session(&mut self.world(), email, iat, iat + secs(access_ttl))
    }

    /// Like [`StandInSupabase::sign_in`], with an access token that expired `ago` ago (issued
    /// an hour before that). chatgate allows 30 s of leeway, PostgREST 30 s of skew.
    pub fn sign_in_expired(&self, email: &str, ago: Duration) -> Session {
        let exp = unix_now() - secs(ago);
        self.state.open_session(
            &mut self.world(),
            email,
            exp - secs(DEFAULT_ACCESS_TTL),
            exp,
        )
    }

    /// Signs arbitrary claims with the server's current key (HS256 secret or current `kid`).
    pub fn mint_access_token(&self, claims: Value) -> String {
        self.state.mint(&self.world(), &claims)
    }

    /// Puts a row in `profiles` for `user_id`. `organization` is the embedded
    /// `organizations` row (`{id, name, domain, plan_type, librechat_config}`); `None` means
    /// `organization_id` is null.
    pub fn set_profile(&self, user_id: &str, role: &str, organization: Option<Value>) {
        self.world().profiles.insert(
            user_id.to_owned(),
            Profile {
                role: role.to_owned(),
                organization,
            },
        );
    }

    /// Removes `user_id`'s row from `profiles`.
    pub fn remove_profile(&self, user_id: &str) {
        self.world().profiles.remove(user_id);
    }

    /// How many requests `route` received (including ones refused for a missing `apikey`).
    pub fn calls(&self, route: Route) -> usize {
        self.world().calls.get(&route).copied().unwrap_or(0)
    }

    /// `POST /auth/v1/token?grant_type=refresh_token` calls so far.
    pub fn refresh_calls(&self) -> usize {
        self.calls(Route::Refresh)
    }

    /// `GET /rest/v1/profiles` calls so far.
    pub fn profile_calls(&self) -> usize {
        self.calls(Route::Profiles)
    }

    /// `GET /auth/v1/.well-known/jwks.json` calls so far.
    pub fn jwks_calls(&self) -> usize {
        self.calls(Route::Jwks)
    }

    /// The last request `route` received.
    pub fn last_request(&self, route: Route) -> Option<RecordedRequest> {
        self.world().last.get(&route).cloned()
    }

    /// The next `n` refreshes answer `status` the way GoTrue's own error handler does
    /// (5xx: `unexpected_failure`; 409: `conflict`; 429: `over_request_rate_limit`).
    pub fn fail_next_refreshes(&self, n: usize, status: u16) {
        self.world().failures = (n, status);
    }

    /// Ends every current session of `user_id`: refreshing any of its tokens answers 400 with
    /// `code` from now on (`session_not_found`, `session_expired`, `user_banned`, …).
    /// Sessions opened later are not affected.
    pub fn revoke_session(&self, user_id: &str, code: &str) {
        for session in self.world().sessions.values_mut() {
            if session.user_id == user_id {
                session.ended = Some(code.to_owned());
            }
        }
    }

    /// From now on PostgREST takes profile lookups and never answers (a
    /// database outage behind a live gateway); `false` answers again.
    pub fn set_postgrest_silent(&self, silent: bool) {
        self.world().postgrest_silent = silent;
    }

    /// GoTrue is down behind a live gateway: from now on the JWKS (and every
    /// other `/auth/v1` route) gets Kong's answer for an upstream that does
    /// not respond, 502 `{"message":"An invalid response was received from
    /// the upstream server"}`; `false` answers again.
    pub fn set_gotrue_down(&self, down: bool) {
        self.world().gotrue_down = down;
    }

    /// Holds each refresh answer for `d` (so concurrent requests overlap).
    pub fn set_refresh_delay(&self, d: Duration) {
        self.world().refresh_delay = d;
    }

    /// GoTrue's refresh-token reuse interval (default 10 s, as on hosted projects).
    pub fn set_reuse_interval(&self, d: Duration) {
        self.world().reuse_interval = d;
    }

    /// Lifetime of access tokens issued by refresh (`GOTRUE_JWT_EXP`, default 3600 s).
    pub fn set_access_token_ttl(&self, d: Duration) {
        self.world().access_ttl = d;
    }

    /// ES256/RS256: a new key with a new `kid` signs from now on; the JWKS publishes both.
    pub fn rotate_signing_key(&self) {
        assert_ne!(
            self.state.kind,
            SigningKind::Hs256,
            "rotate_signing_key needs an ES256 or RS256 stand-in"
        );
        let key = SigningKey::generate(self.state.kind);
        self.world().keys.push(key);
    }

    /// Stops accepting and drops every open connection; when this returns, connecting to the
    /// port is refused (chatgate then sees a network error).
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        let task = self.accept_task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.state.world.lock().unwrap()
    }
}

impl Drop for StandInSupabase {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

// ---------------------------------------------------------------------------------------------
// State

struct State {
    kind: SigningKind,
    url: String,
    issuer: String,
    jwt_secret: String,
    anon_key: String,
    world: Mutex<World>,
}

/// Everything that changes; one lock, never held across an `.await`.
struct World {
    /// ES256/RS256 keys, oldest first; the last one signs.
    keys: Vec<SigningKey>,
    users: Vec<User>,
    sessions: HashMap<String, AuthSession>,
    /// In creation order, like the serial primary key GoTrue orders by.
    refresh_tokens: Vec<RefreshTokenRow>,
    profiles: HashMap<String, Profile>,
    calls: HashMap<Route, usize>,
    last: HashMap<Route, RecordedRequest>,
    /// (how many refreshes still fail, with which status)
    failures: (usize, u16),
    refresh_delay: Duration,
    /// PostgREST accepts profile lookups and never answers them.
    postgrest_silent: bool,
    /// Kong answers 502 for every GoTrue route (`/auth/v1/…`).
    gotrue_down: bool,
    reuse_interval: Duration,
    access_ttl: Duration,
}

struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public_jwk: Value,
}

struct User {
    id: String,
    email: String,
    created_at: i64,
    identity_id: String,
}

struct AuthSession {
    user_id: String,
    /// When the user signed in (the `amr` timestamp).
    signed_in_at: i64,
    /// Set by `revoke_session`: the error code every refresh now gets.
    ended: Option<String>,
}

struct RefreshTokenRow {
    token: String,
    parent: Option<String>,
    session_id: String,
    revoked: bool,
    /// GoTrue's `updated_at`: set when the row is created or revoked.
    updated_at: Instant,
}

struct Profile {
    role: String,
    organization: Option<Value>,
}

impl SigningKey {
    fn generate(kind: SigningKind) -> SigningKey {
        let (alg, encoding) = match kind {
            SigningKind::Es256 => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &SystemRandom::new(),
                )
                .expect("generate P-256 key");
                (Algorithm::ES256, EncodingKey::from_ec_der(pkcs8.as_ref()))
            }
            SigningKind::Rs256 => {
                let pair =
                    aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).expect("generate RSA key");
                let pkcs8: Pkcs8V1Der<'static> = pair.as_der().expect("RSA key as PKCS#8");
                // jsonwebtoken's aws-lc signer wants PKCS#1; its PEM reader unwraps PKCS#8.
                let pem = pem_wrap("PRIVATE KEY", pkcs8.as_ref());
                let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA PEM");
                (Algorithm::RS256, key)
            }
            SigningKind::Hs256 => unreachable!("HS256 signs with the JWT secret"),
        };
        let kid = uuid::Uuid::new_v4().to_string();
        let jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK");
        let (decoding, public_jwk) = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(ec) => (
                DecodingKey::from_ec_components(&ec.x, &ec.y).expect("EC decoding key"),
                json!({"alg": "ES256", "crv": "P-256", "ext": true, "key_ops": ["verify"],
                       "kid": kid, "kty": "EC", "use": "sig", "x": ec.x, "y": ec.y}),
            ),
            AlgorithmParameters::RSA(rsa) => (
                DecodingKey::from_rsa_components(&rsa.n, &rsa.e).expect("RSA decoding key"),
                json!({"alg": "RS256", "e": rsa.e, "ext": true, "key_ops": ["verify"],
                       "kid": kid, "kty": "RSA", "n": rsa.n, "use": "sig"}),
            ),
            other => unreachable!("unexpected JWK parameters {other:?}"),
        };
        SigningKey {
            kid,
            alg,
            encoding,
            decoding,
            public_jwk,
        }
    }
}

impl State {
    fn open_session(&self, world: &mut World, email: &str, iat: i64, exp: i64) -> Session {
        let user_index = match world.users.iter().position(|u| u.email == email) {
            Some(index) => index,
            None => {
                world.users.push(User {
                    id: uuid::Uuid::new_v4().to_string(),
                    email: email.to_owned(),
                    created_at: iat,
                    identity_id: uuid::Uuid::new_v4().to_string(),
                });
                world.users.len() - 1
            }
        };
        let user_id = world.users[user_index].id.clone();
        let session_id = uuid::Uuid::new_v4().to_string();
        world.sessions.insert(
            session_id.clone(),
            AuthSession {
                user_id: user_id.clone(),
                signed_in_at: iat,
                ended: None,
            },
        );
        let refresh_token = gotrue_refresh_token();
        world.refresh_tokens.push(RefreshTokenRow {
            token: refresh_token.clone(),
            parent: None,
            session_id: session_id.clone(),
            revoked: false,
            updated_at: Instant::now(),
        });
        let claims = self.access_claims(world, &user_id, &session_id, iat, exp);
        Session {
            access_token: self.mint(world, &claims),
            refresh_token,
            expires_at: exp,
            expires_in: exp - iat,
            token_type: "bearer".to_owned(),
            user: user_json(&world.users[user_index], iat),
        }
    }

    /// The claims GoTrue puts in an access token (`AccessTokenClaims`).
    fn access_claims(
        &self,
        world: &World,
        user_id: &str,
        session_id: &str,
        iat: i64,
        exp: i64,
    ) -> Value {
        let user = world.user(user_id).expect("known user");
        let signed_in_at = world
            .sessions
            .get(session_id)
            .map_or(iat, |s| s.signed_in_at);
        json!({
            "iss": self.issuer,
            "sub": user.id,
            "aud": "authenticated",
            "exp": exp,
            "iat": iat,
            "email": user.email,
            "phone": "",
            "app_metadata": {"provider": "email", "providers": ["email"]},
            "user_metadata": {"email": user.email, "email_verified": true,
                              "phone_verified": false, "sub": user.id},
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": "password", "timestamp": signed_in_at}],
            "session_id": session_id,
            "is_anonymous": false,
        })
    }

    fn mint(&self, world: &World, claims: &Value) -> String {
        match world.keys.last() {
            None => jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                claims,
                &EncodingKey::from_secret(self.jwt_secret.as_bytes()),
            ),
            Some(key) => {
                let mut header = Header::new(key.alg);
                header.kid = Some(key.kid.clone());
                jsonwebtoken::encode(&header, claims, &key.encoding)
            }
        }
        .expect("sign access token")
    }

    /// Checks the signature the way GoTrue and PostgREST do (claims are each caller's job).
    fn verify(&self, world: &World, token: &str) -> Result<Value, JwtRejection> {
        if token.is_empty() {
            return Err(JwtRejection::Empty);
        }
        let parts = token.split('.').count();
        if parts != 3 {
            return Err(JwtRejection::Parts(parts));
        }
        let header = jwt_part(token, 0).ok_or(JwtRejection::Undecodable)?;
        let alg = header["alg"].as_str().ok_or(JwtRejection::Undecodable)?;
        let (expected, name) = match self.kind {
            SigningKind::Hs256 => (Algorithm::HS256, "HS256"),
            SigningKind::Es256 => (Algorithm::ES256, "ES256"),
            SigningKind::Rs256 => (Algorithm::RS256, "RS256"),
        };
        if alg != name {
            return Err(JwtRejection::BadAlgorithm);
        }
        let secret;
        let candidates: Vec<&DecodingKey> = match (self.kind, header["kid"].as_str()) {
            (SigningKind::Hs256, _) => {
                secret = DecodingKey::from_secret(self.jwt_secret.as_bytes());
                vec![&secret]
            }
            (_, Some(kid)) => match world.keys.iter().find(|k| k.kid == kid) {
                Some(key) => vec![&key.decoding],
                None => return Err(JwtRejection::UnknownKey),
            },
            (_, None) => world.keys.iter().map(|k| &k.decoding).collect(),
        };
        let mut validation = Validation::new(expected);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let mut rejection = JwtRejection::BadSignature;
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    rejection = match e.kind() {
                        ErrorKind::InvalidSignature => JwtRejection::BadSignature,
                        ErrorKind::InvalidAlgorithm => JwtRejection::BadAlgorithm,
                        ErrorKind::InvalidToken
                        | ErrorKind::Base64(_)
                        | ErrorKind::Json(_)
                        | ErrorKind::Utf8(_) => JwtRejection::Undecodable,
                        _ => JwtRejection::BadSignature,
                    };
                }
            }
        }
        Err(rejection)
    }
}

impl World {
    fn user(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// GoTrue's rotation; on success the refresh token to hand out and its session id.
    fn rotate(&mut self, presented: &str) -> Result<(String, String), GoTrueError> {
        let Some(index) = self
            .refresh_tokens
            .iter()
            .position(|t| t.token == presented)
        else {
            return Err(GoTrueError::bad_request(
                "refresh_token_not_found",
                "Invalid Refresh Token: Refresh Token Not Found",
            ));
        };
        let session_id = self.refresh_tokens[index].session_id.clone();
        let Some(session) = self.sessions.get(&session_id) else {
            return Err(ended_session_error("session_not_found"));
        };
        if let Some(code) = &session.ended {
            return Err(ended_session_error(code));
        }

        let now = Instant::now();
        let mut issued = None;
        if self.refresh_tokens[index].revoked {
            let active = self
                .refresh_tokens
                .iter()
                .rev()
                .find(|t| t.session_id == session_id && !t.revoked);
            match active {
                // The client lost the answer to its last refresh: hand the same child out again.
                Some(active) if active.parent.as_deref() == Some(presented) => {
                    issued = Some(active.token.clone());
                }
                _ => {
                    let reuse_until = self.refresh_tokens[index].updated_at + self.reuse_interval;
                    if now > reuse_until {
                        for row in &mut self.refresh_tokens {
                            if row.session_id == session_id && !row.revoked {
                                row.revoked = true;
                                row.updated_at = now;
                            }
                        }
                        return Err(GoTrueError::bad_request(
                            "refresh_token_already_used",
                            "Invalid Refresh Token: Already Used",
                        ));
                    }
                }
            }
        }
        let issued = match issued {
            Some(token) => token,
            None => {
                let row = &mut self.refresh_tokens[index];
                row.revoked = true;
                row.updated_at = now;
                let child = gotrue_refresh_token();
                self.refresh_tokens.push(RefreshTokenRow {
                    token: child.clone(),
                    parent: Some(presented.to_owned()),
                    session_id: session_id.clone(),
                    revoked: false,
                    updated_at: now,
                });
                child
            }
        };
        Ok((issued, session_id))
    }
}

fn ended_session_error(code: &str) -> GoTrueError {
    let message = match code {
        "user_banned" => "Invalid Refresh Token: User Banned".to_owned(),
        "session_not_found" => "Invalid Refresh Token: No Valid Session Found".to_owned(),
        "session_expired" => "Invalid Refresh Token: Session Expired".to_owned(),
        "refresh_token_not_found" => "Invalid Refresh Token: Refresh Token Not Found".to_owned(),
        "refresh_token_already_used" => "Invalid Refresh Token: Already Used".to_owned(),
        other => format!("Invalid Refresh Token: {other}"),
    };
    GoTrueError::bad_request(code, message)
}

fn jwks_document(world: &World) -> Value {
    let keys: Vec<Value> = world.keys.iter().map(|k| k.public_jwk.clone()).collect();
    json!({ "keys": keys })
}

/// GoTrue's user object as `/user` and the token endpoint return it.
fn user_json(user: &User, last_sign_in_at: i64) -> Value {
    let created = rfc3339(user.created_at);
    let last = rfc3339(last_sign_in_at);
    let identity_data = json!({"email": user.email, "email_verified": true,
                               "phone_verified": false, "sub": user.id});
    json!({
        "id": user.id,
        "aud": "authenticated",
        "role": "authenticated",
        "email": user.email,
        "email_confirmed_at": created,
        "phone": "",
        "confirmed_at": created,
        "last_sign_in_at": last,
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": identity_data,
        "identities": [{
            "identity_id": user.identity_id,
            "id": user.id,
            "user_id": user.id,
            "identity_data": identity_data,
            "provider": "email",
            "last_sign_in_at": created,
            "created_at": created,
            "updated_at": created,
            "email": user.email,
        }],
        "created_at": created,
        "updated_at": last,
        "is_anonymous": false,
    })
}

// ---------------------------------------------------------------------------------------------
// Serving

type Reply = Response<Full<Bytes>>;

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                while connections.try_join_next().is_some() {}
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

async fn handle(state: Arc<State>, req: http::Request<Incoming>) -> Result<Reply, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let route = route_of(&parts);
    {
        let mut world = state.world.lock().unwrap();
        *world.calls.entry(route).or_default() += 1;
        world.last.insert(route, record(&parts, &body));
    }
    if let Some(refusal) = kong_key_auth(&state, &parts.headers) {
        return Ok(refusal);
    }
    if parts.uri.path().starts_with("/auth/v1/") && state.world.lock().unwrap().gotrue_down {
        return Ok(json_reply(
            StatusCode::BAD_GATEWAY,
            &json!({"message": "An invalid response was received from the upstream server"}),
            "application/json; charset=utf-8",
        ));
    }
    let reply = match route {
        Route::Refresh => refresh(&state, &parts.headers, &body).await,
        Route::Jwks => {
            let document = jwks_document(&state.world.lock().unwrap());
            let mut reply = json_reply(StatusCode::OK, &document, "application/json");
            set_header(&mut reply, "cache-control", "public, max-age=600");
            reply
        }
        Route::Health => json_reply(
            StatusCode::OK,
            &json!({"version": "v2.177.0", "name": "GoTrue",
                    "description": "GoTrue is a user registration and authentication API"}),
            "application/json",
        ),
        Route::User => current_user(&state, &parts.headers),
        Route::Profiles => {
            let silent = state.world.lock().unwrap().postgrest_silent;
            if silent {
                // Longer than any client waits; the connection is dropped with the test.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            profiles(&state, &parts)
        }
        Route::Other => other_route(&parts),
    };
    Ok(reply)
}

fn route_of(parts: &request::Parts) -> Route {
    let path = parts.uri.path();
    let query = query_pairs(parts.uri.query());
    match (&parts.method, path) {
        (&Method::POST, "/auth/v1/token")
            if query
                .iter()
                .any(|(k, v)| k == "grant_type" && v == "refresh_token") =>
        {
            Route::Refresh
        }
        (&Method::GET, "/auth/v1/.well-known/jwks.json") => Route::Jwks,
        (&Method::GET, "/auth/v1/health") => Route::Health,
        (&Method::GET, "/auth/v1/user") => Route::User,
        (&Method::GET, "/rest/v1/profiles") => Route::Profiles,
        _ => Route::Other,
    }
}

fn record(parts: &request::Parts, body: &Bytes) -> RecordedRequest {
    RecordedRequest {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map(|pq| pq.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

/// Kong's `key-auth` plugin in front of every Supabase route.
fn kong_key_auth(state: &State, headers: &HeaderMap) -> Option<Reply> {
    let message = match headers.get("apikey") {
        None => "No API key found in request",
        Some(key) if key.as_bytes() == state.anon_key.as_bytes() => return None,
        Some(_) => "Invalid API key",
    };
    Some(json_reply(
        StatusCode::UNAUTHORIZED,
        &json!({ "message": message }),
        "application/json; charset=utf-8",
    ))
}

fn other_route(parts: &request::Parts) -> Reply {
    let path = parts.uri.path();
    if path == "/auth/v1/token" && parts.method == Method::POST {
        return oauth_error("unsupported_grant_type", "");
    }
    if let Some(table) = path.strip_prefix("/rest/v1/") {
        if parts.method == Method::GET && !table.is_empty() && !table.contains('/') {
            return postgrest_error(
                StatusCode::NOT_FOUND,
                "PGRST205",
                &format!("Could not find the table 'public.{table}' in the schema cache"),
                Value::Null,
                Value::Null,
                &[],
            );
        }
    }
    json_reply(
        StatusCode::NOT_FOUND,
        &json!({"message": "no Route matched with those values"}),
        "application/json; charset=utf-8",
    )
}

// ---------------------------------------------------------------------------------------------
// GoTrue

/// An `HTTPError` of GoTrue's (`internal/api/apierrors`).
struct GoTrueError {
    status: StatusCode,
    code: String,
    message: String,
}

impl GoTrueError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> GoTrueError {
        GoTrueError {
            status: StatusCode::from_u16(status).expect("valid status"),
            code: code.to_owned(),
            message: message.into(),
        }
    }

    fn bad_request(code: &str, message: impl Into<String>) -> GoTrueError {
        GoTrueError::new(400, code, message)
    }

    /// `HandleResponseError`: body shape by `X-Supabase-Api-Version`, code in `x-sb-error-code`.
    fn reply(&self, request_headers: &HeaderMap) -> Reply {
        let versioned = api_version_2024(request_headers);
        let body = if versioned {
            json!({"code": self.code, "message": self.message})
        } else {
            let mut body = json!({"code": self.status.as_u16(), "error_code": self.code,
                                  "msg": self.message});
            if self.status.is_server_error() {
                body["error_id"] = json!(uuid::Uuid::new_v4().to_string());
            }
            body
        };
        let mut reply = json_reply(self.status, &body, "application/json");
        set_header(&mut reply, "x-sb-error-code", &self.code);
        if versioned {
            set_header(&mut reply, API_VERSION_HEADER, "2024-01-01");
        }
        reply
    }
}

/// `DetermineClosestAPIVersion`: a `YYYY-MM-DD` on or after 2024-01-01 selects the new shape.
fn api_version_2024(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(API_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let b = value.as_bytes();
    let is_date = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    is_date && value >= "2024-01-01"
}

/// GoTrue's `OAuthError`: always 400, no `x-sb-error-code`.
fn oauth_error(error: &str, description: &str) -> Reply {
    let mut body = json!({ "error": error });
    if !description.is_empty() {
        body["error_description"] = json!(description);
    }
    json_reply(StatusCode::BAD_REQUEST, &body, "application/json")
}

async fn refresh(state: &State, headers: &HeaderMap, body: &Bytes) -> Reply {
    let (delay, failure) = {
        let mut world = state.world.lock().unwrap();
        let failure = match world.failures {
            (0, _) => None,
            (n, status) => {
                world.failures = (n - 1, status);
                Some(status)
            }
        };
        (world.refresh_delay, failure)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(status) = failure {
        let error = match status {
            409 => GoTrueError::new(
                409,
                "conflict",
                "Too many concurrent token refresh requests on the same session or refresh token",
            ),
            429 => GoTrueError::new(429, "over_request_rate_limit", "Request rate limit reached"),
            status => GoTrueError::new(status, "unexpected_failure", "Internal Server Error"),
        };
        return error.reply(headers);
    }

    // `retrieveRequestParams`: the body must unmarshal into `{"refresh_token": string}`.
    let presented = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => match fields.get("refresh_token") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(token)) => token.clone(),
            Some(other) => {
                return bad_json(&format!("refresh_token is {other}, not a string"), headers)
            }
        },
        Ok(Value::Null) => String::new(),
        Ok(other) => return bad_json(&format!("body is {other}, not an object"), headers),
        Err(e) => return bad_json(&e.to_string(), headers),
    };
    if presented.is_empty() {
        return oauth_error("invalid_request", "refresh_token required");
    }

    let mut world = state.world.lock().unwrap();
    let (refresh_token, session_id) = match world.rotate(&presented) {
        Ok(issued) => issued,
        Err(error) => return error.reply(headers),
    };
    let user_id = world.sessions[&session_id].user_id.clone();
    let iat = unix_now();
    let ttl = secs(world.access_ttl);
    let claims = state.access_claims(&world, &user_id, &session_id, iat, iat + ttl);
    let access_token = state.mint(&world, &claims);
    let user = user_json(world.user(&user_id).expect("known user"), iat);
    let session = json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": ttl,
        "expires_at": iat + ttl,
        "refresh_token": refresh_token,
        "user": user,
    });
    json_reply(StatusCode::OK, &session, "application/json")
}

fn bad_json(detail: &str, headers: &HeaderMap) -> Reply {
    GoTrueError::bad_request(
        "bad_json",
        format!("Could not parse request body as JSON: {detail}"),
    )
    .reply(headers)
}

/// `GET /auth/v1/user` (`requireAuthentication` + `maybeLoadUserOrSession`).
fn current_user(state: &State, headers: &HeaderMap) -> Reply {
    let Some(token) = bearer(headers).filter(|t| !t.is_empty()) else {
        return GoTrueError::new(
            401,
            "no_authorization",
            "This endpoint requires a valid Bearer token",
        )
        .reply(headers);
    };
    let world = state.world.lock().unwrap();
    let claims = match state.verify(&world, &token) {
        Ok(claims) => claims,
        Err(rejection) => {
            let reason = match rejection {
                JwtRejection::Empty | JwtRejection::Parts(_) | JwtRejection::Undecodable => {
                    "token is malformed: token contains an invalid number of segments"
                }
                JwtRejection::BadAlgorithm => {
                    "token signature is invalid: signing method is invalid"
                }
                JwtRejection::UnknownKey => "unrecognized JWT kid",
                JwtRejection::BadSignature => "token signature is invalid: signature is invalid",
            };
            return bad_jwt(
                403,
                &format!("invalid JWT: unable to parse or verify signature, {reason}"),
                headers,
            );
        }
    };
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp < unix_now() => {
            return bad_jwt(
                403,
                "invalid JWT: unable to parse or verify signature, token has invalid claims: token is expired",
                headers,
            )
        }
        _ => {}
    }
    let sub = claims["sub"].as_str().unwrap_or_default();
    if sub.is_empty() {
        return bad_jwt(403, "invalid claim: missing sub claim", headers);
    }
    if uuid::Uuid::parse_str(sub).is_err() {
        return bad_jwt(400, "invalid claim: sub claim must be a UUID", headers);
    }
    let Some(user) = world.user(sub) else {
        return GoTrueError::new(
            403,
            "user_not_found",
            "User from sub claim in JWT does not exist",
        )
        .reply(headers);
    };
    if let Some(session_id) = claims["session_id"].as_str() {
        let gone = world
            .sessions
            .get(session_id)
            .is_none_or(|s| s.ended.as_deref() == Some("session_not_found"));
        if gone {
            return GoTrueError::new(
                403,
                "session_not_found",
                "Session from session_id claim in JWT does not exist",
            )
            .reply(headers);
        }
    }
    let last_sign_in = claims["iat"].as_i64().unwrap_or(user.created_at);
    json_reply(
        StatusCode::OK,
        &user_json(user, last_sign_in),
        "application/json",
    )
}

fn bad_jwt(status: u16, message: &str, headers: &HeaderMap) -> Reply {
    GoTrueError::new(status, "bad_jwt", message).reply(headers)
}

// ---------------------------------------------------------------------------------------------
// PostgREST

/// Why a token's signature check failed (PostgREST's `JwtDecodeError`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JwtRejection {
    Empty,
    Parts(usize),
    Undecodable,
    BadAlgorithm,
    UnknownKey,
    BadSignature,
}

/// What the request runs as after PostgREST's JWT step.
struct DbRole {
    role: String,
    sub: Option<String>,
}

fn profiles(state: &State, parts: &request::Parts) -> Reply {
    let headers = &parts.headers;
    if let Some(schema) = headers.get("accept-profile").and_then(|v| v.to_str().ok()) {
        if schema != "public" {
            return postgrest_error(
                StatusCode::NOT_ACCEPTABLE,
                "PGRST106",
                &format!("Invalid schema: {schema}"),
                Value::Null,
                json!("Only the following schemas are exposed: public, graphql_public"),
                &[],
            );
        }
    }
    let world = state.world.lock().unwrap();
    let db_role = match postgrest_auth(state, &world, headers) {
        Ok(role) => role,
        Err(reply) => return reply,
    };

    let query = query_pairs(parts.uri.query());
    let select = query
        .iter()
        .find(|(k, _)| k == "select")
        .map_or("*", |(_, v)| v.as_str());
    let select = match parse_select(select) {
        Ok(items) => items,
        Err(reply) => return reply,
    };
    let mut filters = Vec::new();
    for (key, value) in &query {
        match key.as_str() {
            "select" | "limit" | "offset" | "order" => {}
            column if PROFILE_COLUMNS.contains(&column) => match value.strip_prefix("eq.") {
                Some(wanted) => {
                    if column != "role" && uuid::Uuid::parse_str(wanted).is_err() {
                        return postgrest_error(
                            StatusCode::BAD_REQUEST,
                            "22P02",
                            &format!("invalid input syntax for type uuid: \"{wanted}\""),
                            Value::Null,
                            Value::Null,
                            &[],
                        );
                    }
                    filters.push((column.to_owned(), wanted.to_owned()));
                }
                None => {
                    return postgrest_error(
                        StatusCode::BAD_REQUEST,
                        "PGRST100",
                        &format!("\"failed to parse filter ({value})\" (line 1, column 1)"),
                        json!("unexpected \"\" expecting \"eq.\""),
                        Value::Null,
                        &[],
                    )
                }
            },
            column => return column_missing("profiles", column),
        }
    }

    // The table's row-level security policy: `using (id = auth.uid())`.
    let mut rows: Vec<(&String, &Profile)> = world
        .profiles
        .iter()
        .filter(|(id, _)| match db_role.role.as_str() {
            "service_role" => true,
            "authenticated" => db_role.sub.as_deref() == Some(id.as_str()),
            _ => false,
        })
        .filter(|(id, profile)| {
            filters.iter().all(|(column, wanted)| {
                profile_column(id, profile, column).as_str() == Some(wanted.as_str())
            })
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|(id, profile)| project(id, profile, &select))
        .collect();

    let singular = headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.contains(OBJECT_MEDIA_TYPE));
    if singular {
        if rows.len() != 1 {
            return postgrest_error(
                StatusCode::NOT_ACCEPTABLE,
                "PGRST116",
                "Cannot coerce the result to a single JSON object",
                json!(format!("The result contains {} rows", rows.len())),
                Value::Null,
                &[],
            );
        }
        let mut reply = json_reply(
            StatusCode::OK,
            &rows[0],
            "application/vnd.pgrst.object+json; charset=utf-8",
        );
        set_header(&mut reply, "content-range", "0-0/*");
        return reply;
    }
    let range = match rows.len() {
        0 => "*/*".to_owned(),
        n => format!("0-{}/*", n - 1),
    };
    let mut reply = json_reply(
        StatusCode::OK,
        &Value::Array(rows),
        "application/json; charset=utf-8",
    );
    set_header(&mut reply, "content-range", &range);
    reply
}

/// PostgREST's JWT step: no token (or the anon key) runs as `anon`.
#[allow(clippy::result_large_err)] // the error is the finished reply; size is no concern in tests
fn postgrest_auth(state: &State, world: &World, headers: &HeaderMap) -> Result<DbRole, Reply> {
    let anon = DbRole {
        role: "anon".to_owned(),
        sub: None,
    };
    let Some(token) = bearer(headers) else {
        return Ok(anon);
    };
    if token == state.anon_key {
        return Ok(anon);
    }
    let claims = state.verify(world, &token).map_err(|rejection| {
        let (message, details) = match rejection {
            JwtRejection::Empty => (
                "Empty JWT is sent in Authorization header".to_owned(),
                Value::Null,
            ),
            JwtRejection::Parts(n) => (format!("Expected 3 parts in JWT; got {n}"), Value::Null),
            JwtRejection::Undecodable | JwtRejection::BadSignature => {
                ("JWT cryptographic operation failed".to_owned(), Value::Null)
            }
            JwtRejection::BadAlgorithm => (
                "Wrong or unsupported encoding algorithm".to_owned(),
                json!("The JWT was signed with an algorithm the server has no key for"),
            ),
            JwtRejection::UnknownKey => (
                "No suitable key or wrong key type".to_owned(),
                json!("None of the keys was able to decode the JWT"),
            ),
        };
        jwt_error("PGRST301", &message, details)
    })?;

    let now = unix_now();
    for (claim, message) in [
        ("exp", "The JWT 'exp' claim must be a number"),
        ("nbf", "The JWT 'nbf' claim must be a number"),
        ("iat", "The JWT 'iat' claim must be a number"),
    ] {
        if claims.get(claim).is_some_and(|v| !v.is_number()) {
            return Err(jwt_error("PGRST303", message, Value::Null));
        }
    }
    let number = |claim: &str| claims.get(claim).and_then(Value::as_f64).map(|n| n as i64);
    if number("exp").is_some_and(|exp| now > exp + POSTGREST_SKEW_SECONDS) {
        return Err(jwt_error("PGRST303", "JWT expired", Value::Null));
    }
    if number("nbf").is_some_and(|nbf| now + POSTGREST_SKEW_SECONDS < nbf) {
        return Err(jwt_error("PGRST303", "JWT not yet valid", Value::Null));
    }
    if number("iat").is_some_and(|iat| now + POSTGREST_SKEW_SECONDS < iat) {
        return Err(jwt_error("PGRST303", "JWT issued at future", Value::Null));
    }

    let role = claims["role"].as_str().unwrap_or("anon").to_owned();
    if !["anon", "authenticated", "service_role"].contains(&role.as_str()) {
        return Err(postgrest_error(
            StatusCode::UNAUTHORIZED,
            "22023",
            &format!("role \"{role}\" does not exist"),
            Value::Null,
            Value::Null,
            &[("www-authenticate", "Bearer".to_owned())],
        ));
    }
    Ok(DbRole {
        role,
        sub: claims["sub"].as_str().map(str::to_owned),
    })
}

fn jwt_error(code: &str, message: &str, details: Value) -> Reply {
    // Haskell's `show` of the message: a double-quoted, escaped string.
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description={}",
        Value::String(message.to_owned())
    );
    postgrest_error(
        StatusCode::UNAUTHORIZED,
        code,
        message,
        details,
        Value::Null,
        &[("www-authenticate", challenge)],
    )
}

/// PostgREST's error response (`errorResponseFor`, verbose): JSON body and `Proxy-Status`.
fn postgrest_error(
    status: StatusCode,
    code: &str,
    message: &str,
    details: Value,
    hint: Value,
    extra: &[(&'static str, String)],
) -> Reply {
    let body = json!({"code": code, "details": details, "hint": hint, "message": message});
    let mut reply = json_reply(status, &body, "application/json; charset=utf-8");
    set_header(
        &mut reply,
        "proxy-status",
        &format!("PostgREST; error={code}"),
    );
    for (name, value) in extra {
        set_header(&mut reply, name, value);
    }
    reply
}

fn column_missing(table: &str, column: &str) -> Reply {
    postgrest_error(
        StatusCode::BAD_REQUEST,
        "42703",
        &format!("column {table}.{column} does not exist"),
        Value::Null,
        Value::Null,
        &[],
    )
}

#[derive(Debug)]
enum SelectItem {
    AllColumns,
    Column { alias: String, column: String },
    Organization { alias: String, columns: Vec<String> },
}

/// Parses the `select` PostgREST grammar as far as the `profiles` table needs: columns of
/// `profiles`, `*`, and one embedding of `organizations` (optionally aliased).
#[allow(clippy::result_large_err)] // the error is the finished reply; size is no concern in tests
fn parse_select(select: &str) -> Result<Vec<SelectItem>, Reply> {
    let mut items = Vec::new();
    for item in split_top_level(select) {
        let item = item.trim();
        if item == "*" {
            items.push(SelectItem::AllColumns);
            continue;
        }
        let (alias, rest) = match item.split_once(':') {
            Some((alias, rest)) if !alias.contains('(') => (Some(alias.trim()), rest.trim()),
            _ => (None, item),
        };
        if let Some(open) = rest.find('(') {
            let table = rest[..open].trim();
            let Some(inner) = rest[open + 1..].strip_suffix(')') else {
                return Err(postgrest_error(
                    StatusCode::BAD_REQUEST,
                    "PGRST100",
                    &format!("\"failed to parse select parameter ({select})\""),
                    Value::Null,
                    Value::Null,
                    &[],
                ));
            };
            if table != "organizations" {
                return Err(postgrest_error(
                    StatusCode::BAD_REQUEST,
                    "PGRST200",
                    &format!("Could not find a relationship between 'profiles' and '{table}' in the schema cache"),
                    json!(format!("Searched for a foreign key relationship between 'profiles' and '{table}' in the schema 'public', but no matches were found.")),
                    Value::Null,
                    &[],
                ));
            }
            let mut columns = Vec::new();
            for column in split_top_level(inner) {
                let column = column.trim();
                if column == "*" {
                    columns.extend(ORGANIZATION_COLUMNS.iter().map(|c| c.to_string()));
                } else if ORGANIZATION_COLUMNS.contains(&column) {
                    columns.push(column.to_owned());
                } else {
                    return Err(column_missing("organizations", column));
                }
            }
            items.push(SelectItem::Organization {
                alias: alias.unwrap_or(table).to_owned(),
                columns,
            });
        } else if PROFILE_COLUMNS.contains(&rest) {
            items.push(SelectItem::Column {
                alias: alias.unwrap_or(rest).to_owned(),
                column: rest.to_owned(),
            });
        } else {
            return Err(column_missing("profiles", rest));
        }
    }
    Ok(items)
}

fn split_top_level(list: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in list.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

fn profile_column(id: &str, profile: &Profile, column: &str) -> Value {
    match column {
        "id" => json!(id),
        "role" => json!(profile.role),
        "organization_id" => profile
            .organization
            .as_ref()
            .map_or(Value::Null, |org| org["id"].clone()),
        _ => Value::Null,
    }
}

fn project(id: &str, profile: &Profile, select: &[SelectItem]) -> Value {
    let mut row = Map::new();
    for item in select {
        match item {
            SelectItem::AllColumns => {
                for column in PROFILE_COLUMNS {
                    row.insert(column.to_owned(), profile_column(id, profile, column));
                }
            }
            SelectItem::Column { alias, column } => {
                row.insert(alias.clone(), profile_column(id, profile, column));
            }
            SelectItem::Organization { alias, columns } => {
                let embedded = profile.organization.as_ref().map_or(Value::Null, |org| {
                    let fields = columns
                        .iter()
                        .map(|c| (c.clone(), org.get(c).cloned().unwrap_or(Value::Null)))
                        .collect::<Map<String, Value>>();
                    Value::Object(fields)
                });
                row.insert(alias.clone(), embedded);
            }
        }
    }
    Value::Object(row)
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn json_reply(status: StatusCode, body: &Value, content_type: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    reply
}

fn set_header(reply: &mut Reply, name: &'static str, value: &str) {
    let value = HeaderValue::from_str(value).expect("header value");
    reply.headers_mut().insert(name, value);
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Part `index` of a JWT, base64url-decoded and parsed as JSON.
fn jwt_part(token: &str, index: usize) -> Option<Value> {
    let part = token.split('.').nth(index)?;
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).expect("system randomness");
    bytes
}

fn random_alphanumeric(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    // 248 = 4 * 62: rejecting larger bytes keeps the choice unbiased.
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for byte in random_bytes(n) {
            if byte < 248 && out.len() < n {
                out.push(ALPHABET[usize::from(byte) % ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// `crypto.SecureAlphanumeric(12)`: lower-case base32 (a–z, 2–7), 12 characters.
fn gotrue_refresh_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    random_bytes(12)
        .into_iter()
        .map(|byte| ALPHABET[usize::from(byte & 31)] as char)
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

/// `2024-05-01T12:00:00Z` for a unix time.
fn rfc3339(unix: i64) -> String {
    let (days, rem) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
