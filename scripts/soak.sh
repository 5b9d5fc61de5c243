#!/usr/bin/env bash
# A soak of chatgate (issue 13): SOAK_MINUTES (10) of mixed load against a
# release build, with the integration tests' stand-in Supabase and LibreChat
# (3 instances) and a real redis-server: API calls over HTTP/2 and
# HTTP/1.1, page loads, long chat SSE streams, WebSockets, a session refresh
# every second; a SIGHUP every minute, one LibreChat instance restarted
# every 2 minutes, Redis restarted once. Prints a Markdown table, one row a
# minute (requests, failed idempotent requests, streams and WebSockets with
# their failures, chatgate's RSS and open descriptors), then the totals and
# the slope of RSS and descriptors after SOAK_WARMUP (2) minutes.
# Targets: 0 failed idempotent requests; RSS and descriptors flat.
#
#   SOAK_MINUTES=10 scripts/soak.sh
#
# Not part of `cargo test`. Needs redis-server. The driver is
# examples/soak.rs; reasons of failures go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${SOAK_MINUTES:-10}
warmup=${SOAK_WARMUP:-2}
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || {
  echo "soak.sh: redis-server is missing (Debian: apt-get install redis-server)" >&2
  exit 1
}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== building (release): chatgate, examples/soak" >&2
cargo build --release --quiet --bin chatgate --example soak
exec target/release/examples/soak --gate-bin target/release/chatgate \
  --minutes "$minutes" --warmup "$warmup"
