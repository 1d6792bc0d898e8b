"""Loading a repository (serving/loader.py) in a real server: several versions of one model, the newest
served by default, and the device choice when a CUDA provider is installed but cannot run.

    .venv/bin/pytest -x -q tests/serving/test_loader.py
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort

from glassbox.data import load_dataset, preprocess
from tests.helpers.paths import ROOT
from tests.helpers.server import start_server, stop_server


def ort_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


def test_several_versions_newest_served_and_device_fallback(repository, tmp_path, fmnist_dir):
    """A repository holding lenet versions 1 (trained) and 2 (another export, untrained weights): the server
    serves both, the newest by default (domain API and v2), the older when asked. Started with --device auto:
    where onnxruntime lists a CUDA provider that cannot run (no GPU or CUDA libraries, as here), the log says so
    in one line and the models run on CPU; where CUDA runs, on CUDA. --device cpu never tries CUDA. Catches a
    server that serves the first or the oldest version, and a silent or crashing fall-back to CPU."""
    import torch

    from serving.client import GlassboxClient
    from training.export import export_model
    from training.models import create_model
    repo = tmp_path / "repo"
    shutil.copytree(repository / "lenet", repo / "lenet")
    cfg = json.loads((repository / "lenet" / "1" / "manifest.json").read_text())["source"]["config"]
    torch.manual_seed(1)
    test = load_dataset("fashion-mnist", "test", data_dir=fmnist_dir)
    res = export_model(create_model("lenet").eval(), cfg, repo, images=test.images[:16], batch_sizes=(16,))
    assert res.version == 2
    x = preprocess(test.images[:8], res.manifest["preprocessing"])
    v1, v2 = (ort_logits(repo / "lenet" / v / "classifier.onnx", x) for v in ("1", "2"))
    assert not np.allclose(v1, v2, atol=1e-2)

    listed = "CUDAExecutionProvider" in ort.get_available_providers()
    cuda_runs = False
    if listed:  # does a session really get the CUDA provider here?
        sess = ort.InferenceSession(str(repo / "lenet" / "1" / "classifier.onnx"),
                                    providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        cuda_runs = sess.get_providers()[0] == "CUDAExecutionProvider"
    proc, address = start_server(repo, "--device", "auto")
    try:
        with GlassboxClient(address, timeout=30) as c:
            models = c.list_models()
            assert sorted((m.name, m.version) for m in models) == [("lenet", 1), ("lenet", 2)]
            assert {m.provider for m in models} == {"CUDAExecutionProvider" if cuda_runs else "CPUExecutionProvider"}
            assert c.get_model("lenet")["version"] == 2 and c.get_model("lenet", 1)["version"] == 1
            np.testing.assert_allclose(c.classify("lenet", x, return_logits=True).logits, v2, rtol=1e-4, atol=1e-4)
        import tritonclient.grpc as tc
        t = tc.InferenceServerClient(address)
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        for version, want in (("", v2), ("2", v2), ("1", v1)):
            got = t.infer("lenet", [inp], model_version=version, outputs=[tc.InferRequestedOutput("logits")])
            np.testing.assert_allclose(got.as_numpy("logits"), want, rtol=1e-4, atol=1e-4, err_msg=version)
        assert t.get_model_metadata("lenet").versions == ["1", "2"]
        t.close()
    finally:
        assert stop_server(proc) == 0
    log = proc.stdout.read()
    warned = [line for line in log.splitlines() if "CUDAExecutionProvider is installed but cannot run here" in line]
    if listed and not cuda_runs:
        assert len(warned) == 1 and "serving on CPU" in warned[0] and " WARNING " in warned[0], log
    else:
        assert not warned, log
    assert "Traceback" not in log  # the fall-back is a log line, not an error
    # --device cpu: CPU without asking onnxruntime for CUDA at all.
    # In a process of its own: serving's v2 stubs and tritonclient's (imported above) share protobuf names.
    v2_dir = str(repo / "lenet" / "2")
    check = (f"from pathlib import Path\nfrom serving.loader import load_model, providers\n"
             f"assert providers('cpu', Path({v2_dir!r}) / 'classifier.onnx') == ['CPUExecutionProvider']\n"
             f"assert load_model(Path({v2_dir!r}), device='cpu').provider == 'CPUExecutionProvider'\n")
    r = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


def test_instance_group_sets_the_instances_and_shares_out_the_cores(repository, tmp_path, monkeypatch):
    """A graph's config.pbtxt ``instance_group [{ count: 2, kind: KIND_CPU }]`` loads it with 2 instances whose
    session has CPUs / 2 intra-op threads; without one, 1 instance and onnxruntime's default; the serve flags
    override both. Catches a loader that ignores the config or gives each instance every core."""
    from serving import loader
    repo = tmp_path / "repo"
    shutil.copytree(repository / "lenet" / "1", repo / "lenet" / "1")
    monkeypatch.setattr(loader, "cpus", lambda: 4)
    plain = loader.load_model(repo / "lenet" / "1", device="cpu")
    assert plain.ready and plain.graphs["classifier"].instances == 1
    assert plain.graphs["classifier"].session.get_session_options().intra_op_num_threads == 0

    config = repo / "lenet" / "1" / "classifier.config.pbtxt"
    config.write_text(config.read_text() + "\ninstance_group [ { count: 2, kind: KIND_CPU } ]\n")
    from glassbox.io import sha256
    manifest_file = repo / "lenet" / "1" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["files"][config.name] = sha256(config)  # the changed config, re-listed as export would
    manifest_file.write_text(json.dumps(manifest))
    grouped = loader.load_model(repo / "lenet" / "1", device="cpu")
    assert grouped.ready, grouped.error
    g = grouped.graphs["classifier"]
    assert g.instances == 2 and g.session.get_session_options().intra_op_num_threads == 2
    assert grouped.graphs["gradcam"].instances == 1  # the other graph's config has no group

    flagged = loader.load_model(repo / "lenet" / "1", device="cpu", instances=4, intra_op_threads=3)
    assert {(g.instances, g.session.get_session_options().intra_op_num_threads)
            for g in flagged.graphs.values()} == {(4, 3)}
