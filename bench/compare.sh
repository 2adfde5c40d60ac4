#!/usr/bin/env bash
# Compares the CPU per request of two or more builds of `metamesh proxy` under the same
# load, in alternating rounds (A B A B ...), so that what the machine is doing otherwise
# falls on every build alike. For a change too small to show in one run of each.
#
#   bench/compare.sh OLD/metamesh NEW/metamesh            # Dubbo, closed loop, 8 rounds
#   ROUNDS=12 bench/compare.sh OLD NEW
#   PROTOCOL=http bench/compare.sh OLD NEW                # also: thrift
#   RATE=5000 bench/compare.sh OLD NEW                    # open loop at a fixed rate
#
# Each round starts the build's proxy with `bench/common.sh`'s configuration for the
# protocol (the README's routes, request ids on), runs the load tool against it (1 s of
# warm-up, DURATION seconds measured; closed loop: 4 connections x 32 in flight, HTTP 32
# connections) and reads the proxy's CPU from /proc/PID/stat. It prints every round, then
# per build the mean, median and range of the CPU per request and the median
# throughput, and how many rounds each later build was below the first.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROTOCOL=${PROTOCOL:-dubbo} ROUNDS=${ROUNDS:-8} DURATION=${DURATION:-6}
[ "$#" -ge 2 ] || { echo "usage: bench/compare.sh BUILD BUILD [BUILD...]" >&2; exit 2; }
# shellcheck source=bench/common.sh
source "$REPO/bench/common.sh"
tool_setup compare

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
E1=$(free_port); E2=$(free_port)
"$BENCH" echo --protocol "$PROTOCOL" --listen "127.0.0.1:$E1" --listen "127.0.0.1:$E2" \
    >"$OUT/echo.log" &
PIDS+=($!)

LOAD=(--connections 4 --inflight 32)
[ "$PROTOCOL" = http ] && LOAD=(--connections 32)
[ -n "${RATE:-}" ] && LOAD=(--connections 4 --rate "$RATE")

# "mean median min-max" of sorted numbers.
median_stats() {
    awk '{ for (j = 1; j <= NF; j++) { s += $j }
           m = (NF % 2) ? $((NF + 1) / 2) : ($(NF / 2) + $(NF / 2 + 1)) / 2
           printf "%.2f  %.2f  %.2f-%.2f", s / NF, m, $1, $NF }' <<<"$1"
}

# One round of build $1 (index $2): prints "index cpu_us_per_request throughput".
round() {
    local bin=$1 index=$2 port cfg pid
    port=$(free_port)
    cfg="$(metamesh_config "$PROTOCOL" "$port" "$E1" "$E2" 0 "" "")"
    "$bin" proxy --config "$cfg" >"$OUT/proxy.$index.log" 2>&1 &
    pid=$!
    wait_ready "$OUT/proxy.$index.log" "$pid" || { echo "$bin did not start" >&2; exit 1; }
    "$BENCH" load --protocol "$PROTOCOL" --target "127.0.0.1:$port" "${LOAD[@]}" \
        --batchjob-every 3 --warmup 1s --duration "${DURATION}s" --measure-pid "$pid" \
        >"$OUT/load.json"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    [ "$(jq .errors "$OUT/load.json")" = 0 ] || { echo "errors under load (see $OUT)" >&2; exit 1; }
    echo "$index $(jq -r '"\(.process.cpu_us_per_request) \(.throughput)"' "$OUT/load.json")"
}

: >"$OUT/rounds.txt"
for r in $(seq 1 "$ROUNDS"); do
    i=0
    for bin in "$@"; do
        line=$(round "$bin" "$i")
        echo "$line" >>"$OUT/rounds.txt"
        printf 'round %d  %-40s %s\n' "$r" "$bin" "$(cut -d' ' -f2- <<<"$line")"
        i=$((i + 1))
    done
done

echo "$PROTOCOL, ${RATE:-closed loop}, $ROUNDS rounds: CPU µs per request (mean, median, min-max), median req/s"
i=0
for bin in "$@"; do
    cpu=$(awk -v i="$i" '$1 == i { print $2 }' "$OUT/rounds.txt" | sort -g | tr '\n' ' ')
    rps=$(awk -v i="$i" '$1 == i { print $3 }' "$OUT/rounds.txt" | sort -g | tr '\n' ' ')
    printf '  %-40s %s  %s\n' "$bin" "$(median_stats "$cpu")" "$(median_stats "$rps" | awk '{print $2}')"
    if [ "$i" -gt 0 ]; then
        # Rounds are written in order, every build once per round.
        awk -v i="$i" -v n="$#" '
            { r = int((NR - 1) / n); if ($1 == 0) first[r] = $2; if ($1 == i) later[r] = $2 }
            END { for (r in later) { k++; if (later[r] < first[r]) w++ }
                  printf "    below the first build in %d of %d rounds\n", w, k }' "$OUT/rounds.txt"
    fi
    i=$((i + 1))
done
echo "reports in $OUT"
