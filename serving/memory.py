"""The server process's memory: glibc's arenas capped at start, free pages handed back after an unload.

Every loaded version starts a batcher thread per graph, and glibc gives a new thread its own malloc arena
(up to eight per core) that keeps the pages it once held. With a live repository versions come and go, so
the arenas of retired threads held the RSS about 10% above where it started after a few rollouts
(tests/serving/test_live_repository.py measures it). Capping the arenas at one per core (what
``MALLOC_ARENA_MAX`` does, Triton's and onnxruntime's usual advice for long-running servers) makes a new
thread reuse an arena whose free pages ``malloc_trim`` can return.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os

log = logging.getLogger("glassbox.serving")
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


@functools.cache
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return None


def limit_arenas() -> int | None:
    """Cap glibc's malloc arenas at the CPUs this process may use, unless ``MALLOC_ARENA_MAX`` already
    chose (glibc read it at start). The cap set, or None where nothing was changed."""
    libc = _libc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return None
    cap = max(2, len(os.sched_getaffinity(0)))
    if not libc.mallopt(M_ARENA_MAX, cap):
        log.warning("could not cap malloc arenas at %d (mallopt refused)", cap)
        return None
    return cap


def free_memory() -> None:
    """Collect the dropped sessions and hand glibc's free pages back to the OS, so an unload shows in the RSS."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        try:
            libc.malloc_trim(0)
        except AttributeError:  # a libc without malloc_trim
            pass
