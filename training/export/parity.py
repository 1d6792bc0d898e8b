"""The parity gate: onnxruntime (CPU provider) against torch in eval mode, on real images.

Every output must satisfy |onnx - torch| <= atol * s + rtol * |torch| elementwise (rtol 1e-3, atol
1e-5) at every batch size, and classifier argmax must agree on 100% of images. ``s`` is the sample's
scale, max(1, max |torch|) over that sample's values of the output: float32 sums carry errors
proportional to the size of what they add up, so an element near 0 in a layer whose activations
reach 30 (a ResNet stage) gets 30x the absolute slack of one in a layer of probabilities; outputs of
magnitude <= 1 (probabilities, Grad-CAM maps) keep the plain 1e-5.

Recorded per output (worst over all batch sizes): ``max_abs`` = max |a-b|; ``max_rel`` =
max |a-b| / max(|b|, atol) (near-zero values count against atol, so it can exceed rtol while the
gate passes); ``gate_ratio`` = max |a-b| / (atol s + rtol |b|), the gate's margin (passes iff <= 1);
``peak_rel`` = max over samples of max |a-b| / max |b| of that sample (scale-free, informative).
Grad-CAM maps are checked against ``reference_gradcam`` (hooks + backward), not against the traced
function itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

RTOL, ATOL = 1e-3, 1e-5
BATCH_SIZES = (1, 7, 64)


class ParityError(RuntimeError):
    """Export refused: onnxruntime and torch disagree beyond the tolerances.

    ``failures`` holds one row per failed check: ``(graph, output, max_abs, max_rel, why)``;
    ``str(err)`` is a table of them, ``err.summary()`` one line for a CLI.
    """

    def __init__(self, failures: list[tuple[str, str, float, float, str]]):
        self.failures = failures
        lines = [f"onnxruntime and torch disagree beyond rtol {RTOL}, atol {ATOL}:",
                 f"  {'graph':10s} {'output':16s} {'max abs':>10s} {'max rel':>10s}  why"]
        lines += [f"  {g:10s} {o:16s} {a:10.3g} {r:10.3g}  {why}" for g, o, a, r, why in failures]
        super().__init__("\n".join(lines))

    def summary(self) -> str:
        return "parity failed: " + "; ".join(
            f"{g}.{o} {why}" + ("" if o == "argmax" else f" (max abs {a:.3g}, max rel {r:.3g})")
            for g, o, a, r, why in self.failures)


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
            stats[name] = {"max_abs": float("inf"), "max_rel": float("inf"), "gate_ratio": float("inf"),
                           "peak_rel": float("inf"), "ok": False, "why": f"shape {got.shape} != {want.shape}"}
            continue
        diff = np.abs(got.astype(np.float64) - want)
        scale = np.abs(want.astype(np.float64))
        rel = diff / np.maximum(scale, ATOL)  # relative error where the value is not ~0
        n = len(want)
        peak = scale.reshape(n, -1).max(1, initial=0.0) if n else np.zeros(0)
        sample_scale = np.maximum(peak, 1.0).reshape(n, *([1] * (want.ndim - 1)))
        ratio = diff / (ATOL * sample_scale + RTOL * scale)  # the gate: every element <= 1
        ok = bool(np.all(ratio <= 1.0)) and bool(np.all(np.isfinite(got)))
        # Scale-free view per sample: worst error over that sample's largest |value| (Grad-CAM maps of
        # random-weight models are ~1e-4, where atol alone would be a loose check).
        worst = diff.reshape(n, -1).max(1, initial=0.0) if n else np.zeros(0)
        peak_rel = np.where(worst == 0, 0.0, worst / np.maximum(peak, 1e-30))
        stats[name] = {"max_abs": float(diff.max(initial=0.0)), "max_rel": float(rel.max(initial=0.0)),
                       "gate_ratio": float(ratio.max(initial=0.0)), "peak_rel": float(peak_rel.max(initial=0.0)),
                       "ok": ok}
    return stats


def check(graph: str, path: Path, feeds: dict[str, np.ndarray], ref: dict[str, np.ndarray],
          argmax_of: str | None = None, batch_sizes=BATCH_SIZES) -> dict:
    """Compare the graph at ``path`` with ``ref`` at every batch size; return the parity record
    (worst errors per output, each with ``ok``); ``gate`` turns failed records into ParityError."""
    sess = session(path)
    return record_of([run_batched(sess, feeds, b) for b in batch_sizes], ref, argmax_of, batch_sizes)


def record_of(outs: list[dict[str, np.ndarray]], ref: dict[str, np.ndarray], argmax_of: str | None,
              batch_sizes) -> dict:
    """The parity record of a graph's outputs ``outs`` (one dict per batch size) against ``ref``."""
    worst: dict[str, dict] = {}
    agreement = 1.0
    for out in outs:
        for name, s in compare(out, ref).items():
            w = worst.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0, "gate_ratio": 0.0, "peak_rel": 0.0, "ok": True})
            for k in ("max_abs", "max_rel", "gate_ratio", "peak_rel"):
                w[k] = max(w[k], s[k])
            w["ok"] &= s["ok"]
            if "why" in s:
                w["why"] = s["why"]
        if argmax_of:
            agreement = min(agreement, float(np.mean(out[argmax_of].argmax(1) == ref[argmax_of].argmax(1))))
    record = {"images": int(len(next(iter(ref.values())))), "batch_sizes": list(batch_sizes),
              "rtol": RTOL, "atol": ATOL, "outputs": worst}
    if argmax_of:
        record["argmax_agreement"] = agreement
    return record


def failures(graph: str, record: dict) -> list[tuple[str, str, float, float, str]]:
    """The rows of ``record`` (from ``check``) that fail the gate."""
    rows = [(graph, n, w["max_abs"], w["max_rel"], w.get("why", "beyond tolerance"))
            for n, w in record["outputs"].items() if not w["ok"]]
    if record.get("argmax_agreement", 1.0) < 1.0:
        rows.append((graph, "argmax", 0.0, 0.0, f"agreement {record['argmax_agreement']:.4f} < 1"))
    return rows


def gate(records: dict[str, dict], extra: list[tuple[str, str, float, float, str]] = ()) -> None:
    """Raise ParityError listing every failed output of every graph, and the ``extra`` failed rows
    (the explanation maps against their reference libraries); return if all passed."""
    rows = [row for graph, rec in records.items() for row in failures(graph, rec)] + list(extra)
    if rows:
        raise ParityError(rows)
