"""The model repository ``exported/<model>/<version>/``: versions, atomic publication, integrity.

A version is built in a hidden temporary directory beside the versions and published with one
``os.rename``, so readers (the server) see either the whole version or nothing, and a crash or a
failed parity gate leaves earlier versions untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def sha256(path: Path) -> str:
    with open(path, "rb") as f:  # streamed: model files can be large
        return hashlib.file_digest(f, "sha256").hexdigest()


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


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


def publish(tmp: Path, manifest: dict) -> tuple[int, Path]:
    """Hash the files, write the manifest, and rename ``tmp`` to the next free version number."""
    files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    model_dir = tmp.parent
    while True:
        version = (versions(model_dir) or [0])[-1] + 1
        manifest = {**manifest, "version": version, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(tmp, model_dir / str(version))  # fails if another export took this number
            return version, model_dir / str(version)
        except OSError:
            if not (model_dir / str(version)).exists():
                raise


def verify_files(version_dir: str | os.PathLike) -> list[str]:
    """Problems with a published version: a missing manifest, missing files, sha256 mismatches."""
    d = Path(version_dir)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        return [f"{d / 'manifest.json'}: unreadable ({e})"]
    problems = []
    for name, digest in manifest.get("files", {}).items():
        f = d / name
        if not f.is_file():
            problems.append(f"{f}: missing")
        elif sha256(f) != digest:
            problems.append(f"{f}: sha256 mismatch (file changed or corrupted since export)")
    return problems
