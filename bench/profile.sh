#!/usr/bin/env bash
# Samples where `metamesh proxy` spends its CPU under Dubbo load (perf, cpu-clock: it works
# where hardware counters do not, as in most VMs), and prints the top symbols.
#
#   bench/profile.sh                    # closed loop, 4 connections x 32 in flight
#   MM=/path/to/metamesh bench/profile.sh   # another build of the proxy
#   RATE=5000 bench/profile.sh          # open loop at 5,000 requests per second
#   ROUTES=10000 RATE=2000 bench/profile.sh   # 9,999 non-matching routes first
#   TRACING=off bench/profile.sh        # without x-request-id / traceparent handling
#
# Needs perf (Debian linux-perf) and the release binaries (it builds them). Writes
# perf.data and the reports into $OUT (default: a new directory under /tmp).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_SAMPLED=${SECONDS_SAMPLED:-8}
ROUTES=${ROUTES:-0}
# shellcheck source=bench/common.sh
source "$REPO/bench/common.sh"
perf_tool_setup profile

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
E1=$(free_port); E2=$(free_port); P=$(free_port)
"$BENCH" echo --protocol dubbo --listen "127.0.0.1:$E1" --listen "127.0.0.1:$E2" >"$OUT/echo.log" &
PIDS+=($!)
NOID=; [ "${TRACING:-on}" = off ] && NOID=noid
CONFIG="$(metamesh_config dubbo "$P" "$E1" "$E2" "$ROUTES" "" "$NOID")"
"$MM" proxy --config "$CONFIG" >"$OUT/proxy.log" 2>&1 &
MMPID=$!; PIDS+=("$MMPID")
wait_ready "$OUT/proxy.log" "$MMPID"

LOAD=(--connections 4 --inflight 32)
[ -n "${RATE:-}" ] && LOAD=(--connections 4 --rate "$RATE")
"$BENCH" load --protocol dubbo --target "127.0.0.1:$P" "${LOAD[@]}" --batchjob-every 3 \
    --warmup 1s --duration "$((SECONDS_SAMPLED + 2))s" --measure-pid "$MMPID" >"$OUT/load.json" &
LOADPID=$!
sleep 1.5
perf record -q -e cpu-clock -F 999 -g --call-graph dwarf,16384 -p "$MMPID" -o "$OUT/perf.data" \
    -- sleep "$SECONDS_SAMPLED" 2>"$OUT/perf-record.log"
wait "$LOADPID"
perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none --percent-limit 0.7 \
    2>/dev/null >"$OUT/self.txt"
perf report -i "$OUT/perf.data" --children --sort sym --stdio -g none --percent-limit 3 \
    2>/dev/null >"$OUT/children.txt"
echo "load: $(jq -c '{throughput, errors, cpu_us: .process.cpu_us_per_request}' "$OUT/load.json")"
echo "--- self time (top) ---"; grep -v '^#' "$OUT/self.txt" | grep -v '^$' | head -40
echo "--- inclusive (top) ---"; grep -v '^#' "$OUT/children.txt" | grep -v '^$' | head -40
echo "reports in $OUT"
