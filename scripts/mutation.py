"""Mutation score of the modules that guard correctness (``make mutation``).

    .venv/bin/python scripts/mutation.py                  # fresh run, table of killed/total per module
    .venv/bin/python scripts/mutation.py --show           # also the diff of every surviving mutant
    .venv/bin/python scripts/mutation.py --fail-under 90  # exit 1 if a module kills fewer than 90%

mutmut (pyproject.toml ``[tool.mutmut]``: which modules, which fast tests) copies the sources into
``mutants/``, maps each test to the functions it calls, then runs every mutant against those tests
only. A mutant is *killed* when a test fails (or times out: an endless loop is caught too); one that
no test calls counts against the score as "no tests". ``--keep`` reuses ``mutants/`` (mutmut's cache)
instead of starting over, which is faster but trusts mutmut to notice changed tests.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTMUT = Path(sys.executable).with_name("mutmut")
DETECTED = {"killed", "timeout", "caught by type check"}


def modules() -> list[str]:
    """The dotted names of the mutated modules, in the order pyproject.toml lists them."""
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return [p.removesuffix(".py").replace("/", ".") for p in conf["only_mutate"]]


def results() -> dict[str, str]:
    """{mutant name: status} for every mutant of the last run."""
    out = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return dict(re.findall(r"^\s+(\S+): (.+?)\s*$", out, re.M))


def module_of(mutant: str, names: list[str]) -> str:
    # mutmut names a mutant <module>.x_<function>__mutmut_<n> or <module>.xǁ<Class>ǁ<method>__mutmut_<n>
    return max((m for m in names if mutant.startswith(m + ".")), key=len, default="?")


def table(status: dict[str, str], names: list[str]) -> tuple[str, dict[str, float]]:
    by_module: dict[str, collections.Counter] = {m: collections.Counter() for m in names}
    for mutant, s in status.items():
        by_module.setdefault(module_of(mutant, names), collections.Counter())[s] += 1
    lines = [f"{'module':32s} {'killed':>7s} {'total':>6s} {'score':>7s}  other"]
    scores = {}
    for m, c in [*by_module.items(), ("all", sum(by_module.values(), collections.Counter()))]:
        total = sum(c.values())
        killed = sum(v for s, v in c.items() if s in DETECTED)
        scores[m] = 100.0 * killed / total if total else 0.0
        other = ", ".join(f"{v} {s}" for s, v in sorted(c.items()) if s not in DETECTED)
        lines.append(f"{m:32s} {killed:7d} {total:6d} {scores[m]:6.1f}%  {other}")
    del scores["all"]  # --fail-under judges modules
    return "\n".join(lines), scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel mutant runs")
    ap.add_argument("--keep", action="store_true", help="reuse mutants/ from the last run")
    ap.add_argument("--show", action="store_true", help="print the diff of every surviving mutant")
    ap.add_argument("--fail-under", type=float, default=None, help="exit 1 if a module's score is below this %%")
    args = ap.parse_args()
    if not MUTMUT.exists():
        print(f"{MUTMUT} not found: pip install -e '.[mutation]' (make mutation does)", file=sys.stderr)
        return 2
    if not args.keep:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    # The tests run from mutants/tests, so conftest's default ../shared/data would miss; name the real one.
    env = {**os.environ, "GLASSBOX_TEST_SHARED_DATA": os.environ.get("GLASSBOX_TEST_SHARED_DATA",
                                                                      str(ROOT.parent / "shared" / "data"))}
    t0 = time.monotonic()
    run = subprocess.run([str(MUTMUT), "run", "--max-children", str(args.max_children)], cwd=ROOT, env=env)
    if run.returncode != 0:
        print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
        return run.returncode
    status = results()
    names = modules()
    text, scores = table(status, names)
    print(f"\nmutation score ({len(status)} mutants, {time.monotonic() - t0:.0f} s):\n{text}")
    survivors = sorted(m for m, s in status.items() if s not in DETECTED)
    if survivors:
        print(f"\nnot killed ({len(survivors)}): " + ("" if args.show else "see each with `mutmut show NAME`"))
        for m in survivors:
            if args.show:
                print(subprocess.run([str(MUTMUT), "show", m], cwd=ROOT, capture_output=True, text=True).stdout)
            else:
                print(f"  {m}: {status[m]}")
    if args.fail_under is not None and any(s < args.fail_under for s in scores.values()):
        print(f"a module is below {args.fail_under}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
