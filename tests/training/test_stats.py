"""Run statistics (training/stats.py): training speed and time to accuracy, as train-all prints them.

    .venv/bin/pytest -x -q tests/training/test_stats.py
"""
from __future__ import annotations

from training.cli import format_summary
from training.stats import speed


def test_speed_summary_counts_training_time_and_time_to_accuracy():
    """images/s uses the images actually trained (a budget cuts the last epoch) over training time
    only; the time to a level adds whole epochs (training + validation) until val accuracy reaches it."""
    history = [{"train_images": 1000, "train_seconds": 2.0, "seconds": 3.0, "val_acc": 0.80},
               {"train_images": 1000, "train_seconds": 2.0, "seconds": 2.5, "val_acc": 0.86},
               {"train_images": 500, "train_seconds": 1.0, "seconds": 1.5, "val_acc": 0.91}]
    assert speed(history) == {"train_images_per_s": 500.0, "seconds_to_val_acc": {"0.85": 5.5, "0.9": 7.0}}
    assert speed(history[:2])["seconds_to_val_acc"] == {"0.85": 5.5, "0.9": None}
    vae = [{k: v for k, v in r.items() if k != "val_acc"} for r in history]
    assert speed(vae) == {"train_images_per_s": 500.0}
    rows = [{"run": "r", "dataset": "cifar10", "test_acc": 0.9, "test_loss": 0.3, "best_val": 0.91, "epochs": 3,
             "wall_seconds": 9.0, "exported": None, **speed(history)}]
    assert "r: 500 training images/s; val acc 85% after 6 s; val acc 90% after 7 s" in format_summary(rows)
