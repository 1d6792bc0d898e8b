#!/usr/bin/env bash
# Run every shipped study as the README's "reports, reproduced" table measured it on a 2-core CPU:
# the short studies in full, the long ones shortened with --set (the settings are printed and kept
# in each <out>/study.json). Then `analyze compare` draws each.
#   GLASSBOX_DATA_DIR=../shared/data benchmarks/run_studies.sh [OUT=runs/studies] [STUDY ...]
set -euo pipefail
OUT=${OUT:-runs/studies}
BIN=${BIN:-.venv/bin}
declare -A SHORT=(
  [depth-mnist]="--set dataset.subset=10000"
  [lr-mnist]="--set dataset.subset=10000 --set epochs=10 --set dataset.test_subset=2000"
  [featuremaps-mnist]="--set dataset.subset=20000"
  [inception-fmnist]="--set epochs=1 --set dataset.subset=5000"
  [bnconvnet-mnist]="--set epochs=2 --set dataset.subset=6000 --set dataset.test_subset=2000"
  [optimizers-mnist]="--set epochs=3 --set dataset.subset=3000 --set dataset.test_subset=2000"
)
STUDIES=("$@")
if [ ${#STUDIES[@]} -eq 0 ]; then
  STUDIES=(logreg-mnist regularization-mnist lda-mnist mlp-mnist distill-mnist lenet-vs-mynet depth-mnist lr-mnist
           mlpvae-mnist featuremaps-mnist inception-fmnist bnconvnet-mnist optimizers-mnist)
fi
for s in "${STUDIES[@]}"; do
  start=$(date +%s)
  # shellcheck disable=SC2086
  $BIN/train-all --study "$s" --out "$OUT/$s" --no-export --no-progress --resume ${SHORT[$s]:-} > "$OUT/$s.log" 2>&1 \
    || { echo "$s FAILED (see $OUT/$s.log)"; continue; }
  echo "$s: $(( $(date +%s) - start )) s ${SHORT[$s]:-(full settings)}"
  tail -n +2 "$OUT/$s.log" | grep -A30 "^run " || true
done
