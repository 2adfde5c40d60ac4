#!/usr/bin/env bash
# Counts heap allocations per request in `metamesh proxy` (uprobes on the allocator's
# entry points, counted by perf), and optionally records where they happen.
#
#   bench/allocs.sh                          # Dubbo, 2,000 requests/s, allocations per request
#   PROTOCOL=http bench/allocs.sh            # HTTP/1.1 (also: thrift)
#   SITES=1 bench/allocs.sh                  # also the call sites, by share of allocations
#   MM=/path/to/metamesh bench/allocs.sh     # another build of the proxy
#
# A count, not a timing: the same build gives the same figure on a busy machine. The
# rate is low because every probe hit costs a trap; the proxy must keep up with it for
# the division by the requests sent to hold (the script checks the load tool's count).
# Needs root, perf (Debian linux-perf) and the release binaries (it builds them).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/common.sh
source "$REPO/bench/common.sh"
perf_tool_setup allocs
PROTOCOL=${PROTOCOL:-dubbo}
RATE=${RATE:-2000}
SECONDS_COUNTED=${SECONDS_COUNTED:-2}

# The allocator's exported entry points (mimalloc): every Rust allocation enters one.
ENTRIES=(mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned mi_free)
GROUP=metamesh_allocs
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    perf probe -q -d "$GROUP:*" 2>/dev/null || true
}
trap cleanup EXIT
perf probe -q -d "$GROUP:*" 2>/dev/null || true
EVENTS=()
for f in "${ENTRIES[@]}"; do
    if perf probe -q -x "$MM" "$GROUP:$f=$f" 2>"$OUT/probe-$f.log"; then
        EVENTS+=("$GROUP:$f")
    fi
done
[ "${#EVENTS[@]}" -gt 0 ] || { echo "no allocator entry point could be probed (see $OUT)" >&2; exit 1; }

E1=$(free_port); E2=$(free_port); P=$(free_port)
"$BENCH" echo --protocol "$PROTOCOL" --listen "127.0.0.1:$E1" --listen "127.0.0.1:$E2" >"$OUT/echo.log" &
PIDS+=($!)
CONFIG="$(metamesh_config "$PROTOCOL" "$P" "$E1" "$E2" 0 "" "")"
"$MM" proxy --config "$CONFIG" >"$OUT/proxy.log" 2>&1 &
MMPID=$!; PIDS+=("$MMPID")
wait_ready "$OUT/proxy.log" "$MMPID"

"$BENCH" load --protocol "$PROTOCOL" --target "127.0.0.1:$P" --connections 4 --rate "$RATE" \
    --batchjob-every 3 --warmup 1s --duration "$((SECONDS_COUNTED + 3))s" >"$OUT/load.json" &
LOADPID=$!
sleep 2
EV=$(IFS=,; echo "${EVENTS[*]}")
perf stat -x, -e "$EV" -p "$MMPID" -- sleep "$SECONDS_COUNTED" 2>"$OUT/stat.csv" >/dev/null
if [ -n "${SITES:-}" ]; then
    perf record -q -e "$GROUP:${ENTRIES[0]}" -g --call-graph dwarf,8192 -p "$MMPID" \
        -o "$OUT/perf.data" -- sleep 1 2>/dev/null >/dev/null
fi
wait "$LOADPID"
ERRORS=$(jq .errors "$OUT/load.json")
THROUGHPUT=$(jq .throughput "$OUT/load.json")
# The open loop sends at the rate it was given; a proxy that fell behind shows as a lower
# throughput or as errors, and the per-request figure would be wrong.
awk -v t="$THROUGHPUT" -v r="$RATE" -v e="$ERRORS" 'BEGIN { if (e > 0 || t < 0.98 * r) exit 1 }' || {
    echo "the proxy did not keep up with $RATE requests/s (throughput $THROUGHPUT, errors $ERRORS); try a lower RATE" >&2
    exit 1
}
echo "$PROTOCOL at $RATE requests/s, per request:"
awk -F, -v n="$((RATE * SECONDS_COUNTED))" '{ split($3, a, ":"); printf "  %-22s %6.2f\n", a[2], $1 / n }' "$OUT/stat.csv"
if [ -n "${SITES:-}" ]; then
    echo "where (share of allocations, by the first caller outside the allocator and std):"
    perf script -i "$OUT/perf.data" 2>/dev/null >"$OUT/stacks.txt"
    python3 - "$OUT/stacks.txt" <<'PY'
import collections, re, sys
# Frames that only carry an allocation up to the code that asked for it.
PLUMBING = ("mi_", "_mi_", "mimalloc", "<mimalloc", "__rust", "__rdl", "alloc::", "core::", "<alloc::",
            "<core::", "RawVec", "smallvec", "<smallvec", "bytes::", "<bytes::", "bytestring",
            "<bytestring", "<T as ", "<str as ", "std::")
sites, total, stack = collections.Counter(), 0, []
def flush():
    global total
    if not stack:
        return
    total += 1
    site = next((f for f in stack if not f.startswith(PLUMBING)), stack[-1])
    sites[site] += 1
for line in open(sys.argv[1], errors="replace"):
    if not line.strip():
        flush()
        stack = []
    elif line[0] in " \t":
        parts = line.strip().split(" ", 1)
        if len(parts) == 2:
            stack.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1].rsplit(" (", 1)[0]))
flush()
for site, n in sites.most_common(20):
    print(f"  {100 * n / max(total, 1):5.1f}%  {site[:150]}")
PY
fi
echo "reports in $OUT"
