"""What the weights' moving average costs per training step: training/ema.py against torch's AveragedModel.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ema_update.py
    .venv/bin/python benchmarks/ema_update.py --models resnet,speednet --batch 128

For each model, in interleaved rounds (best of ``--rounds``): ``EMA.update`` (what the optimizer's
post-step hook runs), the same average through ``torch.optim.swa_utils.AveragedModel`` (the library
training/ema.py does not use, with the same rule as its ``multi_avg_fn``), the floor any average must
pay (one ``torch._foreach_lerp_`` over lists of the parameters and floating buffers gathered once, no
module walk), and one training step (forward, backward, AdamW) on random images at ``--batch``.
Prints each in microseconds and each update's cost over the floor as a share of the step.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from training.allocator import tune_allocator
from training.ema import EMA
from training.models import create_model

MODELS = {"lenet": ({}, 1, 28), "resnet": ({"width": 24, "depth": 2}, 1, 28), "speednet": ({}, 3, 32)}


def mean_us(fn, repeats: int) -> float:
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1e6


def library_ema(model, decay: float) -> AveragedModel:
    """The same warm-up average as training/ema.py, through torch's AveragedModel."""
    def average(averaged, current, n):
        if averaged[0].is_floating_point():
            steps = int(n)  # n_averaged counts the starting copy: n is the step being added
            torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + steps) / (10 + steps)))
        else:
            torch._foreach_copy_(averaged, current)
    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)


def measure(name: str, batch: int, rounds: int) -> dict:
    args, chans, size = MODELS[name]
    model = create_model(name, in_chans=chans, **args).to(memory_format=torch.channels_last)
    ema = EMA(model, 0.999)
    lib = library_ema(model, 0.999)
    averaged = [t for t in [*ema.module.parameters(), *ema.module.buffers()] if t.is_floating_point()]
    current = [t.detach() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, chans, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    best = {"update": float("inf"), "library": float("inf"), "floor": float("inf"), "step": float("inf")}
    for _ in range(rounds):
        best["update"] = min(best["update"], mean_us(lambda: ema.update(model), 50))
        best["library"] = min(best["library"], mean_us(lambda: lib.update_parameters(model), 50))
        best["floor"] = min(best["floor"], mean_us(lambda: torch._foreach_lerp_(averaged, current, 1e-3), 50))
        best["step"] = min(best["step"], mean_us(step, 3))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet,resnet,speednet")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    tune_allocator()  # as fit() runs
    print(f"threads {torch.get_num_threads()}, batch {a.batch}, best of {a.rounds} rounds")
    print(f"{'model':10s} {'ema.py us':>10s} {'library us':>11s} {'floor us':>9s} {'step us':>10s} "
          f"{'ema.py/step':>12s} {'library/step':>13s}")
    for name in a.models.split(","):
        b = measure(name, a.batch, a.rounds)
        mine, lib = ((b[k] - b["floor"]) / b["step"] for k in ("update", "library"))
        print(f"{name:10s} {b['update']:10.0f} {b['library']:11.0f} {b['floor']:9.0f} {b['step']:10.0f} "
              f"{mine:12.2%} {lib:13.2%}")


if __name__ == "__main__":
    main()
