#!/usr/bin/env bash
# Submit the pipeline to a Ray cluster, follow its log, then print the catalogue summary.
#
#   orchestration/submit_pipeline.sh [--address URL] [--no-summary] CONFIG [key=value ...]
#   orchestration/submit_pipeline.sh --help
#
# Runs `ray job submit --address URL --working-dir <repo> --submission-id ID -- python -m pipelines.run
# CONFIG root=ROOT [key=value ...]`, which uploads the repository (filtered by .gitignore), starts the
# job and streams its log until it ends; then the catalogue's `summary` query (sql/queries/summary.sql).
# The exit status is the job's: 0 when it succeeded.
#
#   CONFIG        a pipeline YAML, relative to the repo (conf/pipeline/demo.yaml) or a path the cluster sees
#   key=value     config overrides (pipelines/run.py), e.g. shard_root=s3://bucket/tria/shards
#                 ray.tokenize.num_gpus=0.5; `root=` sets the folder relative paths resolve against
#                 (default: $TRIA_ROOT, else this repository: right for a head on this machine; give the
#                 shared data folder, e.g. root=/data, on a remote cluster)
#   --address     the cluster's job API (default: $RAY_ADDRESS, else http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265})
#   --no-summary  skip the catalogue summary
#
# Token authentication: RAY_AUTH_MODE=token unless set (as orchestration/ray_local.sh starts its head);
# the token comes from ~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH. The summary is read
# from the catalogue file when this machine sees it, else by a second small job on the cluster.
# Ctrl-C stops following the log, not the job: `ray job stop ID --address URL` stops it.
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}}"
SUMMARY=1
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --address) ADDRESS="${2:?--address needs a value}"; shift 2 ;;
        --no-summary) SUMMARY=0; shift ;;
        --) shift; break ;;
        -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || { echo "CONFIG is missing (see --help)" >&2; exit 2; }
CONFIG="$1"; shift
ROOT="${TRIA_ROOT:-$REPO}"
OVERRIDES=()
for kv in "$@"; do
    case "$kv" in
        root=*) ROOT="${kv#root=}" ;;
        *=*) OVERRIDES+=("$kv") ;;
        *) echo "overrides are key=value, got '$kv'" >&2; exit 2 ;;
    esac
done
case "$ADDRESS" in http://*|https://*) ;; *) echo "--address must be the job API, http://HOST:PORT, got '$ADDRESS'" >&2; exit 2 ;; esac

VENV="${VENV:-$REPO/.venv}"
if [ -x "$VENV/bin/ray" ]; then RAY="$VENV/bin/ray"; PY="$VENV/bin/python"; else RAY=ray; PY=python3; fi
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

cd "$REPO"
# The config must load here too (a typo fails now, not after the upload); this also gives the catalogue path.
CATALOGUE="$(PYTHONPATH="$REPO" "$PY" -c '
import sys
from pipelines.run import load_pipeline_config
cfg = load_pipeline_config(sys.argv[1], sys.argv[2:])
print(cfg.path(cfg.catalogue)); print(cfg.name)' "$CONFIG" "root=$ROOT" ${OVERRIDES[@]+"${OVERRIDES[@]}"})" \
    || { echo "the config does not load: $CONFIG" >&2; exit 2; }
NAME="$(echo "$CATALOGUE" | tail -n 1)"
CATALOGUE="$(echo "$CATALOGUE" | head -n 1)"
ID="tria-${NAME//[^A-Za-z0-9_-]/-}-$(date -u +%Y%m%d-%H%M%S)-$$"

echo "submitting $ID to $ADDRESS: python -m pipelines.run $CONFIG root=$ROOT ${OVERRIDES[*]-}"
rc=0
"$RAY" job submit --address "$ADDRESS" --working-dir "$REPO" --submission-id "$ID" -- \
    python -m pipelines.run "$CONFIG" "root=$ROOT" ${OVERRIDES[@]+"${OVERRIDES[@]}"} || rc=$?
if [ "$rc" -ne 0 ]; then
    echo "job $ID failed (exit $rc); its log: $RAY job logs $ID --address $ADDRESS" >&2
    exit "$rc"
fi

[ "$SUMMARY" = 1 ] || exit 0
echo "==> catalogue summary: $CATALOGUE"
if [ -f "$CATALOGUE" ]; then
    PYTHONPATH="$REPO" "$PY" -m pipelines.catalogue summary --db "$CATALOGUE"
else  # the catalogue lives on the cluster (its head's disk or shared file system): ask there
    "$RAY" job submit --address "$ADDRESS" --working-dir "$REPO" --submission-id "$ID-summary" -- \
        python -m pipelines.catalogue summary --db "$CATALOGUE"
fi
