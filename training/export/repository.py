"""The model repository ``exported/<model>/<version>/``: versions, atomic publication, integrity.

A version is built in a hidden temporary directory beside the versions and published with one
``os.rename``, so readers (the server) see either the whole version or nothing, and a crash or a
failed parity gate leaves earlier versions untouched.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

from glassbox.io import atomic_write, sha256
from glassbox.manifest import validate_manifest, versions


@contextmanager
def staging(repository: Path, name: str):
    """Yield a temporary directory for a new version of ``name``; removed unless published."""
    model_dir = Path(repository) / name
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            if created and not any(model_dir.iterdir()):
                model_dir.rmdir()


# The model's own Triton config: the server reads its version policy (which versions it serves; serving/policy.py).
# Written once, with the server's default; edit it to change the policy, later exports leave it as it is.
MODEL_CONFIG = 'name: "{name}"\nversion_policy: {{ latest {{ num_versions: 2 }} }}\n'


def write_model_config(model_dir: Path) -> None:
    text = MODEL_CONFIG.format(name=model_dir.name)
    atomic_write(model_dir / "config.pbtxt", lambda tmp: Path(tmp).write_text(text))


def publish(tmp: Path, manifest: dict) -> tuple[int, Path]:
    """Hash the files, write the manifest, and rename ``tmp`` to the next free version number."""
    files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    model_dir = tmp.parent
    while True:
        version = (versions(model_dir) or [0])[-1] + 1
        manifest = {**manifest, "version": version, "files": files}
        if problems := validate_manifest(manifest):  # a bug in the exporter, never published
            raise RuntimeError(f"invalid manifest for {model_dir.name}: {'; '.join(problems)}")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(tmp, model_dir / str(version))  # fails if another export took this number
            if not (model_dir / "config.pbtxt").exists():
                write_model_config(model_dir)
            return version, model_dir / str(version)
        except OSError:
            if not (model_dir / str(version)).exists():
                raise
