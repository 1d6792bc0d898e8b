"""The parity gate (``training.export.parity``) at its real tolerances, without torch or training.

``compare`` is fed errors just inside and just outside ``atol * s + rtol * |torch|`` (s: the sample's
scale), so a gate loosened or tightened by a few percent fails here, as does a gate that scales atol
by the whole batch instead of the sample. ``check`` runs tiny ONNX graphs built with ``onnx.helper``
(onnxruntime, CPU) at several batch sizes; ``failures``/``gate``/``ParityError`` word the refusal.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from training.export.parity import (
    ATOL,
    BATCH_SIZES,
    RTOL,
    ParityError,
    check,
    compare,
    failures,
    gate,
    run_batched,
    session,
)


def onnx_graph(path, scale: float = 1.0, offset: float = 0.0, classes: int = 4):
    """input [N, classes] -> logits = input * scale + offset, feat = input (two outputs, as classifiers have)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", classes])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])
    feat = helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", classes])
    nodes = [helper.make_node("Mul", ["input", "s"], ["scaled"]), helper.make_node("Add", ["scaled", "o"], ["logits"]),
             helper.make_node("Identity", ["input"], ["feat"])]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]), helper.make_tensor("o", TensorProto.FLOAT, [],
                                                                                           [offset])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [logits, feat], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def feeds(n=10, classes=4, seed=0):
    return {"input": np.random.default_rng(seed).standard_normal((n, classes)).astype(np.float32) * 3}


def test_the_gate_tolerances_are_the_documented_ones():
    assert (RTOL, ATOL, BATCH_SIZES) == (1e-3, 1e-5, (1, 7, 64))


# --- compare: the element-wise gate -------------------------------------------------------------

def one(got, want):
    return compare({"y": np.asarray(got, np.float32)}, {"y": np.asarray(want, np.float32)})["y"]


def test_identical_outputs_pass_with_zero_error():
    s = one([[1.0, -2.0]], [[1.0, -2.0]])
    assert s == {"max_abs": 0.0, "max_rel": 0.0, "gate_ratio": 0.0, "peak_rel": 0.0, "ok": True}


@pytest.mark.parametrize(("margin", "ok"), [(0.98, True), (1.02, False)])
def test_an_error_just_inside_the_tolerance_passes_and_just_outside_fails(margin, ok):
    """want 2.0 in a sample whose peak is 2: the bound is atol * 2 + rtol * 2 = 2.02e-3."""
    bound = ATOL * 2 + RTOL * 2
    s = one([[2.0 + margin * bound, 0.5]], [[2.0, 0.5]])
    assert s["ok"] is ok
    assert s["gate_ratio"] == pytest.approx(margin, rel=1e-3)
    assert s["max_abs"] == pytest.approx(margin * bound, rel=1e-3)
    assert s["max_rel"] == pytest.approx(margin * bound / 2, rel=1e-3)
    assert s["peak_rel"] == pytest.approx(margin * bound / 2, rel=1e-3)


@pytest.mark.parametrize(("margin", "ok"), [(0.95, True), (1.05, False)])
def test_near_zero_values_get_atol_only(margin, ok):
    """A value of 0 in a sample of magnitude <= 1: the bound is atol (1e-5) alone."""
    s = one([[margin * ATOL, 0.25]], [[0.0, 0.25]])
    assert s["ok"] is ok
    assert s["max_rel"] == pytest.approx(margin, rel=1e-3)  # |a-b| / max(|b|, atol) with b = 0


def test_atol_scales_with_each_samples_own_peak():
    """A near-0 element in a sample that reaches 30 gets 30x atol; the same error in a small sample fails."""
    want = np.array([[30.0, 0.0], [0.5, 0.0]], np.float32)
    err = 2e-4  # within 30 * 1e-5 = 3e-4, beyond 1e-5
    big = want.copy()
    big[0, 1] += err
    assert one(big, want)["ok"]
    small = want.copy()
    small[1, 1] += err
    s = one(small, want)
    assert not s["ok"] and s["gate_ratio"] == pytest.approx(err / ATOL, rel=1e-3)
    # peak_rel: the worst error of a sample over that sample's peak (here 2e-4 / 0.5)
    assert s["peak_rel"] == pytest.approx(err / 0.5, rel=1e-3)


def test_a_negative_peak_counts_by_magnitude():
    want = np.array([[-40.0, 0.0]], np.float32)
    got = want.copy()
    got[0, 1] = 3e-4  # within 40 * 1e-5
    assert one(got, want)["ok"]


def test_non_finite_outputs_fail():
    for bad in (np.nan, np.inf):
        s = one([[bad, 0.5]], [[1.0, 0.5]])
        assert s["ok"] is False


def test_a_shape_mismatch_fails_with_the_shapes():
    s = compare({"y": np.zeros((2, 3), np.float32)}, {"y": np.zeros((2, 4), np.float32)})["y"]
    inf = float("inf")
    assert s == {"max_abs": inf, "max_rel": inf, "gate_ratio": inf, "peak_rel": inf, "ok": False,
                 "why": "shape (2, 3) != (2, 4)"}


def test_an_empty_batch_passes_with_zero_error():
    s = one(np.zeros((0, 3)), np.zeros((0, 3)))
    assert s == {"max_abs": 0.0, "max_rel": 0.0, "gate_ratio": 0.0, "peak_rel": 0.0, "ok": True}


def test_every_output_of_the_reference_is_compared():
    ref = {"a": np.ones((2, 2), np.float32), "b": np.zeros((2,), np.float32)}
    got = {"a": np.ones((2, 2), np.float32), "b": np.array([0.0, 1.0], np.float32), "extra": np.zeros(1)}
    stats = compare(got, ref)
    assert list(stats) == ["a", "b"] and stats["a"]["ok"] and not stats["b"]["ok"]
    assert stats["b"]["max_abs"] == 1.0 and stats["b"]["max_rel"] == pytest.approx(1.0 / ATOL)


# --- run_batched and check on real onnxruntime sessions ------------------------------------------

def test_run_batched_concatenates_every_chunk(tmp_path):
    sess = session(onnx_graph(tmp_path / "g.onnx", scale=2.0))
    f = feeds(7)
    for batch in (1, 3, 7, 64):
        out = run_batched(sess, f, batch)
        assert list(out) == ["logits", "feat"]
        np.testing.assert_array_equal(out["logits"], f["input"] * 2)
        np.testing.assert_array_equal(out["feat"], f["input"])


def test_check_passes_a_faithful_graph_and_records_the_margins(tmp_path):
    f = feeds(10)
    ref = {"logits": f["input"] * 2.0, "feat": f["input"]}
    rec = check("net", onnx_graph(tmp_path / "g.onnx", scale=2.0), f, ref, argmax_of="logits")
    assert rec["images"] == 10 and rec["batch_sizes"] == [1, 7, 64]
    assert (rec["rtol"], rec["atol"], rec["argmax_agreement"]) == (RTOL, ATOL, 1.0)
    assert set(rec["outputs"]) == {"logits", "feat"}
    for w in rec["outputs"].values():  # * 2 is exact in float32: no error at all
        assert w == {"max_abs": 0.0, "max_rel": 0.0, "gate_ratio": 0.0, "peak_rel": 0.0, "ok": True}
    assert failures("net", rec) == []
    gate({"net": rec})  # no exception


@pytest.mark.parametrize(("factor", "ok"), [(1 + 0.9 * RTOL, True), (1 + 1.1 * RTOL, False)])
def test_check_near_the_threshold(tmp_path, factor, ok):
    """A graph off by a relative 0.9 rtol passes the gate; by 1.1 rtol it is refused."""
    f = feeds(12)
    f["input"] += np.sign(f["input"]) * 2  # every |value| >= 2: rtol dominates atol
    rec = check("net", onnx_graph(tmp_path / "g.onnx", scale=factor), f, {"logits": f["input"]}, batch_sizes=(1, 5))
    w = rec["outputs"]["logits"]
    assert w["ok"] is ok and rec["batch_sizes"] == [1, 5] and "argmax_agreement" not in rec
    assert 0.8 < w["gate_ratio"] < 1.0 if ok else 1.0 < w["gate_ratio"] < 1.2
    assert w["max_abs"] > 0 and w["max_rel"] > 0 and w["peak_rel"] > 0


def test_check_records_the_worst_over_batch_sizes_and_the_argmax_agreement(tmp_path):
    """An offset that flips the argmax of some images: the logits fail, and agreement drops below 1."""
    f = {"input": np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]] * 3, np.float32)}
    ref = {"logits": f["input"][:, ::-1].copy()}  # the reference's argmax is the mirror image
    rec = check("net", onnx_graph(tmp_path / "g.onnx"), f, ref, argmax_of="logits", batch_sizes=(2, 6))
    assert rec["argmax_agreement"] == 0.0
    assert rec["outputs"]["logits"]["max_abs"] == 1.0 and not rec["outputs"]["logits"]["ok"]
    rows = failures("net", rec)
    assert rows == [("net", "logits", 1.0, 1.0 / ATOL, "beyond tolerance"),
                    ("net", "argmax", 0.0, 0.0, "agreement 0.0000 < 1")]


def test_check_keeps_the_why_of_a_shape_mismatch(tmp_path):
    """A graph whose output shape differs from torch's is refused with the shapes (it raised KeyError once)."""
    f = feeds(4)
    ref = {"logits": np.zeros((4, 5), np.float32)}
    rec = check("net", onnx_graph(tmp_path / "g.onnx"), f, ref, batch_sizes=(2,))
    w = rec["outputs"]["logits"]
    assert w["ok"] is False and w["why"] == "shape (4, 4) != (4, 5)"
    assert w["max_abs"] == w["max_rel"] == w["gate_ratio"] == w["peak_rel"] == float("inf")
    assert failures("net", rec) == [("net", "logits", float("inf"), float("inf"), "shape (4, 4) != (4, 5)")]


def test_a_partial_argmax_disagreement_is_refused():
    rec = {"outputs": {"logits": {"ok": True, "max_abs": 0.0, "max_rel": 0.0}}, "argmax_agreement": 0.9995}
    assert failures("g", rec) == [("g", "argmax", 0.0, 0.0, "agreement 0.9995 < 1")]
    rec["argmax_agreement"] = 1.0
    assert failures("g", rec) == []


# --- gate and the error it raises -----------------------------------------------------------------

def test_gate_lists_every_failure_of_every_graph():
    ok = {"outputs": {"logits": {"ok": True, "max_abs": 0.0, "max_rel": 0.0}}, "argmax_agreement": 1.0}
    bad = {"outputs": {"cam": {"ok": False, "max_abs": 0.5, "max_rel": 2.0},
                       "logits": {"ok": False, "max_abs": 1e-2, "max_rel": 3e-3}}, "argmax_agreement": 0.5}
    worse = {"outputs": {"image": {"ok": False, "max_abs": float("inf"), "max_rel": float("inf"), "why": "shape"}}}
    with pytest.raises(ParityError) as e:
        gate({"classifier": ok, "gradcam": bad, "decoder": worse})
    err = e.value
    assert err.failures == [("gradcam", "cam", 0.5, 2.0, "beyond tolerance"),
                            ("gradcam", "logits", 1e-2, 3e-3, "beyond tolerance"),
                            ("gradcam", "argmax", 0.0, 0.0, "agreement 0.5000 < 1"),
                            ("decoder", "image", float("inf"), float("inf"), "shape")]
    assert str(err).splitlines() == [
        "onnxruntime and torch disagree beyond rtol 0.001, atol 1e-05:",
        "  graph      output              max abs    max rel  why",
        "  gradcam    cam                     0.5          2  beyond tolerance",
        "  gradcam    logits                 0.01      0.003  beyond tolerance",
        "  gradcam    argmax                    0          0  agreement 0.5000 < 1",
        "  decoder    image                   inf        inf  shape",
    ]
    assert err.summary() == ("parity failed: gradcam.cam beyond tolerance (max abs 0.5, max rel 2); "
                             "gradcam.logits beyond tolerance (max abs 0.01, max rel 0.003); "
                             "gradcam.argmax agreement 0.5000 < 1; decoder.image shape (max abs inf, max rel inf)")
    assert isinstance(err, RuntimeError)


def test_gate_passes_when_nothing_failed():
    assert gate({}) is None
    assert gate({"g": {"outputs": {"y": {"ok": True, "max_abs": 0.0, "max_rel": 0.0}}}}) is None


def test_a_shape_mismatch_does_not_stop_the_other_outputs_being_compared():
    stats = compare({"a": np.zeros((2, 3), np.float32), "b": np.ones(2, np.float32)},
                    {"a": np.zeros((2, 4), np.float32), "b": np.zeros(2, np.float32)})
    assert list(stats) == ["a", "b"] and not stats["b"]["ok"] and stats["b"]["max_abs"] == 1.0


def test_outputs_without_values_per_sample_compare_as_equal():
    """An output of shape [N, 0] (no values per image) has nothing to disagree on."""
    s = one(np.zeros((2, 0)), np.zeros((2, 0)))
    assert s == {"max_abs": 0.0, "max_rel": 0.0, "gate_ratio": 0.0, "peak_rel": 0.0, "ok": True}


def test_peak_rel_is_per_sample():
    """The worst error of the large sample over its own peak (1 / 40), not over the small sample's (1 / 2)."""
    s = one([[41.0, 0.0], [2.0, 0.0]], [[40.0, 0.0], [2.0, 0.0]])
    assert s["peak_rel"] == pytest.approx(1 / 40) and s["max_abs"] == 1.0
    assert one([[3.0]], [[2.0]])["peak_rel"] == 0.5  # an error of exactly 1 is an error too


def batch_dependent_graph(path):
    """logits = input - mean over the batch: the value depends on how the images are chunked."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])
    nodes = [helper.make_node("ReduceMean", ["input", "axes"], ["m"], keepdims=1),
             helper.make_node("Sub", ["input", "m"], ["logits"])]
    init = [helper.make_tensor("axes", TensorProto.INT64, [1], [0])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], init),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_check_fails_a_graph_that_is_wrong_at_any_batch_size(tmp_path):
    """Right at batch 4 (the whole set), wrong at batch 1: the record is the worst, a failure."""
    f = {"input": np.array([[1, 2], [3, 5], [-2, 0], [6, 1]], np.float32)}
    ref = {"logits": f["input"] - f["input"].mean(0)}
    path = batch_dependent_graph(tmp_path / "g.onnx")
    assert check("g", path, f, ref, batch_sizes=(4,))["outputs"]["logits"]["ok"]
    rec = check("g", path, f, ref, batch_sizes=(1, 4))
    w = rec["outputs"]["logits"]
    assert not w["ok"] and w["max_abs"] == pytest.approx(np.abs(ref["logits"]).max())
