#!/usr/bin/env bash
# Local MLflow tracking server: sqlite backend, local artifact folder, one worker, bound to 127.0.0.1.
#
#   orchestration/mlflow_server.sh start  [--port 5000] [--dir runs/mlflow]   # prints the tracking URI
#   orchestration/mlflow_server.sh status [--port 5000] [--dir runs/mlflow]   # exit 0 running, 3 stopped
#   orchestration/mlflow_server.sh stop   [--port 5000] [--dir runs/mlflow]
#
# Python: $PYTHON if set, else <repo>/.venv/bin/python if present, else python3 on PATH.
# Why these flags: `--workers 1` and MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false keep the server at about
# 500 MB (the defaults start ~15 processes, ~3 GB); it needs ~9 s to answer /health. `start` is
# idempotent: when the server of this --dir is already running it only prints its URI. `stop` signals the
# main PID (the server's children follow it), then its process group if anything is left.
set -euo pipefail

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMD="${1:-}"; [ -n "$CMD" ] || usage; shift
PORT=5000
DIR="$REPO/runs/mlflow"
WAIT_S="${MLFLOW_START_TIMEOUT_S:-60}"
while [ $# -gt 0 ]; do
    case "$1" in
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
case "$PORT" in ''|*[!0-9]*) echo "--port must be a number, got '$PORT'" >&2; exit 2 ;; esac

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$DIR/artifacts"
DIR="$(cd "$DIR" && pwd)"
PIDFILE="$DIR/mlflow-server.pid"
LOG="$DIR/mlflow-server.log"
URL="http://127.0.0.1:$PORT"

healthy() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 "$URL/health" >/dev/null 2>&1
    else
        "$PYTHON" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2).read()" \
            "$URL/health" >/dev/null 2>&1
    fi
}

running_pid() {  # prints the PID from the pid file when that process is alive
    [ -f "$PIDFILE" ] || return 1
    local pid; pid="$(cat "$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
    if pid="$(running_pid)"; then
        echo "$URL"; echo "mlflow server already running (pid $pid, dir $DIR)" >&2; return 0
    fi
    if healthy; then
        echo "port $PORT already serves an MLflow server not started from $DIR; use another --port" >&2
        return 1
    fi
    "$PYTHON" -c "import mlflow" 2>/dev/null || { echo "$PYTHON cannot import mlflow (set PYTHON)" >&2; return 1; }
    # setsid: the server and its workers get their own process group, which `stop` can signal as a whole.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PYTHON" -m mlflow server \
        --backend-store-uri "sqlite:///$DIR/mlflow.db" --default-artifact-root "$DIR/artifacts" \
        --host 127.0.0.1 --port "$PORT" --workers 1 >"$LOG" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    local waited=0
    until healthy; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "mlflow server exited during start; last lines of $LOG:" >&2; tail -n 20 "$LOG" >&2
            rm -f "$PIDFILE"; return 1
        fi
        if [ "$waited" -ge $((WAIT_S * 4)) ]; then
            echo "mlflow server not healthy after ${WAIT_S}s; stopping it (log: $LOG)" >&2
            stop >/dev/null; return 1
        fi
        sleep 0.25; waited=$((waited + 1))
    done
    echo "$URL"
    echo "mlflow server started (pid $pid, dir $DIR, log $LOG)" >&2
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"; echo "mlflow server not running (dir $DIR)" >&2; return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    # Workers left behind by a killed main process are still in its group (the group id is its PID).
    kill -TERM -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    echo "mlflow server stopped (pid $pid)" >&2
}

status() {
    local pid
    if pid="$(running_pid)"; then
        if healthy; then echo "running pid $pid $URL"; else echo "starting or unhealthy pid $pid $URL"; fi
        return 0
    fi
    echo "stopped"; return 3
}

case "$CMD" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
