//! Real npm packages driven through Node (`tests/js/*.mjs`): `@supabase/ssr`
//! (what a Next.js dashboard writes and reads), and the `openid-client` and
//! `jsonwebtoken` versions LibreChat uses.
//! Install it once with `npm ci --prefix tests/js` (scripts/test.sh does).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Runs one mode of the Node driver with `input` on stdin.
pub fn ssr(mode: &str, input: &Value) -> Value {
    node("ssr_cookies.mjs", mode, input)
}

/// Runs `tests/js/<script> <mode>` with `input` on stdin and returns the JSON
/// it prints; panics with its stderr when it fails.
pub fn node(script: &str, mode: &str, input: &Value) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        dir.join("node_modules/@supabase/ssr/package.json")
            .is_file(),
        "@supabase/ssr is not installed: run `npm ci --prefix tests/js` from the crate root"
    );
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .arg(mode)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}); this test needs Node 20 or later"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write to node");
    let out = child.wait_with_output().expect("node runs");
    assert!(
        out.status.success(),
        "{script} {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} {mode} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
