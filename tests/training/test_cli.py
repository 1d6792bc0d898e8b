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
