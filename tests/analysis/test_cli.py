"""More of the analysis CLI end to end (the session-wide real server of tests/conftest.py: a briefly
trained lenet, mlp and cvae on Fashion-MNIST, and a corrupt 'broken' model that never gets ready).

tests/analysis/test_analysis.py checks each command once; this file checks the numbers against the dataset
itself, the JSON beside the figures, the defaults (every ready model in the report, random VAE
pairs, the predicted class), a VAE's latent space, the progress bars and the usage errors.
"""
import re

import numpy as np
import pytest
from click.testing import CliRunner

from analysis.cli import cli
from glassbox.data import load_dataset
from tests.helpers.files import strict_json


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def opts(server, fmnist_dir):
    return ["--server", server, "--data-dir", fmnist_dir]


@pytest.fixture(scope="module")
def test_split(fmnist_dir):
    return load_dataset("fashion-mnist", split="test", data_dir=fmnist_dir)


def test_accuracy_numbers_match_the_dataset(opts, test_split, tmp_path):
    r = run("accuracy", *opts, "--model", "lenet", "--limit", 1500, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "lenet classify" in r.stderr  # the progress bar
    a = strict_json(tmp_path / "lenet" / "accuracy.json")
    cm = np.array(a["confusion_matrix"])
    assert (cm.sum(axis=1) == np.bincount(test_split.labels[:1500], minlength=10)).all()
    assert re.search(rf"accuracy {a['accuracy']:.4f} on 1500 images", r.output)
    assert "T-shirt/top" in r.output and "Ankle boot" in r.output  # the per-class table
    m = a["most_confident_mistakes"]
    assert m and all(x["true"] != x["predicted"] for x in m)
    assert [x["probability"] for x in m] == sorted((x["probability"] for x in m), reverse=True)
    assert all(test_split.classes[test_split.labels[x["index"]]] == x["true"] for x in m)
    assert a["figures"] == ["confusion.png", "mistakes.png", "curves.png"]
    assert all((tmp_path / "lenet" / f).is_file() for f in a["figures"])


def test_embeddings_json_has_the_plotted_coordinates(opts, tmp_path):
    r = run("embeddings", *opts, "--model", "lenet", "--layer", "fc2", "--layer", "input", "--per-class", 12,
            "--out", tmp_path)
    assert r.exit_code == 0, r.output
    e = strict_json(tmp_path / "lenet" / "embeddings.json")
    assert list(e["layers"]) == ["fc2", "input"] and e["images"] == 120
    assert np.bincount(e["labels"]).tolist() == [12] * 10
    for layer in ("fc2", "input"):
        for method in ("pca", "tsne"):
            assert np.array(e["coordinates"][layer][method]).shape == (120, 2)
    assert e["layers"]["fc2"]["dims"] == 84 and e["layers"]["input"]["dims"] == 784
    assert e["figures"] == ["embeddings_fc2.png", "embeddings_input.png", "embeddings_layers.png"]
    assert all((tmp_path / "lenet" / f).is_file() for f in e["figures"])


def test_embeddings_of_a_vae_latent_space(opts, tmp_path):
    r = run("embeddings", *opts, "--model", "cvae", "--layer", "all", "--per-class", 10, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    e = strict_json(tmp_path / "cvae" / "embeddings.json")
    assert list(e["layers"]) == ["input", "latent"] and e["classes"][0] == "T-shirt/top"
    r = run("embeddings", *opts, "--model", "cvae", "--layer", "fc1", "--out", tmp_path)
    assert r.exit_code == 2 and "latent" in r.output  # the valid names


def test_gradcam_default_target_is_the_prediction_and_index_targets(opts, tmp_path):
    r = run("gradcam", *opts, "--model", "lenet", "--per-class", 1, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    g = strict_json(tmp_path / "lenet" / "gradcam.json")["grid"]
    assert g["targets"] == g["predicted"] and g["images"] == 10 and g["figure"] == "gradcam_predicted.png"
    r = run("gradcam", *opts, "--model", "lenet", "--per-class", 1, "--target", 3, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    g = strict_json(tmp_path / "lenet" / "gradcam.json")["grid"]
    assert g["targets"] == [3] * 10 and (tmp_path / "lenet" / "gradcam_3.png").is_file()
    r = run("gradcam", *opts, "--model", "cvae", "--out", tmp_path)
    assert r.exit_code == 1 and "needs a classifier" in r.output


def test_vae_random_pairs_and_usage_errors(opts, test_split, tmp_path):
    r = run("vae", *opts, "--model", "cvae", "--images", 200, "--samples", 8, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    v = strict_json(tmp_path / "cvae" / "vae.json")
    assert len(v["pairs"]) == 4 and all(0 <= i < len(test_split) for p in v["pairs"] for i in p)
    assert v["alphas"][0] == 0 and v["alphas"][-1] == 1 and len(v["alphas"]) == 10  # --steps default
    # Finite and positive; the mean of per-image PSNRs is at least the PSNR of the mean MSE (Jensen).
    assert np.isfinite(v["psnr"]) and 0 < v["psnr_of_mean_mse"] <= v["psnr"] + 1e-9
    assert v["n"] == 200 and v["latent_dim"] > 0
    for bad in (["--pair", "3"], ["--pair", f"3,{len(test_split)}"], ["--steps", 1], ["--images", 0]):
        r = run("vae", *opts, "--model", "cvae", *bad, "--out", tmp_path)
        assert r.exit_code == 2 and "Usage" in r.output, (bad, r.output)


def test_report_defaults_to_every_ready_model(opts, tmp_path):
    r = run("report", *opts, "--per-class", 5, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    path = re.search(r"report: (\S+report\.html)", r.output).group(1)
    page = open(path).read()
    ids = re.findall(r'<section id="([^"]+)"', page)
    assert sorted(ids) == ["cvae", "lenet", "mlp"]  # 'broken' is not ready, so it is left out
    summary = strict_json(tmp_path / "report.json")
    assert set(summary) == {"cvae", "lenet", "mlp"}
    assert "gradcam" not in summary["mlp"] and "vae" in summary["cvae"] and "accuracy" in summary["lenet"]
    assert summary["cvae"]["embeddings"]["focus"] == "latent"
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', page)
    assert len(imgs) == page.count("<img") >= 20
    r = run("report", *opts, "--model", "lenet", "--model", "nope", "--out", tmp_path)
    assert r.exit_code == 1 and "nope" in r.output and "lenet" in r.output
