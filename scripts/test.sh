#!/usr/bin/env bash
# Runs every test of metamesh: installs the third-party test peers (idempotently), checks
# formatting and lints, then runs unit, property, conformance and end-to-end tests.
# The default build stays free of Kubernetes; it is linted as is, and lints and tests
# then run once with the `kubernetes` feature, which adds the Kubernetes source to the
# same code (so every test runs once, and the Kubernetes tests with them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features metamesh/kubernetes -- -D warnings
cargo test --workspace --all-targets --features metamesh/kubernetes
