"""A cache of decoded image arrays, so 60,000 JPEGs are decoded once, not on every run.

    x = cache.load("cifar10-test", key)           # dict of arrays, or None
    cache.save("cifar10-test", key, x=x, y=y)      # atomic: temp file + os.replace

Files live in ``$GLASSBOX_CACHE`` (default ``~/.cache/glassbox``) as ``<stem>-<key>.npz``. The key
hashes the source's resolved path, size and mtime (for a directory: every file's relative path,
size and mtime) plus the reader's options and ``FORMAT``, so a changed source or reader never
serves stale pixels; old entries are simply never read again (delete the folder to reclaim space).
A read-only or full home directory only costs the next run a re-decode.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..io import atomic_write

FORMAT = 1  # bump when a reader's output changes for the same input


def cache_dir() -> Path:
    return Path(os.environ.get("GLASSBOX_CACHE") or Path.home() / ".cache" / "glassbox")


def source_key(path: Path, *options) -> str:
    """A short hash identifying the contents of ``path`` (file or directory) and the options."""
    path = Path(path).resolve()
    h = hashlib.sha1(f"{FORMAT}|{path}|{options!r}".encode())
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                st = os.stat(os.path.join(root, f))
                h.update(f"{os.path.relpath(os.path.join(root, f), path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    else:
        st = path.stat()
        h.update(f"{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load(stem: str, key: str) -> dict[str, np.ndarray] | None:
    path = cache_dir() / f"{stem}-{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception:  # a damaged cache entry is not the dataset's fault: decode again
        return None


def save(stem: str, key: str, **arrays: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loading is then a plain read

    try:  # atomic: readers see all or nothing; 0644 so other users share the (public) data
        atomic_write(cache_dir() / f"{stem}-{key}.npz", write)
    except OSError:
        pass
