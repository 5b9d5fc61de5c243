//! The Supabase session cookie, read and written exactly as `@supabase/ssr`
//! 0.12 does, so chatgate and the Next.js dashboard can share one login.
//!
//! What the package does (and this module mirrors; file names are in the npm
//! package's `dist/main/`):
//! - Value: `base64-` + base64url without padding of `JSON.stringify(session)`
//!   (`cookies.js`, `utils/base64url.js`). Up to 0.3.x, and still with
//!   `cookieEncoding: "raw"`, the value is the JSON itself, URI-encoded on the
//!   wire; it is accepted here, never written.
//! - Chunks (`utils/chunker.js`): one cookie `<name>` when the URI-encoded value
//!   fits in 3180 characters, else `<name>.0`, `<name>.1`, …, cut so that no
//!   `%XX` escape and no UTF-8 character is split. Reading takes `<name>` when it
//!   is non-empty, else `<name>.0…` up to the first missing (or empty) index.
//! - Writing back (`cookies.js` `applyServerStorage`): deletions (`Max-Age=0`,
//!   empty value) of chunk names the request had and the new value does not
//!   use, then the chunks, serialized like the `cookie` package does
//!   (`name=value; Max-Age=…; Domain=…; Path=/; SameSite=Lax`). With a Domain,
//!   each deletion is also sent host-only first, to clear cookies left from
//!   before the Domain was configured.
//!
//! Decoding runs on every request, so it borrows the `Cookie` headers, copies
//! chunk values only when there are several (or `%` escapes), decodes base64
//! with a table-driven decoder, and [`SessionCookie::decode_tokens`] skips
//! the `user` object instead of building it.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use percent_encoding::{percent_decode, percent_decode_str, utf8_percent_encode, AsciiSet};
use serde::{Deserialize, Deserializer, Serialize};

use crate::cookies;
use crate::recent::Recent;

/// Largest URI-encoded length of one cookie (`MAX_CHUNK_SIZE` in `chunker.js`).
pub const MAX_CHUNK_SIZE: usize = 3180;

/// Cap on the raw bytes of all chunks read, to bound the work a forged cookie
/// can cause; a real session is a few KiB (a browser sends at most ~4 KiB per
/// cookie and rarely more than a handful of chunks).
pub const MAX_SESSION_COOKIE_BYTES: usize = 64 * 1024;

/// Cap on the chunk cookies collected from one request: 64 KiB of chunks is
/// about 21 of them, and the cap keeps duplicate detection cheap when a request
/// carries thousands of `name.N` pairs.
const MAX_CHUNK_COOKIES: usize = 64;

/// `Max-Age` of a written cookie: 400 days, the browsers' cap
/// (`DEFAULT_COOKIE_OPTIONS` in `utils/constants.js`).
pub const COOKIE_MAX_AGE_SECS: u64 = 400 * 24 * 60 * 60;

const BASE64_PREFIX: &[u8] = b"base64-";

/// Strict base64url (padding optional, leftover bits dropped like
/// `stringFromBase64URL` does): the table-driven decoder of the `base64`
/// crate, several times faster than [`base64url_decode_in_place`], which
/// stays for what it refuses.
const BASE64URL_FAST: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// What `encodeURIComponent` leaves alone: ASCII letters, digits and
/// `-_.!~*'()`. Chunk sizes are measured on this encoding, so it must match.
pub const URI_COMPONENT: &AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The session JSON `@supabase/ssr` stores (auth-js's `Session`). Unknown
/// fields (`provider_token`, `weak_password`, …) are ignored; `user` is absent
/// when the dashboard uses `cookies.encode: "tokens-only"`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SupabaseSession {
    pub access_token: String,
    pub refresh_token: String,
    /// Unix seconds. auth-js itself drops a stored session without it.
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub expires_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub expires_in: Option<i64>,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub user: Option<serde_json::Value>,
}

/// Tokens are credentials: keep them out of logs.
impl fmt::Debug for SupabaseSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupabaseSession")
            .field("access_token", &"<redacted>")
            .field("refresh_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("expires_in", &self.expires_in)
            .field("token_type", &self.token_type)
            .field("user", &self.user.as_ref().map(|_| "<present>"))
            .finish()
    }
}

/// Seconds as any JSON number: JavaScript has no integer type, so a writer
/// could produce `3600.0`; refusing the whole session for that would log the
/// user out.
fn lenient_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let number = Option::<serde_json::Number>::deserialize(d)?;
    Ok(number.and_then(|n| {
        n.as_i64()
            // Saturating float-to-int cast; NaN cannot come out of JSON.
            .or_else(|| n.as_f64().map(|f| f as i64))
    }))
}

/// The tokens of a session cookie ([`SessionCookie::decode_tokens`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SessionTokens {
    /// Shared, not copied, with each request that reads it from a thread's
    /// recent cookies (`decode_tokens_recent`).
    pub access_token: Arc<str>,
    pub refresh_token: String,
}

/// Tokens are credentials: keep them out of logs.
impl fmt::Debug for SessionTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTokens").finish_non_exhaustive()
    }
}

/// [`SupabaseSession`] with the same field types, borrowed where it can be,
/// and `user` skipped: a JSON one accepts, the other accepts.
#[derive(Deserialize)]
struct LeanSession<'a> {
    #[serde(borrow)]
    access_token: Cow<'a, str>,
    #[serde(borrow)]
    refresh_token: Cow<'a, str>,
    #[serde(default, deserialize_with = "lenient_seconds", rename = "expires_at")]
    _expires_at: Option<i64>,
    #[serde(default, deserialize_with = "lenient_seconds", rename = "expires_in")]
    _expires_in: Option<i64>,
    #[serde(default, borrow, rename = "token_type")]
    _token_type: Option<Cow<'a, str>>,
    #[serde(default, rename = "user")]
    _user: Option<serde::de::IgnoredAny>,
}

/// Why a session cookie could not be read. chatgate treats every variant as
/// "no session"; none carries cookie content, so they are safe to log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CookieError {
    /// Only `<name>` empty, or chunks without a `<name>.0`.
    #[error("session cookie has no value (empty, or its first chunk is missing)")]
    Missing,
    #[error("session cookie chunks exceed {max} bytes")]
    TooLarge { max: usize },
    #[error("session cookie has an invalid base64url character at offset {offset}")]
    Base64 { offset: usize },
    /// Neither `base64-…` nor JSON, e.g. the reverted 0.6.0 `base64l-<len>-…`.
    #[error("session cookie value is neither `base64-` encoded nor JSON")]
    UnknownEncoding,
    #[error("session cookie JSON is invalid ({kind}) at line {line}, column {column}")]
    Json {
        kind: &'static str,
        line: usize,
        column: usize,
    },
}

impl From<serde_json::Error> for CookieError {
    // Keep only the position: serde's message can quote the offending value,
    // which may be a piece of a token.
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let kind = match e.classify() {
            Category::Io => "io",
            Category::Syntax => "syntax",
            Category::Data => "wrong shape",
            Category::Eof => "truncated",
        };
        CookieError::Json {
            kind,
            line: e.line(),
            column: e.column(),
        }
    }
}

/// `sb-<first label of the host>-auth-token`, as supabase-js derives its
/// storage key (`sb-127-auth-token` for `http://127.0.0.1:54321`).
pub fn default_cookie_name(supabase_url: &url::Url) -> String {
    let host = supabase_url.host_str().unwrap_or_default();
    let label = host.split('.').next().unwrap_or_default();
    format!("sb-{label}-auth-token")
}

/// How many decoded session cookies each thread remembers
/// (`SessionCookie::decode_tokens_recent`).
const RECENT_SESSIONS_PER_THREAD: usize = 8;

/// Which cookie of the session a pair is: `<name>` or `<name>.N`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ChunkIndex {
    Whole,
    Part(u32),
}

#[derive(Clone, Copy)]
struct Chunk<'a> {
    name: &'a [u8],
    index: ChunkIndex,
    value: &'a [u8],
}

/// The session cookies found in a request, borrowed from its `Cookie` headers:
/// everything needed to decode the session and to know which chunk names the
/// browser holds (so a rewrite can delete the stale ones).
#[derive(Clone)]
pub struct SessionCookie<'a> {
    /// In header order, first occurrence of each name only (like the `cookie`
    /// package's `parse`, which `@supabase/ssr`'s `parseCookieHeader` uses).
    chunks: Vec<Chunk<'a>>,
}

/// Values are credentials: show names and sizes only.
impl fmt::Debug for SessionCookie<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for c in &self.chunks {
            list.entry(&format_args!(
                "{}=<{} bytes>",
                String::from_utf8_lossy(c.name),
                c.value.len()
            ));
        }
        list.finish()
    }
}

/// Collects the pairs named `name` or `name.N` from a request's `Cookie`
/// header values (HTTP/2 may split cookies over several headers). `None` when
/// there are none.
pub fn find_session_cookie<'a>(
    cookie_headers: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Option<SessionCookie<'a>> {
    let mut chunks: Vec<Chunk<'a>> = Vec::new();
    for header in cookie_headers {
        collect_chunks(cookies::pairs(header), name, &mut chunks);
    }
    (!chunks.is_empty()).then_some(SessionCookie { chunks })
}

/// Adds the `name`/`name.N` pairs among `pairs` to `chunks` (first of each
/// index wins, at most [`MAX_CHUNK_COOKIES`]).
fn collect_chunks<'a>(
    pairs: impl Iterator<Item = cookies::Pair<'a>>,
    name: &str,
    chunks: &mut Vec<Chunk<'a>>,
) {
    for pair in pairs {
        if !pair.has_value {
            continue;
        }
        let Some(index) = chunk_index(pair.name, name.as_bytes()) else {
            continue;
        };
        if chunks.iter().any(|c| c.index == index) {
            continue;
        }
        if chunks.len() == MAX_CHUNK_COOKIES {
            break;
        }
        chunks.push(Chunk {
            name: pair.name,
            index,
            value: pair.value,
        });
    }
}

impl SessionCookie<'_> {
    /// Decodes the session the way `@supabase/ssr` reads it, more leniently
    /// about base64 (padding, whitespace and the `+/` alphabet are accepted).
    pub fn decode(&self) -> Result<SupabaseSession, CookieError> {
        let json = self.session_json()?;
        Ok(serde_json::from_slice(&json)?)
    }

    /// The two tokens of the session, for the hot path: the same checks as
    /// [`SessionCookie::decode`] (a cookie one refuses, the other refuses
    /// too), but the `user` object is only skipped over, not built.
    pub fn decode_tokens(&self) -> Result<SessionTokens, CookieError> {
        let json = self.session_json()?;
        let lean: LeanSession<'_> = serde_json::from_slice(&json)?;
        Ok(SessionTokens {
            access_token: Arc::from(&*lean.access_token),
            refresh_token: lean.refresh_token.into_owned(),
        })
    }

    /// `decode_tokens`, remembered by each thread for its last few cookies:
    /// a browser sends the same session with every request of a page, and
    /// comparing a cookie with one already decoded costs a fraction of
    /// decoding it. The key is every chunk's index and value, so a hit
    /// decodes to the same tokens; failures are not remembered.
    pub fn decode_tokens_recent(&self) -> Result<Arc<SessionTokens>, CookieError> {
        thread_local! {
            static RECENT: RefCell<Recent<(Vec<u8>, Arc<SessionTokens>), RECENT_SESSIONS_PER_THREAD>> =
                const { RefCell::new(Recent::new()) };
        }
        // Compared in place: the key is built only for a new cookie (a copy
        // of 2.6 KB per request was a tenth of a request's cache misses).
        let hit = RECENT.with_borrow_mut(|recent| {
            recent
                .find(|(k, _)| self.has_key(k), |_| true)
                .map(|(_, tokens)| tokens.clone())
        });
        if let Some(tokens) = hit {
            return Ok(tokens);
        }
        let tokens = Arc::new(self.decode_tokens()?);
        let mut key = Vec::new();
        for (index, value) in self.key_parts() {
            key.extend_from_slice(&index);
            key.extend_from_slice(&(value.len() as u64).to_le_bytes());
            key.extend_from_slice(value);
        }
        RECENT.with_borrow_mut(|recent| recent.remember((key, tokens.clone())));
        Ok(tokens)
    }

    /// Each chunk's index (little-endian, `u32::MAX` for a whole cookie) and
    /// value: what a remembered cookie's key is made of.
    fn key_parts(&self) -> impl Iterator<Item = ([u8; 4], &[u8])> + '_ {
        self.chunks.iter().map(|chunk| {
            let index = match chunk.index {
                ChunkIndex::Whole => u32::MAX,
                ChunkIndex::Part(n) => n,
            };
            (index.to_le_bytes(), chunk.value)
        })
    }

    /// Whether `key` is this cookie's: every chunk's index, length and
    /// value in order, and nothing after them.
    fn has_key(&self, mut key: &[u8]) -> bool {
        for (index, value) in self.key_parts() {
            let len = (value.len() as u64).to_le_bytes();
            let Some(rest) = key
                .strip_prefix(&index[..])
                .and_then(|k| k.strip_prefix(&len[..]))
                .and_then(|k| k.strip_prefix(value))
            else {
                return false;
            };
            key = rest;
        }
        key.is_empty()
    }

    /// The session JSON: chunks joined, percent-decoded, base64url-decoded.
    fn session_json(&self) -> Result<Vec<u8>, CookieError> {
        let non_empty = |index| {
            self.chunks
                .iter()
                .find(|c| c.index == index && !c.value.is_empty())
                .map(|c| c.value)
        };

        // combineChunks: `<name>` when non-empty, else `.0`, `.1`, … up to the
        // first missing or empty one.
        let mut parts: [&[u8]; MAX_CHUNK_COOKIES] = [&[]; MAX_CHUNK_COOKIES];
        let mut count = 0;
        let mut raw_len = 0;
        if let Some(whole) = non_empty(ChunkIndex::Whole) {
            parts[0] = whole;
            count = 1;
            raw_len = whole.len();
        } else {
            for (i, slot) in (0u32..).zip(parts.iter_mut()) {
                let Some(value) = non_empty(ChunkIndex::Part(i)) else {
                    break;
                };
                *slot = value;
                count += 1;
                raw_len += value.len();
                if raw_len > MAX_SESSION_COOKIE_BYTES {
                    break;
                }
            }
        }
        if count == 0 {
            return Err(CookieError::Missing);
        }
        if raw_len > MAX_SESSION_COOKIE_BYTES {
            return Err(CookieError::TooLarge {
                max: MAX_SESSION_COOKIE_BYTES,
            });
        }

        // Browsers send the value as set: percent-encoded by `cookie.serialize`
        // (a no-op for base64url, the JSON itself for legacy raw values). Each
        // chunk decodes on its own because the writer never splits an escape.
        // The usual cookie is one chunk of base64url without a `%`: it is
        // read where it lies, without a copy.
        let parts = &parts[..count];
        let joined: Cow<'_, [u8]> = match parts {
            [only] if !only.contains(&b'%') => Cow::Borrowed(only),
            _ => {
                let mut buf = Vec::with_capacity(raw_len);
                for part in parts {
                    if part.contains(&b'%') {
                        buf.extend(percent_decode(part));
                    } else {
                        buf.extend_from_slice(part);
                    }
                }
                Cow::Owned(buf)
            }
        };

        match joined.strip_prefix(BASE64_PREFIX) {
            Some(encoded) => {
                // Fast path: strict base64url, padding optional. Anything else
                // (whitespace, `+/`) goes through the lenient decoder.
                if let Ok(json) = BASE64URL_FAST.decode(encoded) {
                    return Ok(json);
                }
                let mut buf = match joined {
                    Cow::Owned(buf) => buf,
                    Cow::Borrowed(bytes) => bytes.to_vec(),
                };
                let start = BASE64_PREFIX.len();
                let len = base64url_decode_in_place(&mut buf[start..])?;
                buf.copy_within(start..start + len, 0);
                buf.truncate(len);
                Ok(buf)
            }
            None => match joined.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => Ok(joined.into_owned()),
                _ => Err(CookieError::UnknownEncoding),
            },
        }
    }

    /// Names of all session cookies present (`<name>`, `<name>.N`), in the
    /// order the request had them; pass them to [`encode_set_cookies`] or
    /// [`clear_set_cookies`].
    pub fn chunk_names(&self) -> Vec<String> {
        self.chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c.name).into_owned())
            .collect()
    }
}

/// `Some` when `cookie_name` is `key` or `key.N` with N written as
/// `0|[1-9][0-9]*` (`isChunkLike` in `chunker.js`); `key.01` is not a chunk.
fn chunk_index(cookie_name: &[u8], key: &[u8]) -> Option<ChunkIndex> {
    let rest = cookie_name.strip_prefix(key)?;
    if rest.is_empty() {
        return Some(ChunkIndex::Whole);
    }
    let digits = rest.strip_prefix(b".")?;
    let canonical = digits == b"0" || matches!(digits.first(), Some(b'1'..=b'9'));
    if !canonical || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // An index too large for u32 is still a chunk name (to be deleted) but can
    // never be read: reading stops long before.
    let index = digits.iter().try_fold(0u32, |n, d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    });
    Some(ChunkIndex::Part(index.unwrap_or(u32::MAX)))
}

fn is_chunk_like(cookie_name: &str, key: &str) -> bool {
    chunk_index(cookie_name.as_bytes(), key.as_bytes()).is_some()
}

/// Decodes base64url in place, returning the decoded length.
/// Like `stringFromBase64URL` it skips spaces, tabs, CR, LF and `=` and drops
/// leftover bits; unlike it, it also accepts the standard `+/` alphabet.
fn base64url_decode_in_place(buf: &mut [u8]) -> Result<usize, CookieError> {
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut out = 0;
    for i in 0..buf.len() {
        let c = buf[i];
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b' ' | b'\t' | b'\r' | b'\n' | b'=' => continue,
            _ => return Err(CookieError::Base64 { offset: i }),
        };
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            // Writing never overtakes reading: every output byte consumed at
            // least one input byte more than it produced.
            buf[out] = (acc >> bits) as u8;
            out += 1;
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// One cookie of a chunked value: its name and its (not yet URI-encoded) value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieChunk {
    pub name: String,
    pub value: String,
}

/// Splits `value` into cookies exactly like `createChunks(key, value)`: one
/// cookie `key` when `encodeURIComponent(value)` fits in [`MAX_CHUNK_SIZE`],
/// else `key.0`, `key.1`, … each as long as fits without cutting an escape or
/// a UTF-8 character.
pub fn create_chunks(key: &str, value: &str) -> Vec<CookieChunk> {
    let encoded = utf8_percent_encode(value, URI_COMPONENT).to_string();
    if encoded.len() <= MAX_CHUNK_SIZE {
        return vec![CookieChunk {
            name: key.to_owned(),
            value: value.to_owned(),
        }];
    }
    let mut chunks = Vec::new();
    let mut rest = encoded.as_str();
    while !rest.is_empty() {
        let mut head = &rest[..rest.len().min(MAX_CHUNK_SIZE)];
        // A `%XX` cut short by the size limit goes to the next chunk.
        if let Some(pos) = head.rfind('%') {
            if pos + 3 > MAX_CHUNK_SIZE {
                head = &head[..pos];
            }
        }
        // Then back off whole escapes until the head ends on a character.
        let value = loop {
            match percent_decode_str(head).decode_utf8() {
                Ok(v) => break v.into_owned(),
                Err(_) if head.len() > 3 && head.as_bytes()[head.len() - 3] == b'%' => {
                    head = &head[..head.len() - 3];
                }
                // Unreachable for the encoding of a `str`; decode lossily
                // rather than loop forever.
                Err(_) => break percent_decode_str(head).decode_utf8_lossy().into_owned(),
            }
        };
        rest = &rest[head.len()..];
        chunks.push(value);
    }
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, value)| CookieChunk {
            name: format!("{key}.{i}"),
            value,
        })
        .collect()
}

/// The `Set-Cookie` values that store `session_json` (the session object as
/// JSON, e.g. a refresh response) the way `@supabase/ssr` does: deletions of
/// the chunk names in `present_chunks` the new value no longer uses, then the
/// chunks. `domain` adds `Domain=` (and host-only deletions, see module doc).
pub fn encode_set_cookies(
    name: &str,
    session_json: &str,
    present_chunks: &[String],
    domain: Option<&str>,
) -> Vec<String> {
    let mut value = String::with_capacity(BASE64_PREFIX.len() + session_json.len() * 4 / 3 + 4);
    value.push_str("base64-");
    URL_SAFE_NO_PAD.encode_string(session_json, &mut value);
    let chunks = create_chunks(name, &value);

    let mut stale: Vec<&str> = Vec::new();
    for present in present_chunks {
        let present = present.as_str();
        if is_chunk_like(present, name)
            && !chunks.iter().any(|c| c.name == present)
            && !stale.contains(&present)
        {
            stale.push(present);
        }
    }

    let mut out = deletions(&stale, domain);
    out.extend(
        chunks
            .iter()
            .map(|c| set_cookie(&c.name, &c.value, COOKIE_MAX_AGE_SECS, domain)),
    );
    out
}

/// The `Set-Cookie` values that delete every session cookie in
/// `present_chunks` (the session is over), as `removeItem` does.
pub fn clear_set_cookies(
    name: &str,
    present_chunks: &[String],
    domain: Option<&str>,
) -> Vec<String> {
    let mut names: Vec<&str> = Vec::new();
    for present in present_chunks {
        if is_chunk_like(present, name) && !names.contains(&present.as_str()) {
            names.push(present);
        }
    }
    deletions(&names, domain)
}

/// With a Domain, `@supabase/ssr` first clears the host-only cookie of the
/// same name, then the domain one: a browser may hold both after the Domain
/// was introduced, and a store keyed by name keeps the last one written.
fn deletions(names: &[&str], domain: Option<&str>) -> Vec<String> {
    let mut out = Vec::with_capacity(names.len() * if domain.is_some() { 2 } else { 1 });
    if domain.is_some() {
        out.extend(names.iter().map(|n| set_cookie(n, "", 0, None)));
    }
    out.extend(names.iter().map(|n| set_cookie(n, "", 0, domain)));
    out
}

/// One `Set-Cookie` value, attributes in the order the `cookie` package's
/// `serialize` writes them.
fn set_cookie(name: &str, value: &str, max_age: u64, domain: Option<&str>) -> String {
    let value = utf8_percent_encode(value, URI_COMPONENT);
    match domain {
        Some(d) => format!("{name}={value}; Max-Age={max_age}; Domain={d}; Path=/; SameSite=Lax"),
        None => format!("{name}={value}; Max-Age={max_age}; Path=/; SameSite=Lax"),
    }
}

/// `cookie_header` without the session cookies (`<session_name>`,
/// `<session_name>.N`) and without the cookies named in `extra`, for
/// forwarding upstream; `None` when nothing remains. Other cookies, such as
/// `<session_name>-code-verifier` (the PKCE verifier), are kept as sent. Call
/// it once per `Cookie` header (or on the headers joined with `"; "`).
pub fn strip_cookies(cookie_header: &str, session_name: &str, extra: &[&str]) -> Option<String> {
    let mut out = Vec::new();
    strip_cookies_into(cookie_header.as_bytes(), session_name, extra, &mut out);
    // Only whole pairs of a `str` were copied, each cut at ASCII bytes.
    (!out.is_empty()).then(|| String::from_utf8(out).unwrap_or_default())
}

/// [`strip_cookies`] over a header's bytes, appending what is kept to `out`
/// (pairs joined with `"; "`, also to what `out` already holds).
pub fn strip_cookies_into(
    cookie_header: &[u8],
    session_name: &str,
    extra: &[&str],
    out: &mut Vec<u8>,
) {
    for pair in cookies::pairs(cookie_header) {
        let name = pair.name;
        if chunk_index(name, session_name.as_bytes()).is_some()
            || extra.iter().any(|e| e.as_bytes() == name)
        {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(pair.whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "sb-127-auth-token";

    fn session_json(padding: usize) -> String {
        format!(
            concat!(
                r#"{{"access_token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.sig","token_type":"bearer","#,
                r#""expires_in":3600,"expires_at":4102444800,"refresh_token":"r3fr3sh","#,
                r#""user":{{"id":"u1","email":"zoë@example.com","user_metadata":{{"bio":"{}","city":"東京 🚀"}}}}}}"#
            ),
            "x".repeat(padding)
        )
    }

    /// The request side of what `encode_set_cookies` wrote: `name=value` pairs.
    fn cookie_header(set_cookies: &[String]) -> String {
        set_cookies
            .iter()
            .filter(|c| !c.contains("Max-Age=0"))
            .map(|c| c.split(';').next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn decode_header(header: &str) -> Result<SupabaseSession, CookieError> {
        find_session_cookie(std::iter::once(header.as_bytes()), NAME)
            .ok_or(CookieError::Missing)?
            .decode()
    }

    fn expected(json: &str) -> SupabaseSession {
        serde_json::from_str(json).expect("test session JSON")
    }

    /// A header with a non-UTF-8 byte elsewhere is cut into the same pairs.
    #[test]
    fn non_utf8_headers_are_read_like_utf8_ones() {
        let json = session_json(10);
        let session = cookie_header(&encode_set_cookies(NAME, &json, &[], None));
        let plain = format!("a=x; {session}; {NAME}.7=late");
        let mut odd = format!("a=x; {session}; {NAME}.7=late").into_bytes();
        odd[2] = 0xff;
        let names = |header: &[u8]| {
            let found = find_session_cookie(std::iter::once(header), NAME).unwrap();
            (found.chunk_names(), found.decode().unwrap())
        };
        assert_eq!(names(plain.as_bytes()), names(&odd));
    }

    /// The hot-path decoder accepts exactly what the full one accepts and
    /// yields the same tokens, whichever base64 decoder ran.
    #[test]
    fn remembered_tokens_are_those_of_the_very_cookie_asked() {
        let b64 = |json: &str| format!("base64-{}", URL_SAFE_NO_PAD.encode(json));
        let session = |access: &str| {
            format!(r#"{{"access_token":"{access}","refresh_token":"r-{access}","user":{{}}}}"#)
        };
        let read = |header: &str| {
            find_session_cookie(std::iter::once(header.as_bytes()), NAME)
                .unwrap()
                .decode_tokens_recent()
        };
        // More sessions than a thread remembers, each asked twice, in turns.
        for round in 0..2 {
            for n in 0..(RECENT_SESSIONS_PER_THREAD * 2) {
                let whole = format!("{NAME}={}", b64(&session(&format!("a{n}"))));
                let tokens = read(&whole).unwrap();
                assert_eq!(&*tokens.access_token, format!("a{n}"), "round {round}");
                assert_eq!(tokens.refresh_token, format!("r-a{n}"));
            }
        }
        // The same bytes cut into chunks differently are other cookies.
        let encoded = b64(&session("chunked"));
        let (a, b) = encoded.split_at(10);
        let chunked = format!("{NAME}.0={a}; {NAME}.1={b}");
        assert_eq!(&*read(&chunked).unwrap().access_token, "chunked");
        let (a, b) = encoded.split_at(11);
        let chunked = format!("{NAME}.0={a}; {NAME}.1={b}");
        assert_eq!(&*read(&chunked).unwrap().access_token, "chunked");
        // The first chunk alone is not the remembered two-chunk cookie.
        assert!(read(&format!("{NAME}.0={a}")).is_err());
        // A hit right after a failure, and a failure is not remembered.
        let garbled = format!("{NAME}={}x", &encoded[..encoded.len() / 2]);
        assert!(read(&garbled).is_err());
        assert!(read(&garbled).is_err());
        assert_eq!(&*read(&chunked).unwrap().access_token, "chunked");
    }

    #[test]
    fn decode_tokens_agrees_with_decode() {
        let b64 = |json: &str| format!("base64-{}", URL_SAFE_NO_PAD.encode(json));
        let good = session_json(10);
        let big = session_json(9000);
        let std_alphabet = format!(
            "base64-{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(&good)
        );
        let spaced = {
            let encoded = b64(&good);
            format!("{} {}", &encoded[..40], &encoded[40..])
        };
        let values = [
            b64(&good),
            format!("{}==", b64(r#"{"access_token":"a","refresh_token":"r"}"#)),
            std_alphabet,
            spaced,
            utf8_percent_encode(&good, URI_COMPONENT).to_string(),
            b64(r#"{"access_token":"a","refresh_token":"r","expires_at":"soon"}"#),
            b64(r#"{"access_token":"a","refresh_token":"r","token_type":7}"#),
            b64(r#"{"access_token":"a","refresh_token":"r","user":[1,{"x":null}]}"#),
            b64(r#"{"access_token":"a\u0041","refresh_token":"r","expires_in":3600.0}"#),
            b64(r#"{"access_token":"a"}"#),
            b64("not json"),
            "base64-!!!".to_owned(),
            "base64-QUJDR".to_owned(),
            "plain".to_owned(),
        ];
        let mut headers: Vec<String> = values
            .iter()
            .map(|v| {
                let chunks = create_chunks(NAME, v);
                chunks
                    .iter()
                    .map(|c| {
                        format!(
                            "{}={}",
                            c.name,
                            utf8_percent_encode(&c.value, URI_COMPONENT)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .collect();
        headers.push(cookie_header(&encode_set_cookies(NAME, &big, &[], None)));
        for header in &headers {
            let found = find_session_cookie(std::iter::once(header.as_bytes()), NAME).unwrap();
            let full = found.decode().map(|s| (s.access_token, s.refresh_token));
            let lean = found
                .decode_tokens()
                .map(|t| (t.access_token.to_string(), t.refresh_token));
            assert_eq!(
                full.is_ok(),
                lean.is_ok(),
                "{header:.80}: {full:?} / {lean:?}"
            );
            assert_eq!(full.ok(), lean.ok(), "{header:.80}");
        }
    }

    #[test]
    fn small_session_round_trips_in_one_cookie() {
        let json = session_json(10);
        let set = encode_set_cookies(NAME, &json, &[], None);
        assert_eq!(set.len(), 1);
        assert!(set[0].starts_with("sb-127-auth-token=base64-eyJ"));
        assert!(set[0].ends_with("; Max-Age=34560000; Path=/; SameSite=Lax"));
        let session = decode_header(&cookie_header(&set)).expect("decodes");
        assert_eq!(session, expected(&json));
        assert_eq!(session.expires_at, Some(4_102_444_800));
        assert_eq!(session.token_type.as_deref(), Some("bearer"));
    }

    #[test]
    fn large_session_round_trips_in_three_chunks() {
        let json = session_json(6000);
        let set = encode_set_cookies(NAME, &json, &[], None);
        let names: Vec<&str> = set
            .iter()
            .map(|c| c.split('=').next().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                format!("{NAME}.0"),
                format!("{NAME}.1"),
                format!("{NAME}.2")
            ]
        );
        assert!(set[0].starts_with(&format!("{NAME}.0=base64-")));
        assert!(
            !set[1].contains("base64-"),
            "prefix only at the start of .0"
        );
        for c in &set[..2] {
            let value = c
                .split(';')
                .next()
                .unwrap_or_default()
                .split_once('=')
                .unwrap_or_default()
                .1;
            assert_eq!(value.len(), MAX_CHUNK_SIZE);
        }
        assert_eq!(decode_header(&cookie_header(&set)), Ok(expected(&json)));
    }

    #[test]
    fn default_cookie_name_uses_first_host_label() {
        let name = |u: &str| default_cookie_name(&url::Url::parse(u).expect("url"));
        assert_eq!(name("http://127.0.0.1:54321"), "sb-127-auth-token");
        assert_eq!(
            name("https://abcdefgh.supabase.co"),
            "sb-abcdefgh-auth-token"
        );
        assert_eq!(name("https://Auth.Example.COM/"), "sb-auth-auth-token");
        assert_eq!(name("http://localhost:8000"), "sb-localhost-auth-token");
    }

    fn encoded_len(s: &str) -> usize {
        utf8_percent_encode(s, URI_COMPONENT).to_string().len()
    }

    #[test]
    fn value_of_exactly_3180_encoded_chars_is_one_cookie() {
        let value = "a".repeat(MAX_CHUNK_SIZE);
        let chunks = create_chunks("k", &value);
        assert_eq!(
            chunks,
            [CookieChunk {
                name: "k".into(),
                value
            }]
        );

        // 530 `é` (`%C3%A9` each) are 3180 encoded characters.
        let value = "é".repeat(530);
        assert_eq!(encoded_len(&value), MAX_CHUNK_SIZE);
        assert_eq!(create_chunks("k", &value).len(), 1);
    }

    #[test]
    fn value_of_3181_encoded_chars_is_two_chunks() {
        let value = "a".repeat(MAX_CHUNK_SIZE + 1);
        let chunks = create_chunks("k", &value);
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            (chunks[0].name.as_str(), chunks[0].value.len()),
            ("k.0", MAX_CHUNK_SIZE)
        );
        assert_eq!(
            (chunks[1].name.as_str(), chunks[1].value.as_str()),
            ("k.1", "a")
        );
    }

    #[test]
    fn escape_cut_by_the_limit_moves_to_the_next_chunk() {
        // `é` is `%C3%A9`: the head ends in `%C` (escape cut by the limit).
        let value = format!("{}é", "a".repeat(3178));
        let chunks = create_chunks("k", &value);
        assert_eq!(chunks[0].value, "a".repeat(3178));
        assert_eq!(chunks[1].value, "é");

        // Head ends in a complete `%C3` whose character continues: backed off.
        let value = format!("{}é", "a".repeat(3177));
        let chunks = create_chunks("k", &value);
        assert_eq!(chunks[0].value, "a".repeat(3177));
        assert_eq!(chunks[1].value, "é");

        // A literal `%` is `%25`, an escape like any other.
        let value = format!("{}%b", "a".repeat(3179));
        let chunks = create_chunks("k", &value);
        assert_eq!(chunks[0].value, "a".repeat(3179));
        assert_eq!(chunks[1].value, "%b");

        // 4-byte characters: 12 encoded chars each, never split.
        let value = format!("{}{}", "a".repeat(3170), "🚀".repeat(3));
        let chunks = create_chunks("k", &value);
        assert_eq!(chunks[0].value, "a".repeat(3170));
        assert_eq!(chunks[1].value, "🚀".repeat(3));
    }

    /// Deterministic pseudo-random text heavy in escapes of every width.
    fn escape_heavy(seed: u64, chars: usize) -> String {
        const ALPHABET: [&str; 9] = ["a", "Z", "%", " ", ";", "é", "€", "🚀", "-"];
        let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..chars)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x % ALPHABET.len() as u64) as usize]
            })
            .collect()
    }

    #[test]
    fn chunks_are_maximal_and_rejoin_to_the_value() {
        for seed in 0..200 {
            let value = escape_heavy(seed, 900 + (seed as usize * 37) % 3000);
            let chunks = create_chunks("k", &value);
            let joined: String = chunks.iter().map(|c| c.value.as_str()).collect();
            assert_eq!(joined, value, "seed {seed}");
            if chunks.len() == 1 {
                assert!(encoded_len(&value) <= MAX_CHUNK_SIZE);
                assert_eq!(chunks[0].name, "k");
                continue;
            }
            let mut rest = value.as_str();
            for (i, c) in chunks.iter().enumerate() {
                assert_eq!(c.name, format!("k.{i}"));
                assert!(
                    encoded_len(&c.value) <= MAX_CHUNK_SIZE,
                    "seed {seed} chunk {i}"
                );
                rest = &rest[c.value.len()..];
                // Greedy: the next character would not have fitted.
                if let Some(next) = rest.chars().next() {
                    let mut more = c.value.clone();
                    more.push(next);
                    assert!(encoded_len(&more) > MAX_CHUNK_SIZE, "seed {seed} chunk {i}");
                }
            }
        }
    }

    #[test]
    fn garbled_cookies_are_errors() {
        let good = encode_set_cookies(NAME, &session_json(6000), &[], None);
        let chunk = |i: usize| good[i].split(';').next().unwrap_or_default().to_owned();
        let b64 = |s: &str| format!("base64-{}", URL_SAFE_NO_PAD.encode(s));
        let garbage: String = (0..100 * 1024)
            .map(|i| char::from(b'!' + (i % 90) as u8))
            .collect();
        let json = session_json(0);
        let cases: Vec<(&str, String)> = vec![
            ("not JSON", format!("{NAME}={}", b64("hello"))),
            (
                "truncated JSON",
                format!("{NAME}={}", b64(&json[..json.len() / 2])),
            ),
            (
                "JSON without tokens",
                format!("{NAME}={}", b64(r#"{"user":{}}"#)),
            ),
            ("JSON array", format!("{NAME}={}", b64("[1,2]"))),
            (
                "tokens of the wrong type",
                format!(
                    "{NAME}={}",
                    b64(r#"{"access_token":1,"refresh_token":"r"}"#)
                ),
            ),
            (
                "missing middle chunk",
                format!("{}; {}", chunk(0), chunk(2)),
            ),
            ("missing first chunk", format!("{}; {}", chunk(1), chunk(2))),
            ("only last chunks", chunk(2)),
            (
                "chunks out of order",
                format!(
                    "{}; {}",
                    chunk(0).replace(".0=", ".1="),
                    chunk(1).replace(".1=", ".0=")
                ),
            ),
            (
                "0.6.0 base64l prefix",
                format!("{NAME}=base64l-120-{}", URL_SAFE_NO_PAD.encode(&json)),
            ),
            (
                "unknown prefix",
                format!("{NAME}=v2-{}", URL_SAFE_NO_PAD.encode(&json)),
            ),
            (
                "invalid base64 character",
                format!("{NAME}=base64-eyJh*GNj"),
            ),
            ("prefix only", format!("{NAME}=base64-")),
            ("empty value", format!("{NAME}=")),
            ("raw garbage", format!("{NAME}=%7Bnot json")),
            ("100 KB garbage", format!("{NAME}={garbage}")),
            (
                "100 KB of base64",
                format!("{NAME}={}", b64(&"x".repeat(100 * 1024))),
            ),
            (
                "bad UTF-8 in JSON",
                format!(
                    "{NAME}=base64-{}",
                    URL_SAFE_NO_PAD.encode(b"{\"access_token\":\"\xff\"}")
                ),
            ),
            ("percent-encoded NUL", format!("{NAME}=%00")),
        ];
        for (what, header) in cases {
            assert!(decode_header(&header).is_err(), "{what} must not decode");
        }
        assert_eq!(
            decode_header(&format!("{NAME}=base64-eyJh*GNj")),
            Err(CookieError::Base64 { offset: 4 })
        );
        assert_eq!(
            decode_header(&format!("{NAME}=base64l-1-e30")),
            Err(CookieError::UnknownEncoding)
        );
        assert_eq!(
            decode_header(&format!("{}; {}", chunk(1), chunk(2))),
            Err(CookieError::Missing)
        );
        let letters: String = (0..100 * 1024)
            .map(|i| char::from(b'A' + (i % 26) as u8))
            .collect();
        assert_eq!(
            decode_header(&format!("{NAME}={letters}")),
            Err(CookieError::TooLarge {
                max: MAX_SESSION_COOKIE_BYTES
            })
        );
        let missing_middle = decode_header(&format!("{}; {}", chunk(0), chunk(2)));
        assert!(
            matches!(
                missing_middle,
                Err(CookieError::Json {
                    kind: "truncated",
                    ..
                })
            ),
            "{missing_middle:?}"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..2000 {
            let len = (round * 7) % 700;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Bias towards the bytes the parsers care about.
                    const BYTES: &[u8] = b"sb-127-auth-token.0123=;% \tbase64-{}\"eyJ+/_\xff";
                    BYTES[(x % BYTES.len() as u64) as usize]
                })
                .collect();
            if let Some(found) = find_session_cookie(
                [bytes.as_slice(), b"sb-127-auth-token.1=eyJ"].into_iter(),
                NAME,
            ) {
                let _ = found.decode();
                let _ = found.chunk_names();
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = strip_cookies(&text, NAME, &["chatgate_session"]);
        }
    }

    #[test]
    fn decoding_is_lenient_about_base64_and_encoding() {
        let json = session_json(40);
        let want = expected(&json);
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&json);
        let standard = base64::engine::general_purpose::STANDARD.encode(&json);
        let spaced: String = URL_SAFE_NO_PAD
            .encode(&json)
            .as_bytes()
            .chunks(10)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let legacy_raw = utf8_percent_encode(&json, URI_COMPONENT).to_string();
        for value in [
            format!("base64-{padded}"),
            format!("base64-{standard}"),
            format!("base64-{}", spaced.replace(' ', "%20")),
            format!("base64-{}", padded.replace('=', "%3D")),
            legacy_raw,
            json.clone(),
        ] {
            assert_eq!(
                decode_header(&format!("{NAME}={value}")),
                Ok(want.clone()),
                "{value}"
            );
        }
    }

    #[test]
    fn legacy_raw_json_chunks_split_on_escapes_decode() {
        // Up to 0.3.x the raw JSON was chunked on its URI encoding.
        let json = session_json(0).replace("\"u1\"", &format!("\"{}\"", "é€🚀".repeat(500)));
        let chunks = create_chunks(NAME, &json);
        assert!(chunks.len() >= 3);
        let header = chunks
            .iter()
            .map(|c| {
                format!(
                    "{}={}",
                    c.name,
                    utf8_percent_encode(&c.value, URI_COMPONENT)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        assert_eq!(decode_header(&header), Ok(expected(&json)));
    }

    #[test]
    fn reading_follows_combine_chunks() {
        let small = session_json(1);
        let other = session_json(2);
        let one = cookie_header(&encode_set_cookies(NAME, &small, &[], None));
        let chunked = cookie_header(&encode_set_cookies(NAME, &other, &[], None))
            .replace(NAME, &format!("{NAME}.0"));

        // The bare name wins over chunks when non-empty...
        assert_eq!(
            decode_header(&format!("{chunked}; {one}")),
            Ok(expected(&small))
        );
        // ...and is skipped when empty.
        assert_eq!(
            decode_header(&format!("{NAME}=; {chunked}")),
            Ok(expected(&other))
        );
        // Duplicates: the first one counts, like the `cookie` package's parse.
        assert_eq!(
            decode_header(&format!("{one}; {NAME}=garbage")),
            Ok(expected(&small))
        );
        // Whitespace around names and values, tabs included.
        assert_eq!(
            decode_header(&format!(" \t{}", one.replacen('=', " = \t", 1))),
            Ok(expected(&small))
        );
        // Pairs without `=` and look-alike names are ignored.
        let noise = format!("flag; {NAME}-code-verifier=abc; {NAME}.01=x; x{NAME}=y");
        assert_eq!(
            decode_header(&format!("{noise}; {one}")),
            Ok(expected(&small))
        );
    }

    #[test]
    fn chunks_may_span_several_cookie_headers() {
        let json = session_json(6000);
        let set = encode_set_cookies(NAME, &json, &[], None);
        let pairs: Vec<String> = set
            .iter()
            .map(|c| c.split(';').next().unwrap_or_default().to_owned())
            .collect();
        let headers = [
            format!("theme=dark; {}", pairs[2]),
            pairs[0].clone(),
            format!("{}; lang=fr", pairs[1]),
        ];
        let found = find_session_cookie(headers.iter().map(|h| h.as_bytes()), NAME).expect("found");
        assert_eq!(found.decode(), Ok(expected(&json)));
        assert_eq!(
            found.chunk_names(),
            [
                format!("{NAME}.2"),
                format!("{NAME}.0"),
                format!("{NAME}.1")
            ]
        );
        assert!(find_session_cookie(["theme=dark".as_bytes()].into_iter(), NAME).is_none());
    }

    #[test]
    fn size_cap_bounds_work() {
        let chunk = "A".repeat(4000);
        let header: String = (0..16)
            .map(|i| format!("{NAME}.{i}=base64-{chunk}; "))
            .collect();
        // Just under the cap: read (and refused as JSON), not cut short.
        assert!(matches!(
            decode_header(&header),
            Err(CookieError::Json { .. })
        ));
        let header: String = (0..17).map(|i| format!("{NAME}.{i}={chunk}; ")).collect();
        assert_eq!(
            decode_header(&header),
            Err(CookieError::TooLarge {
                max: MAX_SESSION_COOKIE_BYTES
            })
        );
        // Thousands of chunk names: collection stops at the cap.
        let header: String = (0..5000).map(|i| format!("{NAME}.{i}=x;")).collect();
        let found = find_session_cookie(std::iter::once(header.as_bytes()), NAME).expect("found");
        assert_eq!(found.chunk_names().len(), MAX_CHUNK_COOKIES);
        assert!(found.decode().is_err());
    }

    #[test]
    fn rewrite_deletes_chunks_the_new_value_does_not_use() {
        let present: Vec<String> = ["", ".0", ".1", ".2"]
            .iter()
            .map(|s| format!("{NAME}{s}"))
            .collect();
        let small = session_json(10);

        // 3 chunks (and a stray bare cookie) → 1 cookie: every chunk goes.
        let set = encode_set_cookies(NAME, &small, &present[1..], None);
        assert_eq!(set.len(), 4);
        for (i, line) in set[..3].iter().enumerate() {
            assert_eq!(
                line,
                &format!("{NAME}.{i}=; Max-Age=0; Path=/; SameSite=Lax")
            );
        }
        assert!(set[3].starts_with(&format!("{NAME}=base64-")));

        // 1 cookie → 3 chunks: the bare cookie goes, .0–.2 are written.
        let set = encode_set_cookies(NAME, &session_json(6000), &present[..1], None);
        assert_eq!(set[0], format!("{NAME}=; Max-Age=0; Path=/; SameSite=Lax"));
        assert_eq!(set.len(), 4);

        // 3 chunks → 3 chunks: nothing to delete.
        let set = encode_set_cookies(NAME, &session_json(6000), &present[1..], None);
        assert!(set.iter().all(|c| c.contains("Max-Age=34560000")));

        // Not ours, never touched; duplicates deleted once.
        let others = vec![
            format!("{NAME}-code-verifier"),
            "theme".to_owned(),
            present[2].clone(),
            present[2].clone(),
        ];
        let set = encode_set_cookies(NAME, &small, &others, None);
        assert_eq!(set.len(), 2);
        assert!(set[0].starts_with(&format!("{NAME}.1=;")));
    }

    #[test]
    fn domain_adds_host_only_deletions_first() {
        let present = vec![format!("{NAME}.0"), format!("{NAME}.1")];
        let set = encode_set_cookies(NAME, &session_json(1), &present, Some("example.com"));
        assert_eq!(
            set[..4],
            [
                format!("{NAME}.0=; Max-Age=0; Path=/; SameSite=Lax"),
                format!("{NAME}.1=; Max-Age=0; Path=/; SameSite=Lax"),
                format!("{NAME}.0=; Max-Age=0; Domain=example.com; Path=/; SameSite=Lax"),
                format!("{NAME}.1=; Max-Age=0; Domain=example.com; Path=/; SameSite=Lax"),
            ]
        );
        assert!(set[4].ends_with("; Max-Age=34560000; Domain=example.com; Path=/; SameSite=Lax"));
    }

    #[test]
    fn clearing_deletes_every_present_chunk() {
        let present = vec![
            format!("{NAME}.0"),
            format!("{NAME}-code-verifier"),
            format!("{NAME}.1"),
            format!("{NAME}"),
        ];
        assert_eq!(
            clear_set_cookies(NAME, &present, None),
            [
                format!("{NAME}.0=; Max-Age=0; Path=/; SameSite=Lax"),
                format!("{NAME}.1=; Max-Age=0; Path=/; SameSite=Lax"),
                format!("{NAME}=; Max-Age=0; Path=/; SameSite=Lax"),
            ]
        );
        assert_eq!(
            clear_set_cookies(NAME, &present[..1], Some(".example.com")).len(),
            2
        );
        assert!(clear_set_cookies(NAME, &[], None).is_empty());
    }

    #[test]
    fn strip_cookies_removes_only_session_chunks_and_extras() {
        let extra = ["chatgate_session"];
        let strip = |h: &str| strip_cookies(h, NAME, &extra);
        assert_eq!(
            strip(&format!("a=1; {NAME}=x; b=2")).as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(strip(&format!("{NAME}.0=x;{NAME}.1=y;  {NAME}.10=z")), None);
        assert_eq!(
            strip(&format!("  a=1 ;\t{NAME}.0=x;;b=2  ")).as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(
            strip(&format!("{NAME}=x; {NAME}=y; a=1; a=1")).as_deref(),
            Some("a=1; a=1")
        );
        assert_eq!(
            strip("chatgate_session=abc; refreshToken=r").as_deref(),
            Some("refreshToken=r")
        );
        assert_eq!(strip(&format!(" {NAME} =x")), None);
        // Look-alikes stay: the PKCE verifier, `.01`, other suffixes, prefixes.
        let keep = format!("{NAME}-code-verifier=v; {NAME}.01=a; {NAME}.x=b; {NAME}.1.2=c; x{NAME}=d; chatgate_session2=e; flag");
        assert_eq!(
            strip(&format!("{NAME}.3=z; {keep}")).as_deref(),
            Some(keep.as_str())
        );
        assert_eq!(strip(""), None);
        assert_eq!(strip(" ; ;"), None);
    }

    #[test]
    fn tokens_only_session_has_no_user_and_numbers_are_lenient() {
        let json = r#"{"access_token":"a","refresh_token":"r","expires_at":1.7e9,"expires_in":3600.0,"provider_token":"p"}"#;
        let value = format!("base64-{}", URL_SAFE_NO_PAD.encode(json));
        let session = decode_header(&format!("{NAME}={value}")).expect("decodes");
        assert_eq!(session.user, None);
        assert_eq!(session.expires_at, Some(1_700_000_000));
        assert_eq!(session.expires_in, Some(3600));
        let null_user = format!(
            "base64-{}",
            URL_SAFE_NO_PAD.encode(
                r#"{"access_token":"a","refresh_token":"r","user":null,"expires_at":null}"#
            )
        );
        let session = decode_header(&format!("{NAME}={null_user}")).expect("decodes");
        assert_eq!((session.user, session.expires_at), (None, None));
    }

    #[test]
    fn debug_output_hides_credentials() {
        let session = expected(&session_json(0));
        let shown = format!("{session:?}");
        assert!(
            !shown.contains("eyJhbGci") && !shown.contains("r3fr3sh"),
            "{shown}"
        );
        let header = cookie_header(&encode_set_cookies(NAME, &session_json(0), &[], None));
        let found = find_session_cookie(std::iter::once(header.as_bytes()), NAME).expect("found");
        let shown = format!("{found:?}");
        assert!(
            shown.starts_with(&format!("[{NAME}=<")) && !shown.contains("base64-"),
            "{shown}"
        );
        let err = decode_header(&format!(
            "{NAME}=base64-{}",
            URL_SAFE_NO_PAD.encode(r#"{"access_token":"secret-token","refresh_token":7}"#)
        ))
        .expect_err("wrong type");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
