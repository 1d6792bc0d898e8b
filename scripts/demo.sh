#!/usr/bin/env bash
# The main job end to end (what `make demo` runs): quick training with export into exported/,
# start the server, write the HTML analysis report, stop the server, print the report's path.
#
# Settings (environment variables, defaults in brackets):
#   PROFILE     train-all profile, built-in name or TOML/YAML path [quick]
#   OUT         training output folder [runs/quick]
#   REPOSITORY  model repository the runs are exported into and served from [exported]
#   MODELS      models in the report, space-separated [lenet resnet cvae]
#   REPORT      report folder [reports/demo]
#   REPORT_ARGS more `analyze report` options, e.g. "--per-class 10" [none]
#   PORT        gRPC port of the server [a free one]
#   FACES       auto: when LFW is found (GLASSBOX_DATA_DIR), also train the faces profile (a 2-minute
#               budget) and add its face VAE, cvae-lfw, to the report's faces section; 0: never [auto]
# e.g. the suite's tiny run: PROFILE=tiny.toml MODELS="lenet cvae" REPORT_ARGS="--per-class 5" scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PROFILE=${PROFILE:-quick}
OUT=${OUT:-runs/quick}
REPOSITORY=${REPOSITORY:-exported}
MODELS=${MODELS:-lenet resnet cvae}
REPORT=${REPORT:-reports/demo}
REPORT_ARGS=${REPORT_ARGS:-}
FACES=${FACES:-auto}
PORT=${PORT:-$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
start=$(date +%s)

$BIN/train-all --profile "$PROFILE" --out "$OUT" --repository "$REPOSITORY"
if [ "$FACES" != 0 ] && $BIN/python -c "from glassbox.data import load_dataset; load_dataset('lfw', 'test')" 2>/dev/null
then
  $BIN/train-all --profile faces --out "$OUT-faces" --repository "$REPOSITORY"
  MODELS="$MODELS cvae-lfw"
fi

$BIN/serve --repository "$REPOSITORY" --port "$PORT" --metrics-port 0 --log-level WARNING &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
$BIN/python -c "from serving.client import wait_for_server; wait_for_server('127.0.0.1:$PORT', 120)"

model_args=()
for m in $MODELS; do model_args+=(--model "$m"); done
# shellcheck disable=SC2086  # REPORT_ARGS: several words on purpose
$BIN/analyze report --server "127.0.0.1:$PORT" "${model_args[@]}" --out "$REPORT" $REPORT_ARGS

kill -TERM $server && wait $server
trap - EXIT
case $REPORT in /*) page=$REPORT/report.html ;; *) page=$(pwd)/$REPORT/report.html ;; esac
echo "demo finished in $(( $(date +%s) - start )) s; open $page"
