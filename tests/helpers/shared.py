"""Session fixtures built once per test run, also when pytest-xdist runs the suite in several workers.

    make test            # pytest -n auto: every worker asks, the first builds, the others wait and reuse

Each xdist worker has its own session, so a plain session fixture (a trained model, an exported repository)
would be built once per worker. ``built_once`` builds it under a file lock in the directory all workers share
(the parent of their base temporary directories) and marks it complete; a worker that finds the mark reuses
it. Without xdist it is an ordinary ``mktemp``. Users of a shared directory read it and never write to it.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

DONE = ".built"


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory ``name`` after ``build(directory)`` ran in it, once for the whole run."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        root = tmp_path_factory.mktemp(name)
        build(root)
        return root
    root = tmp_path_factory.getbasetemp().parent / name
    with FileLock(str(root) + ".lock"):
        if not (root / DONE).is_file():
            root.mkdir(exist_ok=True)
            build(root)
            (root / DONE).touch()
    return root
