#!/usr/bin/env bash
# Runs every test of metamesh: installs the third-party test peers (idempotently), checks
# formatting and lints, then runs unit, property, conformance and end-to-end tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
