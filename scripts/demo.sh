#!/usr/bin/env bash
# Set up, train DALI on the paper's 2D 25-Gaussian grid, and evaluate it (Table 2 metrics).
# CPU only, no network, no data files: samples come from the exact mixture.
#   bash scripts/demo.sh                         # runs/demo-grid2d
#   RUN_DIR=runs/other bash scripts/demo.sh --set train.seed=3
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${EXTRAS:-dev} bash scripts/setup.sh
RUN_DIR=${RUN_DIR:-runs/demo-grid2d}
DALI=.venv/bin/dali-dist
if [ -d "$RUN_DIR/checkpoints" ]; then RESUME=(--resume auto); else RESUME=(); fi
$DALI train --config grid2d --run-dir "$RUN_DIR" "${RESUME[@]}" "$@"
$DALI evaluate --run-dir "$RUN_DIR" --metrics modes --out "$RUN_DIR/metrics.json" --overwrite
# the run dir is the demo's own: a rerun replaces its samples (.npy carries no ownership mark)
$DALI sample --run-dir "$RUN_DIR" --num 2500 --out "$RUN_DIR/samples.npy" --overwrite
STORE=$(cd "$(dirname "$RUN_DIR")" && pwd)/mlflow.db
cat <<EOT
demo: done
  metrics:        $RUN_DIR/metrics.json
  scatter plots:  $RUN_DIR/images/samples-0015000.png, ... (step zero-padded to 7 digits; blue: samples, red crosses: the 25 true modes)
  samples:        $RUN_DIR/samples.npy
  look at the run in MLflow (then open http://127.0.0.1:5000, experiment "grid2d";
  MLflow 3 opens in GenAI mode: switch to the "Model training" view to see the runs):
    .venv/bin/mlflow ui --backend-store-uri sqlite:///$STORE
EOT
