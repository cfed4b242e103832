#!/usr/bin/env bash
# The main job on the embedded demo corpus (what `make demo` runs):
#
#   orchestration/demo.sh          # run (a second run reuses everything and finishes fast)
#   orchestration/demo.sh stop     # stop the Ray head and the MLflow server it left running
#
# 1. a local Ray head (dashboard and job API on 127.0.0.1:8265) and an MLflow server (127.0.0.1:5000)
# 2. `ray job submit` of the pipeline on the demo corpus: Hydrogen drum kits rendered into loops ->
#    catalogue -> excerpts -> rhythm prompts -> tokens -> shards (conf/pipeline/demo.yaml)
# 3. the catalogue summary (a named query)
# 4. tria_tiny trained for a few hundred steps, tracked in MLflow (conf/train/demo.yaml)
# 5. drums generated for two rhythm gestures with two kits, by the shipped demo model and by the model
#    step 4 trained: wavs, a PNG of the rhythm features and rhythm scores against a control
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
export PATH="$REPO/$VENV/bin:$PATH" VENV
# Ray 2.60 turns token auth on once ~/.ray/auth_token exists; the head and every client must agree.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
RAY_URL="http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}"
CATALOGUE=data/demo/catalogue.duckdb
RUN_DIR=runs/demo/demo
SHIPPED=tria/weights/tria_demo_drums.pt  # the demo TRIA model trained here and shipped (tria/weights/README.md)
OUT=demo_out

if [ "${1:-}" = "stop" ]; then
    bash orchestration/ray_local.sh stop || true
    bash orchestration/mlflow_server.sh stop --port "$MLFLOW_PORT" || true
    exit 0
fi

t0=$(date +%s)
step() { echo; echo "==> [$(( $(date +%s) - t0 )) s] $*"; }

step "starting services (reused when already running)"
bash orchestration/ray_local.sh start >/dev/null
bash orchestration/mlflow_server.sh start --port "$MLFLOW_PORT" >/dev/null
echo "Ray dashboard: $RAY_URL    MLflow UI: $MLFLOW_URL"

step "pipeline: ray job submit ... python -m pipelines.run conf/pipeline/demo.yaml"
if ! ray job submit --address "$RAY_URL" --working-dir . -- \
    python -m pipelines.run conf/pipeline/demo.yaml "root=$REPO" 2>&1 \
    | grep --line-buffered -v -E "Tasks: |Active & requested|^\s*$|=====|^ *$|INFO (cli|packaging|dashboard_sdk|job_manager)\.py|working_dir\.py|core_worker\.cc|Execution plan|Full logs are in|Starting execution|will be logged|MapBatches\([a-z_]*\): [0-9]|^[0-9-]+ [0-9:,]+\s+INFO logging_progress\.py:[0-9]+ -- $"; then
    echo "the pipeline job failed: ray job list --address $RAY_URL"; exit 1
fi

step "catalogue: hours of drums by source, split and tier (sql/queries/hours_by_source.sql)"
"$PY" -m pipelines.catalogue hours_by_source --db "$CATALOGUE"

step "training tria_tiny (conf/train/demo.yaml), tracked in MLflow"
if "$PY" -m pipelines.demo.showcase --check-trained "$RUN_DIR/checkpoints/latest.pt" conf/train/demo.yaml; then
    echo "already trained: $RUN_DIR/checkpoints/latest.pt (delete $RUN_DIR to train again)"
else
    "$PY" -m tria.train conf/train/demo.yaml "mlflow.tracking_uri=$MLFLOW_URL" "root=$REPO" --resume
fi

step "generating drums: two rhythm gestures x two kits, with the shipped demo model and with this run's"
echo "  the shipped demo model ($SHIPPED: tria_tiny trained here for longer on 160 loops of the demo kits,"
echo "  conf/train/demo_large.yaml) -> $OUT/; the model this run just trained -> $OUT/this_run/"
"$PY" -m pipelines.demo.showcase --checkpoint "$SHIPPED" --also "$RUN_DIR/checkpoints/latest.pt" \
    --corpus data/demo/raw/hydrogen/demo --catalogue "$CATALOGUE" --out "$OUT"

step "dataset card of the training run: python -m pipelines.catalogue card --run demo"; "$PY" -m pipelines.catalogue card --run demo --db "$CATALOGUE"

cat <<EOF

==> done in $(( $(date +%s) - t0 )) s. Where everything is:
  generated drums   $OUT/*.wav  (shipped demo model: rhythm prompt + kit -> drums; prompts in $OUT/prompts/)
                    $OUT/this_run/*.wav  (the same from the model this run trained)
  feature picture   $OUT/rhythm_features.png, $OUT/this_run/rhythm_features.png
  rhythm scores     $OUT/scores.json, $OUT/this_run/scores.json
  shards            data/demo/shards/
  catalogue         $CATALOGUE
      .venv/bin/duckdb $CATALOGUE < sql/queries/summary.sql
      .venv/bin/python -m pipelines.catalogue rejects_by_reason --db $CATALOGUE
  training run      $RUN_DIR  (checkpoints/, metrics.jsonl, samples/)
  MLflow UI         $MLFLOW_URL   (experiment "tria", run "demo")
  Ray dashboard     $RAY_URL      (the pipeline job and its logs: ray job list --address $RAY_URL)

The Ray head and the MLflow server are still running. Stop them with:
  orchestration/demo.sh stop
EOF
