"""Knowledge distillation's teacher: its logits for every training image, computed once.

    train --model lenet --teacher runs/quick/resnet          # a run folder, a .pt, or an exported model
    train-all --study distill-mnist

The loss that fits them is ``training.tasks.distill_loss``; this module only runs the teacher.
A run (its ``best.pt``, or any ``.pt``) runs with torch, an exported model (a version folder, a
model folder, or its ``classifier.onnx``) with onnxruntime; each preprocesses the training images
its own way, as it was trained.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from glassbox import data as D
from glassbox.manifest import read_manifest, versions

from .checkpoint import model_from_checkpoint
from .options import ConfigError

CHUNK = 1024  # images per teacher call: bounded memory, few calls


def _in_chunks(run, x) -> list:
    return [run(x[s:s + CHUNK]) for s in range(0, len(x), CHUNK)]


def _exported_folder(src: Path, given: str) -> Path:
    """The version folder of an exported teacher given as a version folder, a model folder (its
    newest version) or its classifier.onnx."""
    if src.is_file() and src.name == "classifier.onnx":
        src = src.parent
    elif src.is_dir() and not (src / "manifest.json").is_file() and versions(src):
        src = src / str(versions(src)[-1])
    if not (src / "manifest.json").is_file():
        raise ConfigError(f"teacher {given!r}: not a run folder, checkpoint (.pt) or exported model")
    return src


@torch.inference_mode()
def _torch_teacher(path: Path, images: np.ndarray) -> torch.Tensor:
    teacher, ckpt = model_from_checkpoint(path)
    ds = ckpt["config"]["dataset"]
    x = torch.from_numpy(D.preprocess(images, {k: ds[k] for k in ("channels", "size", "mean", "std")}))
    return torch.cat([out.float() for out in _in_chunks(teacher, x)])


def _onnx_teacher(folder: Path, images: np.ndarray) -> torch.Tensor:
    import onnxruntime as ort  # only an exported teacher needs it
    man = read_manifest(folder)
    sess = ort.InferenceSession(str(folder / man["graphs"]["classifier"]["file"]), providers=["CPUExecutionProvider"])
    x = D.preprocess(images, man["preprocessing"])
    return torch.from_numpy(np.concatenate(_in_chunks(lambda b: sess.run(["logits"], {"input": b})[0], x)))


def teacher_outputs(cfg: dict, train: D.ArrayDataset) -> torch.Tensor:
    """The teacher's logits for every training image (without augmentation), reused every epoch."""
    given = cfg["distill"]["teacher"]
    src = Path(given)
    if src.is_dir() and (src / "best.pt").is_file():
        src = src / "best.pt"
    if src.suffix == ".pt":
        return _torch_teacher(src, train.images)
    return _onnx_teacher(_exported_folder(src, given), train.images)
