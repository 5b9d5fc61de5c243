//! What one client may cost the server (issue 13, slow and hostile
//! clients): the time a TLS handshake and an HTTP/1.1 request head may take
//! (slowloris), the HTTP/2 streams and resets one connection may have
//! (rapid reset), and the accept loop's back-off when the process is out of
//! file descriptors. Request smuggling is refused by hyper's parsers (see
//! `tests/hostile_clients.rs` for what each case gets).

use std::io;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::time::Instant;

/// A TLS handshake that takes longer than this is abandoned.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Slowloris guard: an HTTP/1.1 request head must arrive within this time
/// (the default of `Options::header_read_timeout`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 streams one connection may have open at once; more are refused
/// (`REFUSED_STREAM`), as nginx's `http2_max_concurrent_streams` does.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Rapid reset (CVE-2023-44487): streams a client opened and reset before
/// chatgate took them up; beyond this the connection gets `GOAWAY`
/// (`ENHANCE_YOUR_CALM`). h2's default, said here so it cannot drift.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams chatgate itself had to reset because the client broke the
/// protocol (malformed headers, a wrong `content-length`); beyond this the
/// connection gets `GOAWAY`. hyper's default is 1024.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 128;
/// How long the accept loop waits after a failure that is not one
/// connection's own (EMFILE, ENFILE, ENOBUFS, ENOMEM): the listener stays
/// readable while the process is out of descriptors, so retrying at once
/// would spin a core; connections closing meanwhile free them.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// While accepting keeps failing, a warning this often (not one per try).
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Buffers bigger than the configured limit, so that most oversized heads
/// reach `proxy::check_request` (431 with a JSON body); hyper still answers
/// 431 itself beyond them.
fn buffer_size(max_header_bytes: usize) -> usize {
    (max_header_bytes * 2).max(16 * 1024)
}

/// HTTP/1.1 over TLS (the ALPN said so, or said nothing).
pub(super) fn http1_builder(
    max_header_bytes: usize,
    header_read_timeout: Duration,
) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(buffer_size(max_header_bytes))
        // Head and body copied into one buffer: rustls then seals one
        // record per response rather than one per slice. Same-run A/B
        // (wrk -c64, 4 rounds): 2-3 % less CPU per request.
        .writev(false)
        .keep_alive(true);
    builder
}

/// The HTTP/2 settings, for both builders below (their `http2()` types
/// differ but take the same calls).
macro_rules! http2_settings {
    ($builder:expr, $max_header_bytes:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(buffer_size($max_header_bytes)).unwrap_or(u32::MAX))
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
            .keep_alive_interval(Duration::from_secs(30))
    };
}

/// Either protocol on the plain listener.
pub(super) fn http_builder(
    max_header_bytes: usize,
    header_read_timeout: Duration,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_buf_size(buffer_size(max_header_bytes))
        .keep_alive(true);
    http2_settings!(builder.http2(), max_header_bytes);
    builder
}

/// HTTP/2 over TLS (the ALPN said so): hyper's HTTP/2 connection alone,
/// without the auto builder's, whose state has room for HTTP/1.1 too and
/// which every idle connection would carry (issue 15).
pub(super) fn http2_builder(
    max_header_bytes: usize,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2_settings!(builder, max_header_bytes);
    builder
}

/// The accept loop's state across failures: how long to wait after each,
/// and a warning when they begin (then every `ACCEPT_WARN_EVERY`) rather
/// than one line per try.
#[derive(Debug, Default)]
pub(super) struct AcceptBackoff {
    /// When the current run of failures began, and how many so far.
    failing: Option<(Instant, u64)>,
    warned_at: Option<Instant>,
}

impl AcceptBackoff {
    /// After a failed `accept`: how long to wait before the next one.
    pub(super) fn failed(&mut self, error: &io::Error) -> Duration {
        if is_one_connections_own(error) {
            // That connection is gone; the next one may be fine.
            tracing::debug!(%error, "accept failed for one connection");
            return Duration::ZERO;
        }
        let now = Instant::now();
        let (since, failures) = self.failing.get_or_insert((now, 0));
        *failures += 1;
        let (since, failures) = (*since, *failures);
        if self
            .warned_at
            .is_none_or(|at| now - at >= ACCEPT_WARN_EVERY)
        {
            self.warned_at = Some(now);
            tracing::warn!(
                %error,
                failures,
                failing_for = ?(now - since),
                backoff = ?ACCEPT_BACKOFF,
                "accept failed: out of file descriptors or memory? backing off"
            );
        }
        ACCEPT_BACKOFF
    }

    /// After a successful `accept`.
    pub(super) fn accepted(&mut self) {
        if let Some((since, failures)) = self.failing.take() {
            self.warned_at = None;
            tracing::info!(
                failures,
                failed_for = ?since.elapsed(),
                "accepting connections again"
            );
        }
    }
}

/// Errors that concern only the connection being accepted (it was reset
/// before we took it): nothing to wait for.
fn is_one_connections_own(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_descriptors_backs_off_and_a_reset_connection_does_not() {
        let mut backoff = AcceptBackoff::default();
        // EMFILE is 24 on Linux; its ErrorKind is not a stable variant.
        let emfile = io::Error::from_raw_os_error(24);
        assert_eq!(backoff.failed(&emfile), ACCEPT_BACKOFF);
        assert_eq!(backoff.failed(&emfile), ACCEPT_BACKOFF);
        assert_eq!(backoff.failing.map(|(_, n)| n), Some(2));
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed(&aborted), Duration::ZERO);
        backoff.accepted();
        assert!(backoff.failing.is_none());
    }
}
