#!/usr/bin/env bash
# Where a request's CPU goes in metamesh and in the proxy it is compared with, measured
# in the same run: how much of it is the kernel's, how many context switches and TCP
# segments a request costs. HTTP/1.1 against nginx `proxy_pass`; Dubbo and Thrift against
# haproxy `mode tcp`.
#
#   bench/kernel-share.sh                 # HTTP, closed loop, 32 connections, 3 rounds
#   RATE=5000 bench/kernel-share.sh       # open loop at 5,000 requests/s over 16 connections
#   PROTOCOL=dubbo bench/kernel-share.sh  # Dubbo: 4 connections x 32 in flight (open loop:
#                                         # over 4 connections), against haproxy mode tcp
#   PERF=1 bench/kernel-share.sh          # also a perf profile per target: kernel, proxy,
#                                         # libc and vdso shares, and the top symbols
#   ROUNDS=5 SECS=8 MM=/path/to/metamesh bench/kernel-share.sh
#
# The targets run side by side (metamesh with bench/common.sh's configuration, the peer
# as bench/side-by-side.sh runs it) and are measured in alternating rounds, the echo backend
# answering both; a `direct` row (the load tool at the echo backend itself) gives the
# latency floor. For each round and target it prints CPU µs per request (utime + stime,
# /proc/PID/stat), p50 and p99 latency, the voluntary and involuntary context switches
# of the proxy's threads per request (/proc/PID/task/*/status) and the TCP segments sent
# per request over the whole machine (`nstat`, TcpOutSegs: one per hop, four through a
# proxy, when every ACK rides on data). With PERF=1 the last round is sampled with
# `perf record -e cpu-clock` (works without hardware counters) and marked `*`: sampling
# adds to the CPU that round measures.
#
# Needs nginx and haproxy (installed from Debian when missing), nstat (iproute2) and, for PERF=1,
# perf (Debian linux-perf). Reports go to $OUT (default: a new directory under /tmp).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROTOCOL=${PROTOCOL:-http} RATE=${RATE:-max} ROUNDS=${ROUNDS:-3} SECS=${SECS:-5}
# shellcheck source=bench/common.sh
source "$REPO/bench/common.sh"
peers_setup
tool_setup kernel-share
command -v nstat >/dev/null || "$REPO/scripts/apt-install.sh" iproute2
if [ -n "${PERF:-}" ]; then
    command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)" >&2; exit 1; }
fi

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
E1=$(free_port); E2=$(free_port)
"$BENCH" --threads 1 echo --protocol "$PROTOCOL" --listen "127.0.0.1:$E1" --listen "127.0.0.1:$E2" \
    >"$OUT/echo.log" 2>&1 &
ECHO=$!; PIDS+=("$ECHO")
wait_port "$E1"; wait_port "$E2"

MP=$(free_port)
"$MM" proxy --config "$(metamesh_config "$PROTOCOL" "$MP" "$E1" "$E2")" >"$OUT/proxy.log" 2>&1 &
MPID=$!; PIDS+=("$MPID")
wait_ready "$OUT/proxy.log" "$MPID"
NP=$(free_port)
if [ "$PROTOCOL" = http ]; then
    PEER=nginx
    start_nginx http "$NP" "$E1" "$E2"
    LOAD=(--connections 32)
    [ "$RATE" != max ] && LOAD=(--connections 16 --rate "$RATE")
else
    PEER=haproxy-tcp
    start_haproxy tcp "$NP" "$E1" "$E2"
    LOAD=(--connections 4 --inflight 32)
    [ "$RATE" != max ] && LOAD=(--connections 4 --rate "$RATE")
fi
NPID=$PROXY_PID

# The processes whose threads serve a target (nginx: the workers, children of the master).
target_pids() { # name -> pids
    case "$1" in
        direct) echo "$ECHO" ;;
        metamesh) echo "$MPID" ;;
        nginx) pgrep -P "$NPID" | paste -sd' ' ;;
        *) echo "$NPID" ;;
    esac
}
switches() { # pids... -> "voluntary involuntary", summed over their threads
    local v=0 n=0 p t
    for p in "$@"; do
        for t in /proc/"$p"/task/*; do
            v=$((v + $(awk '/^voluntary_ctxt_switches/ { print $2 }' "$t/status")))
            n=$((n + $(awk '/^nonvoluntary_ctxt_switches/ { print $2 }' "$t/status")))
        done
    done
    echo "$v $n"
}
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.3f", (b - a) / n }'; }

declare -A PORT=([direct]=$E1 [metamesh]=$MP [$PEER]=$NP)
declare -A MEASURE=([direct]=- [metamesh]=$MPID [$PEER]=$NPID)
echo "$PROTOCOL at RATE=$RATE (${LOAD[*]}), $SECS s per run"
printf '%-6s %-11s %10s %9s %9s %9s %9s %9s %9s\n' round target req/s cpu_us p50_us p99_us vol/req invol/req segs/req
for round in $(seq 1 "$ROUNDS"); do
    for t in direct metamesh "$PEER"; do
        pids=$(target_pids "$t")
        measure=(); [ "${MEASURE[$t]}" != - ] && measure=(--measure-pid "${MEASURE[$t]}")
        # shellcheck disable=SC2086
        read -r v0 n0 < <(switches $pids)
        o0=$(nstat -asz TcpOutSegs | awk '/TcpOutSegs/ { print $2 }')
        "$BENCH" --threads 1 load --protocol "$PROTOCOL" --target "127.0.0.1:${PORT[$t]}" "${LOAD[@]}" \
            --batchjob-every 3 --warmup 0s --duration "${SECS}s" "${measure[@]}" \
            >"$OUT/$t.$round.json" &
        load=$!
        mark=$round
        if [ -n "${PERF:-}" ] && [ "$round" = "$ROUNDS" ] && [ "$t" != direct ]; then
            mark="$round*"
            sleep 0.5
            perf record -q -e cpu-clock -F 4999 -p "${pids// /,}" -o "$OUT/$t.perf" \
                -- sleep "$((SECS - 1))" 2>"$OUT/$t.perf.log"
        fi
        wait "$load"
        o1=$(nstat -asz TcpOutSegs | awk '/TcpOutSegs/ { print $2 }')
        # shellcheck disable=SC2086
        read -r v1 n1 < <(switches $pids)
        j="$OUT/$t.$round.json"
        ok=$(jq .ok "$j")
        [ "$(jq .errors "$j")" = 0 ] || { echo "errors under load (see $j)" >&2; exit 1; }
        vol=$(per "$v0" "$v1" "$ok"); invol=$(per "$n0" "$n1" "$ok")
        [ "$t" = direct ] && vol=- && invol=-
        printf '%-6s %-11s %10.0f %9s %9s %9s %9s %9s %9s\n' "$mark" "$t" "$(jq .throughput "$j")" \
            "$(jq -r '.process.cpu_us_per_request // "-" | if type == "number" then (. * 100 | round / 100) else . end' "$j")" \
            "$(jq .latency_us.p50 "$j")" "$(jq .latency_us.p99 "$j")" \
            "$vol" "$invol" "$(per "$o0" "$o1" "$ok")"
    done
done

if [ -n "${PERF:-}" ]; then
    for t in metamesh "$PEER"; do
        echo "--- $t, round $ROUNDS: samples by object"
        perf report -i "$OUT/$t.perf" --no-children --sort dso --stdio 2>/dev/null \
            | grep -v '^#' | grep -v '^$' >"$OUT/$t.dso.txt" || true
        head -n 5 "$OUT/$t.dso.txt"
        echo "--- $t: top symbols"
        perf report -i "$OUT/$t.perf" --no-children --sort dso,sym --stdio 2>/dev/null \
            | grep -v '^#' | grep -v '^$' >"$OUT/$t.sym.txt" || true
        head -n 12 "$OUT/$t.sym.txt"
    done
fi
echo "reports in $OUT"
