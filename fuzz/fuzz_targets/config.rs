//! The config parser (`Config::from_toml`): any `proxy.toml` text is
//! either a config or an error, never a panic; a config that loads once
//! loads the same way twice.
#![no_main]

use std::path::Path;

use chatgate::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/nonexistent/chatgate-fuzz");
    let first = Config::from_toml(text, base, &|_| None);
    if let Ok(config) = &first {
        let _ = config.warnings();
        let again = Config::from_toml(text, base, &|_| None).expect("loaded once");
        assert_eq!(format!("{config:?}"), format!("{again:?}"));
    }
});
