//! The SSE usage parser and the counting rules behind it (`usage::sse`,
//! `usage::count`): any bytes, cut into pieces anywhere, give the same
//! events, the same meter readings and the same counts as the same bytes in
//! one piece, and nothing panics.
//!
//! Input: byte 0 picks the event cap (high bit set: a small cap from 16 to
//! 1032 bytes, so that the overflow paths run; else the default), byte 1 the
//! number of cuts (0 to 7), then two bytes per cut (its position, modulo
//! the stream's length + 1); the rest is the stream.
#![no_main]

use chatgate::usage::count::{may_matter, read_event, Count, Seen, StreamState};
use chatgate::usage::sse::{SseParser, DEFAULT_EVENT_CAP};
use libfuzzer_sys::fuzz_target;

/// What one reading of a stream yields.
#[derive(Debug, PartialEq)]
struct Reading {
    events: Vec<(Vec<u8>, Vec<u8>, Option<Seen>)>,
    counts: Vec<Option<Count>>,
    skipped: u64,
    conversation: Option<String>,
    endpoint: Option<String>,
    model: Option<String>,
    rejected: u64,
}

fn read(cap: usize, pieces: &[&[u8]]) -> Reading {
    read_keeping(cap, |_| true, pieces)
}

/// As the tap reads: events whose first data line fails `keep` are not
/// handed over.
fn read_keeping(cap: usize, keep: fn(&[u8]) -> bool, pieces: &[&[u8]]) -> Reading {
    let mut parser = SseParser::new(cap).keeping(keep);
    let mut events = Vec::new();
    for piece in pieces {
        parser.feed(piece, &mut |event| {
            events.push((event.name.to_vec(), event.data.to_vec(), read_event(event)));
        });
        assert!(parser.buffered() <= 2 * cap, "held {} bytes", parser.buffered());
    }
    let skipped = parser.skipped();
    parser.finish();
    assert_eq!(parser.buffered(), 0);
    let mut state = StreamState::default();
    let counts = events
        .iter()
        .filter_map(|(_, _, seen)| seen.clone())
        .map(|seen| state.apply(seen))
        .collect();
    Reading {
        events,
        counts,
        skipped,
        conversation: state.conversation,
        endpoint: state.endpoint,
        model: state.model,
        rejected: state.rejected,
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, cuts, rest @ ..] = data else {
        return;
    };
    let cap = if mode & 0x80 != 0 {
        16 + usize::from(mode & 0x7f) * 8
    } else {
        DEFAULT_EVENT_CAP
    };
    let cuts = usize::from(cuts % 8);
    if rest.len() < 2 * cuts {
        return;
    }
    let (positions, stream) = rest.split_at(2 * cuts);
    let mut at: Vec<usize> = positions
        .chunks(2)
        .map(|p| usize::from(u16::from_le_bytes([p[0], p[1]])) % (stream.len() + 1))
        .collect();
    at.sort_unstable();
    let mut pieces = Vec::with_capacity(cuts + 1);
    let mut from = 0;
    for cut in at {
        pieces.push(&stream[from..cut]);
        from = cut;
    }
    pieces.push(&stream[from..]);
    let whole = read(cap, &[stream]);
    assert_eq!(read(cap, &pieces), whole, "cut at {pieces:?}");
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(read(cap, &bytes), whole, "one byte at a time");
    // The tap's filter holds back only events the meter ignores.
    let tapped = read_keeping(cap, may_matter, &pieces);
    assert_eq!(tapped.counts, whole.counts, "tap filter, cut at {pieces:?}");
    assert_eq!(tapped.rejected, whole.rejected);
    assert_eq!(tapped.skipped, whole.skipped);
    assert_eq!(
        (tapped.conversation, tapped.endpoint, tapped.model),
        (whole.conversation, whole.endpoint, whole.model)
    );
});
