//! Structured logs (`tracing`): JSON by default, text on request. Nothing
//! here or elsewhere logs a header value except through `RedactedHeaders`,
//! which masks cookies, credentials and tokens.

use std::fmt;

use http::HeaderMap;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Lines waiting for the writer thread; past this, lines are dropped rather
/// than making requests wait on stderr.
const BUFFERED_LINES: usize = 256 * 1024;

/// Installs the global subscriber. `RUST_LOG`, when set, refines the level.
/// Lines are written by a thread of their own, so no request waits on a
/// write to stderr; the returned guard flushes them at exit.
pub fn init(config: &LogConfig) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},hyper=warn,h2=warn,rustls=warn", config.level))
    });
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
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
