"""The shipped train-all profiles (training/profiles/*.toml) resolve, with the settings their runs
depend on: a typo in one would surface only after an hour of training.

    .venv/bin/pytest -x -q tests/training/test_profiles.py
"""
from __future__ import annotations

from training.config import load_profile, profile_time_budget


def test_cifar_record_profile_resolves():
    """The record profile names the speed-run net with its levers (a typo in it would surface only
    after an hour of training)."""
    configs, path, _ = load_profile("cifar-record")
    (cfg,) = configs
    assert cfg["model"]["name"] == "speednet" and cfg["model"]["args"]["tta_flip"] is True
    assert cfg["dataset"]["name"] == "cifar10" and cfg["time_budget"] and cfg["ema"] > 0
    configs, _, _ = load_profile("fmnist-record")
    assert configs[0]["ema"] > 0 and configs[0]["model"]["args"]["tta_flip"] is True


def test_quick_profile_shares_six_minutes_by_cost():
    configs, path, _ = load_profile("quick")
    assert 300 <= profile_time_budget(path) <= 420
    costs = {c["name"]: c["cost"] for c in configs}
    assert set(costs) == {"lenet", "resnet", "cvae"} and costs["resnet"] > costs["lenet"]
    assert all(c["epochs"] >= 20 for c in configs)  # an upper bound: a faster machine trains longer
