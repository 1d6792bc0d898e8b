"""Data-parallel training under ``torchrun``: ``train`` and ``train-all`` run unchanged.

    torchrun --standalone --nproc-per-node 2 -m training.cli train --model lenet --epochs 3
    train --nproc 2 --model lenet --epochs 3          # the same: train launches torchrun itself

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; ``fit`` then joins the process group (gloo on CPU,
NCCL on CUDA, one GPU per local rank) and wraps the model in DistributedDataParallel. Outside
torchrun (or with one process) all of this is a no-op.

**How batch size and learning rate scale.** The config's ``batch_size`` stays the *global* batch:
every rank draws the same seeded permutation of the training set each epoch (the batch-order
generator is seeded identically and advances identically on every rank) and, at each step, takes
its own slice of the same global batch: ``batch_size // world_size`` images. DDP averages the
ranks' gradients, so a step is the step one process would take on the whole global batch, and the
learning rate stays as configured: N processes train the same model as one, up to the order of
floating-point sums (and per-rank BatchNorm statistics, computed over each rank's slice). To train
with a larger global batch, raise ``batch_size`` (and the lr, e.g. linearly) yourself. Augmentation
draws its random numbers for the whole global batch on every rank, each rank keeping its slice, so
the augmented images are those a single process would see.

**Who does what.** Every rank trains and evaluates its shard; the sums behind the metrics (loss
times images, correct predictions, images) are all-reduced, so every rank computes the same
history row. BatchNorm running statistics are copied from rank 0 before each validation. Only
rank 0 writes (checkpoints, history, curves, metrics, exports; atomically as always) and scores the
test split at the end; the other ranks receive its metrics. ``--resume``: every rank loads
``last.pt`` (weights, optimizer, schedule and the batch-order generator state), so all continue
from the saved epoch in step.

Debugging: with ``GLASSBOX_DDP_STEP_HASHES=DIR`` each rank appends ``<step> <sha256 of its
parameters>`` to ``DIR/rank<r>.txt`` after every optimizer step (the tests compare them).
"""
from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.nn as nn

HASH_ENV = "GLASSBOX_DDP_STEP_HASHES"


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env() -> Dist:
    """The process's place in a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK); one process without them."""
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group once per process (train-all fits many runs in one); return this
    process's place and its device (``cuda:<local rank>`` on CUDA)."""
    d = from_env()
    if not d.enabled:
        return d, device
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def shutdown() -> None:
    """Leave the process group. DDP wrappers caught in reference cycles still hold the gloo group
    and its threads; collect them first, or they are torn down during interpreter exit, where gloo
    can abort the process ("terminate called without an active exception", seen once in CI)."""
    if tdist.is_available() and tdist.is_initialized():
        gc.collect()
        tdist.destroy_process_group()


def wrap(model: nn.Module, d: Dist) -> nn.Module:
    """The module the training steps run: DDP over ``model`` (same parameters), or ``model`` itself."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel
    dev = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def batch_slice(batch_size: int, d: Dist) -> slice:
    """This rank's part of a global batch."""
    b = batch_size // d.world_size
    return slice(d.rank * b, (d.rank + 1) * b)


def rows(n: int, d: Dist) -> slice:
    """This rank's contiguous share of an ``n``-row evaluation split."""
    return slice(d.rank * n // d.world_size, (d.rank + 1) * n // d.world_size)


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")


def reduce_sums(sums: dict, d: Dist) -> dict:
    """Sum a dict of per-rank totals (same keys on every rank) over the ranks, in place."""
    if d.enabled:
        keys = sorted(sums)
        t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=_device())
        tdist.all_reduce(t)
        sums.update(zip(keys, t.tolist(), strict=True))
    return sums


def broadcast_float(value: float, d: Dist) -> float:
    """Rank 0's ``value`` on every rank (decisions taken from a clock must agree everywhere)."""
    if not d.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    tdist.broadcast(t, 0)
    return float(t.item())


def from_main(fn, d: Dist):
    """Run ``fn`` on rank 0 only and hand its (picklable) result to every rank."""
    if not d.enabled:
        return fn()
    box = [fn() if d.is_main else None]
    tdist.broadcast_object_list(box, 0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        tdist.barrier()


@torch.no_grad()
def sync_buffers(model: nn.Module, d: Dist) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if d.enabled:
        for b in model.buffers():
            tdist.broadcast(b, 0)


def parameter_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def install_step_hashes(opt: torch.optim.Optimizer, model: nn.Module, d: Dist) -> None:
    """With $GLASSBOX_DDP_STEP_HASHES set: after every optimizer step, append the step number and a
    hash of this rank's parameters to ``<dir>/rank<r>.txt`` (a debugging and test hook)."""
    where = os.environ.get(HASH_ENV)
    if not where:
        return
    path = Path(where) / f"rank{d.rank}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    count = [0]

    def hook(optimizer, args, kwargs):
        count[0] += 1
        with path.open("a") as f:
            f.write(f"{count[0]} {parameter_hash(model)}\n")
    opt.register_step_post_hook(hook)


def launch(nproc: int, command: str, args: list[str]) -> int:
    """Run ``python -m training.cli <command> <args>`` under torchrun with ``nproc`` processes on
    this machine; return its exit code. torchrun sets OMP_NUM_THREADS=1 for each process unless it
    is set already."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "training.cli", command, *args]
    return subprocess.run(cmd).returncode
