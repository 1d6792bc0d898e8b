#!/usr/bin/env bash
# The main job end to end (what `make demo` runs): quick training with export into exported/,
# start the server, write the HTML analysis report, stop the server, print the report's path.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${OUT:-runs/quick}
REPORT=${REPORT:-reports/demo}
PORT=${PORT:-$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
start=$(date +%s)

$BIN/train-all --profile quick --out "$OUT" --repository exported

$BIN/serve --repository exported --port "$PORT" --metrics-port 0 --log-level WARNING &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
$BIN/python -c "from serving.client import wait_for_server; wait_for_server('127.0.0.1:$PORT', 120)"

$BIN/analyze report --server "127.0.0.1:$PORT" --model lenet --model resnet --model cvae --out "$REPORT"

kill -TERM $server && wait $server
trap - EXIT
echo "demo finished in $(( $(date +%s) - start )) s; open $(pwd)/$REPORT/report.html"
