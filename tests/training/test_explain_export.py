"""The explanation graphs at export: parity with pytorch-grad-cam and Captum on a trained model, the
refusal of a graph that disagrees with its reference, the randomised copy, the method list."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from glassbox.data import load_dataset, preprocess
from glassbox.manifest import read_manifest
from training.checkpoint import model_from_checkpoint
from training.export import ParityError, export_model, references
from training.export import explain as explain_mod
from training.export.explain import METHODS
from training.export.explain_export import ExplainConfigError, check_methods


@pytest.fixture(scope="module")
def test_images(fmnist_dir):
    return load_dataset("fashion-mnist", split="test", data_dir=fmnist_dir).images


def _run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_every_method_matches_its_reference_on_a_trained_model(explain_repository):
    man = read_manifest(explain_repository / "lenet" / "1")
    sec = man["explain"]
    assert sec["methods"] == list(METHODS) and sec["ig"] == {"steps": 32, "rule": "gausslegendre", "baseline": "zero"}
    for method in METHODS:
        rec = sec["reference"][method]
        tol = references.TOLERANCES[method]
        assert rec["ok"] and rec["images"] == 64 and rec["tolerance"] == tol, (method, rec)
        assert rec["max_abs"] <= tol["max_abs"] and rec["mean_abs"] <= tol["mean_abs"]
        assert rec["min_pearson"] >= tol["min_pearson"], (method, rec)
        assert man["graphs"][method]["triton_name"] == f"lenet.{method}"
        if method != "gradcam":  # gradcam's own record is the elementwise one (test_export.py)
            assert all(man["parity"][method]["outputs"][o]["ok"] for o in ("map", "logits"))
    assert man["source"]["metrics"]["test_acc"] > 0.5  # a trained model, not random weights


def test_graphs_against_the_libraries_directly(explain_repository, trained_runs, test_images):
    """Independent of the gate's own code: onnxruntime against Captum's IG and pytorch-grad-cam's Grad-CAM++."""
    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model, _ = model_from_checkpoint(trained_runs / "lenet" / "best.pt")
    man = read_manifest(explain_repository / "lenet" / "1")
    x = preprocess(test_images[100:108], man["preprocessing"])
    t = np.arange(8, dtype=np.int64) % 10
    ig, _ = _run(explain_repository / "lenet" / "1" / "ig.onnx", {"input": x, "target": t})
    want = IntegratedGradients(model.forward_once).attribute(torch.from_numpy(x), target=torch.from_numpy(t),
                                                             n_steps=32, method="gausslegendre").sum(1).numpy()
    d, tol = np.abs(references.normalise(ig) - references.normalise(want)), references.TOLERANCES["ig"]
    assert d.max() < tol["max_abs"] and d.mean() < tol["mean_abs"]
    gpp, _ = _run(explain_repository / "lenet" / "1" / "gradcampp.onnx", {"input": x, "target": t})
    with GradCAMPlusPlus(model=model, target_layers=[model.stages[model.cam_layer]]) as cam:
        want = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(int(k)) for k in t])
    assert np.abs(references.normalise(gpp) - want).max() < references.TOLERANCES["gradcampp"]["max_abs"]
    # and the maps are not all alike: a different formula would not pass the checks above by accident
    assert np.abs(references.normalise(gpp) - references.normalise(ig)).max() > 0.3


def test_a_graph_that_disagrees_with_its_reference_is_refused(tmp_path, trained_runs, test_images, monkeypatch):
    """Saliency traced without its abs (signed gradients): torch and onnxruntime agree with each
    other, but not with Captum's Saliency, so nothing is written."""
    model, ckpt = model_from_checkpoint(trained_runs / "lenet" / "best.pt")

    def signed(model):
        def saliency(x, target):
            g, logits = torch.func.grad(explain_mod._target_score(model, target), has_aux=True)(x)
            return g.sum(dim=1), logits
        return saliency

    monkeypatch.setattr(explain_mod, "saliency_fn", signed)
    with pytest.raises(ParityError) as err:
        export_model(model, ckpt["config"], tmp_path, images=test_images[:64], batch_sizes=(64,),
                     explain=["saliency"])
    assert {(g, o) for g, o, *_ in err.value.failures} == {("saliency", "map vs reference")}, err.value
    assert not (tmp_path / "lenet").exists()


def test_compare_tolerance_edges():
    """One pixel may move up to max_abs (a flipped ReLU mask); every image moving a little is refused."""
    rng = np.random.default_rng(0)
    want = rng.random((4, 28, 28)).astype(np.float32)
    want[:, 0, 0], want[:, 0, 1] = 0.0, 1.0  # a fixed range, so a shift is a shift of the normalised map
    tol = references.TOLERANCES["ig"]
    near, far, drift = want.copy(), want.copy(), want.copy()
    near[2, 5, 5] += tol["max_abs"] / 2
    far[2, 5, 5] += tol["max_abs"] * 2
    drift[:, 1:] += np.float32(tol["mean_abs"] * 3)
    assert references.compare("ig", near, want)["ok"]
    bad = references.compare("ig", far, want)
    assert not bad["ok"] and bad["max_abs"] == pytest.approx(tol["max_abs"] * 2, rel=1e-3)
    assert references.failures({"ig": bad})[0][:2] == ("ig", "map vs reference")
    drifted = references.compare("ig", drift, want)
    assert not drifted["ok"] and drifted["max_abs"] < tol["max_abs"] and drifted["mean_abs"] > tol["mean_abs"]


def test_randomized_copy(explain_repository, test_images):
    man = read_manifest(explain_repository / "lenet-randomized" / "1")
    assert man["randomized_of"] == {"name": "lenet", "version": 1}
    assert man["explain"]["methods"] == list(METHODS) and all(r["ok"] for r in man["explain"]["reference"].values())
    x = preprocess(test_images[:32], man["preprocessing"])
    trained = _run(explain_repository / "lenet" / "1" / "classifier.onnx", {"input": x})[0]
    rnd = _run(explain_repository / "lenet-randomized" / "1" / "classifier.onnx", {"input": x})[0]
    assert (trained.argmax(1) != rnd.argmax(1)).mean() > 0.5 and np.abs(trained - rnd).mean() > 0.5


def test_method_list():
    assert check_methods(["ig", "gradcam"], "conv2") == ["gradcam", "ig"]
    assert check_methods(list(METHODS), None) == ["saliency", "ig", "smoothgrad"]  # no spatial layer, no CAM
    with pytest.raises(ExplainConfigError, match="unknown explanation method lime"):
        check_methods(["lime"], "conv2")


def test_export_cli_explain_flag(tmp_path):
    from click.testing import CliRunner

    from training.export.cli import _methods, export
    assert _methods("all") == list(METHODS) and _methods("none") == [] and _methods("ig, gradcam") == ["ig", "gradcam"]
    r = CliRunner().invoke(export, [str(tmp_path), "--explain", "gradcam,lime"])
    assert r.exit_code == 2 and "--explain: unknown method lime" in r.output
