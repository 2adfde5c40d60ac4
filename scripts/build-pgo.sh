#!/usr/bin/env bash
# Builds a profile-guided release binary of metamesh: an instrumented build of the proxy
# serves Dubbo, Thrift and HTTP/1.1 load from the load tool (pipelined at full speed and
# at a fixed rate, with the README's batchjob routing, request ids and a Lua hook), and
# the compiler then lays out and inlines the code by the counts it recorded.
#
#   scripts/build-pgo.sh              # writes target/pgo/release/metamesh
#   TRAIN_SECONDS=5 scripts/build-pgo.sh
#
# Needs the `llvm-tools` component of the Rust toolchain (for llvm-profdata, of the same
# LLVM as rustc); installs it with rustup when missing. The ordinary release build in
# target/release is left as it is: the instrumented and the final builds have their own
# target directories under target/pgo-*.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRAIN_SECONDS=${TRAIN_SECONDS:-3}
GEN_DIR="$REPO/target/pgo-instrumented"
FINAL_DIR="$REPO/target/pgo"
OUT="${OUT:-$(mktemp -d /tmp/metamesh-pgo.XXXXXX)}"
# A fixed place, so that the instrumented build is rebuilt only when the code changes.
PROFILES="$GEN_DIR/profiles"
mkdir -p "$PROFILES" "$OUT"
rm -f "$PROFILES"/*.profraw

HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
    rustup component add llvm-tools >&2
fi
[ -x "$PROFDATA" ] || { echo "llvm-profdata not found at $PROFDATA" >&2; exit 1; }

# shellcheck source=bench/common.sh
source "$REPO/bench/common.sh"
(cd "$REPO" && cargo build --release --quiet -p metamesh-bench --bins)
BENCH="$REPO/target/release/metamesh-bench"

echo "[pgo] instrumented build in $GEN_DIR" >&2
(cd "$REPO" && CARGO_TARGET_DIR="$GEN_DIR" RUSTFLAGS="-Cprofile-generate=$PROFILES" \
    cargo build --release --quiet -p metamesh --bin metamesh)
MM="$GEN_DIR/release/metamesh"

PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

# Serves one protocol's load through the instrumented proxy; the proxy writes its profile
# when it exits on SIGTERM.
train() { # protocol [lua] [noid]
    local proto=$1 hook=${2:-} noid=${3:-} e1 e2 port config echo_pid mm_pid
    e1=$(free_port); e2=$(free_port); port=$(free_port)
    "$BENCH" echo --protocol "$proto" --listen "127.0.0.1:$e1" --listen "127.0.0.1:$e2" \
        >"$OUT/echo-$proto.log" &
    echo_pid=$!; PIDS+=("$echo_pid")
    config="$(metamesh_config "$proto" "$port" "$e1" "$e2" 0 "$hook" "$noid")"
    "$MM" proxy --config "$config" >"$OUT/proxy-$proto.log" 2>&1 &
    mm_pid=$!; PIDS+=("$mm_pid")
    wait_ready "$OUT/proxy-$proto.log" "$mm_pid"
    local conns=4 inflight=32 load args
    if [ "$proto" = http ]; then conns=32; inflight=1; fi
    for load in closed open; do
        args=(--connections "$conns" --inflight "$inflight")
        [ "$load" = open ] && args=(--connections "$((conns / 2))" --rate 2000)
        "$BENCH" load --protocol "$proto" --target "127.0.0.1:$port" "${args[@]}" \
            --batchjob-every 3 --warmup 200ms --duration "${TRAIN_SECONDS}s" \
            >"$OUT/load-$proto-$load${hook:+-lua}${noid:+-noid}.json"
        # A profile of failing requests would optimise the error paths instead.
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(1 if r["errors"] or not r["ok"] else 0)' \
            "$OUT/load-$proto-$load${hook:+-lua}${noid:+-noid}.json" \
            || { echo "training load $proto $load had errors (see $OUT)" >&2; exit 1; }
    done
    kill -TERM "$mm_pid"
    wait "$mm_pid" || { echo "the instrumented proxy did not exit cleanly (see $OUT/proxy-$proto.log)" >&2; exit 1; }
    kill "$echo_pid" 2>/dev/null || true
    wait "$echo_pid" 2>/dev/null || true
    echo "[pgo] trained on $proto${hook:+ with a Lua hook}${noid:+ without request ids}" >&2
}
train dubbo
train dubbo lua
train dubbo "" noid
train thrift
train http

ls "$PROFILES"/*.profraw >/dev/null 2>&1 || { echo "no profile was written" >&2; exit 1; }
"$PROFDATA" merge -o "$OUT/merged.profdata" "$PROFILES"/*.profraw

echo "[pgo] optimised build in $FINAL_DIR" >&2
(cd "$REPO" && CARGO_TARGET_DIR="$FINAL_DIR" \
    RUSTFLAGS="-Cprofile-use=$OUT/merged.profdata -Cllvm-args=-pgo-warn-missing-function=false" \
    cargo build --release --quiet -p metamesh --bin metamesh)
echo "$FINAL_DIR/release/metamesh"
