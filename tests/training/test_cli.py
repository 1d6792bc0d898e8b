"""The ``train`` and ``train-all`` commands (training/cli.py) end to end: options reaching the config and the
model, train-all's default export, --only and --resume.

    OMP_NUM_THREADS=1 .venv/bin/pytest -x -q tests/training/test_cli.py
"""
import json

from click.testing import CliRunner

from tests.helpers.files import tiny_profile


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


class Interrupt(Exception):
    """The process dying mid-run (an exception train-all does not catch, so nothing tidies up after it)."""


def test_train_all_study_resumes_after_an_interruption(fmnist_dir, tmp_path, monkeypatch):
    """`train-all --study` dies in its second variant right after epoch 1 is saved; `--resume` then skips the
    finished first variant (its checkpoint untouched), continues the second from epoch 1 to the very weights
    an uninterrupted run of it reaches, and trains the third. Catches a resume that retrains finished
    variants, restarts the interrupted one, or drops the study's overrides on the way."""
    import torch

    import training.engine as engine
    from training.checkpoint import load_checkpoint
    from training.cli import train_all
    variants = ["lr=0.01", "lr=0.05", "lr=0.1"]
    args = ["--study", "lr-mnist", "--data-dir", str(fmnist_dir), "--set", "dataset.name=fashion-mnist",
            "--set", "dataset.subset=300", "--set", "dataset.test_subset=200", "--set", "epochs=2", "--no-export",
            "--no-progress"]
    only = [a for v in variants for a in ("--only", v)]
    r = CliRunner().invoke(train_all, [*args, "--only", variants[1], "--out", str(tmp_path / "straight")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "study"
    real_fit = engine.fit

    def dying_fit(cfg, run_dir, **kwargs):
        def log(msg):  # after the second variant's epoch 1 is saved
            if cfg["name"] == variants[1] and " epoch 1/" in msg:
                raise Interrupt
        return real_fit(cfg, run_dir, **{**kwargs, "log": log})
    monkeypatch.setattr(engine, "fit", dying_fit)
    r = CliRunner().invoke(train_all, [*args, *only, "--out", str(out)])
    assert isinstance(r.exception, Interrupt), r.output
    assert (out / variants[0] / "metrics.json").is_file() and not (out / variants[1] / "metrics.json").exists()
    assert load_checkpoint(out / variants[1] / "last.pt")["epoch"] == 1 and not (out / variants[2]).exists()
    finished = (out / variants[0] / "best.pt").read_bytes()
    monkeypatch.setattr(engine, "fit", real_fit)

    r = CliRunner().invoke(train_all, [*args, *only, "--out", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    assert f"{variants[0]}: already finished, skipped" in r.output and "resuming from epoch 1" in r.output
    assert (out / variants[0] / "best.pt").read_bytes() == finished, "a finished variant was trained again"
    summary = json.loads((out / "summary.json").read_text())
    assert [row["run"] for row in summary["runs"]] == variants and all(row["epochs"] == 2 for row in summary["runs"])
    resumed, straight = (load_checkpoint(d / variants[1] / "last.pt") for d in (out, tmp_path / "straight"))
    assert resumed["config"]["optimizer"]["lr"] == 0.05 and resumed["config"]["dataset"]["subset"] == 300
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    for k, v in straight["model"].items():
        assert torch.equal(resumed["model"][k], v), k
