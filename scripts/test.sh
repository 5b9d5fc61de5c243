#!/usr/bin/env bash
# Runs every chatgate test. Tests start their own redis-server (and, where
# usage metering is tested, a throw-away PostgreSQL cluster; where the PROXY
# protocol is tested, an haproxy) and drive
# Debian's headless Chromium, so this script first makes sure those programs
# are installed, then runs `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v node >/dev/null || missing+=(nodejs npm)
# tests/proxy_protocol.rs puts a real haproxy (its own, on free ports) in front of chatgate.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# tests/browser_frame.rs launches exactly this binary.
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The binary's allocator (tikv-jemalloc-sys) builds jemalloc with make and a C compiler.
command -v make >/dev/null || missing+=(make)
command -v cc >/dev/null || missing+=(gcc)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test.sh: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "test.sh: missing ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

# tests/compose.rs parses docker-compose.yml with PyYAML (no compose client here).
if ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install --quiet pyyaml
fi

# JavaScript helpers used by interop tests: the real @supabase/ssr, openid-client and
# librechat-data-provider (LibreChat's own chat payload builder) packages.
# Reinstalled when package-lock.json changed since the last install (a new pinned package).
if [ -f tests/js/package.json ] && { [ ! -f tests/js/node_modules/.package-lock.json ] ||
   [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; }; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
fi
# playwright-core, which drives Chromium for the browser test (it downloads no browser).
if [ -f tests/browser/package.json ] && [ ! -d tests/browser/node_modules ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

exec cargo test "$@"
