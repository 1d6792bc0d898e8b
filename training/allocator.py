"""Allocator tuning for the training processes: freed tensor memory stays in glibc's heap.

    from training.allocator import tune_allocator
    tune_allocator()        # once per process; fit() calls it

``benchmarks/train_speed.py`` measures what it buys: its "b128 glibc" column is the engine at
batch 128 with glibc's default allocator, beside the tuned "engine b128".
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


@functools.cache  # process wide: once is enough, however many runs train-all fits
def tune_allocator() -> bool:
    """Keep freed tensor memory in glibc's heap instead of returning it to the OS.

    By default glibc serves allocations above ~128 KB-32 MB with fresh ``mmap`` pages and trims the
    heap on free, so every step's activations (LeNet at batch 256: several 1-5 MB tensors per layer)
    page-fault in zeroed memory again, a large share of a small model's step on a CPU. Raising the
    mmap threshold to its maximum (32 MB) and the trim threshold to 1 GB lets the next step reuse
    the same pages. Process wide and not reversible, so only the training entry points call it; a
    no-op off glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
