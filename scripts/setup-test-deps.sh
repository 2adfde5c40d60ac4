#!/usr/bin/env bash
# Installs the third-party peers the end-to-end tests talk to (see tests/peers/README.md):
# Debian packages (thrift-compiler, nginx-light; iptables, iproute2 and curl for the
# sidecar capture tests), and Python libraries in a virtualenv at
# <repo>/.venv, and Python stubs generated from tests/peers/thrift/echo.thrift.
#
#   scripts/setup-test-deps.sh            # idempotent; a second run only checks stamps
#   FORCE=1 scripts/setup-test-deps.sh    # reinstall the Python side even if the stamps match
#   PYTHON=python3.12 scripts/setup-test-deps.sh
#   SETUP_TEST_DEPS_NO_ENSUREPIP=1 ...      # exercise the no-ensurepip path (Debian without python3-venv)
#   SETUP_TEST_DEPS_NO_APT=1 ...            # never call apt-get (fail if a package is missing)
#
# Non-interactive, callable from any directory. Needs python3 (>= 3.8) with venv or pip,
# network access to PyPI and the Debian mirror on the first run only, and root (or
# password-less sudo) when a Debian package is missing.
#
# Layout it produces:
#   /usr/bin/thrift              Debian thrift-compiler (0.17): generates the Thrift test stubs
#   /usr/sbin/nginx              Debian nginx-light: an HTTP backend; its service is left
#                                stopped and disabled (tests run their own nginx)
#   /usr/sbin/iptables(-restore) Debian iptables: the NAT rules of tests/capture_e2e.rs
#   /usr/sbin/ip                 Debian iproute2: the network namespaces of tests/capture_e2e.rs
#   /usr/bin/curl                Debian curl: reads the proxy's metrics inside a namespace
#   .venv/                       virtualenv: dubbo-py, kazoo, nacos-sdk-python, thrift
#   .venv/dubbo-python-lib/      dubbo-python alone (it ships the same top-level package name
#                                "dubbo" as dubbo-py, so it cannot share site-packages with it)
#   .venv/thrift-gen/            `thrift --gen py` output for tests/peers/thrift/echo.thrift
#   .venv/.metamesh-test-deps    stamp: hash of the requirement set that was installed
#   .venv/thrift-gen/.stamp      stamp: hash of the IDL and the compiler version
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
REQ="$REPO/tests/peers/requirements.txt"
REQ_DP="$REPO/tests/peers/requirements-dubbo-python.txt"
DP_LIB="$VENV/dubbo-python-lib"
STAMP="$VENV/.metamesh-test-deps"
# Bump when the install procedure changes in a way the requirement files do not show.
LAYOUT_VERSION=1
IDL="$REPO/tests/peers/thrift/echo.thrift"
THRIFT_GEN="$VENV/thrift-gen"
THRIFT_STAMP="$THRIFT_GEN/.stamp"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore

log() { printf '[setup-test-deps] %s\n' "$*"; }
die() { printf '[setup-test-deps] error: %s\n' "$*" >&2; exit 1; }

[ -f "$REQ" ] || die "missing $REQ"
[ -f "$REQ_DP" ] || die "missing $REQ_DP"
[ -f "$IDL" ] || die "missing $IDL"

# 0. Debian packages. Checked on every run (cheap); apt-get runs only when one is missing.
APT_MISSING=()
if ! command -v thrift >/dev/null 2>&1; then APT_MISSING+=(thrift-compiler); fi
if ! command -v nginx >/dev/null 2>&1 && ! [ -x /usr/sbin/nginx ]; then APT_MISSING+=(nginx-light); fi
has_sbin() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
if ! has_sbin iptables || ! has_sbin iptables-restore; then APT_MISSING+=(iptables); fi
if ! has_sbin ip; then APT_MISSING+=(iproute2); fi
if ! command -v curl >/dev/null 2>&1; then APT_MISSING+=(curl); fi

if [ "${#APT_MISSING[@]}" -gt 0 ]; then
    [ -z "${SETUP_TEST_DEPS_NO_APT:-}" ] || die "missing Debian packages: ${APT_MISSING[*]}"
    # Installed with the packages' services kept from starting (the tests run nginx
    # with their own configuration).
    "$REPO/scripts/apt-install.sh" "${APT_MISSING[@]}"
fi
command -v thrift >/dev/null 2>&1 || die "thrift (Debian thrift-compiler) is not on PATH"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || die "nginx (Debian nginx-light) is not installed"
has_sbin iptables-restore || die "iptables-restore (Debian iptables) is not installed"
has_sbin ip || die "ip (Debian iproute2) is not installed"

pick_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
    for p in python3.11 python3.12 python3.13 python3.10 python3; do
        if command -v "$p" >/dev/null 2>&1; then echo "$p"; return; fi
    done
    die "no python3 found (set PYTHON=...)"
}

hash_stdin() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1
    else "$VENV_PY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
    fi
}

VENV_PY="$VENV/bin/python"

# 1. virtualenv
if [ -x "$VENV_PY" ] && "$VENV_PY" -c 'import sys' >/dev/null 2>&1; then
    log "virtualenv present: $VENV"
else
    PY="$(pick_python)"
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 8) else 1)' \
        || die "$PY is older than 3.8"
    log "creating virtualenv $VENV with $("$PY" --version 2>&1)"
    rm -rf "$VENV"
    ERR="$(mktemp)"
    if [ -z "${SETUP_TEST_DEPS_NO_ENSUREPIP:-}" ] && "$PY" -m venv "$VENV" 2>"$ERR"; then
        :
    else
        # Debian's python3 without python3-venv has no ensurepip: make the venv without
        # pip and let the interpreter's own pip install pip into it.
        cat "$ERR" >&2 || true
        log "'$PY -m venv' without ensurepip; bootstrapping pip into the venv with $PY's pip"
        rm -rf "$VENV"
        "$PY" -m venv --without-pip "$VENV" || die "cannot create $VENV"
        "$PY" -m pip --python "$VENV_PY" install --quiet pip \
            || die "cannot install pip into $VENV (install python3-venv, or pip >= 22.3)"
    fi
    rm -f "$ERR"
fi

# 2. requirement set; skip when the stamp says it is already installed
WANT="$( { echo "layout=$LAYOUT_VERSION"; "$VENV_PY" -c 'import sys; print(sys.version)';
           cat "$REQ"; echo '--- dubbo-python-lib'; cat "$REQ_DP"; } | hash_stdin )"

if [ -z "${FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -d "$DP_LIB/dubbo" ]; then
    log "requirements already installed (stamp $STAMP matches)"
else
    rm -f "$STAMP"
    log "installing $(grep -v '^\s*#' "$REQ" | grep -v '^\s*$' | tr '\n' ' ')into $VENV"
    "$VENV_PY" -m pip install --quiet -r "$REQ"

    log "installing $(grep -v '^\s*#' "$REQ_DP" | grep -v '^\s*$' | tr '\n' ' ')into $DP_LIB (--no-deps)"
    rm -rf "$DP_LIB"
    "$VENV_PY" -m pip install --quiet --no-deps --target "$DP_LIB" -r "$REQ_DP"

    # 3. smoke-import the libraries the way the peer programs use them
    log "checking imports"
    "$VENV_PY" -c 'import dubbo.server, dubbo.client, dubbo.codec.hessian2, kazoo, nacos' \
        || die "dubbo-py import failed"
    PYTHONPATH="$DP_LIB" "$VENV_PY" -W ignore -c \
        'import dubbo.connection.connections, dubbo.codec.encoder, dubbo.client' \
        || die "dubbo-python import failed"
    "$VENV_PY" -c 'import thrift.server.TServer, thrift.transport.THeaderTransport, thrift.protocol.TCompactProtocol' \
        || die "thrift import failed"

    echo "$WANT" > "$STAMP"
    log "installed:"
    "$VENV_PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(dubbo-py|kazoo|nacos-sdk-python|thrift)==' | sed 's/^/    /'
    ( cd "$DP_LIB" && ls -d dubbo_python-*.dist-info 2>/dev/null | sed 's/\.dist-info$//; s/^/    /; s/-/==/' )
fi

# 4. Python stubs for the Thrift test IDL, from the real compiler; regenerated when the IDL
#    or the compiler changes (the peers add .venv/thrift-gen to sys.path).
THRIFT_WANT="$( { thrift --version; cat "$IDL"; } | hash_stdin )"
if [ -z "${FORCE:-}" ] && [ -f "$THRIFT_STAMP" ] && [ "$(cat "$THRIFT_STAMP")" = "$THRIFT_WANT" ]; then
    log "thrift stubs up to date (stamp $THRIFT_STAMP matches)"
else
    log "generating Python stubs from ${IDL#"$REPO"/} with $(thrift --version)"
    rm -rf "$THRIFT_GEN"
    mkdir -p "$THRIFT_GEN"
    thrift --gen py -out "$THRIFT_GEN" "$IDL" || die "thrift --gen py failed"
    PYTHONPATH="$THRIFT_GEN" "$VENV_PY" -c 'from metamesh_echo import EchoService, ttypes' \
        || die "generated stubs do not import"
    echo "$THRIFT_WANT" > "$THRIFT_STAMP"
fi
log "done"
