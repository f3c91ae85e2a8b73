#!/usr/bin/env bash
# Restore time after a long history of small segments, with compaction off
# (compact_segments = 0) and on (the default, 512), to a local directory or
# to S3 (SeaweedFS from scripts/seaweedfs.sh).
#
#   scripts/bench/history.sh                 # 20000 commits, local directory
#   scripts/bench/history.sh 5000 s3         # 5000 commits, S3 (starts SeaweedFS)
#   WALSTREAM_BASELINE=/path/to/old/walstream scripts/bench/history.sh
#                                            # also restore with another build,
#                                            # alternating with this one
#
# Each commit is paced so it ships as its own segment (upload_interval = 0),
# the way a seldom-writing application's history looks. Prints a markdown
# table on stdout; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
commits="${1:-20000}"
target="${2:-local}"
cargo build --release --bin walstream >&2
bin="$PWD/target/release/walstream"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [[ "$target" == s3 ]]; then
    export SEAWEEDFS_ENV_FILE="$work/seaweedfs.env"
    scripts/seaweedfs.sh start >&2
    # shellcheck disable=SC1090
    . "$SEAWEEDFS_ENV_FILE"
    trap 'scripts/seaweedfs.sh stop >&2; rm -rf "$work"' EXIT
fi

replica_url() {
    if [[ "$target" == s3 ]]; then
        echo "s3://$WALSTREAM_TEST_S3_BUCKET/history-$1-$RANDOM$RANDOM?endpoint=$WALSTREAM_TEST_S3_ENDPOINT&force-path-style=true"
    else
        echo "$work/$1/replica"
    fi
}

app() { # app DB create|commit N
    python3 - "$@" <<'PY'
import sqlite3, sys, time
db, what = sys.argv[1], sys.argv[2]
c = sqlite3.connect(db, isolation_level=None)
if what == "create":
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
    c.execute("INSERT INTO t(v) VALUES (randomblob(200))")
else:
    for _ in range(int(sys.argv[3])):
        c.execute("INSERT INTO t(v) VALUES (randomblob(200))")
        time.sleep(0.001)
PY
}

shipped() { "$bin" status --json "$1" "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_shipped_txid"])'; }

baseline="${WALSTREAM_BASELINE:-}"
if [[ -n "$baseline" ]]; then
    echo "| compaction | segments | restore latest (median of 3) | peak RSS | baseline restore | baseline peak RSS |"
    echo "|---|---|---|---|---|---|"
else
    echo "| compaction | segments | restore latest (median of 3) | peak RSS |"
    echo "|---|---|---|---|"
fi

time_restore() { # time_restore BIN DIR REPLICA -> "seconds KB"
    rm -f "$2/out.db"
    { /usr/bin/time -f "%e %M" "$1" restore -o "$2/out.db" "$3" 2>&1 >/dev/null; } | tail -1
}
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
row() { local m; m="$(median "$@")"; echo "${m% *} s | $(( ${m#* } / 1024 )) MB"; }
for mode in off on; do
    dir="$work/$mode"
    mkdir -p "$dir"
    replica="$(replica_url "$mode")"
    compact=0
    [[ "$mode" == on ]] && compact=512
    cat >"$dir/walstream.toml" <<EOF
compact_segments = $compact
upload_interval = "0s"
[[db]]
path = "$dir/app.db"
[[db.replica]]
url = "$replica"
EOF
    app "$dir/app.db" create
    WALSTREAM_LOG=warn "$bin" replicate --config "$dir/walstream.toml" 2>"$dir/replicate.log" &
    pid=$!
    until [[ "$(shipped "$dir/app.db" "$replica" 2>/dev/null || echo 0)" -ge 1 ]]; do sleep 0.1; done
    echo "history.sh: $mode: committing $commits transactions" >&2
    app "$dir/app.db" commit "$commits"
    until [[ "$(shipped "$dir/app.db" "$replica")" -ge $((commits + 1)) ]]; do sleep 0.2; done
    sleep 2 # let a last merge finish
    kill -TERM "$pid"
    wait "$pid" || true
    segments="$("$bin" list --json "$replica" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["segments"]))')"
    runs=() base=()
    for _ in 1 2 3; do
        runs+=("$(time_restore "$bin" "$dir" "$replica")")
        if [[ -n "$baseline" ]]; then base+=("$(time_restore "$baseline" "$dir" "$replica")"); fi
    done
    line="| $mode | $segments | $(row "${runs[@]}") |"
    if [[ -n "$baseline" ]]; then line="$line $(row "${base[@]}") |"; fi
    echo "$line (load average $(cut -d' ' -f1-3 /proc/loadavg))"
done
