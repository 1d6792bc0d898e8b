#!/usr/bin/env bash
# The GPU path in one go, in a few minutes on a CUDA machine (see benchmarks/gpu_check.py):
# train a ResNet on CUDA with bf16 autocast, export it (CPU parity gate), compare onnxruntime's CUDA
# provider against torch on CUDA with stated tolerances, serve it on the CUDA provider (GetModel
# must say so), and print training images/s, serving throughput at concurrency 1 and 32 and the
# parity errors.
#
#   benchmarks/gpu_check.sh [--epochs 3] [--seconds 5] [--data-dir DIR]
#   benchmarks/gpu_check.sh --device cpu --subset 5000 --epochs 1     # the same steps on CPU: checks the script
#
# Exit codes: 0 passed, 1 a check failed, 2 no usable CUDA (said at once, before any work).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ " $* " != *" --device cpu "* ]]; then
  if ! why=$($PY - <<'PYEOF' 2>&1
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device" + ("" if torch.version.cuda else " (a CPU-only torch build)"))
import onnxruntime as ort
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
PYEOF
  ); then
    echo "gpu_check: no usable CUDA here: ${why##*$'\n'}; run it on a machine with an NVIDIA GPU" >&2
    exit 2
  fi
fi
exec $PY benchmarks/gpu_check.py "$@"
