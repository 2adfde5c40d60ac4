#!/usr/bin/env bash
# Installs Debian packages without letting their maintainer scripts start services, then
# leaves the nginx and haproxy services of the packages it installed stopped and disabled:
# tests and benchmarks run those servers with their own configurations.
#
#   scripts/apt-install.sh PACKAGE...
#
# Needs root or password-less sudo. Tries the current package lists first and runs
# `apt-get update` only when that fails.
set -euo pipefail

log() { printf '[apt-install] %s\n' "$*"; }
die() { printf '[apt-install] error: %s\n' "$*" >&2; exit 1; }
[ "$#" -gt 0 ] || exit 0
command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get on this machine"
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
    else die "need root to run: $* (install the packages by hand or run as root)"
    fi
}

log "installing Debian packages: $*"
# A policy-rc.d that denies every action while installing, unless the machine has one.
POLICY=/usr/sbin/policy-rc.d
OWN_POLICY=
if [ ! -e "$POLICY" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
    OWN_POLICY=1
fi
restore_policy() { if [ -n "$OWN_POLICY" ]; then as_root rm -f "$POLICY"; OWN_POLICY=; fi; }
trap restore_policy EXIT
APT_OPTS=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" "$@" >/dev/null 2>&1; then
    log "apt-get install failed with the current package lists; running apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || die "apt-get update failed"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install "${APT_OPTS[@]}" "$@" \
        || die "apt-get install $* failed"
fi
restore_policy
trap - EXIT

for service in nginx haproxy; do
    [[ " $* " == *" $service"* ]] || continue
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now "$service" >/dev/null 2>&1 || true
    else
        if [ -x "/etc/init.d/$service" ]; then as_root "/etc/init.d/$service" stop >/dev/null 2>&1 || true; fi
        if command -v update-rc.d >/dev/null 2>&1; then as_root update-rc.d "$service" disable >/dev/null 2>&1 || true; fi
    fi
done
