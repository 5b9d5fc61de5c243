//! The PROXY protocol header parser (`server::proxy_protocol`): any first
//! bytes of a connection never panic, a v1 header is never longer than 107
//! bytes, and a decision never changes as more bytes arrive (what a peek
//! of fewer bytes decided, the whole decides the same way).
#![no_main]

use chatgate::server::proxy_protocol::{parse, V1_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Ok(Some(header)) = whole {
        assert!(header.len <= 16 + usize::from(u16::MAX));
        if data[0] == b'P' {
            assert!(header.len <= V1_MAX);
        }
    }
    for end in 0..data.len() {
        match parse(&data[..end]) {
            Ok(None) => {}
            decided => assert_eq!(decided, whole, "{end} bytes decided otherwise"),
        }
    }
});
