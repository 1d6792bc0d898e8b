"""The parity gate: onnxruntime (CPU provider) against torch in eval mode, on real images.

Every output must satisfy |onnx - torch| <= atol + rtol * |torch| elementwise (rtol 1e-3, atol 1e-5)
at every batch size, and classifier argmax must agree on 100% of images. Grad-CAM maps are checked
against ``reference_gradcam`` (hooks + backward), not against the traced function itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

RTOL, ATOL = 1e-3, 1e-5
BATCH_SIZES = (1, 7, 64)


class ParityError(RuntimeError):
    """Export refused: onnxruntime and torch disagree beyond the tolerances."""


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_batched(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Run ``sess`` over the feeds in chunks of ``batch`` and concatenate every output."""
    names = [o.name for o in sess.get_outputs()]
    n = len(next(iter(feeds.values())))
    parts = [sess.run(names, {k: v[i:i + batch] for k, v in feeds.items()}) for i in range(0, n, batch)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}


def compare(onnx_out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, dict]:
    stats = {}
    for name, want in ref.items():
        got = onnx_out[name]
        if got.shape != want.shape:
            stats[name] = {"max_abs": float("inf"), "max_rel": float("inf"), "ok": False,
                           "why": f"shape {got.shape} != {want.shape}"}
            continue
        diff = np.abs(got.astype(np.float64) - want)
        scale = np.abs(want.astype(np.float64))
        rel = diff / np.maximum(scale, ATOL)  # relative error where the value is not ~0
        ok = bool(np.all(diff <= ATOL + RTOL * scale)) and bool(np.all(np.isfinite(got)))
        stats[name] = {"max_abs": float(diff.max(initial=0.0)), "max_rel": float(rel.max(initial=0.0)), "ok": ok}
    return stats


def check(graph: str, path: Path, feeds: dict[str, np.ndarray], ref: dict[str, np.ndarray],
          argmax_of: str | None = None, batch_sizes=BATCH_SIZES) -> dict:
    """Compare the graph at ``path`` with ``ref`` at every batch size; return the parity record."""
    sess = session(path)
    worst: dict[str, dict] = {}
    agreement = 1.0
    for b in batch_sizes:
        out = run_batched(sess, feeds, b)
        for name, s in compare(out, ref).items():
            w = worst.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0, "ok": True})
            w["max_abs"], w["max_rel"] = max(w["max_abs"], s["max_abs"]), max(w["max_rel"], s["max_rel"])
            w["ok"] &= s["ok"]
            if "why" in s:
                w["why"] = s["why"]
        if argmax_of:
            agreement = min(agreement, float(np.mean(out[argmax_of].argmax(1) == ref[argmax_of].argmax(1))))
    record = {"images": int(len(next(iter(feeds.values())))), "batch_sizes": list(batch_sizes),
              "rtol": RTOL, "atol": ATOL, "outputs": worst}
    if argmax_of:
        record["argmax_agreement"] = agreement
    failed = [n for n, w in worst.items() if not w["ok"]]
    if failed or agreement < 1.0:
        table = "; ".join(f"{n}: max abs {worst[n]['max_abs']:.3g}, max rel {worst[n]['max_rel']:.3g}"
                          + (f" ({worst[n]['why']})" if "why" in worst[n] else "") for n in failed)
        raise ParityError(f"{graph}: onnxruntime and torch disagree beyond rtol {RTOL}, atol {ATOL}: "
                          f"{table or 'outputs within tolerance'}; argmax agreement {agreement:.4f}")
    return record
