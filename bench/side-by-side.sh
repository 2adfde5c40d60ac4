#!/usr/bin/env bash
# Side-by-side performance of metamesh against haproxy and nginx, on one machine in one go.
#
#   bench/side-by-side.sh              # full run (about 10 minutes); rewrites the marked
#                                      # section of docs/performance.md
#   bench/side-by-side.sh --quick      # CI-size run: short windows, docs untouched
#   bench/side-by-side.sh --no-docs    # full run, report on stdout only
#   OUT=/tmp/sbs bench/side-by-side.sh # keep the JSON reports and logs there
#   ROUNDS=3 bench/side-by-side.sh     # three rounds of every measurement, medians reported
#   bench/side-by-side.sh --pgo        # also the profile-guided build (scripts/build-pgo.sh)
#                                      # as the target metamesh-pgo (about 8 minutes more)
#
# For each protocol (dubbo, thrift, http) and each target it runs the load tool closed
# loop (maximum throughput) and open loop at fixed rates, and reads the proxy's CPU time
# (utime + stime of every process and thread, /proc/PID/stat) over the measured window and
# its peak RSS (VmHWM, summed over worker processes). Targets:
#   direct        the echo backend itself (the baseline for added latency)
#   metamesh      `metamesh proxy` routing as the README does (Dubbo on batchjob, HTTP on
#                 x-batchjob, Thrift on method), two clusters
#   metamesh-pgo  (--pgo) the same, built by scripts/build-pgo.sh
#   haproxy-tcp   haproxy `mode tcp` (the L4 floor)
#   nginx-stream  nginx `stream` (the L4 floor)
#   nginx-http    (HTTP) nginx proxy_pass with upstream keepalive, routing on x-batchjob
#   haproxy-http  (HTTP) haproxy mode http, routing on x-batchjob
# plus metamesh's idle RSS and the RSS 10,000 idle client connections add, the CPU per
# request with 10 and with 10,000 routes, and with a Lua batchjob tagging hook.
#
# Nothing is pinned to cores: the load tool (1 thread), the echo backend (1 thread) and the
# proxy share the machine's cores, as they would on a 2-core host. haproxy and nginx run
# with their defaults for the machine (one thread / worker per core), as metamesh does.
# Installs haproxy, nginx-light and libnginx-mod-stream when missing (Debian packages,
# their system services are never started); builds metamesh and the load tool in release
# mode.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUICK=0
DOCS=1
PGO=0
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1; DOCS=0 ;;
        --pgo) PGO=1 ;;
        --no-docs) DOCS=0 ;;
        -h|--help) sed -n '2,33p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

if [ "$QUICK" = 1 ]; then
    DURATION=1s; WARMUP=300ms; RATES="500 2000"; IDLE_CONNS=1000; SCALE_ROUTES=1000
else
    DURATION=${DURATION:-8s}; WARMUP=${WARMUP:-2s}; RATES=${RATES:-"1000 5000"}
    IDLE_CONNS=10000; SCALE_ROUTES=10000
fi
# Closed loop: Dubbo and Thrift pipeline 4 x 32; HTTP/1.1 one request per connection.
MUX_CONNS=4; MUX_INFLIGHT=32; HTTP_CONNS=32
# Open loop: connections the rate is spread over.
OPEN_MUX_CONNS=4; OPEN_HTTP_CONNS=16
BATCHJOB_EVERY=3
# Runs of each fixed rate per target; with more than one, latency and CPU are medians.
ROUNDS=${ROUNDS:-1}
case "$ROUNDS" in ''|*[!0-9]*|0) echo "ROUNDS must be a positive integer" >&2; exit 2 ;; esac

OUT="${OUT:-$(mktemp -d /tmp/metamesh-side-by-side.XXXXXX)}"
mkdir -p "$OUT"
log() { printf '[side-by-side] %s\n' "$*" >&2; }
die() { printf '[side-by-side] error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ packages
# shellcheck source=bench/common.sh
source "$REPO/bench/common.sh"
peers_setup

# ------------------------------------------------------------------ build
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
log "building metamesh and metamesh-bench (release) into $CARGO_TARGET_DIR"
(cd "$REPO" && cargo build --release --quiet -p metamesh -p metamesh-bench --bins) || die "build failed"
MM="$CARGO_TARGET_DIR/release/metamesh"
BENCH="$CARGO_TARGET_DIR/release/metamesh-bench"
MM_PGO=
if [ "$PGO" = 1 ]; then
    log "building the profile-guided metamesh (scripts/build-pgo.sh)"
    MM_PGO="$(OUT="$OUT/pgo" "$REPO/scripts/build-pgo.sh" | tail -n 1)" || die "profile-guided build failed"
    [ -x "$MM_PGO" ] || die "profile-guided build failed"
fi

# ------------------------------------------------------------------ processes
# Raise the open-files limit for the 10,000 idle connections (proxy and tool inherit it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

start_echo() { # protocol port1 port2 -> ECHO_PID
    "$BENCH" --threads 1 echo --protocol "$1" --listen "127.0.0.1:$2" --listen "127.0.0.1:$3" \
        >"$OUT/echo-$1.log" 2>&1 &
    ECHO_PID=$!; PIDS+=("$ECHO_PID")
    wait_port "$2"; wait_port "$3"
}

start_metamesh() { # config [binary] -> PROXY_PID
    "${2:-$MM}" proxy --config "$1" >"$1.log" 2>&1 &
    PROXY_PID=$!; PIDS+=("$PROXY_PID")
    for _ in $(seq 1 200); do
        grep -q '"event":"ready"' "$1.log" 2>/dev/null && return 0
        kill -0 "$PROXY_PID" 2>/dev/null || { cat "$1.log" >&2; die "metamesh exited"; }
        sleep 0.05
    done
    die "metamesh not ready: $(cat "$1.log")"
}

# ------------------------------------------------------------------ load
load() { # name protocol target-port pid mode(closed|RATE) -> writes $OUT/NAME.json
    local name=$1 proto=$2 port=$3 pid=$4 mode=$5 args=()
    if [ "$mode" = closed ]; then
        if [ "$proto" = http ]; then args+=(--connections "$HTTP_CONNS")
        else args+=(--connections "$MUX_CONNS" --inflight "$MUX_INFLIGHT"); fi
    else
        if [ "$proto" = http ]; then args+=(--connections "$OPEN_HTTP_CONNS")
        else args+=(--connections "$OPEN_MUX_CONNS"); fi
        args+=(--rate "$mode")
    fi
    [ "$pid" != - ] && args+=(--measure-pid "$pid")
    "$BENCH" --threads 1 load --protocol "$proto" --target "127.0.0.1:$port" \
        --duration "$DURATION" --warmup "$WARMUP" --batchjob-every "$BATCHJOB_EVERY" \
        "${args[@]}" >"$OUT/$name.json" 2>"$OUT/$name.err" \
        || die "load $name failed: $(cat "$OUT/$name.err")"
    printf '%s\t%s\n' "$name" "$(cat /proc/loadavg | cut -d' ' -f1-3)" >>"$OUT/loadavg.tsv"
    log "$name: $(jq -c '{throughput, ok, errors, p99: .latency_us.p99, cpu_us: .process.cpu_us_per_request}' "$OUT/$name.json")"
}

# The targets of one comparison run at the same time, each on its own port (idle while
# another is measured); every measurement is taken in rounds, and each round measures
# every target once, one after the other: a stretch of load from other work on the
# machine falls on all targets of a round alike, not on one target's every run.
TARGETS=()
declare -A TPORT=() TPID=()
add_target() { # name port pid
    TARGETS+=("$1"); TPORT[$1]=$2; TPID[$1]=$3
}
start_metamesh_target() { # name port config-for-that-port [binary]
    local cfg="$OUT/$1.yaml"
    cp "$3" "$cfg"
    start_metamesh "$cfg" "${4:-}"
    add_target "$1" "$2" "$PROXY_PID"
}
stop_targets() {
    local t
    for t in "${TARGETS[@]}"; do
        if [ "${TPID[$t]}" != - ]; then stop "${TPID[$t]}"; fi
    done
    TARGETS=(); TPORT=(); TPID=()
}
# Measures every target in each mode (closed loop and the rates), ROUNDS rounds per mode:
# NAME.json, then NAME.r2.json ...; the report takes the median of each figure.
measure_targets() { # protocol prefix modes...
    local proto=$1 prefix=$2 m r t name
    shift 2
    for m in "$@"; do
        for r in $(seq 1 "$ROUNDS"); do
            for t in "${TARGETS[@]}"; do
                name="$prefix-$t-$m"
                [ "$r" -gt 1 ] && name+=".r$r"
                load "$name" "$proto" "${TPORT[$t]}" "${TPID[$t]}" "$m"
            done
        done
    done
}

log "results in $OUT"
: >"$OUT/loadavg.tsv"
for proto in dubbo thrift http; do
    E1=$(free_port); E2=$(free_port)
    start_echo "$proto" "$E1" "$E2"
    add_target direct "$E1" -
    P=$(free_port)
    start_metamesh_target metamesh "$P" "$(metamesh_config "$proto" "$P" "$E1" "$E2")"
    if [ -n "$MM_PGO" ]; then
        P=$(free_port)
        start_metamesh_target metamesh-pgo "$P" \
            "$(metamesh_config "$proto" "$P" "$E1" "$E2")" "$MM_PGO"
    fi
    if [ "$proto" != thrift ]; then
        P=$(free_port)
        start_metamesh_target metamesh-noid "$P" \
            "$(metamesh_config "$proto" "$P" "$E1" "$E2" 0 "" noid)"
    fi
    P=$(free_port); start_haproxy tcp "$P" "$E1" "$E2"; add_target haproxy-tcp "$P" "$PROXY_PID"
    P=$(free_port); start_nginx stream "$P" "$E1" "$E2"; add_target nginx-stream "$P" "$PROXY_PID"
    if [ "$proto" = http ]; then
        P=$(free_port); start_nginx http "$P" "$E1" "$E2"; add_target nginx-http "$P" "$PROXY_PID"
        P=$(free_port); start_haproxy http "$P" "$E1" "$E2"; add_target haproxy-http "$P" "$PROXY_PID"
    fi
    # shellcheck disable=SC2086
    measure_targets "$proto" "$proto" closed $RATES
    stop_targets

    if [ "$proto" = dubbo ]; then
        # Route scale and the Lua hook: CPU per request at maximum throughput, where it
        # is steadiest (at a fixed rate, sleeping and waking dominate and hide a few µs).
        # The hook is compared with the same proxy without it.
        for routes in 10 "$SCALE_ROUTES"; do
            P=$(free_port)
            start_metamesh_target "routes-$routes" "$P" \
                "$(metamesh_config dubbo "$P" "$E1" "$E2" "$routes")"
        done
        P=$(free_port)
        start_metamesh_target nolua "$P" "$(metamesh_config dubbo "$P" "$E1" "$E2")"
        P=$(free_port)
        start_metamesh_target lua "$P" "$(metamesh_config dubbo "$P" "$E1" "$E2" 0 lua)"
        measure_targets dubbo dubbo closed
        stop_targets

        # Memory: idle RSS, then the RSS that idle client connections add.
        P=$(free_port)
        start_metamesh "$(metamesh_config dubbo "$P" "$E1" "$E2")"
        sleep 1
        "$BENCH" --threads 1 idle --target "127.0.0.1:$P" --connections "$IDLE_CONNS" \
            --hold 3s --measure-pid "$PROXY_PID" >"$OUT/dubbo-idle.json" \
            || die "idle connections failed"
        log "idle: $(cat "$OUT/dubbo-idle.json")"
        stop "$PROXY_PID"
    fi
    stop "$ECHO_PID"
done

# ------------------------------------------------------------------ report
COMMAND="bench/side-by-side.sh"
if [ "$QUICK" = 1 ]; then COMMAND+=" --quick"; fi
if [ "$PGO" = 1 ]; then COMMAND+=" --pgo"; fi
if [ "$ROUNDS" -gt 1 ]; then COMMAND="ROUNDS=$ROUNDS $COMMAND"; fi
ROUNDS_NOTE="; the targets of a table run side by side, idle but for the one being measured, and each measurement is taken in $ROUNDS rounds, every target once per round in turn"
if [ "$ROUNDS" -gt 1 ]; then
    ROUNDS_NOTE+=": throughput, latency percentiles and CPU per request are the medians of the rounds"
fi
python3 "$REPO/bench/report.py" "$OUT" --command "$COMMAND" \
    --settings "window $DURATION after $WARMUP warm-up; closed loop $MUX_CONNS connections x $MUX_INFLIGHT in flight (HTTP: $HTTP_CONNS connections); open loop over $OPEN_MUX_CONNS connections (HTTP: $OPEN_HTTP_CONNS); --batchjob-every $BATCHJOB_EVERY (Dubbo attachment batchjob=true, HTTP header x-batchjob: true on every ${BATCHJOB_EVERY}rd request of a connection)$ROUNDS_NOTE" \
    >"$OUT/report.md"
cat "$OUT/report.md"
if [ "$DOCS" = 1 ]; then
    python3 "$REPO/bench/report.py" --splice "$REPO/docs/performance.md" "$OUT/report.md"
    log "docs/performance.md updated"
fi
