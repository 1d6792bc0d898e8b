"""Studies: every shipped study runs in a tiny form through its own config file, and the engine
options the reports need (MSE on one-hot, penalties with biases, init, plain SGD, warmup on any
schedule, distillation, dataset-driven input shape, snapshots) each do what they say."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from training.cli import train, train_all
from training.config import ConfigError, list_studies, load_profile, resolve_config
from training.engine import compute_loss, fit
from training.models import create_model
from training.optim import build_optimizer
from training.prepare import model_args_for_data

QUIET = {"progress": False, "log": lambda *_: None}
# A tiny form of any study: one epoch (two for the snapshot studies), a few hundred images.
TINY = ["--set", "epochs=1", "--set", "dataset.subset=300", "--set", "dataset.test_subset=300",
        "--set", "lda.train_images=300", "--no-export", "--no-progress"]


def _tiny_study(name, out, data_dir, *extra):
    r = CliRunner().invoke(train_all, ["--study", name, "--out", str(out), "--data-dir", str(data_dir), *TINY, *extra])
    assert r.exit_code == 0, r.output
    return json.loads((out / "summary.json").read_text()), json.loads((out / "study.json").read_text())


@pytest.fixture(scope="module")
def data_dir(shared_data, fmnist_dir, tmp_path_factory):
    """One folder holding MNIST (shared data) and Fashion-MNIST (Debian's), as a user's data dir would."""
    d = tmp_path_factory.mktemp("data")
    (d / "mnist").symlink_to(shared_data / "mnist")
    (d / "fashion-mnist").symlink_to(fmnist_dir)
    return d


def assert_holds(want, got, where: str) -> None:
    """Every value ``want`` sets is in ``got``, a run's config.json (which training adds to: the data's
    classes, shape and statistics, the device); None in ``want`` is left for the data to decide, and
    data_dir is where train-all's --data-dir points."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r}"
        for k, v in want.items():
            if v is not None and k != "data_dir":
                assert k in got, f"{where}.{k} is missing"
                assert_holds(v, got[k], f"{where}.{k}")
    else:
        assert got == want, f"{where}: {got!r}, the variant sets {want!r}"


# The CIFAR-10 studies of report 003 run tiny in tests/training/test_longtail.py (ResNet-50 in a small form there),
# the faces studies in tests/training/test_faces.py (on tiny LFW folders in the real layout).
@pytest.mark.parametrize("name", [s for s in list_studies() if s not in ("regularization-mnist", "distill-mnist")
                                  and not s.startswith(("cifar-", "faces-"))])
def test_every_study_runs_tiny(name, data_dir, tmp_path):
    snap = ["--set", "snapshots.epochs=[1]"] if name in ("mlpvae-mnist", "featuremaps-mnist") else []
    summary, study = _tiny_study(name, tmp_path, data_dir, *snap)
    configs, _, meta = load_profile(f"training/studies/{name}.toml")
    assert [r["run"] for r in summary["runs"]] == [c["name"] for c in configs] == study["variants"]
    assert study["report"] and study["title"] and study["overrides"]["epochs"] == 1
    # Each run trained its own variant: its config.json holds what the study file and the overrides set
    # for it (a --study that applied only [defaults] would train one config under every name).
    want, _, _ = load_profile(f"training/studies/{name}.toml", study["overrides"])
    assert len({json.dumps(c, sort_keys=True, default=str) for c in want}) == len(want), "the variants differ"
    for cfg in want:
        assert_holds(json.loads(json.dumps(cfg, default=str)),
                     json.loads((tmp_path / cfg["name"] / "config.json").read_text()), cfg["name"])
    for r in summary["runs"]:
        run = tmp_path / r["run"]
        assert (run / "metrics.json").is_file() and (run / "config.json").is_file()
        if configs[0]["method"] == "engine":
            hist = json.loads((run / "history.json").read_text())
            assert len(hist) == 1 and hist[0]["epoch"] == 1
            # test curves where the study asks for them, and then never used for selection
            assert ("test_loss" in hist[0]) == study["test_curves"]
    # `analyze compare`: one row per variant (the LDA study: a table without curves)
    from analysis.cli import cli as analyze
    r = CliRunner().invoke(analyze, ["compare", str(tmp_path)])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "compare" / "compare.json").read_text())
    assert [row["variant"] for row in result["rows"]] == study["variants"]
    if configs[0]["method"] == "engine":  # curves: one line per variant and split
        assert (tmp_path / "compare" / "compare_curves.png").read_bytes()[:4] == b"\x89PNG"
    if name in ("mlpvae-mnist", "featuremaps-mnist"):  # snapshots exported for `analyze snapshots`
        run = tmp_path / study["variants"][0]
        index = json.loads((run / "snapshots" / "index.json").read_text())
        assert index and all((run / "snapshots" / "exported" / s["model"]).is_dir() for s in index)
        from analysis.cli import cli as analyze
        layer = ["--layer", "conv1"] if name == "featuremaps-mnist" else []
        r = CliRunner().invoke(analyze, ["snapshots", str(run), "--data-dir", str(data_dir / "mnist"), *layer])
        assert r.exit_code == 0, r.output
        assert list(run.glob("snapshots_*.png")), r.output


def test_regularization_study_lasso_is_sparser_ridge_smaller(data_dir, tmp_path):
    only = ["--only", "plain", "--only", "lasso-0.1-lr0.01", "--only", "ridge-0.1-lr0.01"]
    _tiny_study("regularization-mnist", tmp_path, data_dir, "--set", "dataset.subset=2000", *only)
    m = {v: json.loads((tmp_path / v / "metrics.json").read_text())
         for v in ("plain", "lasso-0.1-lr0.01", "ridge-0.1-lr0.01")}
    assert m["lasso-0.1-lr0.01"]["weights_above_1e-3"] < m["plain"]["weights_above_1e-3"]
    assert m["ridge-0.1-lr0.01"]["weight_l2"] < m["plain"]["weight_l2"]
    assert np.load(tmp_path / "plain" / "first_layer.npy").shape == (10, 784)  # ten 28x28 weight images


def test_distillation_study_records_the_label_loss_of_both_students(data_dir, tmp_path):
    _tiny_study("distill-mnist", tmp_path, data_dir, "--set", "epochs=2")
    distilled = json.loads((tmp_path / "student-distilled" / "history.json").read_text())
    labels = json.loads((tmp_path / "student-labels" / "history.json").read_text())
    cfg = json.loads((tmp_path / "student-distilled" / "config.json").read_text())
    assert cfg["distill"]["teacher"] == str(tmp_path / "teacher")  # "@teacher": the study's own run
    assert all("train_label_loss" in h and h["train_label_loss"] != h["train_loss"] for h in distilled)
    assert all("val_loss" in h for h in distilled + labels)  # against the labels for both


def test_teacher_outputs_from_an_exported_model_match_torch(fmnist_dir, tmp_path):
    from glassbox.data import load_dataset, random_subset
    from training.distill import teacher_outputs
    from training.export import export_checkpoint
    data = {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "subset": 1000}
    steady = {"schedule": {"name": "constant"}, "batch_size": 50}
    fit(resolve_config({"model": "lenet", "epochs": 2, "dataset": data, **steady}), tmp_path / "teacher", **QUIET)
    res = export_checkpoint(tmp_path / "teacher" / "best.pt", tmp_path / "repo", parity_images=32, data_dir=fmnist_dir)
    images = random_subset(load_dataset("fashion-mnist", "test", data_dir=fmnist_dir), 64)
    cfg = {"distill": {"teacher": str(tmp_path / "teacher")}}
    from_torch = teacher_outputs(cfg, images)
    from_onnx = teacher_outputs({"distill": {"teacher": str(res.path.parent)}}, images)
    assert from_torch.shape == (64, 10) and torch.allclose(from_torch, from_onnx, atol=1e-4)
    # ... and a student trains on them: its label loss is recorded beside the distillation loss.
    student = resolve_config({"model": "mlp", "epochs": 3, "dataset": data, **steady,
                              "distill": {"teacher": str(res.path), "loss": "kl", "temperature": 2.0}})
    fit(student, tmp_path / "student", **QUIET)
    hist = json.loads((tmp_path / "student" / "history.json").read_text())
    # fitting the teacher's outputs fits the labels too: the label loss falls, accuracy is far above chance
    assert hist[-1]["train_label_loss"] < hist[0]["train_label_loss"] and hist[-1]["val_acc"] > 0.4


def test_mse_on_one_hot_penalties_with_bias_and_init():
    model = create_model("logreg")
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    mse = resolve_config({"model": "logreg", "loss": {"name": "mse"}})
    logits = model(x)
    want = ((logits - torch.nn.functional.one_hot(y, 10).float()) ** 2).sum(1).mean()  # per image, summed
    assert compute_loss(model, x, y, mse)[0].item() == pytest.approx(want.item())
    # The bias joins the penalty only when asked: a model whose weights are zero shows the difference.
    with torch.no_grad():
        model.stages.fc.weight.zero_()
        model.stages.fc.bias.fill_(1.0)
    l1 = resolve_config({"model": "logreg", "loss": {"name": "mse", "l1": 0.1}})
    l1b = resolve_config({"model": "logreg", "loss": {"name": "mse", "l1": 0.1, "penalize_bias": True}})
    base = compute_loss(model, x, y, mse)[0].item()
    assert compute_loss(model, x, y, l1)[0].item() == pytest.approx(base)
    assert compute_loss(model, x, y, l1b)[0].item() == pytest.approx(base + 0.1 * 10)
    from training.prepare import init_weights
    init_weights(model, {"name": "normal", "std": 1e-4})
    assert 5e-5 < model.stages.fc.weight.std().item() < 2e-4 and model.stages.fc.bias.abs().max() == 0


def test_plain_sgd_and_nesterov_are_options(fmnist_dir, tmp_path):
    # momentum 0 crashed with "Nesterov momentum requires a momentum": Nesterov is now opt-in.
    r = CliRunner().invoke(train, ["--optimizer", "sgd", "--momentum", "0", "--epochs", "1", "--subset", "300",
                                   "--data-dir", str(fmnist_dir), "--out", str(tmp_path / "sgd"), "--no-progress"])
    assert r.exit_code == 0, r.output
    opt = build_optimizer(resolve_config({"model": "logreg", "optimizer": {"name": "sgd", "momentum": 0.0}}),
                          create_model("logreg"))
    assert opt.param_groups[0]["nesterov"] is False and opt.param_groups[0]["momentum"] == 0
    r = CliRunner().invoke(train, ["--optimizer", "sgd", "--momentum", "0", "--nesterov", "--out", str(tmp_path / "n")])
    assert r.exit_code == 2 and "Nesterov" in r.output and "Traceback" not in r.output


def test_inception_takes_the_reports_dropout():
    model = create_model("inception", dropout=0.7, head_dropout=0.7)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    drops = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.7, 0.7, 0.7]


def test_models_take_the_datasets_channels_and_size():
    for model in ("rowrnn", "cvae", "mlpvae"):
        cfg = resolve_config({"model": model, "dataset": "cifar10"})
        args = model_args_for_data(cfg)
        assert args["in_chans"] == 3 and args["img_size"] == 32, model
    assert model_args_for_data(resolve_config({"model": "cvae", "dataset": "lfw-min20"}))["img_size"] == 64
    # a model defined for one size keeps it (the images are resized), but takes the channels
    assert model_args_for_data(resolve_config({"model": "lenet", "dataset": "cifar10"}))["in_chans"] == 3
    # a classifier takes the dataset's number of classes (LFW's people), unless told otherwise
    assert model_args_for_data(resolve_config({"model": "lenet", "dataset": "lfw-min20"}))["num_classes"] == 62
    assert model_args_for_data(resolve_config({"model": "lenet", "dataset": "mnist"}))["num_classes"] == 10
    assert model_args_for_data(resolve_config({"model": "lenet", "dataset": "lfw-min20",
                                               "model_args": {"num_classes": 5}}))["num_classes"] == 5
    assert "num_classes" not in model_args_for_data(resolve_config({"model": "cvae", "dataset": "lfw-min20"}))
    bad = resolve_config({"model": "rowrnn", "model_args": {"in_chans": 1},
                          "dataset": {"name": "cifar10", "channels": 3}})
    with pytest.raises(ConfigError, match="contradicts dataset.channels"):
        model_args_for_data(bad)


def test_study_cli_lists_and_refuses(tmp_path):
    r = CliRunner().invoke(train_all, ["--help"])
    assert r.exit_code == 0 and "lr-mnist" in r.output and "--set" in r.output
    r = CliRunner().invoke(train_all, ["--study", "no-such-study"])
    assert r.exit_code == 2 and "lr-mnist" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(train_all, ["--study", "lr-mnist", "--set", "epochs"])
    assert r.exit_code != 0 and "KEY=VALUE" in r.output
    configs, _, meta = load_profile("training/studies/lr-mnist.toml", {"epochs": 3})
    assert [c["optimizer"]["lr"] for c in configs] == [0.01, 0.05, 0.1, 0.5]
    assert {c["epochs"] for c in configs} == {3} and {c["seed"] for c in configs} == {0}  # same init
    assert meta["zoom"] == 10 and meta["variants"] == ["lr=0.01", "lr=0.05", "lr=0.1", "lr=0.5"]
