"""The analysis CLI end to end against a real server, real Fashion-MNIST and a trained lenet."""
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from analysis.cli import cli


def run(*args):
    res = CliRunner().invoke(cli, list(args))
    return res


@pytest.fixture(scope="module")
def common(server, fmnist_dir):
    return ["--server", server, "--data-dir", str(fmnist_dir)]


def test_embeddings_all_layers(common, tmp_path):
    r = run("embeddings", *common, "--model", "lenet", "--layer", "all", "--per-class", "30", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "lenet" / "embeddings.json").read_text())
    layers = s["layers"]
    assert list(layers) == ["input", "conv1", "pool1", "conv2", "pool2", "fc1", "fc2", "logits"]
    # A trained lenet separates classes better at fc2 than on raw pixels.
    assert layers["fc2"]["knn_acc_layer"] > layers["input"]["knn_acc_layer"]
    for m in layers.values():
        assert 0.5 < m["trustworthiness"] <= 1 and -1 <= m["silhouette_layer"] <= 1 and m["points"] == 300
    assert (tmp_path / "lenet" / "embeddings_layers.png").stat().st_size > 10_000
    assert (tmp_path / "lenet" / "embeddings_fc1.png").is_file() and "kNN layer" in r.output


def test_embeddings_thumbnails_and_unknown_layer(common, tmp_path):
    r = run("embeddings", *common, "--model", "lenet", "--layer", "fc1", "--per-class", "10", "--thumbnails",
            "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "lenet" / "embeddings_fc1_thumbnails.png").is_file()
    r = run("embeddings", *common, "--model", "lenet", "--layer", "fc9", "--out", str(tmp_path))
    assert r.exit_code != 0 and "fc1" in r.output and "fc9" in r.output
    r = run("embeddings", *common, "--model", "nope", "--out", str(tmp_path))
    assert r.exit_code == 1 and "unknown model" in r.output and "lenet" in r.output


def test_gradcam(common, tmp_path):
    r = run("gradcam", *common, "--model", "lenet", "--target", "true", "--sensitivity", "Sneaker",
            "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    g = json.loads((tmp_path / "lenet" / "gradcam.json").read_text())
    assert g["grid"]["targets"] == g["grid"]["true"] and g["grid"]["images"] == 20
    assert g["sensitivity"]["class"] == "Sneaker" and len(g["sensitivity"]["cam_max"]) == 10
    assert all(np.isfinite(g["grid"]["cam_max"])) and min(g["grid"]["cam_max"]) >= 0
    assert (tmp_path / "lenet" / "gradcam_true.png").is_file()
    assert (tmp_path / "lenet" / "gradcam_sensitivity_7.png").is_file()
    r = run("gradcam", *common, "--model", "lenet", "--target", "Spaceship", "--out", str(tmp_path))
    assert r.exit_code == 2 and "Sneaker" in r.output
    r = run("gradcam", *common, "--model", "mlp", "--out", str(tmp_path))
    assert r.exit_code == 1 and "Grad-CAM" in r.output


def test_accuracy(common, tmp_path):
    r = run("accuracy", *common, "--model", "lenet", "--limit", "2000", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    a = json.loads((tmp_path / "lenet" / "accuracy.json").read_text())
    cm = np.array(a["confusion_matrix"])
    counts = [c["support"] for c in a["per_class"]]
    assert cm.sum() == 2000 and list(cm.sum(axis=1)) == counts  # rows are the true classes
    assert a["accuracy"] == pytest.approx(np.trace(cm) / 2000) and a["accuracy"] > 0.6
    assert len(a["history"]) == 2 and (tmp_path / "lenet" / "curves.png").is_file()
    for f in ("confusion.png", "mistakes.png"):
        assert (tmp_path / "lenet" / f).stat().st_size > 5_000


def test_vae(common, fmnist_dir, tmp_path):
    """`analyze vae` on the served cvae: its reconstruction MSE is under half the mean training image's (measured
    here, ~0.087; a decoder answering 0.5 everywhere scores 0.170 and passed the former ``mse < 0.2``) and its BCE
    beats the mean image's nats. Catches a VAE whose reconstructions ignore the input, or an MSE computed on
    something else than the test images against their reconstructions."""
    from tests.helpers.baselines import mean_image
    r = run("vae", *common, "--model", "cvae", "--pair", "3,17", "--steps", "6", "--images", "300",
            "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    v = json.loads((tmp_path / "cvae" / "vae.json").read_text())
    base = mean_image(fmnist_dir)
    print(f"cvae mse {v['mse']:.4f} (mean image {base['mse']:.4f}), bce {v['bce']:.1f} (mean image {base['bce']:.1f})")
    assert np.isfinite(v["psnr"]) and v["psnr"] > 0 and 0 < v["mse"] < 0.5 * base["mse"], (v["mse"], base)
    assert v["bce"] < base["bce"] - 40, (v["bce"], base)
    assert v["kl"] > 0 and v["bce"] > 0 and v["elbo"] == pytest.approx(-(v["bce"] + v["kl"]))
    assert v["pairs"] == [[3, 17]] and v["steps"] == 6
    r = run("vae", *common, "--model", "lenet", "--out", str(tmp_path))
    assert r.exit_code == 1 and "not a VAE" in r.output


def test_report_renders_in_chromium(common, tmp_path):
    r = run("report", *common, "--model", "lenet", "--model", "cvae", "--per-class", "10", "--out", str(tmp_path))
    assert r.exit_code == 0, r.output
    page = (tmp_path / "report.html").read_text()
    assert "http://" not in page and "https://" not in page, "the report must read offline"
    n_images = page.count("<img ")
    assert n_images >= 8
    from tests.analysis.test_report import chromium_decoded
    decoded, total = chromium_decoded(tmp_path / "report.html")
    assert decoded == total == n_images


def test_server_down_is_one_line_and_nonzero(tmp_path):
    from tests.helpers.server import free_port
    r = run("accuracy", "--server", f"127.0.0.1:{free_port()}", "--model", "lenet", "--out", str(tmp_path))
    assert r.exit_code == 1 and "no Glassbox server" in r.output and "Traceback" not in r.output


def test_analysis_imports_without_torch():
    from tests.helpers.paths import BLOCK_TORCH
    code = BLOCK_TORCH + ("import analysis.cli, analysis.report, analysis.embeddings, analysis.vae, analysis.gradcam\n"
                          "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
