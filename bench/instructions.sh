#!/usr/bin/env bash
# Counts the user-space instructions `metamesh proxy` executes per request, under
# valgrind (cachegrind, no cache simulation), for one or more builds of the proxy.
#
#   bench/instructions.sh                            # Dubbo, the current build
#   PROTOCOL=http bench/instructions.sh              # HTTP/1.1 (also: thrift)
#   bench/instructions.sh /tmp/old/metamesh target/release/metamesh   # compare builds
#   PROFILE=1 bench/instructions.sh                  # also a callgrind profile of the run
#   RATE=max bench/instructions.sh                   # closed loop, 4 connections x 32 in flight
#
# The figure is a count, not a timing: a busy machine does not change it, so two builds
# can be compared where CPU time is within the machine's noise. Each build runs twice,
# SHORT and LONG seconds of open-loop load at RATE requests/s (after the same warm-up);
# the difference of the two counts over the difference of the requests removes start-up,
# warm-up and shutdown. It counts user space only: the kernel's share of a request (most
# of it at low rates) is not in it. Run to run it varies by about 2% (how requests group
# into wake-ups).
#
# Needs valgrind (installed from Debian if missing) and the release binaries (built).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROTOCOL=${PROTOCOL:-dubbo} RATE=${RATE:-1000} SHORT=${SHORT:-2} LONG=${LONG:-6}
# shellcheck source=bench/common.sh
source "$REPO/bench/common.sh"
tool_setup instructions
[ "$#" -gt 0 ] || set -- "$MM"
command -v valgrind >/dev/null 2>&1 || "$REPO/scripts/apt-install.sh" valgrind

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
E1=$(free_port); E2=$(free_port)
"$BENCH" echo --protocol "$PROTOCOL" --listen "127.0.0.1:$E1" --listen "127.0.0.1:$E2" >"$OUT/echo.log" &
PIDS+=($!)

# Runs `$1 proxy` under valgrind with `$2` seconds of load; prints "instructions requests".
run() {
    local bin=$1 secs=$2 tool=${3:-cachegrind} port vg cfg out
    port=$(free_port)
    cfg="$(metamesh_config "$PROTOCOL" "$port" "$E1" "$E2" 0 "" "")"
    out="$OUT/$tool.$secs.$(basename "$(dirname "$bin")").out"
    if [ "$tool" = callgrind ]; then
        valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" proxy --config "$cfg" \
            >"$OUT/proxy.log" 2>"$OUT/valgrind.log" &
    else
        valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
            "$bin" proxy --config "$cfg" >"$OUT/proxy.log" 2>"$OUT/valgrind.log" &
    fi
    vg=$!
    for _ in $(seq 1 600); do grep -q '"event":"ready"' "$OUT/proxy.log" && break; sleep 0.1; done
    grep -q '"event":"ready"' "$OUT/proxy.log" || { echo "proxy not ready under valgrind (see $OUT)" >&2; exit 1; }
    local load=(--rate "$RATE")
    [ "$RATE" = max ] && load=(--inflight 32)
    "$BENCH" load --protocol "$PROTOCOL" --target "127.0.0.1:$port" --connections 4 \
        "${load[@]}" --batchjob-every 3 --warmup 1s --duration "${secs}s" >"$OUT/load.json"
    [ "$(jq .errors "$OUT/load.json")" = 0 ] || { echo "errors under load (see $OUT)" >&2; exit 1; }
    kill -TERM "$vg"
    wait "$vg" 2>/dev/null || true
    if [ "$tool" = callgrind ]; then
        echo "$out"
        return
    fi
    echo "$(awk '/^summary:/ { print $2 }' "$out") $(jq .ok "$OUT/load.json")"
}

for bin in "$@"; do
    read -r i1 n1 < <(run "$bin" "$SHORT")
    read -r i2 n2 < <(run "$bin" "$LONG")
    [ "$n2" -gt "$n1" ] || { echo "the long run answered no more requests than the short one" >&2; exit 1; }
    echo "$bin: $PROTOCOL at $RATE requests/s: $(( (i2 - i1) / (n2 - n1) )) instructions per request"
    if [ -n "${PROFILE:-}" ]; then
        profile=$(run "$bin" "$LONG" callgrind)
        echo "  callgrind profile: $profile (callgrind_annotate --inclusive=yes $profile)"
    fi
done
echo "reports in $OUT"
