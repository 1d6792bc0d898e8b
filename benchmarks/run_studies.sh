#!/usr/bin/env bash
# Run every shipped study as the README's "reports, reproduced" table measured it on a 2-core CPU:
# the short studies in full, the long ones shortened with --set (the settings are printed and kept
# in each <out>/study.json). Then `analyze compare` draws each.
#   GLASSBOX_DATA_DIR=../shared/data benchmarks/run_studies.sh [OUT=runs/studies] [STUDY[:VARIANT] ...]
# STUDY:VARIANT trains that variant alone (--only) into <OUT>/STUDY-VARIANT with SHORT[STUDY:VARIANT]:
# a study whose variants need different shortening (ResNet-50 vs the RNN) is listed once per variant.
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
  # Report 003 (CIFAR-10): hours per run on one core. The report's settings for 150 s (under an epoch,
  # near chance at batch 1024); the long-tail comparisons at batch 64, 120 s each, to leave chance level.
  [cifar-cnn]="--set time_budget=150s"
  [cifar-rnn]="--set time_budget=150s"
  [cifar-longtail]="--set time_budget=120s --set batch_size=64"
  [cifar-tail-augment:rnn]="--set time_budget=120s --set batch_size=64"
  # ResNet-50 trains ~4 images/s on one core and a batch of 1024 needs ~25 GB: one epoch of 500 images
  # (the tail's copies make it ~820) in batches of 64, scored on 500 test images.
  [cifar-tail-augment:resnet50]="--set epochs=1 --set batch_size=64 --set dataset.subset=500
                                 --set dataset.test_subset=500"
)
STUDIES=("$@")
if [ ${#STUDIES[@]} -eq 0 ]; then
  STUDIES=(logreg-mnist regularization-mnist lda-mnist mlp-mnist distill-mnist lenet-vs-mynet depth-mnist lr-mnist
           mlpvae-mnist featuremaps-mnist inception-fmnist bnconvnet-mnist optimizers-mnist
           cifar-cnn cifar-rnn cifar-longtail cifar-tail-augment:rnn cifar-tail-augment:resnet50)
fi
for entry in "${STUDIES[@]}"; do
  s=${entry%%:*}
  only=() && [ "$entry" != "$s" ] && only=(--only "${entry#*:}")
  dir="$OUT/${entry/:/-}" && log="$dir.log"
  mkdir -p "$OUT"
  start=$(date +%s)
  # shellcheck disable=SC2086
  $BIN/train-all --study "$s" --out "$dir" --no-export --no-progress --resume ${only[@]+"${only[@]}"} \
    ${SHORT[$entry]:-} > "$log" 2>&1 || { echo "$entry FAILED (see $log)"; continue; }
  echo "$entry: $(( $(date +%s) - start )) s ${SHORT[$entry]:-(full settings)}"
  tail -n +2 "$log" | grep -A30 "^run " || true
done
