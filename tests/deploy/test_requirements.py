"""The image installs deploy/requirements.txt and the glassbox package with --no-deps, so that list must
hold every distribution serving imports, and no torch. Checked here, in `make test`, without podman:

    pytest tests/deploy/test_requirements.py -q
"""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires

from tests.helpers.paths import ROOT

# Every serving module but codegen (a developer's tool: protoc) imported; then the files of the first-party
# modules that are loaded (serving's and the glassbox modules they use).
LOADED = """
import importlib, json, pkgutil, sys
import serving
for info in pkgutil.walk_packages(serving.__path__, "serving."):
    if info.name != "serving.codegen":
        importlib.import_module(info.name)
first = {"glassbox", "serving", "training", "analysis"}
print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] in first and m.__file__)))
"""
SAME = {"onnxruntime-gpu": "onnxruntime"}  # the suite's venv has the GPU build, the image the CPU one


def imported_modules(files: list[str]) -> set[str]:
    """The top-level names of every import in ``files`` (in functions too: they run when called), less the
    standard library, relative imports and imports inside a ``try`` (optional by design, such as
    glassbox.data's torchvision download)."""
    names = set()
    for file in files:
        tree = ast.parse(open(file).read())
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "glassbox", "serving"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements() -> set[str]:
    lines = (ROOT / "deploy" / "requirements.txt").read_text().splitlines()
    return {canonical(re.split(r"[=<>!~\[; ]", line.strip())[0]) for line in lines if line.strip()
            and not line.startswith("#")}


def closure(names: set[str]) -> set[str]:
    """The distributions pip installs for ``names``: them and their dependencies (extras left out)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            deps = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += [canonical(re.split(r"[=<>!~\[; (]", d)[0]) for d in deps if "extra ==" not in d]
    return seen


def test_image_requirements_cover_what_serving_imports():
    out = subprocess.run([sys.executable, "-c", LOADED], capture_output=True, text=True, cwd=ROOT, check=True)
    modules = imported_modules(json.loads(out.stdout))
    where = packages_distributions()
    imported = {m: {SAME.get(canonical(d), canonical(d)) for d in where.get(m, [m])} for m in modules}
    installed = closure(requirements())
    missing = {m: sorted(d) for m, d in imported.items() if d and not d & installed}
    assert not missing, f"serving imports these, deploy/requirements.txt does not install them: {missing}"
    assert "torch" not in installed and "torchvision" not in installed, sorted(installed)
