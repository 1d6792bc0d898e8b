"""Files written all or nothing, strict JSON, and sha256: the one implementation of each.

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))   # readers never see half a file
    write_json(path, {"acc": np.float32(0.9)})                         # numpy -> Python, NaN -> null
    sha256(path)                                                      # streamed hex digest
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], mode: int = 0o644) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    A crash or an exception in ``write`` leaves ``path`` as it was and no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # mkstemp makes 0600; what we write is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def plain(obj: Any) -> Any:
    """numpy scalars/arrays, tuples, sets and paths -> plain Python; NaN/inf -> None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars (and torch tensors, without importing torch)
        return plain(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Strict JSON (see ``plain``), written atomically."""
    text = json.dumps(plain(obj), indent=indent, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:  # streamed: model files can be large
        return hashlib.file_digest(f, "sha256").hexdigest()
