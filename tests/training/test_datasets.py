"""Training on the RGB datasets (training/datasets.py and the readers): CIFAR-10 and LFW from ../shared/data,
through fit() and export. (The readers' own tests: tests/glassbox/.)

    OMP_NUM_THREADS=1 .venv/bin/pytest -x -q tests/training/test_datasets.py
"""
import json

import pytest


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
