#!/usr/bin/env bash
# The full test suite, as CI runs it. Installs nothing beyond the Rust toolchain
# (SQLite is bundled); works on a fresh machine with cargo on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --locked --all-targets
cargo test --locked --all-targets -- --test-threads=2
