//! W3C Trace Context (SPEC section 14): a request's incoming `traceparent`
//! is kept when well-formed (else a new trace starts), and LibreChat gets
//! one naming chatgate's own span as the parent, so its spans join the
//! caller's trace. The trace id goes on the access line.

pub mod export;

use std::cell::Cell;

use http::HeaderValue;

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// `00-<trace id>-<span id>-<flags>` as chatgate sends it on: the caller's
/// trace id and flags, chatgate's span id.
#[derive(Debug, Clone, Copy)]
pub struct TraceParent {
    text: [u8; 55],
    /// The caller's span id (16 hex digits), when it sent a `traceparent`.
    parent: Option<[u8; 16]>,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl TraceParent {
    /// The trace of a request carrying `incoming` (its `traceparent`), with
    /// a fresh span id for chatgate's part.
    pub fn of(incoming: Option<&HeaderValue>) -> Self {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let mut parent = None;
        match incoming.and_then(|v| parse(v.as_bytes())) {
            Some((trace_id, parent_id, flags)) => {
                text[3..35].copy_from_slice(trace_id);
                text[53..55].copy_from_slice(flags);
                let mut id = [0u8; 16];
                id.copy_from_slice(parent_id);
                parent = Some(id);
            }
            None => {
                let (a, b) = (random_u64(), random_u64());
                write_hex(&mut text[3..19], a);
                write_hex(&mut text[19..35], b | 1); // never all zeros
                                                     // Sampled: no sampler sits in front of chatgate to decide.
                text[53..55].copy_from_slice(b"01");
            }
        }
        write_hex(&mut text[36..52], random_u64() | 1);
        Self { text, parent }
    }

    /// The caller's span id, when the request came with a `traceparent`.
    pub fn parent_span_id(&self) -> Option<&str> {
        self.parent
            .as_ref()
            .and_then(|id| std::str::from_utf8(id).ok())
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.text[3..35]).unwrap_or("-")
    }

    /// The 16 hex digits of chatgate's span id.
    pub fn span_id(&self) -> &str {
        std::str::from_utf8(&self.text[36..52]).unwrap_or("-")
    }

    /// Whether the caller asked for the trace to be recorded.
    pub fn sampled(&self) -> bool {
        let low = self.text[54];
        let digit = HEX.iter().position(|&h| h == low).unwrap_or(0);
        digit & 1 == 1
    }

    /// The header LibreChat receives.
    pub fn header(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.text).unwrap_or(HeaderValue::from_static(""))
    }
}

/// The trace id and flags of a well-formed `traceparent` (W3C Trace
/// Context level 1: lower-case hex, ids not all zeros, version `ff` never
/// valid; a later version may carry more after a `-`).
fn parse(value: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zeros = |part: &[u8]| part.iter().all(|&b| b == b'0');
    let (version, trace_id, parent_id, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let well_formed = value[2] == b'-'
        && value[35] == b'-'
        && value[52] == b'-'
        && [version, trace_id, parent_id, flags].into_iter().all(hex)
        && version != b"ff"
        && (version != b"00" || value.len() == 55)
        && !zeros(trace_id)
        && !zeros(parent_id);
    well_formed.then_some((trace_id, parent_id, flags))
}

fn write_hex(out: &mut [u8], value: u64) {
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((value >> (4 * (15 - i))) & 0xf) as usize];
    }
}

/// SplitMix64 per thread, seeded once from the OS: ids must be unlikely
/// to collide, not unguessable, and a system call per request is not worth it.
fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0);
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_well_formed_traceparent_keeps_its_trace_id_and_flags() {
        let trace = TraceParent::of(Some(&HeaderValue::from_static(GOOD)));
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(trace.span_id(), "00f067aa0ba902b7");
        assert_eq!(trace.parent_span_id(), Some("00f067aa0ba902b7"));
        assert!(trace.sampled());
        let sent = trace.header();
        let sent = sent.to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert_eq!(&sent[36..52], trace.span_id());
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let trace = TraceParent::of(Some(&HeaderValue::from_str(bad).unwrap()));
            assert_ne!(
                trace.trace_id(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad}"
            );
            assert!(parse(trace.header().as_bytes()).is_some(), "{bad}");
        }
    }

    #[test]
    fn a_later_version_may_carry_more() {
        let value = format!("01{}-more", &GOOD[2..]);
        assert!(parse(value.as_bytes()).is_some());
    }

    #[test]
    fn new_traces_differ() {
        let (a, b) = (TraceParent::of(None), TraceParent::of(None));
        assert_ne!(a.trace_id(), b.trace_id());
        assert_ne!(a.span_id(), b.span_id());
        assert!(a.sampled());
        assert_eq!(a.parent_span_id(), None);
    }
}
