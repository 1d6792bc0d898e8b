"""INT8 behind three gates (training/export/quantize.py): each refusal injected, nothing written on
refusal, the figures in the manifest, and a published variant served by both APIs."""
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from glassbox.data import load_dataset, preprocess
from glassbox.manifest import read_manifest, verify_files
from tests.helpers.server import start_server, stop_server
from training.export.cli import export as export_cli
from training.export.quantize import Gates, QuantizeRefused, export_int8, top_iou

OPEN = Gates(max_drop=100.0, min_speedup=0.0, min_iou=0.0)  # every gate passes whatever is measured
FAST = {"test_limit": 1000, "cam_images": 200, "calibration_images": 128}


@pytest.fixture()
def lenet_repo(tmp_path, repository):
    """A private repository holding a copy of the session's exported lenet (the shared one stays as it is)."""
    repo = tmp_path / "repo"
    shutil.copytree(repository / "lenet", repo / "lenet")
    return repo


@pytest.mark.parametrize("gate, gates", [
    ("accuracy", Gates(max_drop=-101.0, min_speedup=0.0, min_iou=0.0)),  # a drop of -100 points would be needed
    ("speed", Gates(max_drop=100.0, min_speedup=1e9, min_iou=0.0)),
    ("explanations", Gates(max_drop=100.0, min_speedup=0.0, min_iou=1.01)),  # IoU is at most 1
])
def test_each_refusal_names_its_gate_and_writes_nothing(lenet_repo, fmnist_dir, gate, gates):
    with pytest.raises(QuantizeRefused) as err:
        export_int8(lenet_repo / "lenet" / "1", lenet_repo, data_dir=fmnist_dir, gates=gates, **FAST)
    assert [g for g, _ in err.value.failures] == [gate]
    line = str(err.value)
    assert "\n" not in line and f"{gate} gate" in line
    f = err.value.figures
    both = {"accuracy": (f"{f['accuracy']['int8']:.2%}", f"{f['accuracy']['fp32']:.2%}"),
            "speed": (f"{f['speed']['int8_ms']:.2f} ms", f"{f['speed']['fp32_ms']:.2f} ms"),
            "explanations": (f"{f['explanations']['mean_iou']:.3f}", f"{gates.min_iou:g}")}[gate]
    assert all(figure in line for figure in both), line
    assert not (lenet_repo / "lenet-int8").exists()


def test_the_cli_refuses_in_one_line(trained_runs, tmp_path, fmnist_dir, monkeypatch):
    monkeypatch.setitem(export_int8.__kwdefaults__, "gates", Gates(min_speedup=1e9))
    monkeypatch.setitem(export_int8.__kwdefaults__, "test_limit", 1000)
    repo = tmp_path / "repo"
    res = CliRunner().invoke(export_cli, [str(trained_runs / "lenet"), "--repository", str(repo), "--parity-images",
                                          "64", "--data-dir", str(fmnist_dir), "--quantize", "int8"])
    assert res.exit_code == 1, res.output
    refusals = [line for line in res.stderr.splitlines() if "int8 refused" in line]
    assert len(refusals) == 1 and "speed gate" in refusals[0], res.stderr
    assert (repo / "lenet" / "1" / "manifest.json").is_file() and not (repo / "lenet-int8").exists()


def test_top_iou():
    a = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    assert top_iou(a, a)[0] == 1.0
    assert top_iou(a, -a)[0] == 0.0  # the top 10 pixels of one are the bottom 10 of the other
    b = a.copy()
    b[0, 9, :5] = -1  # 5 of the top 10 pushed out: the top 10 of b are 95..99 and 85..89
    assert top_iou(a, b)[0] == pytest.approx(5 / 15)


def test_published_variant_is_served_by_both_apis(lenet_repo, fmnist_dir):
    import tritonclient.grpc as tc

    from serving.client import GlassboxClient
    q = export_int8(lenet_repo / "lenet" / "1", lenet_repo, data_dir=fmnist_dir, gates=OPEN, **FAST)
    assert (q.name, q.version) == ("lenet-int8", 1) and verify_files(q.path) == []
    m = read_manifest(q.path)
    gates = m["quantization"]["gates"]
    assert {"accuracy", "speed", "explanations"} <= set(gates) and all(g["ok"] for g in gates.values())
    assert m["graphs"]["classifier"]["triton_name"] == "lenet-int8"
    int8 = ort.InferenceSession(str(q.path / "classifier.onnx"), providers=["CPUExecutionProvider"])
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(q.path / "classifier.onnx")).graph.node)
    x = preprocess(load_dataset("fashion-mnist", "test", data_dir=fmnist_dir).images[:16], m["preprocessing"])
    want = int8.run(["logits", "probabilities"], {"input": x})
    proc, address = start_server(lenet_repo)
    try:
        c = GlassboxClient(address)
        got = c.classify("lenet-int8", x, top_k=3, return_logits=True)
        np.testing.assert_allclose(got.logits, want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got.indices[:, 0], want[1].argmax(1))
        cam = c.gradcam("lenet-int8", x)  # the FP32 Grad-CAM graph on the INT8 model's own prediction
        np.testing.assert_array_equal(cam.targets, want[0].argmax(1))
        v2 = tc.InferenceServerClient(address)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        logits = v2.infer("lenet-int8", [inp], outputs=[tc.InferRequestedOutput("logits")]).as_numpy("logits")
        np.testing.assert_allclose(logits, want[0], rtol=1e-5, atol=1e-5)
        assert not np.allclose(logits, c.classify("lenet", x, return_logits=True).logits, rtol=0, atol=1e-7)
    finally:
        stop_server(proc)


def test_profile_key_quantize(trained_runs, tmp_path, fmnist_dir, monkeypatch):
    """train / train-all's export with config key quantize = "int8": a published variant or a refusal noted."""
    from training.cli import _export
    from training.config import ConfigError, resolve_config
    assert resolve_config({"model": "lenet", "quantize": "int8"})["quantize"] == "int8"
    with pytest.raises(ConfigError, match="quantize"):
        resolve_config({"model": "lenet", "quantize": "int4"})
    monkeypatch.setitem(export_int8.__kwdefaults__, "test_limit", 1000)
    monkeypatch.setitem(export_int8.__kwdefaults__, "gates", OPEN)
    out = _export(trained_runs / "lenet", str(tmp_path / "a"), str(fmnist_dir), "int8")
    assert out["int8"] == "lenet-int8/1" and read_manifest(tmp_path / "a" / "lenet-int8" / "1")["quantization"]
    monkeypatch.setitem(export_int8.__kwdefaults__, "gates", Gates(min_speedup=1e9))
    out = _export(trained_runs / "lenet", str(tmp_path / "b"), str(fmnist_dir), "int8")
    assert out["int8"] == "refused" and not (tmp_path / "b" / "lenet-int8").exists()
    assert "int8" not in _export(trained_runs / "lenet", str(tmp_path / "c"), str(fmnist_dir), "none")
