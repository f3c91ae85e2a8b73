#!/usr/bin/env bash
# Commit-to-replica lag and throughput of `walstream replicate` to a local
# directory replica. Builds in release mode, then runs examples/lag_bench.rs.
#
#   scripts/bench/lag.sh                       # defaults: 2000 commits, one per 5 ms
#   scripts/bench/lag.sh --synchronous FULL    # other options: --help
#   scripts/bench/lag.sh --dir /mnt/disk/x     # measure another disk (kept)
#
# Prints markdown tables on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin walstream --example lag_bench
exec target/release/examples/lag_bench --walstream target/release/walstream "$@"
