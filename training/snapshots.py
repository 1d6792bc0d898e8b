"""Snapshots: checkpoints kept at chosen epochs or train accuracies, exported for ``analyze snapshots``.

    train --model convnet --snapshot-epoch 1 --snapshot-train-acc 0.9
    train-all --study featuremaps-mnist

A snapshot is tagged by its trigger (``epoch-3``, ``train_acc-0.9``) and listed in the checkpoint's
``snapshots``, so a resumed run keeps the list and takes none twice. At the end each is exported,
parity-gated like any export, into ``<run>/snapshots/exported`` and listed in ``snapshots/index.json``.
"""
from __future__ import annotations

from glassbox.io import write_json

from .checkpoint import save_checkpoint


def snapshot_tags(cfg: dict, taken: list[dict], row: dict) -> list[str]:
    """Snapshot triggers hit by this epoch: a chosen epoch, or train accuracy first crossing a level."""
    sc, done = cfg["snapshots"], {s["tag"] for s in taken}
    tags = [f"epoch-{row['epoch']}"] if row["epoch"] in sc["epochs"] else []
    tags += [f"train_acc-{level:g}" for level in sc["train_acc"] if row.get("train_acc", 0) >= level]
    return [t for t in tags if t not in done]


def take_snapshots(cfg: dict, taken: list[dict], row: dict) -> None:
    """Add this epoch's snapshots to ``taken`` (their checkpoints are written with the epoch's)."""
    for tag in snapshot_tags(cfg, taken, row):
        taken.append({"tag": tag, "epoch": row["epoch"], "train_acc": row.get("train_acc"),
                      "checkpoint": f"snapshots/{tag}.pt"})


def save_snapshots(out, taken: list[dict], epoch: int, ckpt: dict) -> None:
    """Write the checkpoint of each snapshot taken at ``epoch``."""
    for s in taken:
        if s["epoch"] == epoch:
            save_checkpoint(out / s["checkpoint"], ckpt)


def export_snapshots(cfg: dict, out, taken: list[dict], log) -> None:
    """Export each snapshot into ``<out>/snapshots/exported``, so ``analyze snapshots`` reads its
    layers through the ONNX graphs' named outputs."""
    from .export import export_checkpoint  # onnx: only a run with snapshots needs it
    index = []
    for s in taken:
        name = f"{cfg['name']}-{s['tag']}".replace(".", "_")
        res = export_checkpoint(out / s["checkpoint"], out / "snapshots" / "exported", name,
                                parity_images=64, data_dir=cfg["dataset"].get("data_dir"))
        index.append({**s, "model": name, "version": res.version})
        log(f"{cfg['name']}: snapshot {s['tag']} exported as {name}/{res.version}")
    write_json(out / "snapshots" / "index.json", index)
