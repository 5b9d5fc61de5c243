#!/usr/bin/env bash
# chatgate against nginx and haproxy, side by side in one run, on loopback
# (issues 7 and 15).
#
# Starts: a fast upstream (nginx returning a fixed 1 KiB body, plain HTTP for
# the proxies and TLS for "direct"), nginx as a TLS reverse proxy in front of
# it (proxy_pass, keep-alive upstream, http2, no auth), haproxy doing the
# same (TLS termination, h2 and http/1.1, `http-reuse always`, no auth; in
# the HTTP/1.1 64-connection, HTTP/2 and one-connection rows), chatgate (release
# build) in front of it with a valid Supabase session cookie on every request,
# the stand-in Supabase (examples/bench_supabase.rs), and for SSE and the
# refresh storm two more chatgate replicas sharing a redis-server in front of
# an SSE upstream (examples/bench_load.rs), and for usage metering (issue
# 12) a throw-away PostgreSQL cluster (initdb + pg_ctl, schema/ applied) and
# a fourth replica like those two with [usage] postgres_url set, so that
# metering off and on compare on one upstream and route. Then runs,
# alternating, ROUNDS
# rounds of each measurement and prints a table of medians, also written to
# bench-results/<timestamp>.md.
#
# Machines here are shared and noisy: compare the columns of one run, never
# figures of different runs.
#
# Knobs (environment): BENCH_ROUNDS (3), BENCH_DURATION seconds per load run
# (8), BENCH_IDLE_CONNS (10000), BENCH_IDLE_SETTLE seconds idle before the
# RSS is read (5), BENCH_ONLY=idle runs the idle connection rows only (for
# working on them; the other rows print nan), BENCH_STORM requests (200), BENCH_SSE_EVENTS per stream
# (200, 10 ms apart), BENCH_SSE_TPUT_EVENTS per stream of the 64-stream
# relay throughput run (2000, written without pause). Each round also times a 1 KiB chat POST and a GET
# through chatgate for a user without a policy and one with a restrictive
# policy. BENCH_HOLD=1 starts everything, prints the
# addresses and the cookie (for wrk, perf, valgrind by hand) and waits for
# Ctrl-C instead of measuring.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-8}
IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
STORM=${BENCH_STORM:-200}
SSE_EVENTS=${BENCH_SSE_EVENTS:-200}
SSE_TPUT_EVENTS=${BENCH_SSE_TPUT_EVENTS:-2000}
IDLE_SETTLE=${BENCH_IDLE_SETTLE:-5}
ONLY=${BENCH_ONLY:-}

PATH="$PATH:/usr/sbin:/sbin"
missing=()
for tool in nginx haproxy wrk h2load redis-server cargo psql; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
# Debian keeps initdb and pg_ctl off PATH, in /usr/lib/postgresql/<v>/bin.
pg_bin=$(dirname "$(command -v initdb 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)")
[ -x "$pg_bin/initdb" ] && [ -x "$pg_bin/pg_ctl" ] || missing+=(initdb)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench.sh: missing ${missing[*]} (Debian: apt-get install nginx haproxy wrk nghttp2-client redis-server postgresql)" >&2
  exit 1
fi

# Every idle connection is a descriptor in the client and in the proxy.
want_fds=$((IDLE_CONNS + 2048))
ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$want_fds" ]; then
  IDLE_CONNS=$(($(ulimit -n) - 2048))
  echo "bench.sh: descriptor limit $(ulimit -n): idle test uses $IDLE_CONNS connections" >&2
fi

echo "== building (release): chatgate, examples/bench_supabase, examples/bench_load"
cargo build --release --quiet --bin chatgate --example bench_supabase --example bench_load
gate_bin="$root/target/release/chatgate"
load="$root/target/release/examples/bench_load"
supabase_bin="$root/target/release/examples/bench_supabase"

work=$(mktemp -d "${TMPDIR:-/tmp}/chatgate-bench.XXXXXX")
pids=()
pg_started=""
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$pg_started" ]; then
    pg_as "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # start NAME CMD… : runs in the background, logs to $work/NAME.log
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  last_pid=$!
}

wait_port() { # wait_port PORT NAME
  local i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench.sh: $2 did not open port $1; its log:" >&2
  tail -20 "$work/$2.log" >&2 || true
  exit 1
}

mapfile -t ports < <("$load" ports 11)
up_port=${ports[0]}    # upstream, plain HTTP (what the proxies use)
up_tls=${ports[1]}     # upstream, TLS ("direct")
nginx_port=${ports[2]} # nginx reverse proxy
gate_port=${ports[3]}  # chatgate
sse_port=${ports[4]}   # SSE upstream
gate_a=${ports[5]}     # chatgate replica A (Redis), SSE + storm
gate_b=${ports[6]}     # chatgate replica B (Redis), storm
redis_port=${ports[7]}
gate_m=${ports[8]}     # chatgate replica M (Redis), usage metering on
pg_port=${ports[9]}    # PostgreSQL (usage metering)
haproxy_port=${ports[10]} # haproxy reverse proxy

"$gate_bin" gen-cert --out "$work/certs" --host localhost --host 127.0.0.1 >/dev/null
cert="$work/certs/cert.pem"
key="$work/certs/key.pem"
body=$(printf 'x%.0s' $(seq 1 1024))

# nginx runs its workers as root only when started as root: the work
# directory is private.
nginx_user=""
[ "$(id -u)" = 0 ] && nginx_user="user root;"
nginx_common() { # nginx_common DIR
  mkdir -p "$1/tmp"
  cat <<EOF
$nginx_user
pid $1/nginx.pid;
daemon off;
worker_rlimit_nofile $want_fds;
error_log $1/error.log warn;
EOF
}
nginx_temp() {
  cat <<EOF
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
EOF
}

mkdir -p "$work/upstream" "$work/nginx"
{
  nginx_common "$work/upstream"
  cat <<EOF
worker_processes 1;
events { worker_connections 8192; }
http {
$(nginx_temp "$work/upstream")
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$up_port;
        listen 127.0.0.1:$up_tls ssl http2;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        location / {
            default_type text/plain;
            return 200 "$body";
        }
    }
}
EOF
} >"$work/upstream/nginx.conf"

# A usual nginx reverse proxy: the forwarding headers chatgate sets, HSTS,
# an access log line per request (chatgate writes one too).
{
  nginx_common "$work/nginx"
  cat <<EOF
worker_processes auto;
events { worker_connections $want_fds; }
http {
$(nginx_temp "$work/nginx")
    access_log $work/nginx/access.log;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream fast { server 127.0.0.1:$up_port; keepalive 64; }
    upstream sse { server 127.0.0.1:$sse_port; keepalive 16; }
    server {
        listen 127.0.0.1:$nginx_port ssl http2 backlog=4096;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host \$host;
        proxy_set_header X-Forwarded-For \$remote_addr;
        proxy_set_header X-Forwarded-Proto \$scheme;
        proxy_set_header X-Forwarded-Host \$host;
        proxy_set_header X-Request-Id \$request_id;
        add_header Strict-Transport-Security "max-age=31536000" always;
        location / { proxy_pass http://fast; }
        location /sse { proxy_pass http://sse; proxy_buffering off; }
    }
}
EOF
} >"$work/nginx/nginx.conf"

# haproxy as nginx above: TLS (the same certificate, h2 and http/1.1), the
# same forwarding headers and HSTS, a log line per request, and idle
# upstream connections shared between client connections (http-reuse
# always). Threads: one per CPU, haproxy 2.6's default; maxconn 1000 (the
# runs open at most 64 client connections) keeps its descriptor need (about
# 2 per connection) within the limit set above.
mkdir -p "$work/haproxy"
cat "$cert" "$key" >"$work/haproxy/cert.pem"
cat >"$work/haproxy/haproxy.cfg" <<EOF
global
    maxconn 1000
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
frontend tls
    bind 127.0.0.1:$haproxy_port ssl crt $work/haproxy/cert.pem alpn h2,http/1.1
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Request-Id %[uuid]
    http-response set-header Strict-Transport-Security "max-age=31536000"
    default_backend fast
backend fast
    http-reuse always
    server up 127.0.0.1:$up_port
EOF

# PostgreSQL refuses to run as root: as root the cluster belongs to the
# postgres user, which may then traverse (not list) the work directory.
pg_as() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
echo "== starting PostgreSQL (usage metering)"
mkdir -p "$work/pg"
if [ "$(id -u)" = 0 ]; then
  chmod 711 "$work"
  chown postgres "$work/pg"
fi
pg_as "$pg_bin/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 --no-sync --locale=C \
  --no-instructions >"$work/initdb.log" 2>&1 \
  || { cat "$work/initdb.log" >&2; exit 1; }
pg_as "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/postgres.log" -w -t 120 start \
  -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50" \
  >/dev/null || { cat "$work/pg/postgres.log" >&2; exit 1; }
pg_started=1
pg_url="postgres://postgres@127.0.0.1:$pg_port/postgres?sslmode=disable"
pg_sql() { PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres "$@"; }
# What a Supabase project has before any migration (as tests/support/postgres.rs):
# the API roles, auth.uid(), the default grants on public.
pg_sql >/dev/null <<'EOF'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN NOINHERIT; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN NOINHERIT; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS; END IF;
END $$;
CREATE SCHEMA IF NOT EXISTS auth;
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $f$
  SELECT coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$f$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;
EOF
for sql in schema/*.sql; do pg_sql -f "$sql" >/dev/null; done

echo "== starting upstream, nginx, haproxy, stand-in Supabase, redis, chatgate ×4"
start upstream nginx -p "$work/upstream" -c "$work/upstream/nginx.conf" -e stderr
wait_port "$up_port" upstream
start nginx nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -e stderr
nginx_pid=$last_pid
wait_port "$nginx_port" nginx
start haproxy haproxy -db -f "$work/haproxy/haproxy.cfg"
haproxy_pid=$last_pid
wait_port "$haproxy_port" haproxy
start sse "$load" sse-upstream --port "$sse_port"
wait_port "$sse_port" sse
start redis redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no
wait_port "$redis_port" redis

start supabase "$supabase_bin"
for _ in $(seq 1 200); do
  grep -q '"control"' "$work/supabase.log" 2>/dev/null && break
  sleep 0.05
done
json_field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" "$2" | head -1; }
supabase_url=$(json_field url "$work/supabase.log")
anon_key=$(json_field anon_key "$work/supabase.log")
jwt_secret=$(json_field jwt_secret "$work/supabase.log")
cookie=$(json_field cookie "$work/supabase.log")
policy_cookie=$(json_field policy_cookie "$work/supabase.log")
control=$(json_field control "$work/supabase.log")
[ -n "$cookie" ] || { echo "bench.sh: the stand-in Supabase did not start" >&2; cat "$work/supabase.log" >&2; exit 1; }

gate_config() { # gate_config NAME PORT UPSTREAM REDIS_URL [EXTRA_TOML]
  cat >"$work/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
public_url = "https://localhost:$2"
shutdown_grace = "1s"
[tls]
cert = "$cert"
key = "$key"
dev_self_signed = true
[supabase]
url = "$supabase_url"
anon_key = "$anon_key"
jwt_secret = "$jwt_secret"
[librechat]
upstreams = ["$3"]
[store]
redis_url = "$4"
[log]
format = "json"
level = "info"
${5:-}
EOF
}
gate_config gate "$gate_port" "http://127.0.0.1:$up_port" ""
gate_config gate_a "$gate_a" "http://127.0.0.1:$sse_port" "redis://127.0.0.1:$redis_port"
gate_config gate_b "$gate_b" "http://127.0.0.1:$sse_port" "redis://127.0.0.1:$redis_port"
gate_config gate_m "$gate_m" "http://127.0.0.1:$sse_port" "redis://127.0.0.1:$redis_port" "[usage]
postgres_url = \"$pg_url\"
spool_dir = \"$work/spool\"
flush_interval = \"1s\"
[usage.prices]
\"gpt-4o\" = { input = 2.5, output = 10.0 }"
start gate "$gate_bin" --config "$work/gate.toml"
gate_pid=$last_pid
start gate_a "$gate_bin" --config "$work/gate_a.toml"
start gate_b "$gate_bin" --config "$work/gate_b.toml"
start gate_m "$gate_bin" --config "$work/gate_m.toml"
wait_port "$gate_port" gate
wait_port "$gate_a" gate_a
wait_port "$gate_b" gate_b
wait_port "$gate_m" gate_m

# The real authentication path must run: 200 with the cookie, 401 without.
with=$("$load" get --url "https://127.0.0.1:$gate_port/" --cookie "$cookie" || echo failed)
without=$("$load" get --url "https://127.0.0.1:$gate_port/" || echo failed)
if [ "$with" != 200 ] || [ "$without" != 401 ]; then
  echo "bench.sh: chatgate answered $with with the session cookie and $without without (want 200, 401)" >&2
  tail -5 "$work/gate.log" >&2
  exit 1
fi
echo "   chatgate: 200 with the session cookie, 401 without (cookie ${#cookie} bytes)"
with=$("$load" get --url "https://127.0.0.1:$gate_m/" --cookie "$cookie" || echo failed)
if [ "$with" != 200 ]; then
  echo "bench.sh: the metering replica answered $with with the session cookie (want 200)" >&2
  tail -5 "$work/gate_m.log" >&2
  exit 1
fi

if [ "${BENCH_HOLD:-}" = 1 ]; then
  {
    echo "direct=https://127.0.0.1:$up_tls/"
    echo "nginx=https://127.0.0.1:$nginx_port/"
    echo "haproxy=https://127.0.0.1:$haproxy_port/"
    echo "chatgate=https://127.0.0.1:$gate_port/"
    echo "chatgate_pid=$gate_pid"
    echo "nginx_pid=$nginx_pid"
    echo "haproxy_pid=$haproxy_pid"
    echo "replicas=127.0.0.1:$gate_a,127.0.0.1:$gate_b"
    echo "metering_replica=127.0.0.1:$gate_m"
    echo "usage_postgres=$pg_url"
    echo "sse_upstream=http://127.0.0.1:$sse_port/sse"
    echo "supabase_control=$control"
    echo "cookie='$cookie'"
  } >"$work/env"
  cat "$work/env"
  echo "holding (environment in $work/env); Ctrl-C stops everything"
  # In the background and waited for, so that Ctrl-C runs the cleanup at once.
  sleep infinity &
  pids+=($!)
  wait $! || true
  exit 0
fi

# ---------------------------------------------------------------------------
# Measurements. Each appends one value per round to results[key].
declare -A results
add() { results[$1]="${results[$1]:-} $2"; }
median() { tr ' ' '\n' <<<"${results[$1]:-}" | awk 'NF' | sort -g | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
field() { sed -n "s/.*[ ^]$1=\\([^ ]*\\).*/\\1/p" <<<" $2" | head -1; }

cat >"$work/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_RESULT rps=%.1f p50_us=%d p99_us=%d requests=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), summary.requests,
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF

# A 1 KiB chat as LibreChat's web client posts it (the fast upstream answers
# any method), for the organization policy's cost (SPEC section 10).
chat_body='{"text":"TEXT","sender":"User","clientTimestamp":"2026-12-01T10:00:00.000Z","isCreatedByUser":true,"parentMessageId":"00000000-0000-0000-0000-000000000000","messageId":"5a0f1c1e-0000-4000-8000-000000000001","error":false,"endpoint":"openAI","model":"gpt-4o","promptPrefix":"Be brief.","temperature":0.7,"resendFiles":true,"isTemporary":false,"isRegenerate":false,"isContinued":false,"ephemeralAgent":{"mcp":["github"],"web_search":false,"file_search":false,"execute_code":false},"timezone":"UTC","clientRequestId":"c0ffee00-0000-4000-8000-000000000001"}'
chat_body=${chat_body/TEXT/$(printf 'lorem ipsum %.0s' $(seq 1 $(((1024 - ${#chat_body}) / 12))))}
{
  echo "wrk.method = \"POST\""
  echo "wrk.headers[\"Content-Type\"] = \"application/json\""
  echo "wrk.body = [[$chat_body]]"
  cat "$work/report.lua"
} >"$work/chat.lua"

run_policy() { # run_policy KEY COOKIE PATH SCRIPT : one connection, sequential, through chatgate
  local out
  out=$(wrk -t1 -c1 -d"${DURATION}s" --latency -s "$4" -H "Cookie: $2" \
    "https://127.0.0.1:$gate_port$3" | grep WRK_RESULT)
  add "$1_p50" "$(field p50_us "$out")"
  add "$1_bad" "$(($(field errors "$out") + $(field non2xx "$out")))"
  printf '   %-9s %-14s p50 %6s us  p99 %6s us  errors+non-2xx %s\n' policy "$1" \
    "$(field p50_us "$out")" "$(field p99_us "$out")" "$(($(field errors "$out") + $(field non2xx "$out")))"
}

declare -A url=(
  [direct]="https://127.0.0.1:$up_tls/"
  [nginx]="https://127.0.0.1:$nginx_port/"
  [haproxy]="https://127.0.0.1:$haproxy_port/"
  [chatgate]="https://127.0.0.1:$gate_port/"
)
declare -A sse_url=(
  [direct]="http://127.0.0.1:$sse_port"
  [nginx]="https://127.0.0.1:$nginx_port"
  [chatgate]="https://127.0.0.1:$gate_a"
)

# CPU time the proxy spent (all threads, nginx master and workers), in ns:
# per request, it says how much each costs whatever the neighbours do.
cpu_ns() { # cpu_ns TARGET
  local pid task total=0
  case $1 in
    nginx) set -- $(nginx_pids) ;;
    haproxy) set -- "$haproxy_pid" ;;
    chatgate) set -- "$gate_pid" ;;
    *) echo 0; return ;;
  esac
  for pid in "$@"; do
    for task in /proc/"$pid"/task/*/schedstat; do
      total=$((total + $(cut -d' ' -f1 "$task" 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}
add_cpu() { # add_cpu KEY TARGET NS_BEFORE REQUESTS
  [ "$2" = direct ] && return
  local used=$(($(cpu_ns "$2") - $3))
  add "$1_cpu_$2" "$(awk -v c="$used" -v n="$4" 'BEGIN { printf "%.1f", (n > 0 ? c / 1000 / n : 0) }')"
}

run_wrk() { # run_wrk KEY TARGET CONNECTIONS THREADS
  local out cpu
  cpu=$(cpu_ns "$2")
  out=$(wrk -t"$4" -c"$3" -d"${DURATION}s" --latency -s "$work/report.lua" \
    -H "Cookie: $cookie" "${url[$2]}" | grep WRK_RESULT)
  add_cpu "$1" "$2" "$cpu" "$(field requests "$out")"
  add "$1_rps_$2" "$(field rps "$out")"
  add "$1_p50_$2" "$(field p50_us "$out")"
  add "$1_p99_$2" "$(field p99_us "$out")"
  add "$1_bad_$2" "$(($(field errors "$out") + $(field non2xx "$out")))"
  printf '   %-9s %-8s %10s req/s  p50 %6s us  p99 %6s us  errors+non-2xx %s\n' \
    "$1" "$2" "$(field rps "$out")" "$(field p50_us "$out")" "$(field p99_us "$out")" \
    "$(($(field errors "$out") + $(field non2xx "$out")))"
}

run_h2() { # run_h2 TARGET
  local out rps ok failed cpu
  cpu=$(cpu_ns "$1")
  out=$(h2load -t2 -c16 -m32 -D "$DURATION" \
    -H "cookie: $cookie" "${url[$1]}" 2>&1)
  add_cpu h2 "$1" "$cpu" "$(sed -n 's/^requests: \([0-9]*\) total.*/\1/p' <<<"$out")"
  rps=$(sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  ok=$(sed -n 's/^status codes: \([0-9]*\) 2xx.*/\1/p' <<<"$out")
  failed=$(sed -n 's/^requests: .* \([0-9]*\) failed, \([0-9]*\) errored.*/\1/p' <<<"$out")
  add "h2_rps_$1" "${rps:-0}"
  add "h2_bad_$1" "${failed:-0}"
  printf '   %-9s %-8s %10s req/s  2xx %s  failed %s\n' h2 "$1" "${rps:-?}" "${ok:-?}" "${failed:-?}"
}

run_sse() { # run_sse TARGET
  local out
  if [ "$1" = chatgate ]; then
    out=$("$load" sse --url "${sse_url[$1]}" --cookie "$cookie" --events "$SSE_EVENTS" --interval-ms 10)
  else
    out=$("$load" sse --url "${sse_url[$1]}" --events "$SSE_EVENTS" --interval-ms 10)
  fi
  add "sse_p50_$1" "$(field p50_us "$out")"
  add "sse_p99_$1" "$(field p99_us "$out")"
  printf '   %-9s %-8s p50 %8s us  p99 %8s us  (%s events)\n' sse "$1" \
    "$(field p50_us "$out")" "$(field p99_us "$out")" "$(field events "$out")"
}

run_storm() {
  local expired before after out
  expired=$("$load" get --url "$control/expired-cookie" --print-body 1 | sed -n 's/.*"cookie":"\([^"]*\)".*/\1/p')
  before=$("$load" get --url "$control/stats" --print-body 1 | sed -n 's/.*"refresh_calls":\([0-9]*\).*/\1/p')
  out=$("$load" storm --target "127.0.0.1:$gate_a" --target "127.0.0.1:$gate_b" --cookie "$expired" --n "$STORM")
  after=$("$load" get --url "$control/stats" --print-body 1 | sed -n 's/.*"refresh_calls":\([0-9]*\).*/\1/p')
  add storm_calls "$((after - before))"
  add storm_failed "$(field failed "$out")"
  printf '   %-9s %s requests over 2 replicas: %s refresh call(s) at Supabase, %s failed (%s)\n' \
    storm "$STORM" "$((after - before))" "$(field failed "$out")" "$(field statuses "$out")"
}

# Usage metering (issue 12): the SSE replica A (metering off) against
# replica M (metering on), both in front of the SSE upstream, on LibreChat's
# resumable stream route and a chat POST.
declare -A meter_port=([off]=$gate_a [on]=$gate_m)
meter_streams=0 # streams read through the metering replica
run_meter_sse() { # run_meter_sse off|on ROUND
  local out
  out=$("$load" sse --url "https://127.0.0.1:${meter_port[$1]}" --cookie "$cookie" \
    --stream-id "bench-sse-$2-$1-$$" --events "$SSE_EVENTS" --interval-ms 10)
  [ "$1" = on ] && meter_streams=$((meter_streams + 1))
  add "meter_sse_p50_$1" "$(field p50_us "$out")"
  add "meter_sse_p99_$1" "$(field p99_us "$out")"
  printf '   %-9s %-8s p50 %8s us  p99 %8s us  (%s events)\n' meter-sse "$1" \
    "$(field p50_us "$out")" "$(field p99_us "$out")" "$(field events "$out")"
}
run_meter_tput() { # run_meter_tput off|on ROUND
  local out
  out=$("$load" sse-throughput --url "https://127.0.0.1:${meter_port[$1]}" --cookie "$cookie" \
    --stream-id "bench-tput-$2-$1-$$" --streams 64 --events "$SSE_TPUT_EVENTS")
  [ "$1" = on ] && meter_streams=$((meter_streams + 64 - $(field failed "$out")))
  add "meter_tput_$1" "$(field eps "$out")"
  add "meter_tput_bad_$1" "$(field failed "$out")"
  printf '   %-9s %-8s %10s events/s  (%s events over %s streams in %s s, %s failed)\n' meter-tput "$1" \
    "$(field eps "$out")" "$(field events "$out")" "$(field streams "$out")" "$(field secs "$out")" \
    "$(field failed "$out")"
}
meter_posts=0 # chat POSTs answered through the metering replica
run_meter_chat() { # run_meter_chat off|on
  local out
  out=$(wrk -t1 -c1 -d"${DURATION}s" --latency -s "$work/chat.lua" -H "Cookie: $cookie" \
    "https://127.0.0.1:${meter_port[$1]}/api/agents/chat/openAI" | grep WRK_RESULT)
  [ "$1" = on ] && meter_posts=$((meter_posts + $(field requests "$out") - $(field non2xx "$out")))
  add "meter_chat_p50_$1" "$(field p50_us "$out")"
  add "meter_chat_bad_$1" "$(($(field errors "$out") + $(field non2xx "$out")))"
  printf '   %-9s %-8s p50 %6s us  p99 %6s us  errors+non-2xx %s\n' meter-chat "$1" \
    "$(field p50_us "$out")" "$(field p99_us "$out")" "$(($(field errors "$out") + $(field non2xx "$out")))"
}

rss_kib() { # rss_kib PID… : summed VmRSS
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
nginx_pids() { echo "$nginx_pid" $(cat "/proc/$nginx_pid/task/$nginx_pid/children" 2>/dev/null); }

run_idle() { # run_idle PROTOCOL TARGET PORT : PROTOCOL h1 (keys idle_*) or h2 (keys idle2_*)
  local pids_of base held out alive opened key=idle http2=0
  if [ "$1" = h2 ]; then key=idle2 http2=1; fi
  if [ "$2" = nginx ]; then pids_of=$(nginx_pids); else pids_of=$gate_pid; fi
  base=$(rss_kib $pids_of)
  "$load" idle --target "127.0.0.1:$3" --cookie "$cookie" --n "$IDLE_CONNS" --hold-secs 8 \
    --http2 "$http2" >"$work/idle.out" 2>"$work/idle.err" &
  local client=$!
  while ! grep -q IDLE_READY "$work/idle.out" 2>/dev/null; do
    kill -0 "$client" 2>/dev/null || break
    sleep 0.2
  done
  # Read once every connection has been idle a while: both proxies free an
  # idle keep-alive connection's buffers, nginx at once, chatgate after 1-2 s
  # without a request (and jemalloc returns the pages about 1 s later).
  sleep "$IDLE_SETTLE"
  held=$(rss_kib $pids_of)
  wait "$client" || true
  out=$(cat "$work/idle.out")
  opened=$(field opened "$out")
  alive=$(field alive "$out")
  add "${key}_rss_$2" "$(awk -v k="$held" 'BEGIN {printf "%.1f", k/1024}')"
  add "${key}_base_$2" "$(awk -v k="$base" 'BEGIN {printf "%.1f", k/1024}')"
  add "${key}_alive_$2" "${alive:-0}"
  printf '   %-9s %-8s RSS %s MiB before, %s MiB holding %s connections (%s opened, %s failed)\n' \
    "$key" "$2" "$(awk -v k="$base" 'BEGIN {printf "%.1f", k/1024}')" \
    "$(awk -v k="$held" 'BEGIN {printf "%.1f", k/1024}')" "${alive:-?}" "${opened:-?}" \
    "$(field failed "$out")"
  [ -s "$work/idle.err" ] && sed 's/^/   /' "$work/idle.err" | head -3
  # Let both sides close before the next measurement.
  sleep 2
}

rotate() { # rotate N ITEMS… : the items rotated left by N
  local n=$1
  shift
  local items=("$@") i
  for i in "${!items[@]}"; do echo -n "${items[$(((i + n) % ${#items[@]}))]} "; done
}

if [ "$ONLY" = idle ]; then ROUNDS=0; fi
echo "== warm-up"
[ "$ONLY" = idle ] || for target in direct nginx haproxy chatgate; do
  wrk -t2 -c64 -d2s -H "Cookie: $cookie" "${url[$target]}" >/dev/null
done
[ "$ONLY" = idle ] || for m in off on; do
  "$load" sse --url "https://127.0.0.1:${meter_port[$m]}" --cookie "$cookie" \
    --stream-id "bench-warm-$m-$$" --events 20 --interval-ms 1 >/dev/null
  [ "$m" = on ] && meter_streams=$((meter_streams + 1))
done

for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  for target in $(rotate "$round" direct nginx haproxy chatgate); do run_wrk h1 "$target" 64 2; done
  for target in $(rotate "$round" nginx haproxy chatgate); do run_h2 "$target"; done
  for target in $(rotate "$round" direct nginx haproxy chatgate); do run_wrk c1 "$target" 1 1; done
  for target in $(rotate "$round" direct nginx chatgate); do run_sse "$target"; done
  run_storm
  for org in $(rotate "$round" open policy); do
    if [ "$org" = open ]; then org_cookie=$cookie; else org_cookie=$policy_cookie; fi
    run_policy "chat_$org" "$org_cookie" /api/agents/chat/openAI "$work/chat.lua"
    run_policy "get_$org" "$org_cookie" / "$work/report.lua"
  done
  for m in $(rotate "$round" off on); do run_meter_sse "$m" "$round"; done
  for m in $(rotate "$round" off on); do run_meter_tput "$m" "$round"; done
  for m in $(rotate "$round" off on); do run_meter_chat "$m"; done
done
# What the metering replica wrote: its last counts go out within a flush (1 s).
[ "$ONLY" = idle ] || sleep 3
usage_sums=$(pg_sql -At -F ' ' -c "SELECT count(*), coalesce(sum(message_count), 0), coalesce(sum(tokens_used), 0), coalesce(sum(cost_usd), 0) FROM usage_metrics" || echo '? ? ? ?')
usage_sessions=$(pg_sql -At -c "SELECT count(*) FROM chat_sessions" || echo '?')
read -r usage_rows usage_messages usage_tokens usage_cost <<<"$usage_sums"
echo "   usage_metrics: $usage_rows row(s), $usage_messages messages, $usage_tokens tokens, \$$usage_cost; chat_sessions: $usage_sessions"
echo "== idle connections"
run_idle h1 nginx "$nginx_port"
run_idle h1 chatgate "$gate_port"
run_idle h2 nginx "$nginx_port"
run_idle h2 chatgate "$gate_port"

# ---------------------------------------------------------------------------
# The table.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b+0 <= 0 || a == "nan" || b == "nan") print "n/a"; else printf "%.2f", a/b }'; }
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a-b }'; }
ms() { awk -v a="$1" 'BEGIN { printf "%.3f", a/1000 }'; }
verdict() { # verdict VALUE OP LIMIT
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
    if (v == "n/a" || v == "nan" || v == "") { print "?"; exit }
    ok = (op == ">=") ? (v+0 >= l+0) : (op == "<=") ? (v+0 <= l+0) : (v+0 == l+0)
    print (ok ? "met" : "**missed**") }'
}

h1_n=$(median h1_rps_nginx) h1_c=$(median h1_rps_chatgate) h1_d=$(median h1_rps_direct) h1_h=$(median h1_rps_haproxy)
p99_n=$(median h1_p99_nginx) p99_c=$(median h1_p99_chatgate) p99_d=$(median h1_p99_direct) p99_h=$(median h1_p99_haproxy)
h2_n=$(median h2_rps_nginx) h2_c=$(median h2_rps_chatgate) h2_h=$(median h2_rps_haproxy)
c1_d=$(median c1_p50_direct) c1_n=$(median c1_p50_nginx) c1_c=$(median c1_p50_chatgate) c1_h=$(median c1_p50_haproxy)
c1p_d=$(median c1_p99_direct) c1p_n=$(median c1_p99_nginx) c1p_c=$(median c1_p99_chatgate) c1p_h=$(median c1_p99_haproxy)
add_n=$(minus "$c1_n" "$c1_d") add_c=$(minus "$c1_c" "$c1_d") add_h=$(minus "$c1_h" "$c1_d")
addp_n=$(minus "$c1p_n" "$c1p_d") addp_c=$(minus "$c1p_c" "$c1p_d") addp_h=$(minus "$c1p_h" "$c1p_d")
cpu1_n=$(median h1_cpu_nginx) cpu1_h=$(median h1_cpu_haproxy) cpu1_c=$(median h1_cpu_chatgate)
cpu2_n=$(median h2_cpu_nginx) cpu2_h=$(median h2_cpu_haproxy) cpu2_c=$(median h2_cpu_chatgate)
sse_d=$(median sse_p50_direct) sse_n=$(median sse_p50_nginx) sse_c=$(median sse_p50_chatgate)
sse_add_n=$(minus "$sse_n" "$sse_d") sse_add_c=$(minus "$sse_c" "$sse_d")
rss_n=$(median idle_rss_nginx) rss_c=$(median idle_rss_chatgate)
rss2_n=$(median idle2_rss_nginx) rss2_c=$(median idle2_rss_chatgate)
chat_o=$(median chat_open_p50) chat_p=$(median chat_policy_p50) chat_add=$(minus "$chat_p" "$chat_o")
get_o=$(median get_open_p50) get_p=$(median get_policy_p50) get_add=$(minus "$get_p" "$get_o")
m_sse_off=$(median meter_sse_p50_off) m_sse_on=$(median meter_sse_p50_on)
m_tput_off=$(median meter_tput_off) m_tput_on=$(median meter_tput_on)
m_chat_off=$(median meter_chat_p50_off) m_chat_on=$(median meter_chat_p50_on)
m_sse_add=$(minus "$m_sse_on" "$m_sse_off") m_chat_add=$(minus "$m_chat_on" "$m_chat_off")
m_tput_r=$(ratio "$m_tput_on" "$m_tput_off")
storm_calls=$(echo ${results[storm_calls]:-})
storm_failed=$(echo ${results[storm_failed]:-})
storm_max_calls=$(tr ' ' '\n' <<<"$storm_calls" | sort -n | tail -1)
storm_min_calls=$(tr ' ' '\n' <<<"$storm_calls" | sort -n | head -1)
storm_max_failed=$(tr ' ' '\n' <<<"$storm_failed" | sort -n | tail -1)

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench-results
report="bench-results/$stamp.md"
{
  echo "# chatgate vs nginx and haproxy — $stamp"
  echo
  echo "\`scripts/bench.sh\` at $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+dirty');" \
    "$(nproc) CPUs ($(uname -r)), $ROUNDS rounds of ${DURATION}s, medians of rounds;" \
    "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), haproxy $(haproxy -v 2>&1 | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p'), 1 KiB upstream body, cookie ${#cookie} bytes on every request."
  echo
  # haproxy is measured in the throughput and one-connection rows only.
  echo "| measure | direct | nginx | haproxy | chatgate | chatgate/nginx | chatgate/haproxy | target (vs nginx) | |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
  r=$(ratio "$h1_c" "$h1_n")
  echo "| HTTP/1.1 TLS, 64 conns: req/s | $h1_d | $h1_n | $h1_h | $h1_c | $r | $(ratio "$h1_c" "$h1_h") | ≥ 1.00 | $(verdict "$r" '>=' 1) |"
  r=$(ratio "$p99_c" "$p99_n")
  echo "| HTTP/1.1 TLS, 64 conns: p99 ms | $(ms "$p99_d") | $(ms "$p99_n") | $(ms "$p99_h") | $(ms "$p99_c") | $r | $(ratio "$p99_c" "$p99_h") | ≤ 1.00 | $(verdict "$r" '<=' 1) |"
  echo "| HTTP/1.1: proxy CPU µs per request | | $cpu1_n | $cpu1_h | $cpu1_c | $(ratio "$cpu1_c" "$cpu1_n") | $(ratio "$cpu1_c" "$cpu1_h") | | |"
  r=$(ratio "$h2_c" "$h2_n")
  echo "| HTTP/2 TLS, 16 conns × 32 streams: req/s | | $h2_n | $h2_h | $h2_c | $r | $(ratio "$h2_c" "$h2_h") | ≥ 1.00 | $(verdict "$r" '>=' 1) |"
  echo "| HTTP/2: proxy CPU µs per request | | $cpu2_n | $cpu2_h | $cpu2_c | $(ratio "$cpu2_c" "$cpu2_n") | $(ratio "$cpu2_c" "$cpu2_h") | | |"
  echo "| 1 conn sequential: median µs | $c1_d | $c1_n | $c1_h | $c1_c | | | | |"
  r=$(ratio "$add_c" "$add_n")
  echo "| 1 conn: median added over direct, µs | | $add_n | $add_h | $add_c | $r | $(ratio "$add_c" "$add_h") | ≤ 1.00 | $(verdict "$r" '<=' 1) |"
  echo "| 1 conn: p99 added over direct, µs | | $addp_n | $addp_h | $addp_c | $(ratio "$addp_c" "$addp_n") | $(ratio "$addp_c" "$addp_h") | | |"
  echo "| SSE upstream write → client read, median µs | $sse_d | $sse_n | | $sse_c | | | | |"
  echo "| SSE added over direct, median µs | | $sse_add_n | | $sse_add_c | | | ≤ 1000 µs | $(verdict "$sse_add_c" '<=' 1000) |"
  echo "| Refresh storm, $STORM reqs over 2 replicas: Supabase refresh calls per storm | | | | $storm_calls | | | = 1 | $( [ "$storm_min_calls" = 1 ] && [ "$storm_max_calls" = 1 ] && echo met || echo '**missed**') |"
  echo "| Refresh storm: failed requests per storm | | | | $storm_failed | | | = 0 | $(verdict "$storm_max_failed" '<=' 0) |"
  r=$(ratio "$rss_c" "$rss_n")
  echo "| $IDLE_CONNS idle TLS keep-alive conns (HTTP/1.1, ${IDLE_SETTLE}s idle): RSS MiB (idle before: nginx $(median idle_base_nginx), chatgate $(median idle_base_chatgate)) | | $rss_n | | $rss_c | $r | | ≤ 1.00 | $(verdict "$r" '<=' 1) |"
  r=$(ratio "$rss2_c" "$rss2_n")
  echo "| $IDLE_CONNS idle TLS keep-alive conns (HTTP/2, ${IDLE_SETTLE}s idle): RSS MiB (idle before: nginx $(median idle2_base_nginx), chatgate $(median idle2_base_chatgate)) | | $rss2_n | | $rss2_c | $r | | ≤ 1.00 | $(verdict "$r" '<=' 1) |"
  echo
  echo "Organization policy (SPEC 10), through chatgate only, one connection, sequential:"
  echo
  echo "| measure | no policy | restrictive policy | added µs | target | |"
  echo "| --- | ---: | ---: | ---: | --- | --- |"
  echo "| chat POST, 1 KiB JSON: median µs | $chat_o | $chat_p | $chat_add | ≤ 50 µs | $(verdict "$chat_add" '<=' 50) |"
  echo "| GET / (not a policy route): median µs | $get_o | $get_p | $get_add | nothing measurable | |"
  echo
  echo "Usage metering (issue 12), through chatgate in front of the SSE upstream, LibreChat's routes (\`GET /api/agents/chat/stream/<id>\`, \`POST /api/agents/chat/openAI\`), one replica with \`usage.postgres_url\` empty, one with it set (flush every 1 s):"
  echo
  echo "| measure | metering off | metering on | on − off / on ÷ off | target | |"
  echo "| --- | ---: | ---: | ---: | --- | --- |"
  echo "| SSE upstream write → client read, median µs ($SSE_EVENTS events 10 ms apart) | $m_sse_off | $m_sse_on | $m_sse_add | ≤ 20 µs added | $(verdict "$m_sse_add" '<=' 20) |"
  echo "| SSE relay, 64 concurrent streams × $SSE_TPUT_EVENTS events: events/s | $m_tput_off | $m_tput_on | $m_tput_r | ≥ 0.95 | $(verdict "$m_tput_r" '>=' 0.95) |"
  echo "| chat POST, 1 KiB JSON, 1 conn sequential: median µs | $m_chat_off | $m_chat_on | $m_chat_add | | |"
  echo
  echo "Written by the metering replica (sanity): usage_metrics $usage_rows row(s), $usage_messages messages" \
    "(chat POSTs wrk saw answered 2xx through it: $meter_posts; wrk leaves out the one in flight as a run ends), $usage_tokens tokens (expected $((meter_streams * 500)):" \
    "$meter_streams streams × 4 on_token_usage events × 125), cost_usd $usage_cost; chat_sessions $usage_sessions row(s)."
  echo "Metering errors, all rounds (must be 0): relay streams failed off/on$(echo ${results[meter_tput_bad_off]:-}) /$(echo ${results[meter_tput_bad_on]:-});" \
    "chat POST errors+non-2xx off/on$(echo ${results[meter_chat_bad_off]:-}) /$(echo ${results[meter_chat_bad_on]:-})."
  echo
  echo "Connections still open at the end of the idle hold: HTTP/1.1 nginx $(median idle_alive_nginx), chatgate $(median idle_alive_chatgate); HTTP/2 nginx $(median idle2_alive_nginx), chatgate $(median idle2_alive_chatgate)."
  echo "Errors and non-2xx answers, all rounds (must be 0):" \
    "h1 direct/nginx/haproxy/chatgate$(echo ${results[h1_bad_direct]:-}) /$(echo ${results[h1_bad_nginx]:-}) /$(echo ${results[h1_bad_haproxy]:-}) /$(echo ${results[h1_bad_chatgate]:-});" \
    "1-conn$(echo ${results[c1_bad_direct]:-}) /$(echo ${results[c1_bad_nginx]:-}) /$(echo ${results[c1_bad_haproxy]:-}) /$(echo ${results[c1_bad_chatgate]:-});" \
    "h2 nginx/haproxy/chatgate$(echo ${results[h2_bad_nginx]:-}) /$(echo ${results[h2_bad_haproxy]:-}) /$(echo ${results[h2_bad_chatgate]:-});" \
    "policy chat open/restrictive$(echo ${results[chat_open_bad]:-}) /$(echo ${results[chat_policy_bad]:-})."
  echo
  echo "Per round (in run order):"
  echo
  echo '```'
  for k in $(printf '%s\n' "${!results[@]}" | sort); do
    printf '%-22s %s\n' "$k" "${results[$k]}"
  done
  echo '```'
} >"$report"

echo
cat "$report"
echo
echo "written to $report"
