"""Training throughput: the Glassbox engine vs the seeds' naive loop, on real Fashion-MNIST.

    .venv/bin/python benchmarks/train_speed.py [--images 20000] [--data-dir DIR]

The naive baseline is what the seeds did: a per-sample ``Dataset`` in torchvision's style (each
image becomes a PIL image, then ``ToTensor`` and ``Normalize``) behind a torch ``DataLoader`` with
batch 32. A kinder per-sample baseline (numpy -> tensor, no PIL) is printed beside it. The engine holds the preprocessed
split as one tensor and trains on index-gathered batches (``training.engine.train_one_epoch``).
Both train the same model with the same optimizer for the same number of images; figures are
training images per second (forward, backward, step), measured after one warm-up pass.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from glassbox.data import load_dataset, preprocess, random_subset
from training.allocator import tune_allocator
from training.config import resolve_config
from training.datasets import preprocessing_spec
from training.engine import train_one_epoch
from training.models import create_model
from training.optim import build_optimizer, build_scheduler

RUNS = [("lenet", {}), ("resnet", {"width": 16, "depth": 1}), ("resnet", {"width": 24, "depth": 2})]


class PerSampleDataset(Dataset):
    """Every __getitem__ converts and normalises one image in Python (numpy -> tensor)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0)
        return (x - self.mean) / self.std, int(self.labels[i])


class SeedsDataset(PerSampleDataset):
    """As torchvision's FashionMNIST with ToTensor + Normalize, the seeds' pipeline: PIL per image."""

    def __init__(self, *args):
        super().__init__(*args)
        from torchvision import transforms
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((self.mean,), (self.std,))])

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def naive(name, args, ds, spec, n_images, dataset_cls=SeedsDataset):
    torch.manual_seed(0)
    model = create_model(name, **args).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(dataset_cls(ds.images, ds.labels, spec["mean"][0], spec["std"][0]), batch_size=32, shuffle=True)
    seen, t0 = 0, None
    while seen < n_images:
        for x, y in loader:
            if t0 is None and seen >= 32 * 5:  # warm-up: the first few batches
                t0, seen = time.perf_counter(), 0
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            seen += len(y)
            if t0 is not None and seen >= n_images:
                break
    return seen / (time.perf_counter() - t0)


def engine(name, args, ds, n_images, batch_size, augment, precision="fp32"):
    cfg = resolve_config({"model": {"name": name, "args": args}, "epochs": 1, "batch_size": batch_size,
                          "augment": {"crop_pad": 2, "hflip": True} if augment else {}, "precision": precision})
    torch.manual_seed(0)
    model = create_model(name, **args)
    spec = preprocessing_spec(cfg, model)
    sub = random_subset(ds, n_images, seed=0)
    x = torch.from_numpy(preprocess(sub.images, spec))
    y = torch.from_numpy(sub.labels.astype(np.int64))
    model.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt, max(1, n_images // batch_size))
    gen = torch.Generator().manual_seed(0)
    train_one_epoch(model, opt, sched, x[: batch_size * 5], y[: batch_size * 5], cfg, gen, 1, progress=False)  # warm-up
    t0 = time.perf_counter()
    train_one_epoch(model, opt, sched, x, y, cfg, gen, 1, progress=False)
    return (n_images // batch_size) * batch_size / (time.perf_counter() - t0)


COLUMNS = [  # (heading, pipeline, batch size, augment, allocator tuned as fit() tunes it)
    ("seeds b32", "seeds", 32, False, False), ("seeds tuned", "seeds", 32, False, True),
    ("numpy b32", "numpy", 32, False, False), ("engine b32", "engine", 32, False, True),
    ("engine b128", "engine", 128, False, True), ("engine b256", "engine", 256, False, True),
    ("+aug b128", "engine", 128, True, True), ("b128 glibc", "engine", 128, False, False),
    ("bf16 b128", "engine-bf16", 128, False, True), ("bf16 b256", "engine-bf16", 256, False, True),
]


def measure(pipeline: str, run: int, batch: int, augment: bool, tuned: bool, n_images: int, data_dir) -> float:
    """One figure, in this (fresh) process: the allocator tuning is process wide, so each column
    gets a process with or without it."""
    name, args = RUNS[run]
    ds = load_dataset("fashion-mnist", split="train", data_dir=data_dir)
    spec = preprocessing_spec(resolve_config({"model": {"name": name, "args": args}}), create_model(name, **args))
    if tuned:
        tune_allocator()
    if pipeline.startswith("engine"):
        return engine(name, args, ds, n_images, batch, augment, "bf16" if pipeline.endswith("bf16") else "fp32")
    return naive(name, args, ds, spec, n_images, SeedsDataset if pipeline == "seeds" else PerSampleDataset)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000,
                   help="training images per measurement (lenet; resnets use 1/8)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per figure; the median is shown")
    p.add_argument("--models", default="0,1,2", help="rows to run, as indices into: " +
                   ", ".join(f"{i}={n}{a or ''}" for i, (n, a) in enumerate(RUNS)))
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST directory (default: the usual search)")
    p.add_argument("--one", nargs=5, default=None, help=argparse.SUPPRESS)  # pipeline run batch augment tuned
    a = p.parse_args()
    if a.one:
        pipeline, run, batch, aug, tuned = a.one
        n = a.images if RUNS[int(run)][0] == "lenet" else max(2_560, a.images // 8)
        print(measure(pipeline, int(run), int(batch), aug == "1", tuned == "1", n, a.data_dir))
        return
    load_dataset("fashion-mnist", split="train", data_dir=a.data_dir)  # a missing dataset fails here, once
    rows = [int(r) for r in a.models.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, Fashion-MNIST train, "
          f"median of {a.repeats} fresh processes per figure")
    figures: dict[tuple[int, str], list[float]] = {}
    cmd = [sys.executable, __file__, "--images", str(a.images)] + (["--data-dir", a.data_dir] if a.data_dir else [])
    for rep in range(a.repeats):  # repeats outermost: a noisy minute spreads over every column
        for r in rows:
            for head, pipeline, batch, aug, tuned in COLUMNS:
                out = subprocess.run(cmd + ["--one", pipeline, str(r), str(batch), str(int(aug)), str(int(tuned))],
                                     capture_output=True, text=True, check=True)
                figures.setdefault((r, head), []).append(float(out.stdout.split()[-1]))
        print(f"  pass {rep + 1}/{a.repeats} done", file=sys.stderr, flush=True)
    heads = [c[0] for c in COLUMNS] + ["b128 vs seeds", "b256 vs seeds", "best vs seeds"]
    print(f"{'model':26s} " + " ".join(f"{h:>13s}" for h in heads))
    for r in rows:
        name, args = RUNS[r]
        med = {h: float(np.median(figures[r, h])) for h, *_ in COLUMNS}
        label = name + (" " + ",".join(f"{k}={v}" for k, v in args.items()) if args else "")
        cells = [f"{med[h]:13.0f}" for h, *_ in COLUMNS] + \
                [f"{med['engine b128'] / med['seeds b32']:12.1f}x", f"{med['engine b256'] / med['seeds b32']:12.1f}x",
                 f"{max(med[h] for h, p, *_ in COLUMNS if p.startswith('engine')) / med['seeds b32']:12.1f}x"]
        print(f"{label:26s} " + " ".join(cells), flush=True)
        spread = "; ".join(f"{h} {min(figures[r, h]):.0f}-{max(figures[r, h]):.0f}" for h, *_ in COLUMNS)
        print(f"{'':26s} range: {spread}")
    print("images/second, training (forward + backward + optimizer step). seeds = torchvision-style per-sample Dataset "
          "(PIL, ToTensor, Normalize) + DataLoader(batch 32); "
          "numpy = per-sample numpy->tensor Dataset + DataLoader(batch 32); "
          "seeds tuned = the same with fit()'s allocator tuning; "
          "engine = training.engine.train_one_epoch on preloaded tensors with the allocator tuned as fit() does; "
          "b128 glibc = the engine at batch 128 with glibc's default allocator; "
          "bf16 = the engine with precision bf16 (autocast); best = the fastest engine column")


if __name__ == "__main__":
    main()
