//! Property tests (issue 13, item 5) for what reads client bytes: the
//! session cookie decoder, the access-token path, the config parser, the
//! `Set-Cookie` and request-head rewriters, the policy's chat-body check,
//! the SSE usage parser and the PROXY protocol header parser. None panics
//! on any input; round trips hold where there is one; a stream cut anywhere
//! reads as the stream whole.
//! The same properties run much longer under `scripts/fuzz.sh`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use chatgate::config::Config;
use chatgate::policy::chat_body::ChatBody;
use chatgate::proxy::rewrite_request::{scrub_client_headers, without_token_param, ClientSide};
use chatgate::proxy::rewrite_response::cross_site_cookie;
use chatgate::server::proxy_protocol::{self, DECIDING_BYTES, V1_MAX};
use chatgate::supabase::cookie::{encode_set_cookies, find_session_cookie, SupabaseSession};
use chatgate::supabase::verify::{Verifier, VerifierSettings};
use chatgate::usage::count::{may_matter, read_event, Count, Seen, StreamState};
use chatgate::usage::sse::{SseParser, DEFAULT_EVENT_CAP};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use serde_json::{json, Value};

const NAME: &str = "sb-127-auth-token";

// ---------------------------------------------------------- session cookie

/// A session as `@supabase/ssr` stores it, with a `user` of any size, so
/// that the cookie takes from one to several chunks.
fn session() -> impl Strategy<Value = Value> {
    (
        "[A-Za-z0-9._-]{1,400}",
        "[a-z0-9]{1,40}",
        proptest::option::of(any::<i32>()),
        ".{0,40}",
        0usize..12_000,
    )
        .prop_map(|(access, refresh, expires_at, city, padding)| {
            json!({
                "access_token": access,
                "refresh_token": refresh,
                "expires_at": expires_at,
                "expires_in": 3600,
                "token_type": "bearer",
                "user": {"id": "u1", "user_metadata": {"city": city, "bio": "é".repeat(padding / 2)}},
            })
        })
}

/// The `name=value` pairs of the `Set-Cookie`s that store a value.
fn pairs(set_cookies: &[String]) -> Vec<String> {
    set_cookies
        .iter()
        .filter(|c| !c.contains("Max-Age=0"))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_cookie_headers_decode_or_fail_without_panicking(
        headers in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..4),
        prefix in prop_oneof![Just(""), Just("sb-127-auth-token="), Just("sb-127-auth-token.0=base64-")],
    ) {
        let headers: Vec<Vec<u8>> = headers
            .into_iter()
            .map(|h| [prefix.as_bytes(), &h].concat())
            .collect();
        if let Some(cookie) = find_session_cookie(headers.iter().map(Vec::as_slice), NAME) {
            let session = cookie.decode();
            let tokens = cookie.decode_tokens();
            if let Ok(session) = session {
                let tokens = tokens.expect("decode_tokens reads what decode reads");
                prop_assert_eq!(&*tokens.access_token, session.access_token.as_str());
            }
        }
    }

    #[test]
    fn a_session_written_as_cookies_reads_back_in_any_chunk_order_and_header_split(
        session in session(),
        seed in any::<u64>(),
        split in any::<bool>(),
    ) {
        let json = session.to_string();
        let mut pairs = pairs(&encode_set_cookies(NAME, &json, &[], None));
        // Browsers need not keep the chunks in order.
        let n = pairs.len();
        for i in 0..n {
            pairs.swap(i, (seed as usize).wrapping_add(i * 7) % n);
        }
        // HTTP/2 clients may send one `Cookie` header per cookie.
        let headers: Vec<String> = if split { pairs } else { vec![pairs.join("; ")] };
        let cookie = find_session_cookie(headers.iter().map(|h| h.as_bytes()), NAME)
            .expect("the session cookies are found");
        let expected: SupabaseSession = serde_json::from_str(&json).unwrap();
        prop_assert!(cookie.decode().unwrap() == expected);
        let tokens = cookie.decode_tokens().unwrap();
        prop_assert_eq!(&*tokens.access_token, expected.access_token.as_str());
        prop_assert_eq!(tokens.refresh_token, expected.refresh_token);
    }

    #[test]
    fn rewriting_a_session_deletes_exactly_the_chunks_it_no_longer_uses(
        before in session(),
        after in session(),
    ) {
        let old: Vec<String> = pairs(&encode_set_cookies(NAME, &before.to_string(), &[], None))
            .iter()
            .map(|p| p.split('=').next().unwrap().to_owned())
            .collect();
        let written = encode_set_cookies(NAME, &after.to_string(), &old, None);
        let new: Vec<String> = pairs(&written)
            .iter()
            .map(|p| p.split('=').next().unwrap().to_owned())
            .collect();
        for name in &old {
            let deleted = written.iter().any(|c| c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0"));
            prop_assert_eq!(deleted, !new.contains(name), "{}", name);
        }
    }
}

// -------------------------------------------------------------------- JWT

const SECRET: &[u8] = b"property-hs256-secret-0123456789abcdef";
const ISSUER: &str = "http://127.0.0.1:54321/auth/v1";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let _guard = runtime().enter();
        let settings = VerifierSettings {
            hs256_secret: Some(SECRET.to_vec()),
            // Nothing listens there: JWKS algorithms find no key.
            jwks_url: "http://127.0.0.1:9/auth/v1/.well-known/jwks.json".to_owned(),
            apikey: None,
            issuer: ISSUER.to_owned(),
            audience: "authenticated".to_owned(),
            leeway: Duration::from_secs(30),
        };
        Verifier::new(settings, chatgate::http_client::build())
    })
}

fn signed(header: &[u8], claims: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// A JSON value of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("sub".to_owned()),
                    Just("exp".to_owned()),
                    Just("aud".to_owned()),
                    Just("iss".to_owned()),
                    Just("nbf".to_owned()),
                    Just("alg".to_owned()),
                    Just("kid".to_owned()),
                    Just("crit".to_owned()),
                    Just("promptPrefix".to_owned()),
                    Just("addedConvo".to_owned()),
                    Just("ephemeralAgent".to_owned()),
                    Just("mcp".to_owned()),
                    Just("model".to_owned()),
                    "[a-zA-Z]{1,8}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Claims that are mostly right, with any field possibly wrong.
fn claims() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!("u1")), Just(json!("")), json_value()],
        prop_oneof![Just(json!(4_102_444_800i64)), Just(json!(1000)), json_value()],
        prop_oneof![Just(json!("authenticated")), Just(json!(["x", "authenticated"])), json_value()],
        prop_oneof![Just(json!(ISSUER)), json_value()],
        json_value(),
    )
        .prop_map(|(sub, exp, aud, iss, extra)| {
            json!({"sub": sub, "exp": exp, "aud": aud, "iss": iss, "user_metadata": extra})
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_token_text_is_refused_without_panicking(token in ".{0,300}") {
        let result = runtime().block_on(verifier().verify(&token));
        prop_assert!(result.is_err(), "{token}");
    }

    #[test]
    fn signed_tokens_with_any_header_and_claims_verify_only_when_right(
        alg in prop_oneof![Just(json!("HS256")), Just(json!("none")), Just(json!("RS256")), json_value()],
        header_extra in json_value(),
        claims in claims(),
    ) {
        let header = json!({"alg": alg, "typ": "JWT", "x": header_extra});
        let token = signed(header.to_string().as_bytes(), claims.to_string().as_bytes());
        if let Ok(verified) = runtime().block_on(verifier().verify(&token)) {
            prop_assert_eq!(&header["alg"], "HS256");
            prop_assert_eq!(Some(verified.sub.as_str()), claims["sub"].as_str());
            prop_assert!(!verified.sub.is_empty());
            prop_assert_eq!(&claims["iss"], ISSUER);
        }
    }
}

// ----------------------------------------------------------------- config

fn shipped_proxy_toml() -> &'static str {
    include_str!("../proxy.toml")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_is_a_config_or_an_error(text in "(?s).{0,400}") {
        let _ = Config::from_toml(&text, Path::new("/nonexistent"), &|_| None);
    }

    #[test]
    fn the_shipped_config_with_one_line_replaced_loads_or_names_an_error(
        line in any::<proptest::sample::Index>(),
        replacement in prop_oneof![
            "(?s).{0,60}",
            "[a-z_]{1,20} = \"[^\"\n]{0,30}\"",
            "[a-z_]{1,20} = [0-9]{1,12}",
            "[a-z_]{1,20} = \\[\"[^\"\n]{0,20}\"\\]",
            "\\[[a-z.]{1,12}\\]",
        ],
    ) {
        let mut lines: Vec<&str> = shipped_proxy_toml().lines().collect();
        let at = line.index(lines.len());
        lines[at] = &replacement;
        let text = lines.join("\n");
        if let Err(error) = Config::from_toml(&text, Path::new("/nonexistent"), &|_| None) {
            prop_assert!(!error.to_string().is_empty());
        }
    }
}

// ------------------------------------------------------------- Set-Cookie

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cross_site_cookies_end_partitioned_and_a_second_rewrite_changes_nothing(
        cookie in "[ -~]{0,120}",
        attributes in proptest::collection::vec(
            prop_oneof![
                Just("SameSite=Strict"), Just("samesite=lax"), Just("Secure"), Just("secure"),
                Just("Partitioned"), Just("HttpOnly"), Just("Path=/api"), Just(""), Just(" ; "),
            ],
            0..6,
        ),
    ) {
        let text = std::iter::once(cookie.as_str()).chain(attributes).collect::<Vec<_>>().join("; ");
        let Ok(value) = HeaderValue::from_str(&text) else { return Ok(()) };
        let once = cross_site_cookie(&value);
        prop_assert_eq!(&cross_site_cookie(&once), &once);
        let out = once.to_str().unwrap();
        prop_assert!(out.ends_with("SameSite=None; Secure; Partitioned"), "{}", out);
        prop_assert!(out.starts_with(text.split(';').next().unwrap().trim()), "{}", out);
        let lower = out.to_ascii_lowercase();
        prop_assert_eq!(lower.matches("samesite").count(), 1, "{}", out);
    }
}

// ------------------------------------------------------------ request head

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("host".to_owned()),
        Just("connection".to_owned()),
        Just("upgrade".to_owned()),
        Just("keep-alive".to_owned()),
        Just("transfer-encoding".to_owned()),
        Just("te".to_owned()),
        Just("x-tenant-id".to_owned()),
        Just("x-forwarded-for".to_owned()),
        Just("x-forwarded-port".to_owned()),
        Just("forwarded".to_owned()),
        Just("x-real-ip".to_owned()),
        Just("cookie".to_owned()),
        "x-(chatgate|user|organization)-[a-z]{0,8}",
        "[a-z][a-z0-9-]{0,12}",
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("close, x-secret".to_owned()),
        Just("upgrade".to_owned()),
        "(sb-127-auth-token(\\.[0-9])?|chatgate_session|theme|sb-127-auth-token-code-verifier)=[a-z0-9]{0,8}(; (sb-127-auth-token(\\.[0-9])?|a)=[a-z]{0,4}){0,3}",
        "[ -~]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_client_header_chatgate_owns_survives_the_rewrite(
        sent in proptest::collection::vec((header_name(), header_value()), 0..12),
        trusted in any::<bool>(),
        upgrading in any::<bool>(),
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in &sent {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                headers.append(name, value);
            }
        }
        let host = headers.get("host").cloned();
        scrub_client_headers(&mut headers, ClientSide {
            peer: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            trusted,
            tls: true,
            host,
            upgrading,
            session_cookie: NAME,
        });
        for name in headers.keys() {
            let name = name.as_str();
            let upgrade = upgrading && (name == "connection" || name == "upgrade");
            prop_assert!(upgrade || !["connection", "upgrade", "keep-alive", "transfer-encoding", "te", "host", "x-tenant-id"].contains(&name), "{}", name);
            prop_assert!(!["x-chatgate-", "x-user-", "x-organization-"].iter().any(|p| name.starts_with(p)), "{}", name);
            if !trusted {
                prop_assert!(!["x-forwarded-port", "forwarded", "x-real-ip"].contains(&name), "{}", name);
            }
        }
        if !trusted {
            prop_assert_eq!(&headers["x-forwarded-for"], "203.0.113.7");
        }
        // Nothing the session decoder would read (`name`, `name.N`) is left,
        // nor chatgate's own cookie.
        let kept = headers.get_all("cookie").iter().map(|v| v.as_bytes());
        prop_assert!(find_session_cookie(kept, NAME).is_none());
        for cookie in headers.get_all("cookie") {
            for pair in cookie.to_str().unwrap().split(';') {
                let name = pair.split('=').next().unwrap().trim_matches([' ', '\t']);
                prop_assert_ne!(name, "chatgate_session");
            }
        }
    }

    #[test]
    fn no_token_parameter_survives_in_any_spelling(
        params in proptest::collection::vec(
            (prop_oneof![Just("token"), Just("%74oken"), Just("tok%65n"), Just("token%5B%5D"), Just("tokens"), Just("t"), Just("org")],
             "[a-z0-9%]{0,6}"),
            0..6,
        ),
    ) {
        let query: Vec<String> = params.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let uri: http::Uri = match format!("/c/new?{}", query.join("&")).parse() {
            Ok(uri) => uri,
            Err(_) => return Ok(()),
        };
        let rewritten = without_token_param(&uri).unwrap();
        for pair in rewritten.query().unwrap_or_default().split('&') {
            let name = pair.split('=').next().unwrap();
            prop_assert!(!["token", "%74oken", "tok%65n", "token%5B%5D"].contains(&name), "{}", rewritten);
        }
    }
}

// -------------------------------------------------------------- chat body

const INSTRUCTIONS: &str = "Answer in French.\n\"Quoted\" \\ too";

fn with_prefix(object: &mut Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let text = match map.get("promptPrefix").and_then(Value::as_str) {
        Some(prefix) if !prefix.is_empty() => format!("{INSTRUCTIONS}\n\n{prefix}"),
        _ => INSTRUCTIONS.to_owned(),
    };
    map.insert("promptPrefix".to_owned(), Value::String(text));
}

/// A chat body: LibreChat's fields with values of any type, often right.
fn chat_body() -> impl Strategy<Value = Value> {
    (
        conversation(),
        proptest::option::of(prop_oneof![conversation(), Just(Value::Null)]),
    )
        .prop_map(|(mut body, added)| {
            if let Some(added) = added {
                body["addedConvo"] = added;
            }
            body
        })
}

/// One conversation object of a chat body.
fn conversation() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(prop_oneof![".{0,30}".prop_map(Value::from), json_value()]),
        proptest::option::of(prop_oneof![
            Just(json!("openAI")),
            Just(json!("agents")),
            json_value()
        ]),
        proptest::option::of(prop_oneof![Just(json!("gpt-4o")), json_value()]),
        proptest::option::of(json_value()),
    )
        .prop_map(|(prefix, endpoint, model, extra)| {
            let mut object = serde_json::Map::new();
            let fields = [
                ("promptPrefix", prefix),
                ("endpoint", endpoint),
                ("model", model),
                ("extra", extra),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    object.insert(name.to_owned(), value);
                }
            }
            Value::Object(object)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_bytes_are_a_chat_body_or_a_bad_body(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = ChatBody::parse(&body);
    }

    #[test]
    fn instructions_keep_the_body_json_and_change_only_prompt_prefix(
        body in chat_body(),
        pretty in any::<bool>(),
    ) {
        let text = if pretty { serde_json::to_string_pretty(&body) } else { serde_json::to_string(&body) }.unwrap();
        let Ok(chat) = ChatBody::parse(text.as_bytes()) else { return Ok(()) };
        let out = chat
            .with_instructions(text.as_bytes(), INSTRUCTIONS, |_| true)
            .expect("instructions apply to every conversation");
        let got: Value = serde_json::from_slice(&out).expect("still JSON");
        // Read back from the text, as `got` is: floats need not survive a
        // write and read exactly.
        let mut expected: Value = serde_json::from_str(&text).unwrap();
        with_prefix(&mut expected);
        if let Some(added) = expected.get_mut("addedConvo") {
            with_prefix(added);
        }
        prop_assert_eq!(got, expected);
    }
}

// ------------------------------------------------------------ SSE usage

/// What one reading of a stream yields: the events, what the meter made of
/// each, what it counted and what it skipped.
#[derive(Debug, PartialEq)]
struct Reading {
    events: Vec<(Vec<u8>, Vec<u8>, Option<Seen>)>,
    counts: Vec<Count>,
    skipped: u64,
    rejected: u64,
    conversation: Option<String>,
    model: Option<String>,
}

fn read_stream(cap: usize, pieces: &[&[u8]]) -> Reading {
    read_stream_keeping(cap, |_| true, pieces)
}

/// As the tap reads: events whose first data line fails `keep` are not
/// handed over (the tap gives `count::may_matter`).
fn read_stream_keeping(cap: usize, keep: fn(&[u8]) -> bool, pieces: &[&[u8]]) -> Reading {
    let mut parser = SseParser::new(cap).keeping(keep);
    let mut events = Vec::new();
    for piece in pieces {
        parser.feed(piece, &mut |event| {
            events.push((event.name.to_vec(), event.data.to_vec(), read_event(event)));
        });
        assert!(
            parser.buffered() <= 2 * cap,
            "held {} bytes",
            parser.buffered()
        );
    }
    let skipped = parser.skipped();
    parser.finish();
    let mut state = StreamState::default();
    let counts = events
        .iter()
        .filter_map(|(_, _, seen)| state.apply(seen.clone()?))
        .collect();
    Reading {
        events,
        counts,
        skipped,
        rejected: state.rejected,
        conversation: state.conversation,
        model: state.model,
    }
}

/// `stream` cut at `cuts` (positions taken modulo its length + 1).
fn cut(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    at.sort_unstable();
    let mut from = 0;
    let mut pieces = Vec::new();
    for to in at.into_iter().chain([stream.len()]) {
        pieces.push(stream[from..to].to_vec());
        from = to;
    }
    pieces
}

/// Bytes that look like a stream often enough to reach every rule: SSE
/// field lines, any line ending, LibreChat's JSON, and noise.
fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"event: message".to_vec()),
        Just(b"event:error".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b": ping".to_vec()),
        Just(b"id: 7".to_vec()),
        Just(b"retry: 1000".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(br#"{"event":"on_token_usage","data":{"input_tokens":12,"output_tokens":3,"model":"gpt-4o","runId":"r","seq":1}}"#.to_vec()),
        Just(br#"{"final":true,"conversation":{"conversationId":"c1","model":"m"},"responseMessage":{"messageId":"a","metadata":{"usage":{"input":5,"output":-1}}}}"#.to_vec()),
        Just(br#"{"created":true,"message":{"conversationId":"c2"}}"#.to_vec()),
        Just(br#"{"event":"on_message_delta","data":{}}"#.to_vec()),
        proptest::collection::vec(any::<u8>(), 0..24),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// One `on_token_usage` event's tokens, and the line ending it is written with.
fn usage_event() -> impl Strategy<Value = (u64, u64, &'static str)> {
    (
        0u64..1_000_000,
        0u64..1_000_000,
        prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_sse_stream_cut_anywhere_reads_as_the_stream_whole(
        stream in sse_bytes(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        small_cap in proptest::option::of(16usize..600),
    ) {
        let cap = small_cap.unwrap_or(DEFAULT_EVENT_CAP);
        let whole = read_stream(cap, &[&stream]);
        let pieces = cut(&stream, &cuts);
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(read_stream(cap, &pieces), whole);
    }

    #[test]
    fn the_taps_first_line_filter_changes_no_count(
        stream in sse_bytes(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        small_cap in proptest::option::of(16usize..600),
    ) {
        let cap = small_cap.unwrap_or(DEFAULT_EVENT_CAP);
        let all = read_stream(cap, &[&stream]);
        let pieces = cut(&stream, &cuts);
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let filtered = read_stream_keeping(cap, may_matter, &pieces);
        prop_assert_eq!(&filtered.counts, &all.counts);
        prop_assert_eq!(filtered.rejected, all.rejected);
        prop_assert_eq!(&filtered.conversation, &all.conversation);
        prop_assert_eq!(&filtered.model, &all.model);
        prop_assert_eq!(filtered.skipped, all.skipped);
        // What the filter held back is exactly what the meter ignores.
        let handed: Vec<_> = all.events.iter().filter(|e| e.2.is_some()).collect();
        let kept: Vec<_> = filtered.events.iter().filter(|e| e.2.is_some()).collect();
        prop_assert_eq!(kept, handed);
    }

    #[test]
    fn any_bytes_fed_to_the_usage_parser_byte_by_byte_never_panic(
        stream in proptest::collection::vec(any::<u8>(), 0..400),
        cap in 1usize..64,
    ) {
        let whole = read_stream(cap, &[&stream]);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        prop_assert_eq!(read_stream(cap, &bytes), whole);
    }

    #[test]
    fn a_librechat_stream_cut_anywhere_counts_exactly_its_usage_events(
        usage in proptest::collection::vec(usage_event(), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
    ) {
        let mut stream = String::from("event: message\ndata: {\"created\":true,\"message\":{\"conversationId\":\"conv-7\"}}\n\n");
        for (seq, (input, output, eol)) in usage.iter().enumerate() {
            stream += &format!(
                "event: message{eol}data: {{\"event\":\"on_token_usage\",\"data\":{{\"input_tokens\":{input},\"output_tokens\":{output},\"model\":\"gpt-4o\",\"runId\":\"run-1\",\"seq\":{seq}}}}}{eol}{eol}: ping{eol}{eol}"
            );
        }
        // The final event's own usage sums the same calls: not counted again.
        stream += "data: {\"final\":true,\"conversation\":{\"conversationId\":\"conv-7\"},\"responseMessage\":{\"messageId\":\"a1\",\"metadata\":{\"usage\":{\"input\":1,\"output\":1}}}}\n\n";
        let pieces = cut(stream.as_bytes(), &cuts);
        let pieces: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let reading = read_stream_keeping(DEFAULT_EVENT_CAP, may_matter, &pieces);
        let sum = |f: fn(&Count) -> u64| reading.counts.iter().map(f).sum::<u64>();
        prop_assert_eq!(reading.counts.len(), usage.len());
        prop_assert_eq!(sum(|c| c.tokens.input), usage.iter().map(|u| u.0).sum::<u64>());
        prop_assert_eq!(sum(|c| c.tokens.output), usage.iter().map(|u| u.1).sum::<u64>());
        prop_assert_eq!(reading.conversation.as_deref(), Some("conv-7"));
        prop_assert_eq!(reading.rejected, 0);
    }
}

// ------------------------------------------------------- PROXY protocol

/// A header as a load balancer writes it, v1 or v2, for `client`.
fn proxy_header(client: std::net::SocketAddr, v2: bool, tlvs: usize) -> Vec<u8> {
    if !v2 {
        let (family, destination) = match client {
            std::net::SocketAddr::V4(_) => ("TCP4", "10.0.0.1"),
            std::net::SocketAddr::V6(_) => ("TCP6", "::1"),
        };
        let line = format!(
            "PROXY {family} {} {destination} {} 8443\r\n",
            client.ip(),
            client.port()
        );
        return line.into_bytes();
    }
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    let mut block = Vec::new();
    match client.ip() {
        IpAddr::V4(ip) => {
            header.push(0x11);
            block.extend_from_slice(&ip.octets());
            block.extend_from_slice(&[10, 0, 0, 1]);
        }
        IpAddr::V6(ip) => {
            header.push(0x21);
            block.extend_from_slice(&ip.octets());
            block.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        }
    }
    block.extend_from_slice(&client.port().to_be_bytes());
    block.extend_from_slice(&8443u16.to_be_bytes());
    block.resize(block.len() + tlvs, 0);
    header.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    header.extend_from_slice(&block);
    header
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Whatever a client sends first is a header, not yet one, or refused:
    /// never a panic, never a length beyond what v2's field can say, a v1
    /// header never longer than 107 bytes, and no decision that more bytes
    /// would change.
    #[test]
    fn any_bytes_are_a_proxy_header_or_refused_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        start in prop_oneof![Just(&b""[..]), Just(&b"PROXY "[..]), Just(&b"PROXY TCP4 "[..]), Just(&b"\r\n\r\n\0\r\nQUIT\n"[..])],
    ) {
        let bytes = [start, &bytes[..]].concat();
        if let Ok(Some(header)) = proxy_protocol::parse(&bytes) {
            prop_assert!(header.len <= 16 + usize::from(u16::MAX));
            if bytes[0] == b'P' {
                prop_assert!(header.len <= V1_MAX && bytes[..header.len].ends_with(b"\r\n"));
            }
        }
        // Every header decides within DECIDING_BYTES.
        let whole = proxy_protocol::parse(&bytes);
        if bytes.len() >= DECIDING_BYTES {
            prop_assert!(whole.map(|h| h.is_some()).unwrap_or(true));
        }
        // What fewer bytes (a peek) decided, the whole decides the same way.
        for end in 0..bytes.len() {
            let early = proxy_protocol::parse(&bytes[..end]);
            prop_assert!(early == Ok(None) || early == whole, "{end} bytes: {early:?} vs {whole:?}");
        }
    }

    /// A balancer's header for any client reads back as that client, at
    /// its full length, whatever follows it; each shorter prefix waits.
    #[test]
    fn any_client_address_reads_back_from_its_header(
        ip in any::<IpAddr>(),
        port in any::<u16>(),
        v2 in any::<bool>(),
        tlvs in 0usize..64,
        after in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let client = std::net::SocketAddr::new(ip, port);
        let header = proxy_header(client, v2, tlvs);
        let bytes = [&header[..], &after[..]].concat();
        let parsed = proxy_protocol::parse(&bytes).unwrap().unwrap();
        prop_assert_eq!(parsed.len, header.len());
        prop_assert_eq!(parsed.source, Some(client));
        let decided_at = if v2 { header.len() - tlvs } else { header.len() };
        for end in 0..decided_at {
            prop_assert_eq!(proxy_protocol::parse(&header[..end]), Ok(None));
        }
    }
}
