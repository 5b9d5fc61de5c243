//! Structured logs (`tracing`): JSON by default, text on request. Nothing
//! here or elsewhere logs a header value except through `RedactedHeaders`,
//! which masks cookies, credentials and tokens.
//!
//! Lines gather in memory and a thread of their own writes them out in
//! batches, the way nginx's `access_log … buffer=64k flush=…` does: a
//! request never waits on stderr, and a busy proxy makes one write per batch
//! instead of one write and one thread wake-up per line. The access line,
//! the busiest of all, is formatted here by hand rather than through
//! `tracing`'s field visitors.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, Version};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// A batch is written once this many bytes wait…
const BATCH_BYTES: usize = 64 * 1024;
/// …or when the oldest waiting line is this old.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// While stderr does not keep up, at most this much waits; further lines
/// are counted and dropped rather than growing memory or making requests
/// wait.
const MAX_WAITING: usize = 16 * 1024 * 1024;

static SINK: OnceLock<Arc<Sink>> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, refines the level.
/// The returned guard writes out what is still waiting when it is dropped.
pub fn init(config: &LogConfig) -> FlushAtExit {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},hyper=warn,h2=warn,rustls=warn", config.level))
    });
    let sink = SINK
        .get_or_init(|| Arc::new(Sink::new(config.format)))
        .clone();
    let writer = {
        let sink = sink.clone();
        std::thread::Builder::new()
            .name("chatgate-log".to_owned())
            .spawn(move || sink.write_batches(std::io::stderr()))
            .ok()
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(SinkWriter(sink.clone()));
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    FlushAtExit { sink, writer }
}

/// Writes out the waiting lines and stops the writer thread when dropped.
#[must_use = "dropping it at once loses nothing but stops batching"]
pub struct FlushAtExit {
    sink: Arc<Sink>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FlushAtExit {
    fn drop(&mut self) {
        self.sink.waiting().closed = true;
        self.sink.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Sink {
    format: LogFormat,
    waiting: Mutex<Waiting>,
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    dropped: u64,
    closed: bool,
}

impl Sink {
    fn new(format: LogFormat) -> Self {
        Sink {
            format,
            waiting: Mutex::new(Waiting::default()),
            wake: Condvar::new(),
        }
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues whole lines. Wakes the writer only when a batch begins or is
    /// full, not per line.
    fn push(&self, lines: &[u8]) {
        let mut waiting = self.waiting();
        if waiting.bytes.len() + lines.len() > MAX_WAITING {
            waiting.dropped += 1;
            return;
        }
        let began = waiting.bytes.is_empty();
        waiting.bytes.extend_from_slice(lines);
        let full = waiting.bytes.len() >= BATCH_BYTES;
        drop(waiting);
        if began || full {
            self.wake.notify_one();
        }
    }

    /// The writer thread: waits for a line, lets a batch gather for up to
    /// `FLUSH_EVERY`, writes it with one call, until closed and empty.
    fn write_batches(&self, mut out: impl Write) {
        let mut batch = Vec::with_capacity(BATCH_BYTES);
        loop {
            let mut waiting = self.waiting();
            while waiting.bytes.is_empty() && !waiting.closed {
                waiting = self
                    .wake
                    .wait(waiting)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if waiting.bytes.is_empty() && waiting.closed {
                return;
            }
            let deadline = Instant::now() + FLUSH_EVERY;
            while waiting.bytes.len() < BATCH_BYTES && !waiting.closed {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                waiting = self
                    .wake
                    .wait_timeout(waiting, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut waiting.bytes, &mut batch);
            let dropped = std::mem::take(&mut waiting.dropped);
            drop(waiting);
            if dropped > 0 {
                let _ = writeln!(
                    out,
                    "chatgate: {dropped} log line(s) dropped: stderr did not keep up"
                );
            }
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
            batch.shrink_to(4 * BATCH_BYTES);
        }
    }
}

/// `tracing_subscriber`'s writer: each event arrives as one whole line.
struct SinkWriter(Arc<Sink>);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter(self.0.clone())
    }
}

/// What the access log says of one request. It names the path but never the
/// query (a hand-off `token` may be there), and never a header value.
#[derive(Debug)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub peer: IpAddr,
    pub method: &'a Method,
    pub path: &'a str,
    pub version: Version,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub attempts: u8,
    pub duration: Duration,
    /// The Supabase user and their organization, when identified.
    pub user_id: Option<&'a str>,
    pub organization_id: Option<&'a str>,
    /// How: `cookie`, `session`, `handoff` or `bearer` (SPEC section 14).
    pub identified_by: Option<&'a str>,
    /// Body bytes received from the client and sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The W3C trace id (32 hex digits).
    pub trace_id: &'a str,
    /// Why a 5xx answer failed (never a token, secret or header value).
    pub reason: Option<&'a str>,
}

/// Whether access lines are written (`RUST_LOG=chatgate::access=off` stops
/// them), so a request can skip what only its line would need.
pub fn access_enabled() -> bool {
    SINK.get().is_some() && tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
}

/// The target the access line is filtered by (`RUST_LOG=chatgate::access=off`).
pub const ACCESS_TARGET: &str = "chatgate::access";

/// Queues the access line, stamped `at` (when the response was done
/// with), in the configured format, when info lines of `chatgate::access`
/// are enabled.
pub fn access(at: SystemTime, line: &AccessLine<'_>) {
    let Some(sink) = SINK.get() else { return };
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    thread_local! {
        static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        format_access(buf, sink.format, at, line);
        sink.push(buf.as_bytes());
    });
}

fn format_access(buf: &mut String, format: LogFormat, at: SystemTime, line: &AccessLine<'_>) {
    use fmt::Write as _;
    let version = match line.version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    };
    let micros = u64::try_from(line.duration.as_micros()).unwrap_or(u64::MAX);
    let duration_ms = format_args!("{}.{:03}", micros / 1000, micros % 1000);
    match format {
        // Written piece by piece, numbers with `itoa`: `write!` made the
        // line a tenth of a forwarded request's instructions.
        LogFormat::Json => {
            buf.push_str("{\"timestamp\":\"");
            push_timestamp(buf, at);
            buf.push_str("\",\"level\":\"INFO\",\"request_id\":");
            push_json_str(buf, line.request_id);
            buf.push_str(",\"peer\":\"");
            push_ip(buf, line.peer);
            buf.push_str("\",\"method\":");
            push_json_str(buf, line.method.as_str());
            buf.push_str(",\"path\":");
            push_json_str(buf, line.path);
            buf.push_str(",\"version\":\"");
            buf.push_str(version);
            buf.push_str("\",\"status\":");
            push_u64(buf, u64::from(line.status));
            buf.push_str(",\"upstream\":");
            match line.upstream {
                Some(upstream) => push_json_str(buf, upstream),
                None => buf.push_str("null"),
            }
            buf.push_str(",\"attempts\":");
            push_u64(buf, u64::from(line.attempts));
            buf.push_str(",\"duration_ms\":");
            push_u64(buf, micros / 1000);
            let fraction = micros % 1000;
            buf.push('.');
            buf.push_str(&"00"[..usize::from(fraction < 100) + usize::from(fraction < 10)]);
            push_u64(buf, fraction);
            buf.push_str(",\"bytes_in\":");
            push_u64(buf, line.bytes_in);
            buf.push_str(",\"bytes_out\":");
            push_u64(buf, line.bytes_out);
            for (key, value) in [
                (",\"user_id\":", line.user_id),
                (",\"organization_id\":", line.organization_id),
                (",\"identified_by\":", line.identified_by),
                (",\"trace_id\":", Some(line.trace_id)),
                (",\"reason\":", line.reason),
            ] {
                buf.push_str(key);
                match value {
                    Some(value) => push_json_str(buf, value),
                    None => buf.push_str("null"),
                }
            }
            buf.push_str(",\"target\":\"");
            buf.push_str(ACCESS_TARGET);
            buf.push_str("\"}\n");
        }
        LogFormat::Text => {
            push_timestamp(buf, at);
            let _ = writeln!(
                buf,
                "  INFO {ACCESS_TARGET}: request_id={:?} peer={} method={} path={:?} version={version} \
                 status={} upstream={} attempts={} duration_ms={duration_ms} bytes_in={} bytes_out={} \
                 user_id={} organization_id={} identified_by={} trace_id={} reason={:?}",
                line.request_id,
                line.peer,
                line.method,
                line.path,
                line.status,
                line.upstream.unwrap_or("-"),
                line.attempts,
                line.bytes_in,
                line.bytes_out,
                line.user_id.unwrap_or("-"),
                line.organization_id.unwrap_or("-"),
                line.identified_by.unwrap_or("-"),
                line.trace_id,
                line.reason.unwrap_or("-"),
            );
        }
    }
}

/// A JSON string literal of `text`.
fn push_json_str(buf: &mut String, text: &str) {
    buf.push('"');
    if !needs_escape(text.as_bytes()) {
        buf.push_str(text);
        buf.push('"');
        return;
    }
    let mut plain = 0;
    for (i, byte) in text.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        buf.push_str(&text[plain..i]);
        plain = i + 1;
        if escaped.is_empty() {
            use fmt::Write as _;
            let _ = write!(buf, "\\u{byte:04x}");
        } else {
            buf.push_str(escaped);
        }
    }
    buf.push_str(&text[plain..]);
    buf.push('"');
}

/// Whether `bytes` holds a `"`, a `\`, a control byte or DEL: eight bytes
/// at a time (the usual line has none).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `v` is zero, or below `n` (n <= 0x80): its high bit is set in the result.
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGH;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let v = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        let hit = below(v, 0x20)
            | zero(v ^ (ONES * 0x22))
            | zero(v ^ (ONES * 0x5c))
            | zero(v ^ (ONES * 0x7f));
        if hit != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || matches!(b, b'"' | b'\\' | 0x7f))
}

fn push_u64(buf: &mut String, n: u64) {
    buf.push_str(itoa::Buffer::new().format(n));
}

/// `ip` as `Display` writes it; an IPv4 address without the formatting machinery.
pub fn push_ip(buf: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push('.');
                }
                push_u64(buf, u64::from(octet));
            }
        }
        IpAddr::V6(_) => {
            use fmt::Write as _;
            let _ = write!(buf, "{ip}");
        }
    }
}

/// RFC 3339 in UTC with microseconds, as `tracing_subscriber` writes it.
/// The date and time of day are formatted once per second per thread.
fn push_timestamp(buf: &mut String, at: SystemTime) {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            *cached = secs;
            text.clear();
            let (year, month, day) = crate::calendar::civil_from_days((secs / 86_400) as i64);
            let of_day = secs % 86_400;
            use fmt::Write as _;
            let _ = write!(
                text,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                of_day / 3600,
                of_day / 60 % 60,
                of_day % 60
            );
        }
        buf.push_str(text);
    });
    // `.` and six digits of microseconds, without `fmt` (once per line).
    let mut micros = since.subsec_micros();
    let mut digits = [b'0'; 7];
    digits[0] = b'.';
    for digit in digits[1..].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    buf.push_str(std::str::from_utf8(&digits).unwrap_or(".000000"));
    buf.push('Z');
}

/// Header names whose values are never printed.
const SECRET_HEADERS: [&str; 6] = [
    "cookie",
    "set-cookie",
    "authorization",
    "proxy-authorization",
    "apikey",
    "x-api-key",
];

/// Debug-prints a header map with credential values masked.
pub struct RedactedHeaders<'a>(pub &'a HeaderMap);

impl fmt::Debug for RedactedHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.0 {
            if SECRET_HEADERS.contains(&name.as_str()) {
                map.entry(&name.as_str(), &"[redacted]");
            } else {
                map.entry(&name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
            }
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_carry_six_digits_of_microseconds() {
        for (micros, text) in [
            (0, "1970-01-01T00:00:01.000000Z"),
            (42, "1970-01-01T00:00:01.000042Z"),
            (123_456, "1970-01-01T00:00:01.123456Z"),
            (999_999, "1970-01-01T00:00:01.999999Z"),
        ] {
            let mut buf = String::new();
            push_timestamp(
                &mut buf,
                UNIX_EPOCH + Duration::from_micros(1_000_000 + micros),
            );
            assert_eq!(buf, text);
        }
    }

    #[test]
    fn the_word_at_a_time_check_finds_every_byte_that_needs_escaping() {
        let naive = |b: u8| b < 0x20 || matches!(b, b'"' | b'\\' | 0x7f);
        for byte in 0..=255u8 {
            for at in 0..19 {
                let mut text = vec![b'a'; 19];
                text[at] = byte;
                assert_eq!(needs_escape(&text), naive(byte), "byte {byte:#x} at {at}");
            }
        }
        // Neighbours that borrow in the subtraction do not hide or invent a hit.
        assert!(!needs_escape(
            "é€🚀 ~!#%&'()*+,-./09:;<=>?@AZ[]^_`az{|}".as_bytes()
        ));
        assert!(needs_escape(b"\x00\x01abcdefgh"));
    }

    fn sample() -> AccessLine<'static> {
        AccessLine {
            request_id: "r-1",
            peer: "192.0.2.7".parse().unwrap(),
            method: &Method::POST,
            path: "/api/ask/\"quoted\"\\x",
            version: Version::HTTP_2,
            status: 200,
            upstream: Some("http://lc-1:3080"),
            attempts: 2,
            duration: Duration::from_micros(12_345),
            user_id: Some("6f1d1c1e-0000-4000-8000-000000000001"),
            organization_id: Some("org-1"),
            identified_by: Some("cookie"),
            bytes_in: 17,
            bytes_out: 2048,
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736",
            reason: None,
        }
    }

    #[test]
    fn the_json_access_line_is_one_json_object_with_every_field() {
        let at = UNIX_EPOCH + Duration::from_micros(1_795_824_000_000_042);
        let mut buf = String::new();
        format_access(&mut buf, LogFormat::Json, at, &sample());
        assert!(
            buf.ends_with('\n') && buf.matches('\n').count() == 1,
            "{buf}"
        );
        let line: serde_json::Value = serde_json::from_str(&buf).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "timestamp": "2026-11-28T00:00:00.000042Z",
                "level": "INFO",
                "request_id": "r-1",
                "peer": "192.0.2.7",
                "method": "POST",
                "path": "/api/ask/\"quoted\"\\x",
                "version": "HTTP/2.0",
                "status": 200,
                "upstream": "http://lc-1:3080",
                "attempts": 2,
                "duration_ms": 12.345,
                "user_id": "6f1d1c1e-0000-4000-8000-000000000001",
                "organization_id": "org-1",
                "identified_by": "cookie",
                "bytes_in": 17,
                "bytes_out": 2048,
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "reason": null,
                "target": "chatgate::access",
            })
        );
        let mut none = sample();
        none.upstream = None;
        none.path = "/\u{1}\n";
        none.duration = Duration::from_micros(3_007);
        none.peer = "2001:db8::7".parse().unwrap();
        buf.clear();
        format_access(&mut buf, LogFormat::Json, at, &none);
        let line: serde_json::Value = serde_json::from_str(&buf).unwrap();
        assert_eq!(line["upstream"], serde_json::Value::Null);
        assert_eq!(line["path"], "/\u{1}\n");
        assert!(buf.contains(r#""duration_ms":3.007,"#), "{buf}");
        assert_eq!(line["peer"], "2001:db8::7");
    }

    #[test]
    fn the_text_access_line_names_every_field() {
        let mut buf = String::new();
        format_access(&mut buf, LogFormat::Text, UNIX_EPOCH, &sample());
        assert_eq!(
            buf,
            "1970-01-01T00:00:00.000000Z  INFO chatgate::access: request_id=\"r-1\" peer=192.0.2.7 \
             method=POST path=\"/api/ask/\\\"quoted\\\"\\\\x\" version=HTTP/2.0 status=200 \
             upstream=http://lc-1:3080 attempts=2 duration_ms=12.345 bytes_in=17 bytes_out=2048 \
             user_id=6f1d1c1e-0000-4000-8000-000000000001 organization_id=org-1 identified_by=cookie \
             trace_id=4bf92f3577b34da6a3ce929d0e0e4736 reason=\"-\"\n"
        );
    }

    #[test]
    fn batches_are_written_whole_and_in_order_and_nothing_is_lost_at_close() {
        let sink = Arc::new(Sink::new(LogFormat::Json));
        let out = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let writer = {
            let (sink, out) = (sink.clone(), out.clone());
            std::thread::spawn(move || sink.write_batches(Shared(out)))
        };
        let guard = FlushAtExit {
            sink: sink.clone(),
            writer: Some(writer),
        };
        let mut expected = String::new();
        for n in 0..5000 {
            let line = format!("line {n} {}\n", "x".repeat(n % 100));
            sink.push(line.as_bytes());
            expected.push_str(&line);
        }
        drop(guard);
        assert_eq!(
            String::from_utf8(out.lock().unwrap().clone()).unwrap(),
            expected
        );
    }

    #[test]
    fn credentials_are_masked() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "sb-127-auth-token=SECRET1".parse().unwrap());
        headers.insert("authorization", "Bearer SECRET2".parse().unwrap());
        headers.insert("accept", "text/html".parse().unwrap());
        let printed = format!("{:?}", RedactedHeaders(&headers));
        assert!(!printed.contains("SECRET"), "{printed}");
        assert!(printed.contains("text/html"), "{printed}");
    }
}
