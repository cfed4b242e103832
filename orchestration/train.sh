#!/usr/bin/env bash
# Train TRIA: the one training launcher, one process or many, on one machine or many (torchrun).
#
#   orchestration/train.sh CONFIG [--nproc N] [--nnodes M --node-rank R --master HOST:PORT] [key=value ...]
#
#   orchestration/train.sh conf/train/paper_2b.yaml                        # this machine, every GPU
#   orchestration/train.sh conf/train/demo.yaml --nproc 2 num_iters=50      # 2 processes (gloo on CPU)
#   orchestration/train.sh conf/train/release_2b.yaml --resume              # continue from latest.pt
#   # two machines, 8 GPUs each: run on both, the same command except --node-rank
#   orchestration/train.sh conf/train/release_2b.yaml --nproc 8 --nnodes 2 --node-rank 0 --master node0:29500
#   orchestration/train.sh conf/train/release_2b.yaml --nproc 8 --nnodes 2 --node-rank 1 --master node0:29500
#
# Options:
#   --nproc N         processes on this node (default: the GPUs nvidia-smi lists, else 1)
#   --nnodes M        nodes in the job (default 1: `torchrun --standalone`)
#   --node-rank R     this node, 0..M-1; node 0 hosts the c10d rendezvous store on --master
#   --master H:P      rendezvous endpoint (c10d backend) that every node can reach; needed when M > 1
#   --run-id ID       rendezvous id, the same on every node (default: tria-<config file name>)
#   --local-addr A    address other nodes use to reach this one (default: torchrun's choice, the FQDN)
#   --resume          continue from <out_dir>/<name>/checkpoints/latest.pt (model, optimiser, data position)
#   --dry-run         print the torchrun command and exit
#   key=value         config overrides, as `python -m tria.train --help` describes
#
# Every node runs the same global batch (data.batch_size is global: each of the M*N ranks reads
# data.batch_size / (M*N) samples of each step), so a run gives the same batches on any layout. With c10d
# the rendezvous assigns the global ranks; --node-rank only decides which node hosts the store.
# MLflow: $MLFLOW_TRACKING_URI is used when no mlflow.tracking_uri=... override is given; the run's URL is
# printed when training starts and again at the end. Python: $PYTHON, else <repo>/.venv/bin/python, else
# python3. Exit status: torchrun's (0 when every rank finished).
set -euo pipefail

usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "train.sh: $*" >&2; echo "see: orchestration/train.sh --help" >&2; exit 2; }
is_int() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="" NPROC="" NNODES=1 NODE_RANK="" MASTER="" RUN_ID="" LOCAL_ADDR="" DRY=0
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --nproc) NPROC="${2:-}"; shift 2 || die "--nproc needs a value" ;;
        --nnodes) NNODES="${2:-}"; shift 2 || die "--nnodes needs a value" ;;
        --node-rank) NODE_RANK="${2:-}"; shift 2 || die "--node-rank needs a value" ;;
        --master) MASTER="${2:-}"; shift 2 || die "--master needs a value" ;;
        --run-id) RUN_ID="${2:-}"; shift 2 || die "--run-id needs a value" ;;
        --local-addr) LOCAL_ADDR="${2:-}"; shift 2 || die "--local-addr needs a value" ;;
        --resume) ARGS+=("--resume"); shift ;;
        --dry-run) DRY=1; shift ;;
        --*) die "unknown option $1" ;;
        *=*) ARGS+=("$1"); shift ;;
        *) [ -z "$CONFIG" ] || die "one CONFIG only (got '$CONFIG' and '$1'); overrides are key=value"
           CONFIG="$1"; shift ;;
    esac
done

[ -n "$CONFIG" ] || { usage >&2; exit 2; }
[ -f "$CONFIG" ] || die "config file '$CONFIG' not found"
if [ -z "$NPROC" ]; then
    NPROC="$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)"
    [ "$NPROC" -gt 0 ] 2>/dev/null || NPROC=1
fi
is_int "$NPROC" && [ "$NPROC" -ge 1 ] || die "--nproc must be an integer >= 1, got '$NPROC'"
is_int "$NNODES" && [ "$NNODES" -ge 1 ] || die "--nnodes must be an integer >= 1, got '$NNODES'"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

if [ -n "${MLFLOW_TRACKING_URI:-}" ] && ! printf '%s\n' "${ARGS[@]+"${ARGS[@]}"}" | grep -q '^mlflow\.tracking_uri='; then
    ARGS+=("mlflow.tracking_uri=$MLFLOW_TRACKING_URI")
fi

RUN=("$PYTHON" -m torch.distributed.run --nproc_per_node "$NPROC" --max_restarts 0)
if [ "$NNODES" -eq 1 ]; then
    [ -z "$MASTER$NODE_RANK" ] || die "--master and --node-rank are for --nnodes > 1"
    RUN+=(--standalone)
else
    [ -n "$MASTER" ] || die "--nnodes $NNODES needs --master HOST:PORT (the rendezvous endpoint)"
    [ -n "$NODE_RANK" ] || die "--nnodes $NNODES needs --node-rank R (0..$((NNODES - 1)))"
    is_int "$NODE_RANK" && [ "$NODE_RANK" -lt "$NNODES" ] || die "--node-rank must be in 0..$((NNODES - 1)), got '$NODE_RANK'"
    case "$MASTER" in *:*) is_int "${MASTER##*:}" || die "--master must be HOST:PORT, got '$MASTER'" ;;
                      *) die "--master must be HOST:PORT, got '$MASTER'" ;; esac
    [ -n "$RUN_ID" ] || RUN_ID="tria-$(basename "$CONFIG" .yaml)"
    IS_HOST=$([ "$NODE_RANK" -eq 0 ] && echo true || echo false)
    RUN+=(--nnodes "$NNODES" --rdzv_backend c10d --rdzv_endpoint "$MASTER" --rdzv_id "$RUN_ID"
          --rdzv_conf "is_host=$IS_HOST")
    [ -z "$LOCAL_ADDR" ] || RUN+=(--local_addr "$LOCAL_ADDR")
fi
RUN+=(-m tria.train "$CONFIG" "${ARGS[@]+"${ARGS[@]}"}")

echo "+ ${RUN[*]}" >&2
[ "$DRY" -eq 0 ] || exit 0

LOG="$(mktemp "${TMPDIR:-/tmp}/tria-train.XXXXXX")"
trap 'rm -f "$LOG"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
set +e
"${RUN[@]}" 2>&1 | tee "$LOG"
STATUS="${PIPESTATUS[0]}"
set -e
if grep -q '\[train\] .*: TRIA ' "$LOG"; then  # global rank 0 ran on this node: it owns the MLflow run
    URL="$(grep -o 'MLflow run URL: .*' "$LOG" | tail -n 1 || true)"
    if [ -n "$URL" ]; then
        echo "${URL/MLflow run URL:/MLflow run:}"
    elif grep -q 'MLflow run ' "$LOG"; then
        grep -o 'MLflow run .*' "$LOG" | tail -n 1
    else
        echo "MLflow: off (set mlflow.tracking_uri=http://HOST:PORT or MLFLOW_TRACKING_URI)"
    fi
fi
[ "$STATUS" -eq 0 ] || echo "train.sh: torchrun exited with status $STATUS" >&2
exit "$STATUS"
