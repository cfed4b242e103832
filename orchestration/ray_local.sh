#!/usr/bin/env bash
# Local Ray head (one machine) for `ray job submit`: start, status, stop.
#
#   orchestration/ray_local.sh start          # prints the job/dashboard address, http://127.0.0.1:8265
#   orchestration/ray_local.sh status         # exit 0 running, 3 stopped
#   orchestration/ray_local.sh stop           # stops the head this script started (only that one)
#   orchestration/ray_local.sh stop --all     # `ray stop`: every Ray process of this user on this machine
#
# Environment: VENV (default .venv, relative to the repo), RAY_NUM_CPUS (default: nproc), RAY_NUM_GPUS
# (default: Ray detects them), RAY_PORT (GCS, 6379), RAY_DASHBOARD_PORT (8265), RAY_AGENT_PORT (the
# dashboard agent's HTTP port, 52365), RAY_CLIENT_SERVER_PORT or RAY_CLIENT_PORT (10001), RAY_TEMP_DIR
# (Ray's /tmp/ray with the default RAY_PORT, else /tmp/ray-<RAY_PORT>), RAY_START_TIMEOUT_S (90),
# RAY_STOP_GRACE_S (10), RAY_AUTH_MODE ("token" unless set; see "Security").
#
# Several heads on one machine: give each its own RAY_PORT and RAY_DASHBOARD_PORT (start refuses a
# busy one). Two things then differ per head, as seen with Ray 2.60: the agent and client-server ports
# (with a busy agent port Ray starts the head, but every `ray job submit` fails with "No available
# agent to submit job"; when not set and Ray's default is taken, start picks free ones), and the temp
# folder (heads sharing /tmp/ray share its session_latest and ray_current_cluster: a job's actors then
# failed with RuntimeEnvSetupError, and a bare `ray.init()` joins whichever head started last).
#
# Why the venv's bin goes first on PATH: a job's entrypoint (`python -m pipelines.run ...`) is started
# by the head's job supervisor with the head's environment, so the `python` it finds is the one on the
# PATH of `ray start`. Usage stats are off (`--disable-usage-stats`); the head takes ~9 s to start.
#
# Security. The dashboard (job API, port 8265) binds 127.0.0.1 here (`--dashboard-host 127.0.0.1`), but
# the GCS (6379), the raylet, the dashboard agent and the Ray client server (10001) listen on all
# interfaces, and anyone who reaches an unauthenticated cluster can run code as you. Observed with Ray
# 2.60: `--node-ip-address 127.0.0.1` does NOT change that (the GCS still listens on *:6379), so it is
# not offered as a fix. What this script does and what you can add:
#   * token authentication (Ray >= 2.52): this script exports RAY_AUTH_MODE=token unless you set
#     RAY_AUTH_MODE=disabled, and creates the token with `ray get-auth-token --generate` (kept in
#     ~/.ray/auth_token) if none exists. Clients must run with the same mode and token:
#     `RAY_AUTH_MODE=token ray job submit ...` (the token comes from ~/.ray/auth_token, or RAY_AUTH_TOKEN /
#     RAY_AUTH_TOKEN_PATH). Set the mode explicitly either way: with RAY_AUTH_MODE unset, Ray 2.60's
#     `ray start` turns token auth on by itself whenever ~/.ray/auth_token exists (a plain `ray.init()`
#     creates one), and clients without the variable then get HTTP 401.
#     See https://docs.ray.io/en/latest/ray-security/token-auth.html.
#   * a host firewall that drops inbound 6379, 8265, 10001 and the raylet's ports from other hosts
#     (e.g. `ufw deny 6379/tcp`), or a machine with no untrusted network.
#
# Why `stop` does not call `ray stop`: `ray stop` kills every Ray process of the user on the machine,
# including other people's `ray.init()` clusters (tests, notebooks). `start` launches the head in its
# own process group (setsid) and records it; `stop` signals that group only (TERM, then KILL after the
# grace period, as `ray stop` does). `stop --all` is there for a head started some other way.
set -euo pipefail

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CMD="${1:-}"; [ -n "$CMD" ] || usage; shift
ALL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --all) ALL=1; shift ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$REPO/$VENV" ;; esac
PORT="${RAY_PORT:-6379}"
DASH_PORT="${RAY_DASHBOARD_PORT:-8265}"
NUM_CPUS="${RAY_NUM_CPUS:-$(nproc)}"
WAIT_S="${RAY_START_TIMEOUT_S:-90}"
AGENT_PORT="${RAY_AGENT_PORT:-}"
CLIENT_PORT="${RAY_CLIENT_SERVER_PORT:-${RAY_CLIENT_PORT:-}}"
GRACE_S="${RAY_STOP_GRACE_S:-10}"
for v in PORT DASH_PORT NUM_CPUS WAIT_S GRACE_S AGENT_PORT CLIENT_PORT; do
    case "$v:${!v}" in
        AGENT_PORT:|CLIENT_PORT:) ;;  # unset: chosen at start
        *:|*:*[!0-9]*) echo "$v must be a number, got '${!v}'" >&2; exit 2 ;;
    esac
done
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
case "$RAY_AUTH_MODE" in
    token|disabled) ;;
    *) echo "RAY_AUTH_MODE must be token or disabled, got '$RAY_AUTH_MODE'" >&2; exit 2 ;;
esac
STATE_DIR="$REPO/runs/ray"
STATE="$STATE_DIR/head-$PORT.pgid"
LOG="$STATE_DIR/head-$PORT.log"
URL_FILE="$STATE_DIR/head-$PORT.url"  # the job address of the running head (its dashboard port)
AGENT_FILE="$STATE_DIR/head-$PORT.agent"  # its dashboard agent's port
URL="http://127.0.0.1:$DASH_PORT"
GCS="127.0.0.1:$PORT"

if [ ! -x "$VENV/bin/ray" ]; then
    echo "no ray in $VENV/bin: run 'make setup' first, or set VENV to the venv that has this project" >&2
    exit 1
fi
export PATH="$VENV/bin:$PATH"

alive() {  # is any non-zombie process left in process group $1?
    ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ {found = 1} END {exit !found}'
}

head_pgid() {  # prints the recorded process group when a process of it is alive
    [ -f "$STATE" ] || return 1
    local pgid; pgid="$(cat "$STATE")"
    [ -n "$pgid" ] && alive "$pgid" && echo "$pgid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {  # a port nobody listens on now (the kernel's pick)
    python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

choose_port() {  # $1: the user's setting or "", $2: Ray's default -> the port to use
    if [ -n "$1" ]; then echo "$1"; elif port_open "$2"; then free_port; else echo "$2"; fi
}

gcs_answers() { port_open "$PORT"; }  # cheap: `ray status` costs seconds of CPU

auth_token() {
    if [ -n "${RAY_AUTH_TOKEN:-}" ]; then echo "$RAY_AUTH_TOKEN"; return; fi
    cat "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" 2>/dev/null || true
}

http_ok() {  # GET $1 answers 2xx (with the token, if any)
    local auth=()
    [ "$RAY_AUTH_MODE" = "token" ] && auth=(-H "Authorization: Bearer $(auth_token)")
    curl -fsS --max-time 2 "${auth[@]}" "$1" >/dev/null 2>&1
}

jobs_api_answers() { http_ok "$URL/api/version"; }  # what `ray job submit` talks to

# The job API hands each submission to the head's dashboard agent: it must answer too.
agent_answers() { http_ok "http://127.0.0.1:$(cat "$AGENT_FILE" 2>/dev/null || echo 52365)/api/healthz"; }

start() {
    local pgid
    if pgid="$(head_pgid)" && gcs_answers; then
        cat "$URL_FILE" 2>/dev/null || echo "$URL"
        echo "ray head already running (process group $pgid, GCS $GCS)" >&2; return 0
    fi
    local p
    for p in "$PORT" "$DASH_PORT" $AGENT_PORT $CLIENT_PORT; do
        if port_open "$p"; then
            echo "port $p is in use (another Ray cluster?); stop it, or choose free ports with" \
                 "RAY_PORT, RAY_DASHBOARD_PORT, RAY_AGENT_PORT and RAY_CLIENT_SERVER_PORT" >&2
            return 1
        fi
    done
    AGENT_PORT="$(choose_port "$AGENT_PORT" 52365)"
    CLIENT_PORT="$(choose_port "$CLIENT_PORT" 10001)"
    mkdir -p "$STATE_DIR"
    echo "$AGENT_PORT" >"$AGENT_FILE"
    if [ "$RAY_AUTH_MODE" = "token" ] && [ -z "$(auth_token)" ]; then
        ray get-auth-token --generate >/dev/null  # creates ~/.ray/auth_token once; clients read it
    fi
    local args=(--head --port "$PORT" --num-cpus "$NUM_CPUS" --include-dashboard=true
                --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT"
                --dashboard-agent-listen-port "$AGENT_PORT" --ray-client-server-port "$CLIENT_PORT"
                --disable-usage-stats)
    [ -n "${RAY_NUM_GPUS:-}" ] && args+=(--num-gpus "$RAY_NUM_GPUS")
    local temp_dir="${RAY_TEMP_DIR:-}"
    [ -z "$temp_dir" ] && [ "$PORT" != 6379 ] && temp_dir="/tmp/ray-$PORT"
    [ -n "$temp_dir" ] && args+=(--temp-dir "$temp_dir")
    # setsid: `ray start` and every daemon it leaves behind share one new process group, whose id
    # (the pid of this bash, kept by exec) is what `stop` signals.
    if ! setsid bash -c 'echo $$ >"$0"; exec ray start "$@"' "$STATE" "${args[@]}" \
            >"$LOG" 2>&1 </dev/null; then
        echo "ray start failed; last lines of $LOG:" >&2; tail -n 20 "$LOG" >&2
        stop_group >/dev/null 2>&1 || true
        return 1
    fi
    local deadline=$((SECONDS + WAIT_S))
    until gcs_answers && jobs_api_answers && agent_answers; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "ray head not answering after ${WAIT_S}s; stopping it (log: $LOG)" >&2
            stop_group; return 1
        fi
        sleep 0.5
    done
    if ! ray status --address "$GCS" >/dev/null 2>&1; then
        echo "ray status does not answer at $GCS; stopping the head (log: $LOG)" >&2
        stop_group; return 1
    fi
    echo "$URL" >"$URL_FILE"
    echo "$URL"
    echo "ray head started (process group $(cat "$STATE"), GCS $GCS, agent port $AGENT_PORT, client port" \
         "$CLIENT_PORT, auth $RAY_AUTH_MODE, log $LOG)." >&2
    echo "Submit jobs with:" >&2
    echo "  RAY_AUTH_MODE=$RAY_AUTH_MODE ray job submit --address $URL --working-dir . --" \
         "python -m pipelines.run <config.yaml>" >&2
}

stop_group() {
    local pgid
    if ! pgid="$(head_pgid)"; then
        rm -f "$STATE" "$URL_FILE" "$AGENT_FILE"; echo "ray head not running (port $PORT)" >&2; return 0
    fi
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 1 $((GRACE_S * 4))); do alive "$pgid" || break; sleep 0.25; done
    if alive "$pgid"; then
        kill -KILL -- "-$pgid" 2>/dev/null || true  # the GCS can ignore TERM for a long time
        sleep 0.5
    fi
    rm -f "$STATE" "$URL_FILE" "$AGENT_FILE"
    echo "ray head stopped (process group $pgid)" >&2
}

stop() {
    if [ "$ALL" = 1 ]; then
        ray stop; rm -f "$STATE" "$URL_FILE" "$AGENT_FILE"; return 0
    fi
    stop_group
}

status() {
    local pgid
    if pgid="$(head_pgid)" && gcs_answers; then
        echo "running process group $pgid GCS $GCS jobs $(cat "$URL_FILE" 2>/dev/null || echo "$URL")" \
             "auth $RAY_AUTH_MODE"
        ray status --address "$GCS" 2>/dev/null | sed -n '/^Resources/,$p' || true
        return 0
    fi
    if gcs_answers; then echo "a Ray cluster not started by this script answers at $GCS"; return 0; fi
    echo "stopped"; return 3
}

case "$CMD" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
