"""Faithfulness metrics on known maps, the randomisation check, and ``analyze explain`` through a server."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from markupsafe import escape
from scipy.ndimage import sobel
from scipy.stats import spearmanr

from analysis import faithfulness as ff
from analysis.cli import cli
from tests.helpers.server import start_server, stop_server


def synthetic(n=64, side=8, seed=0):
    """A two-class 'model' whose evidence is known: logit = sum(w * x) - bias on a few pixels."""
    rng = np.random.default_rng(seed)
    w = np.zeros((side, side))
    w[rng.choice(side, 6), rng.choice(side, 6)] = rng.uniform(1, 3, 6)
    x = rng.uniform(0.2, 1.0, (n, 1, side, side)).astype(np.float32)
    bias = float((w * 0.6).sum()) - 2.0

    def probs(images, targets):
        logit = (images[:, 0] * w).sum((1, 2)) - bias
        p1 = 1 / (1 + np.exp(-logit))
        return np.where(targets == 1, p1, 1 - p1)
    return x, w, probs


def _aucs(probs, x, maps, targets):
    c = ff.deletion_insertion(probs, x, maps, targets, steps=16, removed=0.0, start=np.zeros_like(x))
    return ff.auc(c["deletion"]), ff.auc(c["insertion"])


def test_perfect_map_beats_random_and_inverted_loses():
    x, w, probs = synthetic()
    t = np.ones(len(x), np.int64)
    evidence = x[:, 0] * w  # each pixel's true contribution to the logit
    d_true, i_true = _aucs(probs, x, evidence, t)
    d_rand, i_rand = _aucs(probs, x, ff.random_maps(evidence.shape, 1), t)
    d_inv, i_inv = _aucs(probs, x, -evidence, t)
    assert np.mean(d_true < d_rand) >= 0.9 and np.mean(i_true > i_rand) >= 0.9
    assert d_true.mean() < d_rand.mean() < d_inv.mean()
    assert i_true.mean() > i_rand.mean() > i_inv.mean()
    table = ff.summarise({"true": {"deletion": d_true, "insertion": i_true},
                          "inverted": {"deletion": d_inv, "insertion": i_inv},
                          "random": {"deletion": d_rand, "insertion": i_rand}})
    assert table["true"]["beats_random_deletion"] >= 0.9 and table["inverted"]["beats_random_deletion"] <= 0.1
    words = ff.verdicts(table, {})
    assert words["true"] == "passes both checks" and "does not beat the random map" in words["inverted"]


def test_curves_start_and_end_where_they_should():
    x, w, probs = synthetic(n=8)
    t = np.ones(len(x), np.int64)
    c = ff.deletion_insertion(probs, x, x[:, 0] * w, t, steps=4, removed=0.0, start=np.zeros_like(x))
    np.testing.assert_allclose(c["deletion"][:, 0], probs(x, t))        # nothing removed: the image
    np.testing.assert_allclose(c["deletion"][:, -1], probs(np.zeros_like(x), t))  # all removed
    np.testing.assert_allclose(c["insertion"][:, -1], probs(x, t))       # all inserted: the image again
    assert c["fractions"].tolist() == [0, 0.25, 0.5, 0.75, 1]


def test_randomisation_flags_a_method_that_ignores_the_weights():
    x, w, _ = synthetic()
    rng = np.random.default_rng(3)
    edges = np.hypot(sobel(x[:, 0], axis=1), sobel(x[:, 0], axis=2))  # the same for any weights
    w_random = rng.normal(size=w.shape)
    edge = ff.randomisation(edges, edges)
    grad = ff.randomisation(x[:, 0] * w, x[:, 0] * w_random)  # a map that is the weights' evidence
    assert edge["flagged"] and edge["spearman"] == pytest.approx(1.0)
    assert not grad["flagged"] and grad["spearman"] < 0.3
    table = {"edges": {"deletion_auc": 0.1, "beats_random_deletion": 1.0}, "random": {"deletion_auc": 0.5}}
    assert "re-initialised" in ff.verdicts(table, {"edges": edge})["edges"]


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.random((3, 5, 5))
    b = a + rng.normal(scale=0.3, size=a.shape)
    b[1] = np.round(b[1], 1)  # ties
    want = [spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(3)]
    np.testing.assert_allclose(ff.spearman(a, b), want, rtol=1e-9)
    assert ff.spearman(a, np.zeros_like(a)).tolist() == [0, 0, 0]  # a constant map has no ranking


@pytest.fixture(scope="module")
def explain_server(explain_repository):
    proc, address = start_server(explain_repository)
    yield address
    stop_server(proc)


def test_analyze_explain_through_the_server(explain_server, fmnist_dir, tmp_path):
    r = CliRunner().invoke(cli, ["explain", "--server", explain_server, "--model", "lenet", "--images", "24",
                                 "--steps", "4", "--data-dir", str(fmnist_dir), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "lenet" / "explain.json").read_text())
    methods = ["gradcam", "gradcampp", "saliency", "ig", "smoothgrad"]
    assert res["methods"] == methods and res["images"] == 24 and res["randomised_model"] == "lenet-randomized"
    assert set(res["table"]) == {*methods, "random", "centre"}
    for m in methods:
        row = res["table"][m]
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["beats_random_deletion"] <= 1
        assert -1 <= row["randomisation_spearman"] <= 1
        assert res["verdicts"][m] and m in r.output
    for f in ("explain_curves.png", "explain_grid.png"):
        assert (tmp_path / "lenet" / f).stat().st_size > 1000
    # the report's explanations section: the grid, the curves, the table and the verdicts, in words
    from analysis.report import render
    from serving.client import GlassboxClient
    with GlassboxClient(explain_server) as client:
        man = client.get_model("lenet")
    page = render({"lenet": {"manifest": man, "explain": res}}, tmp_path, explain_server).read_text()
    assert "<h3>Explanations: gradcam, gradcampp, saliency, ig, smoothgrad</h3>" in page
    assert page.count("data:image/png;base64,") == 2 and "lenet-randomized" in page
    assert all(f"<b>{m}</b>: {escape(res['verdicts'][m])}" in page for m in methods)
    bad = CliRunner().invoke(cli, ["explain", "--server", explain_server, "--model", "lenet", "--methods", "lime",
                                   "--data-dir", str(fmnist_dir), "--out", str(tmp_path)])
    assert bad.exit_code == 1 and "does not carry lime" in bad.output
