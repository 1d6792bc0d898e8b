"""The GPU path end to end: train on CUDA in bf16, export, CUDA parity, serve on CUDA, throughput.

    benchmarks/gpu_check.sh [--epochs 3] [--seconds 5]      # the entry point (checks CUDA first)

1. ``train`` a ResNet (width 24, depth 2: the full profile's best classifier) on Fashion-MNIST on
   CUDA with ``--precision bf16`` (bfloat16 autocast, float32 weights) for a few epochs; training
   images/s is the fastest epoch's (the first pays for cuDNN's autotuning).
2. ``export`` it as always (the CPU parity gate in training/export/parity.py).
3. CUDA parity: the exported ONNX graph under onnxruntime's CUDA execution provider against the
   same checkpoint in torch on CUDA, both in float32 with TF32 off (``use_tf32=0`` for
   onnxruntime, ``allow_tf32 = False`` for torch's cuDNN and cuBLAS; with TF32 either side rounds
   products to a 10-bit mantissa, ~1e-3 relative, and the comparison would measure that), on 1,000
   real test images at batch sizes 1, 7 and 64, every output of the graph (logits, probabilities,
   the named layers). Tolerances: |ort - torch| <= ATOL + RTOL * |torch| with RTOL = 1e-3 (as the CPU
   gate) and ATOL = 1e-4 (the CPU gate's 1e-5, times 10): the two sides pick different cuDNN
   convolution algorithms (implicit GEMM, Winograd, FFT), whose float32 results differ in summation
   order and, for Winograd/FFT, by transform rounding: ~1e-5..1e-4 of the magnitudes summed, which
   for a ResNet's O(1-10) activations puts values that cancel to near zero about 1e-5..1e-4 apart.
   The argmax must agree on every image whose top-two logits differ by more than 1e-3 (a genuine
   tie may flip either way). Worst errors are printed either way.
4. ``serve`` the repository with ``--device auto`` (CUDA provider when it works) and read the
   provider in use back through the domain API's GetModel: it must be CUDAExecutionProvider.
5. Serving throughput over gRPC (KServe v2 ModelInfer, batch-1 requests) at concurrency 1 and 32
   (benchmarks/serve_bench.py's client).

Exit code 0 when every check passed, 1 when one failed, 2 when there is no usable CUDA.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RTOL, ATOL = 1e-3, 1e-4
TIE = 1e-3
PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
BATCH_SIZES = (1, 7, 64)


def require_cuda() -> str | None:
    """Why this machine cannot run the check, or None."""
    import onnxruntime as ort
    import torch
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return None


def train(out: Path, epochs: int, data_dir: str | None, device: str, subset: int | None) -> float:
    cmd = [sys.executable, "-m", "training.cli", "train", "--model", "resnet", "--model-arg", "width=24",
           "--model-arg", "depth=2", "--epochs", str(epochs), "--batch-size", "256", "--lr", "0.004",
           "--crop-pad", "2", "--hflip", "--device", device, "--precision", "bf16", "--out", str(out),
           "--no-progress"]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    if subset:
        cmd += ["--subset", str(subset)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    cfg = json.loads((out / "config.json").read_text())
    hist = json.loads((out / "history.json").read_text())
    assert cfg["resolved_device"].startswith(device) and cfg["precision"] == "bf16", cfg["resolved_device"]
    return cfg["dataset"]["train_images"] // 256 * 256 / min(r["seconds"] for r in hist)


def export(run: Path, repo: Path, data_dir: str | None) -> Path:
    """``export`` (its CPU parity gate included) in a subprocess: the exporter checks Triton configs
    with tritonclient's protos, which clash with the serving client's in one process."""
    cmd = [sys.executable, "-c", "from training.export.cli import export; export()", str(run), "--repository",
           str(repo), "--name", "resnet"]
    subprocess.run(cmd + (["--data-dir", data_dir] if data_dir else []), check=True, cwd=ROOT)
    return max((repo / "resnet").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)


def cuda_parity(checkpoint: Path, version: Path, data_dir: str | None, device: str) -> tuple[bool, list[str]]:
    import onnxruntime as ort
    import torch

    from glassbox.data import load_dataset, preprocess, random_subset
    from glassbox.manifest import read_manifest
    from training.checkpoint import model_from_checkpoint
    from training.export.graphs import ClassifierGraph
    from training.export.parity import run_batched
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    man = read_manifest(version)
    x = preprocess(random_subset(load_dataset("fashion-mnist", "test", data_dir=data_dir), 1000, seed=0).images,
                   man["preprocessing"])
    model, _ = model_from_checkpoint(checkpoint)
    graph = man["graphs"]["classifier"]
    names = [o["name"] for o in graph["outputs"]]
    with torch.no_grad():
        ref = ClassifierGraph(model.to(device).eval())(torch.from_numpy(x).to(device))
    ref = {n: t.float().cpu().numpy() for n, t in zip(names, ref, strict=True)}
    want = [("CUDAExecutionProvider", {"use_tf32": 0})] if device == "cuda" else []
    sess = ort.InferenceSession(str(version / graph["file"]), providers=[*want, "CPUExecutionProvider"])
    used = sess.get_providers()[0]
    lines = [f"provider {used}; rtol {RTOL}, atol {ATOL}; {len(x)} images at batch sizes {BATCH_SIZES}"]
    ok = used == PROVIDER[device]
    worst: dict[str, list[float]] = {n: [0.0, 0.0] for n in names}
    flips = 0
    top2 = np.sort(ref["logits"], 1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > TIE
    for b in BATCH_SIZES:
        got = run_batched(sess, {"input": x}, b)
        for n in names:
            diff = np.abs(got[n].astype(np.float64) - ref[n])
            ratio = diff / (ATOL + RTOL * np.abs(ref[n]))
            worst[n] = [max(worst[n][0], float(diff.max())), max(worst[n][1], float(ratio.max()))]
        flips = max(flips, int(((got["logits"].argmax(1) != ref["logits"].argmax(1)) & clear).sum()))
    for n, (max_abs, gate) in worst.items():
        lines.append(f"  {n:16s} max abs {max_abs:10.3g}  gate ratio {gate:6.3f}  {'ok' if gate <= 1 else 'FAILED'}")
        ok &= gate <= 1
    lines.append(f"  argmax: {flips} disagreements on images without a top-2 tie (<= {TIE})")
    return ok and flips == 0, lines


def serve_and_measure(repo: Path, seconds: float, device: str) -> tuple[str, dict[int, tuple[float, float, float]]]:
    from serve_bench import drive

    from serving.client import GlassboxClient
    from tests.helpers.server import start_server, stop_server
    proc, address = start_server(repo, "--device", "auto" if device == "cuda" else "cpu")
    try:
        with GlassboxClient(address) as c:
            provider = c.get_model("resnet").get("provider", "")
        shape = [-1, 1, 28, 28]
        return provider, {conc: asyncio.run(drive(address, "resnet", shape, conc, seconds)) for conc in (1, 32)}
    finally:
        stop_server(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="measurement time per serving point")
    ap.add_argument("--data-dir", default=os.environ.get("GLASSBOX_DATA_DIR"))
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: the same steps on CPU (bf16 autocast on CPU), to check this script without a GPU")
    ap.add_argument("--subset", type=int, default=None, help="train on this many images (a quicker check)")
    a = ap.parse_args()
    if a.device == "cuda" and (why := require_cuda()):
        print(f"gpu_check: no usable CUDA here ({why}); run it on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    import torch
    name = torch.cuda.get_device_name(0) if a.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run, repo = Path(tmp) / "run", Path(tmp) / "repo"
        ips = train(run, a.epochs, a.data_dir, a.device, a.subset)
        metrics = json.loads((run / "metrics.json").read_text())
        version = export(run, repo, a.data_dir)
        parity_ok, parity_lines = cuda_parity(run / "best.pt", version, a.data_dir, a.device)
        provider, rates = serve_and_measure(repo, a.seconds, a.device)
    print("\n== gpu_check ==")
    print(f"training (bf16 autocast, resnet w24 d2, batch 256): {ips:,.0f} images/s; "
          f"test accuracy after {metrics['epochs_run']} epochs {metrics['test_acc']:.4f}")
    print(f"export: resnet/{version.name} (CPU parity gate passed)")
    print(f"{a.device} parity, onnxruntime vs torch on {a.device} (float32, TF32 off):")
    print("\n".join(parity_lines))
    print(f"serving: GetModel says provider {provider!r}")
    for conc, (rate, p50, p99) in rates.items():
        print(f"  gRPC concurrency {conc:2d}: {rate:8.0f} images/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms")
    ok = parity_ok and set(provider.split(",")) == {PROVIDER[a.device]}
    print("gpu_check:", "passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
