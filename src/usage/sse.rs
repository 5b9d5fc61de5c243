//! An incremental Server-Sent Events parser for SPEC section 11: it reads a
//! stream's bytes as they pass to the client, in whatever pieces they come,
//! and hands each complete event's `data` to a callback.
//!
//! It never holds more than one line plus one event's data, and both are
//! capped: an event larger than [`SseParser::new`]'s cap is skipped, not
//! buffered (LibreChat's events are small; only the final event carries the
//! whole answer), and so is an event with any line larger than the cap.
//! Lines end with `\n`, `\r\n` or `\r` (the SSE grammar); comments (`:`),
//! `id:` and `retry:` fields are read and ignored. The parser never fails:
//! bytes it cannot make sense of are skipped.

/// Default cap on one event's `data` (and on one line): 4 MiB.
pub const DEFAULT_EVENT_CAP: usize = 4 * 1024 * 1024;

/// The longest `event:` name kept; LibreChat sends `message` and `error`.
const EVENT_NAME_CAP: usize = 64;

/// One parser per stream.
#[derive(Debug)]
pub struct SseParser {
    cap: usize,
    /// The part of a line that arrived without its end yet.
    line: Vec<u8>,
    /// The line being read is over the cap: its bytes are dropped until it ends.
    line_overflow: bool,
    /// The last byte seen was `\r`: a `\n` right after it ends no new line.
    after_cr: bool,
    /// `data` lines of the current event, joined with `\n`.
    data: Vec<u8>,
    /// The current event has at least one `data` line.
    has_data: bool,
    /// The current event is over the cap: it is skipped when it ends.
    event_overflow: bool,
    /// The current event's first `data` line failed [`SseParser::keep`]'s
    /// test: its data is not kept and it is not dispatched.
    event_ignored: bool,
    /// The joined length of an ignored event's data (not kept, but capped
    /// like kept data, so that `skipped` does not depend on `keep`).
    ignored_len: usize,
    /// Whether an event whose first `data` line is this is worth keeping.
    keep: fn(&[u8]) -> bool,
    /// The current event's `event:` name; empty = "message".
    name: Vec<u8>,
    /// Events skipped because they were larger than the cap.
    skipped: u64,
}

/// Where the first line of `bytes` ends (its `\n` or `\r`). On x86-64 the
/// AVX2 searcher is made once: `memchr2`'s per-call dispatch cost as much
/// as the search itself on lines of LibreChat's size.
#[cfg(target_arch = "x86_64")]
fn line_end(bytes: &[u8]) -> Option<usize> {
    use memchr::arch::x86_64::avx2::memchr::Two;
    static AVX2: std::sync::LazyLock<Option<Two>> =
        std::sync::LazyLock::new(|| Two::new(b'\n', b'\r'));
    match &*AVX2 {
        Some(two) => two.find(bytes),
        None => memchr::memchr2(b'\n', b'\r', bytes),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn line_end(bytes: &[u8]) -> Option<usize> {
    memchr::memchr2(b'\n', b'\r', bytes)
}

/// One dispatched event, borrowed from the parser until the callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// `event:` name; "message" when none was given.
    pub name: &'a [u8],
    /// The `data` lines joined with `\n`.
    pub data: &'a [u8],
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_EVENT_CAP)
    }
}

impl SseParser {
    /// A parser that skips events (and lines) larger than `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            event_ignored: false,
            ignored_len: 0,
            keep: |_| true,
            line: Vec::new(),
            line_overflow: false,
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            event_overflow: false,
            name: Vec::new(),
            skipped: 0,
        }
    }

    /// Dispatches only the events whose first `data` line passes `keep`:
    /// the others' data is neither copied nor handed over. `keep` sees the
    /// line's value (after `data:` and its one optional space); it must
    /// answer `false` only when no continuation could make the event
    /// matter (data lines are joined with `\n`).
    pub fn keeping(mut self, keep: fn(&[u8]) -> bool) -> Self {
        self.keep = keep;
        self
    }

    /// Events skipped so far for being larger than the cap.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes held between calls (the unfinished line and event).
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }

    /// Reads `bytes`, calling `on_event` for every event they complete.
    pub fn feed(&mut self, mut bytes: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.after_cr {
            self.after_cr = false;
            if let [b'\n', rest @ ..] = bytes {
                bytes = rest;
            }
        }
        while let Some(&first) = bytes.first() {
            // Events end with a blank line: found without a search.
            let end = if matches!(first, b'\n' | b'\r') {
                0
            } else if let Some(end) = line_end(bytes) {
                end
            } else {
                self.keep_partial(bytes);
                return;
            };
            let (head, rest) = bytes.split_at(end);
            let crlf_len = match rest {
                [b'\r', b'\n', ..] => 2,
                [b'\r'] => {
                    // A `\n` may open the next piece.
                    self.after_cr = true;
                    1
                }
                _ => 1,
            };
            if self.line.is_empty() && !self.line_overflow {
                if head.len() > self.cap {
                    // As if it had come in pieces: a line over the cap
                    // spoils its event, whatever field it holds.
                    self.event_overflow = true;
                } else {
                    self.line_done(head, on_event);
                }
            } else {
                self.keep_partial(head);
                let line = std::mem::take(&mut self.line);
                let overflow = std::mem::replace(&mut self.line_overflow, false);
                if overflow {
                    self.event_overflow = true;
                } else {
                    self.line_done(&line, on_event);
                }
                // Give the allocation back for the next split line.
                self.line = line;
                self.line.clear();
            }
            bytes = &rest[crlf_len..];
        }
    }

    /// The stream ended: an event without its closing blank line is not
    /// dispatched (the SSE rule), and everything held is let go.
    pub fn finish(&mut self) {
        self.line = Vec::new();
        self.data = Vec::new();
        self.name.clear();
        self.has_data = false;
        self.line_overflow = false;
        self.event_overflow = false;
        self.event_ignored = false;
        self.ignored_len = 0;
    }

    fn keep_partial(&mut self, bytes: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len() + bytes.len() > self.cap {
            self.line_overflow = true;
            self.line = Vec::new();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn line_done(&mut self, line: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        // The two fields a meter reads, known by their first bytes (the
        // field name ends at the first colon, so `data:` is `data`).
        let (field, value) = if let Some(value) = line.strip_prefix(b"data:") {
            (&b"data"[..], value)
        } else if let Some(value) = line.strip_prefix(b"event:") {
            (&b"event"[..], value)
        } else if line[0] == b':' {
            return; // a comment
        } else {
            match memchr::memchr(b':', line) {
                Some(colon) => (&line[..colon], &line[colon + 1..]),
                None => (line, &b""[..]),
            }
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"data" => {
                if self.event_overflow {
                    return;
                }
                if !self.has_data && !(self.keep)(value) {
                    self.event_ignored = true;
                }
                // An ignored event is measured, not kept: over the cap it is
                // skipped as it would have been whole.
                let held = if self.event_ignored {
                    self.ignored_len
                } else {
                    self.data.len()
                };
                let joined = self.has_data;
                let extra = usize::from(joined) + value.len();
                if held + extra > self.cap {
                    self.event_overflow = true;
                    self.data = Vec::new();
                    return;
                }
                self.has_data = true;
                if self.event_ignored {
                    self.ignored_len += extra;
                    return;
                }
                if joined {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
            }
            b"event" => {
                self.name.clear();
                // An empty name is "message": LibreChat's usual one is not copied.
                if value != b"message" {
                    self.name
                        .extend_from_slice(&value[..value.len().min(EVENT_NAME_CAP)]);
                }
            }
            // `id`, `retry` and unknown fields mean nothing to a meter.
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.event_overflow {
            self.skipped += 1;
        } else if self.has_data && !self.event_ignored {
            let name = if self.name.is_empty() {
                &b"message"[..]
            } else {
                &self.name
            };
            on_event(SseEvent {
                name,
                data: &self.data,
            });
        }
        self.data.clear();
        if self.data.capacity() > 64 * 1024 {
            // One large event must not pin its buffer for the stream's life.
            self.data = Vec::new();
        }
        self.name.clear();
        self.has_data = false;
        self.event_overflow = false;
        self.event_ignored = false;
        self.ignored_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parser: &mut SseParser, pieces: &[&[u8]]) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        for piece in pieces {
            parser.feed(piece, &mut |e| {
                seen.push((
                    String::from_utf8_lossy(e.name).into_owned(),
                    String::from_utf8_lossy(e.data).into_owned(),
                ))
            });
        }
        seen
    }

    #[test]
    fn librechat_frames_come_out_whole_whatever_the_split() {
        let stream = b"event: message\ndata: {\"created\":true}\n\n: keep-alive\n\nretry: 3000\nid: 7\nevent: message\r\ndata: {\"a\":1}\r\n\r\ndata: line one\rdata: line two\r\r";
        let want = vec![
            ("message".to_owned(), "{\"created\":true}".to_owned()),
            ("message".to_owned(), "{\"a\":1}".to_owned()),
            ("message".to_owned(), "line one\nline two".to_owned()),
        ];
        assert_eq!(events(&mut SseParser::default(), &[stream]), want);
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(
                events(&mut SseParser::default(), &[a, b]),
                want,
                "split at {split}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events(&mut SseParser::default(), &bytes), want);
    }

    #[test]
    fn an_event_larger_than_the_cap_is_skipped_and_the_next_one_is_read() {
        let mut parser = SseParser::new(16);
        let big = format!("data: {}\n\ndata: small\n\n", "x".repeat(100));
        let pieces: Vec<&[u8]> = big.as_bytes().chunks(7).collect();
        let seen = events(&mut parser, &pieces);
        assert_eq!(seen, vec![("message".to_owned(), "small".to_owned())]);
        assert_eq!(parser.skipped(), 1);
        // Many data lines that add up past the cap are skipped too.
        let many = "data: 0123456789\ndata: 0123456789\n\ndata: ok\n\n";
        let seen = events(&mut parser, &[many.as_bytes()]);
        assert_eq!(seen, vec![("message".to_owned(), "ok".to_owned())]);
        assert_eq!(parser.skipped(), 2);
        assert!(parser.buffered() <= 16);
    }

    #[test]
    fn an_event_held_back_by_keep_is_still_skipped_when_over_the_cap() {
        // Found by the sse_usage fuzz target: data lines joined past the cap
        // counted as a skip only when the event was kept.
        let stream = b"data: drop-me\ndata: 0123456789\n\ndata: ok\n\n";
        let keep: fn(&[u8]) -> bool = |line| !line.starts_with(b"drop");
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            let mut all = SseParser::new(16);
            let mut kept = SseParser::new(16).keeping(keep);
            let want = vec![("message".to_owned(), "ok".to_owned())];
            assert_eq!(events(&mut all, &[a, b]), want, "split at {split}");
            assert_eq!(events(&mut kept, &[a, b]), want, "split at {split}");
            assert_eq!((all.skipped(), kept.skipped()), (1, 1), "split at {split}");
        }
    }

    #[test]
    fn a_line_over_the_cap_skips_its_event_whether_it_comes_whole_or_cut() {
        // Found by the property test: whole, the long `event:` line was read
        // and the event dispatched; cut, it overflowed and the event was skipped.
        let stream = b"event: a-very-long-event-name\ndata: x\n\n: a comment longer than the cap\n\ndata: ok\n\n";
        let want = vec![("message".to_owned(), "ok".to_owned())];
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            let mut parser = SseParser::new(16);
            assert_eq!(events(&mut parser, &[a, b]), want, "split at {split}");
            assert_eq!(parser.skipped(), 2, "split at {split}");
        }
    }

    #[test]
    fn a_stream_cut_mid_event_dispatches_nothing_more() {
        let mut parser = SseParser::default();
        let seen = events(&mut parser, &[b"data: {\"final\":true,\"conv"]);
        assert!(seen.is_empty());
        parser.finish();
        assert_eq!(parser.buffered(), 0);
    }

    #[test]
    fn a_hundred_megabytes_of_deltas_pass_with_bounded_memory() {
        let delta = b"event: message\ndata: {\"event\":\"on_message_delta\",\"data\":{\"delta\":{\"content\":[{\"type\":\"text\",\"text\":\"hello \"}]}}}\n\n";
        // 1 MiB of whole events, fed 100 times in pieces that cut events anywhere.
        let per_pass = 1024 * 1024 / delta.len();
        let stream = delta.repeat(per_pass);
        let mut parser = SseParser::default();
        let mut count = 0u64;
        let mut most = 0usize;
        for _ in 0..100 {
            for piece in stream.chunks(64 * 1024 + 13) {
                parser.feed(piece, &mut |_| count += 1);
                most = most.max(parser.buffered());
            }
        }
        assert_eq!(count, 100 * per_pass as u64);
        assert!(most < 2 * delta.len(), "held {most} bytes");
    }
}
