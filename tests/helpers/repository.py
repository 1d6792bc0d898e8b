"""Publishing a model version the way export does, for the live-repository tests and benchmarks: the copy is built
in a hidden ``.tmp-*`` directory beside the versions and renamed into place in one step.

    from tests.helpers.repository import publish
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path


def publish(model_dir: Path, source: Path, edit=None) -> int:
    """Publish a copy of version directory ``source`` as the next version of ``model_dir``; ``edit(tmp)`` may spoil
    it before the rename. Returns the new version number."""
    version = max([int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] or [0]) + 1
    tmp = model_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, tmp)
    manifest = json.loads((tmp / "manifest.json").read_text())
    manifest["version"] = version
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    if edit:
        edit(tmp)
    os.rename(tmp, model_dir / str(version))
    return version
