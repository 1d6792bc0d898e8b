"""Triton's perf_analyzer, made runnable here: the binary from the tritonclient wheel plus the two shared
libraries it links that this machine may lack, fetched on demand into benchmarks/.deps/ (git-ignored, no
system install):

- libb64.so.0d    Debian's libb64-0d: ``apt-get download`` + ``dpkg -x``;
- libcudart.so.12 pip's nvidia-cuda-runtime-cu12: ``pip install --target`` (not into the venv).

    .venv/bin/python benchmarks/perf_analyzer.py --check     # fetch what is missing; say what is used
    .venv/bin/python benchmarks/perf_analyzer.py -- -m lenet -u 127.0.0.1:8500 -i grpc --concurrency-range 32

The binary ships in every tritonclient 2.41 wheel, the ``tritonclient[grpc]`` of pyproject.toml included
(``.venv/bin/perf_analyzer``); ``tritonclient[all]`` adds only Python packages (cuda-python, the gevent HTTP
client), none of which perf_analyzer loads.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPS = ROOT / "benchmarks" / ".deps"
CUDART = "nvidia-cuda-runtime-cu12==12.9.79"  # any 12.x has libcudart.so.12 (perf_analyzer 2.41: CUDA 12.3)


class Missing(RuntimeError):
    """What perf_analyzer needs and could not be had, and how to get it by hand."""


def binary() -> Path:
    for candidate in (Path(sys.executable).parent / "perf_analyzer", shutil.which("perf_analyzer")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise Missing("perf_analyzer not found: it ships in the tritonclient wheel "
                  "(pip install 'tritonclient[grpc]==2.41.0' puts it in the venv's bin/)")


def unresolved(exe: Path, env: dict) -> list[str]:
    """The libraries ``exe`` links that the loader cannot find under ``env``."""
    r = subprocess.run(["ldd", str(exe)], env=env, capture_output=True, text=True)
    if r.returncode:
        raise Missing(f"cannot inspect {exe} with ldd: {(r.stderr or r.stdout).strip()[-300:]}")
    return [line.split()[0] for line in r.stdout.splitlines() if "not found" in line]


def _found(folder: Path, name: str) -> Path | None:
    hits = sorted(folder.rglob(name)) if folder.is_dir() else []
    return hits[0].parent if hits else None


def fetch_libb64(deps: Path) -> Path:
    target = deps / "libb64"
    if (have := _found(target, "libb64.so.0d")) is not None:
        return have
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        raise Missing(f"libb64.so.0d is missing and there is no apt-get/dpkg to fetch Debian's libb64-0d: extract "
                      f"that package (or copy libb64.so.0d) into {target}")
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["apt-get", "download", "libb64-0d"], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob("libb64-0d_*.deb"))
        if r.returncode or not debs:
            raise Missing(f"libb64.so.0d is missing and 'apt-get download libb64-0d' failed ({r.stderr.strip()[-300:]})"
                          "; with no network or no package lists ('apt-get update'), extract the Debian package "
                          f"libb64-0d by hand: dpkg -x libb64-0d_*.deb {target}")
        target.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["dpkg", "-x", str(debs[0]), str(target)], capture_output=True, text=True)
        if r.returncode:
            raise Missing(f"libb64.so.0d: 'dpkg -x {debs[0].name} {target}' failed ({r.stderr.strip()[-300:]})")
    if (have := _found(target, "libb64.so.0d")) is None:
        raise Missing(f"{debs[0].name} held no libb64.so.0d")
    return have


def fetch_cudart(deps: Path) -> Path:
    target = deps / "cudart"
    if (have := _found(target, "libcudart.so.12")) is not None:
        return have
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        CUDART], capture_output=True, text=True)
    if r.returncode:
        raise Missing(f"libcudart.so.12 is missing and 'pip install --target {target} {CUDART}' failed "
                      f"({r.stderr.strip()[-300:]}); install that wheel there by hand, or put a CUDA 12 runtime "
                      "on LD_LIBRARY_PATH")
    if (have := _found(target, "libcudart.so.12")) is None:
        raise Missing(f"{CUDART} installed into {target} but holds no libcudart.so.12")
    return have


FETCHERS = {"libb64.so.0d": fetch_libb64, "libcudart.so.12": fetch_cudart}


def prepare(deps: Path = DEPS, log=print) -> tuple[Path, dict]:
    """perf_analyzer's path and the environment it runs in (LD_LIBRARY_PATH with what was fetched), fetching
    the missing libraries first. Raises ``Missing`` naming what is still missing and how to get it."""
    exe = binary()
    env = dict(os.environ)
    folders = [p for p in (_found(deps / "libb64", "libb64.so.0d"), _found(deps / "cudart", "libcudart.so.12")) if p]

    def with_path():
        paths = [str(p) for p in folders] + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        return {**env, "LD_LIBRARY_PATH": ":".join(dict.fromkeys(paths))}
    for lib in unresolved(exe, with_path()):
        if lib not in FETCHERS:
            continue  # said below
        log(f"perf_analyzer: fetching {lib} into {deps}")
        folders.append(FETCHERS[lib](deps))
    env = with_path()
    missing = unresolved(exe, env)
    if missing:
        raise Missing(f"{exe} still lacks {', '.join(missing)} (LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']})")
    return exe, env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="Arguments after -- go to perf_analyzer.")
    ap.add_argument("--check", action="store_true", help="fetch what is missing, print the binary and its library "
                                                         "path, run nothing")
    ap.add_argument("--deps", type=Path, default=DEPS, help="where fetched libraries go")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    try:
        exe, env = prepare(a.deps)
    except Missing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.check or not a.args:
        print(f"{exe}\nLD_LIBRARY_PATH={env['LD_LIBRARY_PATH']}")
        return 0
    args = a.args[1:] if a.args[0] == "--" else a.args
    os.execve(exe, [str(exe), *args], env)


if __name__ == "__main__":
    sys.exit(main())
