#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60) and
# prints one line per target: executions, executions per second, crashes.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# The seed corpora in fuzz/corpus/<target>/ are read, never written: what a
# run discovers goes to fuzz/target/corpus/<target>/ (git-ignored) and is
# reused by the next run on this machine. A crash stops its target and
# leaves the input in fuzz/artifacts/<target>/ (git-ignored); reproduce it
# with `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
# Logs: fuzz/target/logs/<target>.log. Exit status 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-60}
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Optimised, with debug assertions and AddressSanitizer; one build for all.
cargo +nightly fuzz build -O

mkdir -p target/logs
status=0
printf '%-16s %8s %14s %10s %s\n' target seconds executions exec/s result
for target in "${targets[@]}"; do
    work=target/corpus/$target
    mkdir -p "$work" "corpus/$target"
    log=target/logs/$target.log
    result=ok
    if ! cargo +nightly fuzz run -O "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        result="CRASH (see fuzz/artifacts/$target/, $log)"
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    printf '%-16s %8s %14s %10s %s\n' "$target" "$seconds" "$runs" "$rate" "$result"
done
exit $status
