"""The pure parts of the analysis CLI on synthetic arrays: metrics, figures, t-SNE, the HTML page.

No server and no dataset files: these run in a few seconds and pin down the numbers the
end-to-end tests (tests/analysis/test_analysis.py) only check for sense.
"""
import base64
import json
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from analysis import embeddings, metrics, plots, report
from analysis.common import write_json


def blobs(n_per=40, k=4, dims=8, spread=0.3, seed=0):
    """k well separated Gaussian blobs: class c is centred at 5 * e_c."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    centres = np.zeros((k, dims))
    centres[np.arange(k), np.arange(k)] = 5.0
    return centres[y] + spread * rng.standard_normal((len(y), dims)), y


# --- metrics -----------------------------------------------------------------------------------------

def test_separation_tells_separable_from_random():
    x, y = blobs()
    good = metrics.separation(x, x[:, :2] + x[:, 2:4], y)
    assert good["knn_acc_layer"] == 1.0 and good["silhouette_layer"] > 0.8
    assert good["dims"] == 8 and good["points"] == 160 and 0.5 < good["trustworthiness"] <= 1.0
    noise = np.random.default_rng(1).standard_normal(x.shape)
    bad = metrics.separation(noise, noise[:, :2], y)
    assert bad["knn_acc_layer"] < 0.5 and abs(bad["silhouette_layer"]) < 0.1
    # A 2-D map that keeps every neighbourhood is perfectly trustworthy.
    assert metrics.trustworthiness(x[:, :2], x[:, :2].copy()) == pytest.approx(1.0)


def test_knn_and_silhouette_degenerate_inputs_are_nan_not_errors():
    x, y = blobs(n_per=1)
    assert np.isnan(metrics.knn_accuracy(x, y))           # one image per class: no 2-fold CV
    assert np.isnan(metrics.silhouette(x, np.zeros(len(x), int)))


def test_trustworthiness_subsamples_large_inputs(monkeypatch):
    monkeypatch.setattr(metrics, "TRUSTWORTHINESS_MAX_POINTS", 100)
    x, _ = blobs(n_per=100)
    assert 0.5 < metrics.trustworthiness(x, x[:, :2]) <= 1.0


def test_classification_report_rows_are_true_classes():
    classes = ["a", "b", "c"]
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 1, 0])
    r = metrics.classification_report(y_true, y_pred, classes)
    cm = np.array(r["confusion_matrix"])
    assert cm.tolist() == [[1, 2, 0], [0, 2, 0], [1, 0, 0]]
    assert list(cm.sum(axis=1)) == [c["support"] for c in r["per_class"]] == [3, 2, 1]
    assert r["accuracy"] == pytest.approx(3 / 6)
    b = r["per_class"][1]
    assert b["precision"] == pytest.approx(0.5) and b["recall"] == 1.0 and b["f1"] == pytest.approx(2 / 3)
    assert r["per_class"][2]["f1"] == 0.0  # never predicted: 0, not a warning or NaN


def test_vae_metrics_known_values():
    x = np.full((2, 1, 4, 4), 0.5, np.float32)
    recon = x + 0.1                                                  # MSE 0.01 -> PSNR 20 dB
    mean, logvar = np.zeros((2, 3)), np.zeros((2, 3))               # the prior itself: KL 0
    m = metrics.vae_metrics(x, recon, mean, logvar)
    assert m["mse"] == pytest.approx(0.01, rel=1e-4) and m["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert m["kl"] == pytest.approx(0.0, abs=1e-9) and m["latent_dim"] == 3 and m["pixels_per_image"] == 16
    bce = -16 * (0.5 * np.log(0.6) + 0.5 * np.log(0.4))
    assert m["bce"] == pytest.approx(bce, rel=1e-5) and m["elbo"] == pytest.approx(-bce, rel=1e-5)
    m = metrics.vae_metrics(x, recon, np.ones((2, 3)), np.zeros((2, 3)))
    assert m["kl"] == pytest.approx(1.5)                            # 0.5 * sum(mean^2)
    assert np.isfinite(metrics.vae_metrics(x, x, mean, logvar)["psnr"])  # a perfect copy stays finite


def test_normalize_maps_per_image():
    cams = np.stack([np.arange(16.0).reshape(4, 4), np.full((4, 4), 7.0), -np.arange(16.0).reshape(4, 4) * 1e-6])
    n = metrics.normalize_maps(cams)
    assert n.dtype == np.float32 and n.shape == cams.shape
    assert n[0].min() == 0 and n[0].max() == 1 and n[2].min() == 0 and n[2].max() == pytest.approx(1)
    assert (n[1] == 0).all()  # a flat map has nothing to show


# --- t-SNE -------------------------------------------------------------------------------------------

def test_tsne_is_fast_and_keeps_classes_apart():
    x, y = blobs(n_per=100, k=5, dims=60)   # > 50 dims: goes through the PCA step
    t0 = time.perf_counter()
    xy = embeddings.tsne(x, seed=0, jobs=1)
    took = time.perf_counter() - t0
    assert xy.shape == (500, 2) and np.isfinite(xy).all()
    assert metrics.knn_accuracy(xy, y) > 0.95
    assert took < 20, f"t-SNE of 500 points took {took:.1f}s"
    assert np.allclose(xy, embeddings.tsne(x, seed=0, jobs=1))   # seeded: the same map twice


# --- figures -----------------------------------------------------------------------------------------

def png_ok(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes, path
    return True


def test_every_figure_draws(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"class {i}" for i in range(10)]
    y = np.arange(60) % 10
    xy = rng.standard_normal((60, 2))
    sep = metrics.separation(xy, xy, y)
    fig = plots.embedding_figure("fc1", xy, xy, y, classes, sep, "m", [0.3, 0.2])
    assert png_ok(plots.save(fig, tmp_path / "e.png"))
    assert png_ok(plots.save(plots.layers_grid([("input", xy), ("fc1", xy), ("fc2", xy), ("logits", xy)], y, classes,
                                               {"fc1": sep}, "m"), tmp_path / "g.png"))
    gray = rng.random((60, 1, 28, 28)).astype(np.float32)
    rgb = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)   # uint8 HWC works too
    assert png_ok(plots.save(plots.thumbnail_map(xy, gray, y, classes), tmp_path / "t.png"))
    assert png_ok(plots.save(plots.overlay_grid(rgb, rng.random((12, 32, 32)), ["x"] * 12, "cams"), tmp_path / "o.png"))
    cm = rng.integers(0, 50, (10, 10))
    assert png_ok(plots.save(plots.confusion_figure(cm, classes), tmp_path / "c.png"))
    fig = plots.image_grid(gray[:10], [str(i) for i in range(10)], suptitle="grid")
    assert png_ok(plots.save(fig, tmp_path / "i.png"))
    hist = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 1 - 0.5 / e, "val_acc": 1 - 0.6 / e}
            for e in range(1, 6)]
    assert png_ok(plots.save(plots.curves_figure(hist), tmp_path / "h.png"))
    assert png_ok(plots.save(plots.rows_figure([gray[:6], gray[6:12]], ["a", "b"], [f"{a:.1f}" for a in range(6)]),
                             tmp_path / "r.png"), 2_000)


def test_to_display_layouts():
    assert plots.to_display(np.zeros((1, 5, 6))).shape == (5, 6)
    assert plots.to_display(np.zeros((3, 5, 6))).shape == (5, 6, 3)
    assert plots.to_display(np.zeros((5, 6, 3))).shape == (5, 6, 3)
    assert plots.to_display(np.full((5, 6), 255, np.uint8)).max() == 1.0


def test_class_legend_has_every_class_name():
    fig = plots.embedding_figure("fc1", np.zeros((3, 2)), np.zeros((3, 2)), np.array([0, 1, 2]),
                                 ["Coat", "Bag", "Shirt"])
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert texts == ["Coat", "Bag", "Shirt"]


# --- JSON and the HTML page --------------------------------------------------------------------------

def test_write_json_is_atomic_and_plain(tmp_path):
    p = write_json(tmp_path / "sub" / "a.json", {"x": np.float32(1.5), "n": np.int64(3), "a": [1, 2]})
    assert json.loads(p.read_text()) == {"x": 1.5, "n": 3, "a": [1, 2]}
    assert [f.name for f in p.parent.iterdir()] == ["a.json"]  # no temporary file left behind


def chromium_decoded(page_path):
    """(decoded, total) <img>s of a page per headless Chromium: a script in a copy sets the title."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("headless Chromium is needed for this check: apt-get install chromium")
    probe = page_path.with_name("probe.html")
    probe.write_text(page_path.read_text().replace("</body>", """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.title = 'decoded=' + imgs.filter(i => i.complete && i.naturalWidth > 0).length + '/' + imgs.length;
});</script></body>"""))
    out = subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>decoded=(\d+)/(\d+)</title>", out.stdout)
    assert m, out.stderr[-2000:]
    return int(m.group(1)), int(m.group(2))


def test_report_page_is_self_contained_and_decodes(tmp_path):
    classes = ["a", "b"]
    d = tmp_path / "m"
    xy = np.random.default_rng(0).standard_normal((20, 2))
    y = np.arange(20) % 2
    plots.save(plots.confusion_figure(np.array([[9, 1], [2, 8]]), classes), d / "confusion.png")
    plots.save(plots.embedding_figure("fc1", xy, xy, y, classes), d / "embeddings_fc1.png")
    (d / "mistakes.png").write_bytes(b"not a png")  # a corrupt figure must show up as not decoded
    acc = {"accuracy": 0.85, "images": 20, "dataset": "toy",
           "per_class": [{"class": c, "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10} for c in classes]}
    man = {"name": "m", "version": 1, "task": "classifier", "dataset": "toy", "labels": classes, "cam_layer": None}
    page = report.render({"m": {"manifest": man, "accuracy": acc}}, tmp_path, "127.0.0.1:1")
    html = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no external resources"
    srcs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(srcs) == html.count("<img") == 2  # the missing curves.png is left out
    assert base64.b64decode(srcs[0])[:4] == b"\x89PNG"
    assert chromium_decoded(page) == (1, 2)    # the corrupt one is caught by the browser check
    (d / "mistakes.png").unlink()
    plots.save(plots.image_grid(np.zeros((2, 1, 8, 8))), d / "mistakes.png")
    page = report.render({"m": {"manifest": man, "accuracy": acc}}, tmp_path, "127.0.0.1:1")
    assert chromium_decoded(page) == (2, 2)



def test_report_escapes_every_name_from_a_manifest_or_study(tmp_path):
    """Names, labels and captions come from files the report does not control: the page must show them
    as text, never as markup (the template is autoescaped)."""
    evil = '<script>alert("x")</script>'
    man = {"name": "m", "version": 1, "task": "classifier", "dataset": evil, "labels": [evil], "cam_layer": evil,
           "provider": evil, "source": {"metrics": {"test_acc": 0.5}}}
    acc = {"accuracy": 0.5, "images": 2, "dataset": evil,
           "per_class": [{"class": evil, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}]}
    study = {"study": {"name": evil, "title": evil, "report": evil, "notes": evil}, "out": str(tmp_path / "s"),
             "metric": "acc", "figures": [], "columns": [("variant", evil)], "rows": [{"variant": evil}]}
    page = report.render({"m": {"manifest": man, "accuracy": acc, "gradcam": {}}}, tmp_path, evil,
                         studies=[study]).read_text()
    assert "<script>" not in page
    shown = page.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;")
    assert shown >= 9, page  # server, dataset x2, provider, class, cam layer, study name x2, title, report, ...
    assert "<td>0.5</td>" in page and "Training: test_acc = 0.5" in page

# --- no torch ----------------------------------------------------------------------------------------

def test_imports_without_torch():
    """The issue's check: with torch made unimportable (sys.modules['torch'] = None), every analysis
    module imports and the CLI answers --help."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import analysis.cli, analysis.common, analysis.embeddings, analysis.gradcam, analysis.accuracy, "
            "analysis.vae, analysis.report, analysis.plots, analysis.metrics\n"
            "from click.testing import CliRunner\n"
            "for cmd in ([], ['embeddings'], ['gradcam'], ['accuracy'], ['vae'], ['report']):\n"
            "    r = CliRunner().invoke(analysis.cli.cli, cmd + ['--help'])\n"
            "    assert r.exit_code == 0 and ('--server' in r.output or not cmd), r.output\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_computes_without_torch_installed():
    """Beyond importing: the numbers and figures are computed with torch absent (an import hook
    refuses it, as if not installed; scipy's probe of sys.modules does not mistake that for torch)."""
    code = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from analysis import embeddings, metrics, plots
x = np.random.default_rng(0).standard_normal((120, 60)); y = np.arange(120) % 3; x[np.arange(120), y] += 6
xy = embeddings.tsne(x, jobs=1)
m = metrics.separation(x, xy, y)
plots.save(plots.embedding_figure("l", embeddings.pca(x)[0], xy, y, ["a", "b", "c"], m), sys.argv[1])
assert "torch" not in sys.modules and m["knn_acc_layer"] > 0.9
print("ok")
"""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-c", code, f"{d}/f.png"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
