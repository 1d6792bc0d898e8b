"""Paths a user takes that no other test ran: the demo script end to end, `train` with model arguments and
augmentation, `train-all` with its default export, --only and --resume, training on CIFAR-10 and LFW, JPEG
input of another size through the server, several versions of one model with the newest served, and the
server's device choice when a CUDA provider is installed but cannot run.

Already covered elsewhere (not repeated here): training on MNIST (tests/training/test_studies.py, the mnist studies
through train-all), health NOT_SERVING during shutdown (tests.helpers.server.signal_under_load, run by
test_serving.py::test_signal_under_load_loses_no_accepted_call and test_workers.py), v2 REST on
cvae.encoder / cvae.decoder (test_http.py); v2 gRPC on them: test_serving.py::test_tritonclient_v2.
"""
import io
import json
import os
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from PIL import Image

from glassbox.data import load_dataset, preprocess
from tests.helpers.files import tiny_profile
from tests.helpers.paths import ROOT
from tests.helpers.server import start_server, stop_server


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def ort_logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


# --- training commands ---------------------------------------------------------------------------------

def test_train_command_with_model_args_augmentation_and_device(fmnist_dir, tmp_path):
    """`train` succeeds with --model-arg (a ConvNet of width 6 and depth 1), --crop-pad, --hflip, --erase and
    --device cpu: the checkpoint's model has the asked shape, the config keeps the augmentation and the device,
    and the run learned (test accuracy well above chance). Catches options that parse but never reach the config or the
    model (the model's defaults, width 32 depth 2, would load the same way)."""
    from training.checkpoint import model_from_checkpoint
    from training.cli import train
    out = tmp_path / "run"
    r = CliRunner().invoke(train, ["--model", "convnet", "--model-arg", "width=6", "--model-arg", "depth=1",
                                   "--crop-pad", "2", "--hflip", "--erase", "0.3", "--device", "cpu",
                                   "--data-dir", str(fmnist_dir),
                                   "--subset", "1000", "--epochs", "1", "--batch-size", "32", "--schedule", "constant",
                                   "--lr", "0.003", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert f"checkpoint: {out / 'best.pt'}" in r.output and "test_acc=" in r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["args"]["width"] == 6 and cfg["model"]["args"]["depth"] == 1
    assert cfg["augment"]["crop_pad"] == 2 and cfg["augment"]["hflip"] is True and cfg["augment"]["erase"] == 0.3
    assert cfg["resolved_device"] == "cpu"
    model, ckpt = model_from_checkpoint(out / "best.pt")
    convs = [p.shape for name, p in model.state_dict().items() if name.endswith("weight") and p.ndim == 4]
    assert convs == [(6, 1, 3, 3)], convs  # one conv block of 6 channels
    assert ckpt["metrics"]["test_acc"] > 0.3, ckpt["metrics"]["test_acc"]


TWO_RUNS = '[[runs]]\nmodel = "lenet"\n[[runs]]\nmodel = "mlp"\n'


def test_train_all_exports_by_default_only_and_resume(fmnist_dir, tmp_path):
    """`train-all` without --no-export exports every run it trains into --repository (a parity-checked version
    serving can load); --only trains just the named run; --resume then skips the finished run (its checkpoint
    untouched) and trains the other. Catches a default export that is off or writes elsewhere, an --only that
    trains everything, and a --resume that retrains finished runs."""
    from glassbox.manifest import validate_manifest, verify_files
    from training.cli import train_all
    profile = tmp_path / "p.toml"
    tiny_profile(profile, fmnist_dir, TWO_RUNS, subset=500)
    out, repo = tmp_path / "out", tmp_path / "repo"
    common = ["--config", str(profile), "--out", str(out), "--repository", str(repo), "--no-progress"]
    r = CliRunner().invoke(train_all, [*common, "--only", "mlp"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert [row["run"] for row in summary["runs"]] == ["mlp"] and summary["runs"][0]["exported"] == "mlp/1"
    assert not (out / "lenet").exists() and sorted(p.name for p in repo.iterdir()) == ["mlp"]
    manifest = json.loads((repo / "mlp" / "1" / "manifest.json").read_text())
    assert validate_manifest(manifest) == [] and verify_files(repo / "mlp" / "1") == []
    assert manifest["source"]["checkpoint"] == str(out / "mlp" / "best.pt")
    assert manifest["parity"]["classifier"]["images"] == 1000  # the real gate
    finished = (out / "mlp" / "best.pt").read_bytes()

    r = CliRunner().invoke(train_all, [*common, "--resume"])
    assert r.exit_code == 0, r.output
    assert "mlp: already finished, skipped" in r.output
    assert (out / "mlp" / "best.pt").read_bytes() == finished, "a finished run was trained again"
    summary = json.loads((out / "summary.json").read_text())
    assert [row["run"] for row in summary["runs"]] == ["lenet", "mlp"]
    assert summary["runs"][0]["exported"] == "lenet/1" and (repo / "lenet" / "1" / "gradcam.onnx").is_file()
    lenet = json.loads((out / "lenet" / "metrics.json").read_text())
    assert lenet["epochs_run"] == 1 and lenet["test_acc"] > 0.3


@pytest.mark.parametrize(("dataset", "model", "folder"), [("cifar10", "cifarcnn", "cifar10"), ("lfw", "cvae", "lfw")])
def test_training_on_cifar10_and_lfw(dataset, model, folder, shared_data, tmp_path):
    """Two epochs on a few hundred real CIFAR-10 images (a classifier) / LFW faces (a conv VAE, as the faces
    study trains them) from ../shared/data, then an export: RGB 32x32 input carried into the checkpoint and the
    manifest, CIFAR-10's class names, the training loss falling. Catches a reader or a config path that only
    works for the grayscale 28x28 datasets (only the readers were tested on these)."""
    from training.config import resolve_config
    from training.engine import fit
    from training.export import export_checkpoint
    data_dir = shared_data / folder
    cfg = resolve_config({"model": model, "epochs": 2, "batch_size": 32, "schedule": {"name": "constant"},
                          "optimizer": {"name": "adam", "lr": 2e-3, "weight_decay": 0.0},
                          "dataset": {"name": dataset, "data_dir": str(data_dir), "subset": 400, "test_subset": 200}})
    m = fit(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    ds = json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]
    assert ds["channels"] == 3 and ds["size"] == [32, 32], ds
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert m["test_images"] == 200 and hist[1]["train_loss"] < hist[0]["train_loss"], hist
    res = export_checkpoint(tmp_path / "run" / "best.pt", tmp_path / "repo", parity_images=16, data_dir=data_dir)
    assert res.name == f"{model}-{dataset}" and res.manifest["input"]["shape"] == [-1, 3, 32, 32]
    if dataset == "cifar10":
        assert res.manifest["labels"] == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                          "ship", "truck"]
    else:
        assert res.manifest["task"] == "vae" and res.manifest["graphs"].keys() == {"encoder", "decoder"}


# --- the demo script -----------------------------------------------------------------------------------

def test_demo_script_end_to_end(fmnist_dir, tmp_path):
    """scripts/demo.sh (what `make demo` runs) with a tiny profile: train-all trains and exports lenet and cvae,
    the server starts on the exported repository, `analyze report` writes a page with both models, the server is
    stopped and the script prints the report's path. Catches a demo broken by any step's options or paths."""
    profile = tmp_path / "tiny.toml"
    tiny_profile(profile, fmnist_dir, '[[runs]]\nmodel = "lenet"\n[[runs]]\nmodel = "cvae"\n'
                                      'model_args = { latent_dim = 8 }\n')
    env = {**os.environ, "PROFILE": str(profile), "OUT": str(tmp_path / "runs"), "REPOSITORY": str(tmp_path / "repo"),
           "REPORT": str(tmp_path / "report"), "MODELS": "lenet cvae", "REPORT_ARGS": "--per-class 5", "FACES": "0",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout)
    page = tmp_path / "report" / "report.html"
    assert f"open {page}" in r.stdout.splitlines()[-1] and "demo finished in" in r.stdout
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["cvae", "lenet"]
    html = page.read_text()
    assert 'id="lenet"' in html and 'id="cvae"' in html
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


# --- the server ------------------------------------------------------------------------------------------

def test_jpeg_and_other_sizes_through_the_server(server, repository, fmnist_dir):
    """Encoded JPEG (RGB, 56x56) and PNG (grayscale, 20x20) images in one Classify call are decoded, made
    grayscale and resized to 28x28 by the server, as `preprocess` does: the logits match onnxruntime on the same
    decoding, and the upscaled JPEGs mostly keep the class of the original 28x28 images. Catches a server that
    only takes 28x28 PNGs, drops the colour conversion or the resize, or mixes images of one batch."""
    from serving.client import GlassboxClient
    images = load_dataset("fashion-mnist", "test", data_dir=fmnist_dir).images[:24]
    spec = json.loads((repository / "lenet" / "1" / "manifest.json").read_text())["preprocessing"]
    rgb = [np.asarray(Image.fromarray(im).resize((56, 56), Image.BICUBIC).convert("RGB")) for im in images[:20]]
    files = [encode(a, "JPEG", quality=95) for a in rgb]
    files += [encode(np.asarray(Image.fromarray(im).resize((20, 20), Image.BILINEAR)), "PNG") for im in images[20:]]
    decoded = np.concatenate([preprocess(np.asarray(Image.open(io.BytesIO(f)).convert("L"))[None], spec)
                              for f in files])
    assert decoded.shape == (24, 1, 28, 28)
    with GlassboxClient(server, timeout=30) as c:
        got = c.classify("lenet", files, top_k=1, return_logits=True)
    want = ort_logits(repository / "lenet" / "1" / "classifier.onnx", decoded)
    np.testing.assert_allclose(got.logits, want, rtol=1e-4, atol=1e-4)
    original = ort_logits(repository / "lenet" / "1" / "classifier.onnx", preprocess(images[:20], spec)).argmax(1)
    assert np.mean(got.indices[:20, 0] == original) >= 0.8, (got.indices[:20, 0], original)


def test_several_versions_newest_served_and_device_fallback(repository, tmp_path, fmnist_dir):
    """A repository holding lenet versions 1 (trained) and 2 (another export, untrained weights): the server
    serves both, the newest by default (domain API and v2), the older when asked. Started with --device auto:
    where onnxruntime lists a CUDA provider that cannot run (no GPU or CUDA libraries, as here), the log says so
    in one line and the models run on CPU; where CUDA runs, on CUDA. --device cpu never tries CUDA. Catches a
    server that serves the first or the oldest version, and a silent or crashing fall-back to CPU."""
    import torch

    from serving.client import GlassboxClient
    from serving.repository import load_model, providers
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
    assert providers("cpu", repo / "lenet" / "2" / "classifier.onnx") == ["CPUExecutionProvider"]
    assert load_model(repo / "lenet" / "2", device="cpu").provider == "CPUExecutionProvider"
