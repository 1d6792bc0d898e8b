"""serving/memory.py: the malloc arena cap the server sets at start (the RSS it keeps is measured by
tests/serving/test_live_repository.py::test_unloaded_versions_free_their_memory).

    .venv/bin/pytest -q tests/serving/test_memory.py
"""
from __future__ import annotations

import os
import subprocess
import sys


def _run(code: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_arenas_are_capped_at_the_cpus_unless_the_environment_chose():
    code = "from serving.memory import limit_arenas; print(limit_arenas())"
    assert _run(code) == str(max(2, len(os.sched_getaffinity(0))))
    assert _run(code, MALLOC_ARENA_MAX="4") == "None"  # the user's choice stands


ARENAS = """
import ctypes, os, re, sys, tempfile, threading
from serving.memory import limit_arenas
if sys.argv[-1] == "cap":
    limit_arenas()
ready, done = threading.Barrier(13), threading.Event()
def work():
    kept = [bytearray(1000) for _ in range(200)]  # small blocks: from the thread's arena, not mmap
    ready.wait()
    done.wait()
threads = [threading.Thread(target=work) for _ in range(12)]
[t.start() for t in threads]
ready.wait()
libc = ctypes.CDLL("libc.so.6")
libc.fdopen.restype = ctypes.c_void_p
with tempfile.TemporaryFile("w+") as f:
    fp = ctypes.c_void_p(libc.fdopen(os.dup(f.fileno()), b"w"))
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    f.seek(0)
    print(len(set(re.findall(r'<heap nr="(\\d+)"', f.read()))))
done.set()
[t.join() for t in threads]
"""


def test_the_cap_holds_for_new_threads():
    """12 threads each allocating: with the cap, glibc's arena count (malloc_info's <heap nr=...>) stays at the
    cap; without it, new threads get arenas of their own."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    capped, free = (int(subprocess.run([sys.executable, "-c", ARENAS, mode], env=env, capture_output=True,
                                       text=True, check=True).stdout) for mode in ("cap", "free"))
    assert capped <= max(2, len(os.sched_getaffinity(0))) < free, (capped, free)
