"""The contracts between the parts, checked as properties of the code and of an installed package:

- glassbox, serving and analysis import without torch (every module);
- the import graph: serving and training never import each other, nothing imports analysis, glassbox
  imports none of the three, analysis never imports training;
- ``glassbox.io.atomic_write`` is all or nothing;
- the server rejects a manifest with the very function export validates it with;
- a non-editable install (wheel into a fresh venv) ships what it needs and serves.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.server import start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("glassbox", "training", "serving", "analysis")


# --- a. importable without torch -------------------------------------------------------------------

IMPORT_ALL = """
import importlib, json, pkgutil, sys
sys.modules["torch"] = None  # what a machine without torch looks like to an import
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("blocking torch did not work")

def onerror(name):
    raise  # walk_packages calls this inside its except clause: re-raise, never skip a package

pkg = importlib.import_module(sys.argv[1])
names = [sys.argv[1]]
for info in pkgutil.walk_packages(pkg.__path__, sys.argv[1] + ".", onerror=onerror):
    importlib.import_module(info.name)
    names.append(info.name)
assert sys.modules["torch"] is None, "something put torch back"
print(json.dumps(names))
"""


def modules_on_disk(package: str) -> set[str]:
    """Every module of a package as its files say: a/b/c.py -> a.b.c, a/b/__init__.py -> a.b."""
    names = set()
    for f in (ROOT / package).rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("package", ["glassbox", "serving", "analysis"])
def test_imports_without_torch(package):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL, package], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=180)
    assert r.returncode == 0, f"importing {package} without torch failed:\n{r.stderr[-3000:]}"
    imported = set(json.loads(r.stdout.splitlines()[-1]))
    assert imported == modules_on_disk(package), "pkgutil walked a different set of modules than the files"


# --- b. the import graph ---------------------------------------------------------------------------

# package -> top-level packages it must never import (at module level or lazily inside a function).
# torch is not listed: an optional lazy import is allowed (glassbox.data falls back on torchvision's
# download); that importing never needs torch is what test_imports_without_torch checks.
FORBIDDEN = {
    "glassbox": {"training", "serving", "analysis"},
    "serving": {"training", "analysis"},
    "training": {"serving", "analysis"},
    "analysis": {"training"},
}


def imported_packages(root: Path, package: str) -> tuple[dict[str, set[str]], list[str]]:
    """Top-level packages imported anywhere in ``root/package`` -> {"file:line", ...}, and the
    relative imports that climb out of ``package`` (which would hide a cross-package import)."""
    found: dict[str, set[str]] = {}
    escapes = []
    for f in sorted((root / package).rglob("*.py")):
        rel = f.relative_to(root)
        depth = len(rel.parts) - 1  # packages above the module: training/export/cli.py -> 2
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0:
                    names = [node.module]
                elif node.level > depth:
                    escapes.append(f"{rel}:{node.lineno}")
            elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")
                  and ((isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
                       or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
                names = [node.args[0].value]  # importlib.import_module("x.y"), __import__("x")
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(f"{rel}:{node.lineno}")
    return found, escapes


def test_import_scanner_sees_every_form(tmp_path):
    """The graph check below is only as good as this scanner: every way to import is seen."""
    pkg = tmp_path / "pkg" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("import os.path\nfrom training.engine import fit\n")
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        "import importlib\n"
        "def lazy():\n"
        "    import serving.client as c\n"
        "    return importlib.import_module('analysis.cli'), __import__('torch'), c\n"
        "from . import sibling\n"
        "from .. import parent\n"
        "from ... import outside\n")
    found, escapes = imported_packages(tmp_path, "pkg")
    assert {"os", "training", "serving", "analysis", "torch", "importlib"} == set(found)
    assert found["serving"] == {"pkg/sub/mod.py:3"}
    assert escapes == ["pkg/sub/mod.py:7"]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_graph(package):
    found, escapes = imported_packages(ROOT, package)
    assert found, f"no imports found under {package}/"
    bad = {name: sorted(where) for name, where in found.items() if name in FORBIDDEN[package]}
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}; found {bad}"
    assert not escapes, f"relative imports that leave {package}: {escapes}"


# --- c. atomic writes ------------------------------------------------------------------------------

def test_atomic_write_is_all_or_nothing(tmp_path):
    from glassbox.io import atomic_write, write_json

    dest = tmp_path / "out" / "metrics.json"
    write_json(dest, {"acc": 0.5})
    before = dest.read_bytes()

    def half_then_fail(tmp):
        Path(tmp).write_text('{"acc": 0.')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(dest, half_then_fail)
    assert dest.read_bytes() == before
    assert sorted(p.name for p in dest.parent.iterdir()) == ["metrics.json"], "a temporary file was left behind"

    def interrupted(tmp):
        Path(tmp).write_text("partial")
        raise KeyboardInterrupt

    fresh = tmp_path / "out" / "new.png"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(fresh, interrupted)
    assert not fresh.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["metrics.json"], "a temporary file was left behind"

    old_umask = os.umask(0o077)  # the mode is set explicitly, not left to the umask (or mkstemp's 0600)
    try:
        atomic_write(dest, lambda tmp: Path(tmp).write_text('{"acc": 0.9}\n'))
    finally:
        os.umask(old_umask)
    assert json.loads(dest.read_text()) == {"acc": 0.9}
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert sorted(p.name for p in dest.parent.iterdir()) == ["metrics.json"]


# --- d. the server validates manifests with export's function -------------------------------------

def test_server_rejects_manifest_missing_a_key(repository, tmp_path):
    from glassbox.manifest import validate_manifest, versions
    from serving.loader import load_model

    src = repository / "lenet" / str(versions(repository / "lenet")[-1])
    good = tmp_path / "good" / "lenet" / src.name
    shutil.copytree(src, good)
    assert load_model(good, device="cpu").ready, "the unchanged copy must load (else the test proves nothing)"

    bad = tmp_path / "bad" / "lenet" / src.name
    shutil.copytree(src, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    del manifest["opset"]  # nothing else changes: every file and its sha256 are intact
    (bad / "manifest.json").write_text(json.dumps(manifest, indent=2))
    problems = validate_manifest(manifest)
    assert problems == ["opset: missing"]

    model = load_model(bad, device="cpu")
    assert not model.ready and not model.graphs
    assert "opset: missing" in model.error, model.error
    assert all(p in model.error for p in problems)  # export's own words: the same function ran


# --- e. a non-editable install ----------------------------------------------------------------------

def run_ok(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_installs_and_serves(repository, tmp_path):
    # Build from a copy: building in place would write build/ and egg-info into the working tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run_ok([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "-w", tmp_path / "dist", src])
    (wheel,) = (tmp_path / "dist").glob("glassbox-*.whl")

    fresh = tmp_path / "fresh"
    run_ok([sys.executable, "-m", "venv", "--without-pip", fresh])
    python = fresh / "bin" / "python"
    run_ok([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
            "--disable-pip-version-check", wheel])
    site = Path(run_ok([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    # Third-party dependencies from this venv, as a plain path: its .pth files (among them the
    # editable install's finder, which would map the packages back to the working tree) stay inactive.
    (site / "_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    cwd = tmp_path / "elsewhere"  # not the repository: nothing may come from the working tree
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    env["MPLBACKEND"] = "Agg"
    probe = ("import json, glassbox, serving, training, analysis, serving._generated.glassbox.v1.glassbox_pb2 as pb\n"
             "from training import config\n"
             "runs, path, _ = config.load_profile('quick')\n"
             "mods = (glassbox, serving, training, analysis, pb)\n"
             "print(json.dumps({'files': {m.__name__: m.__file__ for m in mods},\n"
             "                  'quick': [r['name'] for r in runs], 'profile': str(path),\n"
             "                  'profiles': sorted(p.stem for p in config.PROFILES_DIR.glob('*.toml')),\n"
             "                  'studies': config.list_studies()}))\n")
    got = json.loads(run_ok([python, "-c", probe], cwd=cwd, env=env).stdout.splitlines()[-1])
    for name, file in got["files"].items():
        assert Path(file).is_relative_to(site), f"{name} imported from {file}, not from the installed wheel"
    assert Path(got["profile"]).is_relative_to(site) and got["quick"]
    assert got["profiles"] == sorted(p.stem for p in (ROOT / "training" / "profiles").glob("*.toml"))
    assert got["studies"] == sorted(p.stem for p in (ROOT / "training" / "studies").glob("*.toml"))

    from serving.client import GlassboxClient

    proc, address = start_server(repository, env=env, serve=[fresh / "bin" / "serve"], cwd=cwd)
    try:
        with GlassboxClient(address) as c:
            status = {m.name: m for m in c.list_models()}
            assert status["lenet"].ready, status["lenet"].error
            assert not status["broken"].ready  # the installed server verifies checksums too
            res = c.classify("lenet", np.zeros((2, 1, 28, 28), np.float32), top_k=3)
            assert res.indices.shape == (2, 3)
    finally:
        code = stop_server(proc)
    assert code == 0, proc.stdout.read()
