#!/usr/bin/env bash
# Runs every test of metamesh: installs the third-party test peers (idempotently), checks
# formatting and lints, then runs unit, property, conformance and end-to-end tests.
#
# Lints and tests run once, with the `kubernetes` feature: it only adds the Kubernetes
# source, so every test runs and the Kubernetes ones with them. The default build, which
# has no Kubernetes client in it, is checked on its own: its dependency tree, and a lint
# of the binary (the only code that differs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-test-deps.sh
cargo fmt --all -- --check
# The project's shell scripts parse (the measuring ones do not run here).
for f in .ci/run scripts/*.sh bench/*.sh; do bash -n "$f"; done
if cargo tree --workspace -e normal --prefix none -f '{p}' | grep -qE '^(kube|kube-client|k8s-openapi) v'; then
    echo "the default build must not depend on a Kubernetes client" >&2
    exit 1
fi
cargo clippy -p metamesh --bin metamesh -- -D warnings
cargo clippy --workspace --all-targets --features metamesh/kubernetes -- -D warnings
cargo test --workspace --all-targets --features metamesh/kubernetes
