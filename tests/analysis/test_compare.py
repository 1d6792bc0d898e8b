"""``analyze compare``, ``analyze snapshots`` and ``analyze report --study`` on run folders built here in
the train-all contract (study.json, summary.json, <variant>/history.json, metrics.json, config.json,
first_layer.npy, snapshots/index.json + exported ONNX snapshots).

    .venv/bin/python -m pytest -q tests/analysis/test_compare.py -p no:cacheprovider

The study folders are synthetic (numbers chosen so the right answers are known); the snapshot
models are real ONNX exports of untrained torch models, run on real Fashion-MNIST test images.
"""
import base64
import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_hex

from analysis import compare, curves, plots
from analysis.cli import cli
from glassbox.data import dataset_info
from tests.helpers.files import strict_json

CLASSES = dataset_info("fashion-mnist")["classes"]
VARIANTS = ["none", "l2", "l1"]
EPOCHS = 12


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def history(peak_epoch: int, peak: float, test: bool = False, diverge_at: int | None = None) -> list[dict]:
    """Val acc rising to ``peak`` at ``peak_epoch`` then falling; loss falling. ``diverge_at``: the loss
    explodes the epoch before and is null (NaN) from then on, as a diverged run writes it."""
    rows = []
    for e in range(1, EPOCHS + 1):
        val_acc = peak - 0.02 * abs(e - peak_epoch)
        h = {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "train_acc": 0.5 + 0.04 * e,
             "val_acc": val_acc, "lr": 0.1, "seconds": 1.5}
        if test:
            h.update(test_loss=2.3 / e, test_acc=val_acc - 0.01)
        if diverge_at is not None and e == diverge_at - 1:
            h.update(train_loss=5e4, val_loss=8e4)  # blow-up: the loss axis must go log-scale
        if diverge_at is not None and e >= diverge_at:
            h.update(train_loss=None, val_loss=None, val_acc=None, train_acc=None)
        rows.append(h)
    return rows


@pytest.fixture
def study_dir(tmp_path):
    """A 3-variant weight-decay study: 'none' records test curves, 'l1' diverges at epoch 9 and its
    metrics.json has no best_val (the table must find it in the history)."""
    d = tmp_path / "weight-decay"
    specs = {"none": (5, 0.80, True, None), "l2": (8, 0.84, False, None), "l1": (3, 0.70, False, 9)}
    rng = np.random.default_rng(0)
    runs = []
    for i, (name, (peak_epoch, peak, test, diverge)) in enumerate(specs.items()):
        write(d / name / "history.json", history(peak_epoch, peak, test, diverge))
        metrics = {"val_metric": "val_acc", "best_val": peak, "best_epoch": peak_epoch, "test_acc": peak - 0.015,
                   "epochs_run": EPOCHS, "wall_seconds": 18.0 + i, "weight_l2": 3.5 - i,
                   "weights_above_1e-3": 7840 - 1000 * i, "weights_total": 7850}
        if name == "l1":
            del metrics["best_val"], metrics["best_epoch"]
        write(d / name / "metrics.json", metrics)
        write(d / name / "config.json", {"model": {"name": "logreg", "args": {}},
                                         "dataset": {"name": "fashion-mnist"}})
        if name != "l1":
            np.save(d / name / "first_layer.npy", (rng.standard_normal((10, 784)) * (0.1 + i)).astype(np.float32))
        runs.append({"run": name, "test_acc": metrics["test_acc"], "best_val": peak, "val_metric": "val_acc",
                     "epochs": EPOCHS, "wall_seconds": 18.0 + i})
    write(d / "summary.json", {"profile": "test", "runs": runs, "total_seconds": 57.0})
    write(d / "study.json", {"name": "weight-decay", "title": "Weight decay on logistic regression",
                             "report": "001", "reported": "Figure 3: L1 makes the weights sparse",
                             "measures": ["weight_l2", "weights_above_1e-3"], "variants": VARIANTS, "zoom": 4,
                             "test_curves": True, "notes": "lr 0.1, 12 epochs"})
    return d


# --- analyze compare ---------------------------------------------------------------------------------

def test_compare_writes_table_json_markdown_and_figures(study_dir, tmp_path):
    out = tmp_path / "cmp"
    r = run("compare", study_dir, "--out", out)
    assert r.exit_code == 0, r.output
    res = strict_json(out / "compare.json")
    rows = {row["variant"]: row for row in res["rows"]}
    assert [row["variant"] for row in res["rows"]] == VARIANTS          # study.json's order, not sorted
    assert res["metric"] == "acc" and res["study"]["report"] == "001" and res["study"]["zoom"] == 4
    assert (rows["none"]["best_val"], rows["none"]["best_epoch"]) == (0.80, 5)
    assert (rows["l2"]["best_val"], rows["l2"]["best_epoch"]) == (0.84, 8)
    # l1 has no best_val in metrics.json: found in the history, skipping the nulls after it diverged.
    assert rows["l1"]["best_val"] == pytest.approx(0.70) and rows["l1"]["best_epoch"] == 3
    assert rows["l1"]["diverged_epoch"] == 9 and rows["l1"]["final_val"] is None
    assert rows["none"]["final_val"] == pytest.approx(0.80 - 0.02 * 7)
    assert rows["l2"]["test"] == pytest.approx(0.825) and rows["l2"]["wall_seconds"] == 19.0
    assert rows["l2"]["weight_l2"] == 2.5 and rows["l1"]["weights_above_1e-3"] == 5840
    assert ["weight_l2", "weight_l2"] in res["columns"] and ["weights_above_1e-3"] * 2 in res["columns"]
    assert "test_acc" in res["curves"]["none"] and "test_acc" not in res["curves"]["l2"]
    # stdout: the aligned table with the measures columns, one line per variant.
    lines = r.output.splitlines()
    head = next(line for line in lines if line.startswith("variant"))
    assert "weight_l2" in head and "weights_above_1e-3" in head and "diverged at epoch" in head
    l2_line = next(line for line in lines if line.startswith("l2 "))
    assert "0.8400" in l2_line and "6840" in l2_line and "2.5" in l2_line
    assert len(head) == len(l2_line)                                    # aligned
    md = re.sub(" +", " ", (out / "compare.md").read_text())  # tabulate pads the cells to the column width
    assert "| variant | final val acc | best val acc | best epoch |" in md and "| l1 |" in md
    assert res["figures"] == ["compare_curves.png", "first_layer_weights.png"]
    for f in res["figures"]:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_default_out_and_no_study_json(study_dir):
    """Without study.json every subfolder with a history.json is a variant, sorted; the table picks
    the metric and the output folder by default."""
    (study_dir / "study.json").unlink()
    (study_dir / "notes").mkdir()                           # a folder without a history.json is no variant
    r = run("compare", study_dir)
    assert r.exit_code == 0, r.output
    res = strict_json(study_dir / "compare" / "compare.json")
    assert [row["variant"] for row in res["rows"]] == sorted(VARIANTS)
    assert res["study"]["name"] == "weight-decay" and res["study"]["zoom"] == 10 and res["study"]["measures"] == []


def test_compare_figure_one_line_per_variant_zoom_and_log_scale(study_dir):
    hist = {v: json.loads((study_dir / v / "history.json").read_text()) for v in VARIANTS}
    fig = curves.compare_curves_figure(hist, "t", "s", zoom=4)
    axes = np.array(fig.axes).reshape(2, 3)                 # rows loss, acc; columns all, first 4, last 4
    for ax in axes.flat:
        val_lines = [line for line in ax.get_lines() if line.get_label().endswith(" val")]
        assert len({to_hex(line.get_color()) for line in val_lines}) == len(val_lines)  # a colour per variant
    loss_all = [line.get_label() for line in axes[0, 0].get_lines()]
    assert sorted(loss_all) == sorted(["none train", "none val", "none test", "l2 train", "l2 val",
                                       "l1 train", "l1 val"])
    styles = {line.get_label(): line.get_linestyle() for line in axes[0, 0].get_lines()}
    assert (styles["none train"], styles["none val"], styles["none test"]) == ("-", "--", ":")
    assert axes[0, 0].get_yscale() == "log" and axes[1, 0].get_yscale() == "linear"  # l1's blow-up: > 2 decades
    first = [x for line in axes[1, 1].get_lines() for x in line.get_xdata()]
    last = [x for line in axes[1, 2].get_lines() for x in line.get_xdata()]
    assert min(first) == 1 and max(first) == 4 and min(last) == 9 and max(last) == 12
    # l1 is null from epoch 9: no l1 accuracy in the last-4 panel.
    assert not any(np.isfinite(line.get_ydata()).any() for line in axes[1, 2].get_lines()
                   if line.get_label().startswith("l1 "))
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert legend[:3] == VARIANTS and "test (curves only)" in legend
    assert fig._suptitle.get_text() == "t\ns"
    plots.save(fig, study_dir / "f.png")


def test_label_loss_of_a_distilled_run_is_drawn():
    hist = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "train_label_loss": 1.5 / e,
             "train_acc": 0.5, "val_acc": 0.5} for e in range(1, 4)]
    fig = curves.compare_curves_figure({"student": hist}, zoom=10)
    assert len(fig.axes) == 2                                              # loss, acc; no zoom for 3 epochs
    labels = {line.get_label(): line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert labels["student label"] == "-." and "train, label loss" in [t.get_text() for t in fig.legends[0].texts]


def test_first_layer_weights_are_ten_images_per_variant(study_dir):
    study, variants = compare.load_study(study_dir)
    fig, notes = compare.first_layer_figure(study, variants)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 * 10                                           # l1 saved none: 2 rows of 10
    assert images[0].images[0].get_array().shape == (28, 28)
    lo, hi = images[0].images[0].get_clim()
    assert lo == -hi and hi == pytest.approx(np.abs(np.load(study_dir / "none" / "first_layer.npy")).max())
    assert [ax.get_title() for ax in images[:10]] == CLASSES               # logreg: one unit per class
    conv, kind = compare.layer_images(np.zeros((6, 1, 5, 5), np.float32))
    assert conv.shape == (6, 5, 5) and kind == "conv"
    assert compare.layer_images(np.zeros((300, 784)))[0] is None            # an MLP's 300 units: not drawn
    assert compare.layer_images(np.zeros((10, 700)))[0] is None             # 700 is not a square image


def test_compare_vae_study_is_loss_only(tmp_path):
    d = tmp_path / "beta"
    for i, name in enumerate(["beta1", "beta4"]):
        write(d / name / "history.json", [{"epoch": e, "train_loss": 300 / e + i, "val_loss": 310 / e + i,
                                           "train_recon": 250 / e, "train_kl": 10 + i, "val_recon": 260 / e,
                                           "val_kl": 11 + i, "lr": 1e-3, "seconds": 2} for e in range(1, 6)])
        write(d / name / "metrics.json", {"val_metric": "val_loss", "best_val": 310 / 5 + i, "best_epoch": 5,
                                          "test_loss": 65.0 + i, "epochs_run": 5, "wall_seconds": 10})
    r = run("compare", d, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    res = strict_json(tmp_path / "o" / "compare.json")
    assert res["metric"] == "loss" and res["rows"][1]["test"] == 66.0 and res["rows"][0]["best_epoch"] == 5
    assert res["curves"]["beta1"] == ["train_loss", "val_loss", "train_recon", "val_recon", "train_kl", "val_kl"]
    assert "best val loss" in r.output and "first_layer_weights.png" not in res["figures"]
    r = run("compare", d, "--metric", "acc")
    assert r.exit_code != 0 and "records val_acc" in r.output and "--metric loss" in r.output


@pytest.mark.parametrize("case", ["missing", "empty", "listed-but-absent", "bad-json", "bad-study"])
def test_compare_bad_input_is_one_line_error(tmp_path, study_dir, case):
    target = {"missing": tmp_path / "nope", "empty": tmp_path / "empty"}.get(case, study_dir)
    if case == "empty":
        target.mkdir()
    if case == "listed-but-absent":
        write(study_dir / "study.json", {"variants": ["none", "ghost"]})
    if case == "bad-json":
        (study_dir / "l2" / "history.json").write_text("[{")
    if case == "bad-study":
        write(study_dir / "study.json", {"variants": VARIANTS, "zoom": "ten"})
    r = run("compare", target)
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    want = {"missing": "no such folder", "empty": "no runs inside", "listed-but-absent": "ghost",
            "bad-json": "not valid JSON", "bad-study": "zoom a positive integer"}[case]
    assert want in lines[0]


# --- analyze report --study ------------------------------------------------------------------------

def test_report_with_a_study_needs_no_server(study_dir, tmp_path):
    out = tmp_path / "rep"
    r = run("report", "--study", study_dir, "--out", out, "--server", "127.0.0.1:1")  # nothing listens there
    assert r.exit_code == 0, r.output
    page = (out / "report.html").read_text()
    assert 'id="study-weight-decay"' in page and "Weight decay on logistic regression" in page
    assert "<th>weights_above_1e-3</th>" in page and "<td>l1</td>" in page and "<td>0.8400</td>" in page
    srcs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(srcs) == 2 and all(base64.b64decode(s)[:4] == b"\x89PNG" for s in srcs)
    assert strict_json(out / "report.json")["studies"][0]["rows"][0]["variant"] == "none"
    r = run("report", "--study", tmp_path / "nope", "--out", out)
    assert r.exit_code == 1 and "no such folder" in r.output


# --- analyze snapshots -----------------------------------------------------------------------------

def _config(model: str, fmnist_dir) -> dict:
    info = dataset_info("fashion-mnist")
    unit = model == "cvae"  # VAEs take pixels in [0, 1]
    return {"model": {"name": model, "args": {}},
            "dataset": {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "channels": 1, "size": [28, 28],
                        "mean": [0.0] if unit else info["mean"], "std": [1.0] if unit else info["std"],
                        "classes": info["classes"]}}


def _snapshot_run(root, model_name: str, fmnist_dir, seeds=(0, 1)):
    """A run folder whose snapshots are real exports of ``model_name`` with different (untrained) weights."""
    import torch

    from glassbox.data import load_dataset
    from training.export import export_model
    from training.models import create_model
    images = load_dataset("fashion-mnist", split="test", data_dir=fmnist_dir).images[:16]
    run_dir = root / model_name
    index, models = [], []
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)
        model = create_model(model_name)
        name = f"{model_name}-s{i}"
        res = export_model(model, _config(model_name, fmnist_dir), run_dir / "snapshots" / "exported", name,
                           images=images, batch_sizes=(1, 8))
        index.append({"tag": f"epoch-{i + 1}", "epoch": i + 1, "train_acc": 0.1 + 0.3 * i, "model": name,
                      "version": res.version, "checkpoint": f"snapshots/epoch-{i + 1}.pt"})
        models.append(model)
    write(run_dir / "snapshots" / "index.json", index)
    return run_dir, models


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory, fmnist_dir):
    return _snapshot_run(tmp_path_factory.mktemp("snap"), "lenet", fmnist_dir)


def test_snapshots_feature_maps_match_torch(lenet_run, fmnist_dir, tmp_path):
    import torch

    from glassbox.data import class_balanced_sample, load_dataset, preprocess
    run_dir, models = lenet_run
    r = run("snapshots", run_dir, "--layer", "conv1", "--images", 3, "--channels", 4, "--data-dir", fmnist_dir,
            "--out", tmp_path)
    assert r.exit_code == 0, r.output
    res = strict_json(tmp_path / "snapshots_conv1.json")
    assert [s["tag"] for s in res["snapshots"]] == ["epoch-1", "epoch-2"]          # index order
    assert res["channels_shown"] == 4 and res["snapshots"][0]["shape"] == [6, 28, 28]
    assert (tmp_path / "snapshots_conv1.png").read_bytes()[:4] == b"\x89PNG"
    # The same images as a seeded class-balanced pick, and the same activations torch computes.
    ds = load_dataset("fashion-mnist", split="test", data_dir=fmnist_dir)
    pick = class_balanced_sample(ds, 1, seed=0)
    assert res["images"]["labels"] == pick.labels[:3].tolist()
    x = torch.from_numpy(preprocess(pick.images[:3], _config("lenet", fmnist_dir)["dataset"]))
    for snap, model in zip(res["snapshots"], models, strict=True):
        with torch.no_grad():
            _, feats = model.eval().forward_intermediates(x)
        assert snap["mean_activation"] == pytest.approx(float(feats["conv1"].mean()), rel=1e-4)
    assert res["snapshots"][0]["mean_activation"] != pytest.approx(res["snapshots"][1]["mean_activation"])
    # A vector layer is drawn too (as one square image per image).
    r = run("snapshots", run_dir, "--layer", "fc2", "--images", 2, "--data-dir", fmnist_dir, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert strict_json(tmp_path / "snapshots_fc2.json")["snapshots"][1]["shape"] == [84]


def test_snapshot_feature_figure_rows_and_columns():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    maps = [("epoch-1", rng.random((3, 4, 7, 7))), ("epoch-2", rng.random((3, 4, 7, 7)) * 5)]
    fig = plots.feature_maps_figure(imgs, maps, ["a", "b", "c"], "t")
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 3 + 2 * 3 * 4                                     # inputs + snapshots x images x channels
    assert [ax.get_title() for ax in drawn if ax.get_title().startswith("ch ")] == [f"ch {c}" for c in range(4)] * 3
    # A column (image 0, channel 0) shares its colour range down the snapshot rows (3 x 4 maps + 2 gaps a row).
    ncols = 3 * 4 + 2
    both = np.concatenate([maps[0][1][0, 0], maps[1][1][0, 0]])
    assert fig.axes[ncols].images[0].get_clim() == fig.axes[2 * ncols].images[0].get_clim() == (both.min(), both.max())


def test_snapshots_bad_input(lenet_run, fmnist_dir, tmp_path):
    run_dir, _ = lenet_run
    r = run("snapshots", run_dir, "--layer", "conv9", "--data-dir", fmnist_dir, "--out", tmp_path)
    assert r.exit_code == 2 and "unknown layer 'conv9'" in r.output and "conv1, pool1, conv2" in r.output
    r = run("snapshots", run_dir, "--data-dir", fmnist_dir, "--out", tmp_path)
    assert r.exit_code == 2 and "need a layer" in r.output
    r = run("snapshots", tmp_path, "--layer", "conv1")
    assert r.exit_code == 1 and "no snapshots" in r.output and len(r.output.strip().splitlines()) == 1
    r = run("snapshots", tmp_path / "nope", "--layer", "conv1")
    assert r.exit_code == 1 and "no such folder" in r.output


def test_snapshots_of_a_vae_draw_reconstructions(tmp_path_factory, fmnist_dir, tmp_path):
    import torch

    from glassbox.data import class_balanced_sample, load_dataset, preprocess
    run_dir, models = _snapshot_run(tmp_path_factory.mktemp("vae"), "cvae", fmnist_dir)
    r = run("snapshots", run_dir, "--images", 5, "--data-dir", fmnist_dir, "--out", tmp_path)
    assert r.exit_code == 0, r.output
    res = strict_json(tmp_path / "snapshots_reconstructions.json")
    assert res["task"] == "vae" and [s["tag"] for s in res["snapshots"]] == ["epoch-1", "epoch-2"]
    pick = class_balanced_sample(load_dataset("fashion-mnist", split="test", data_dir=fmnist_dir), 1, seed=0)
    x = torch.from_numpy(preprocess(pick.images[:5], _config("cvae", fmnist_dir)["dataset"]))
    for snap, model in zip(res["snapshots"], models, strict=True):
        with torch.no_grad():
            recon = model.eval().decode(model.encode(x)[0])
        assert snap["mse"] == pytest.approx(float(((recon - x) ** 2).mean()), rel=1e-4)
    assert (tmp_path / "snapshots_reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    assert math.isfinite(res["snapshots"][0]["mse"])


# --- no torch --------------------------------------------------------------------------------------

def test_compare_and_snapshots_run_without_torch(study_dir, lenet_run, fmnist_dir, tmp_path):
    """With torch unimportable (sys.modules['torch'] = None) both commands import and compute."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None\n"
            "import analysis.compare, analysis.snapshots, analysis.report\n"
            "from click.testing import CliRunner\n"
            "from analysis.cli import cli\n"
            "study, run, out, data = sys.argv[1:]\n"
            "for args in (['compare', study, '--out', out],\n"
            "             ['snapshots', run, '--layer', 'conv2', '--data-dir', data, '--out', out]):\n"
            "    r = CliRunner().invoke(cli, args)\n"
            "    assert r.exit_code == 0, r.output\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code, str(study_dir), str(lenet_run[0]), str(tmp_path), str(fmnist_dir)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
    assert (tmp_path / "compare.json").is_file() and (tmp_path / "snapshots_conv2.png").is_file()
