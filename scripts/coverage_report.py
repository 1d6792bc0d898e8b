"""Line and branch coverage per package from the ``.coverage`` data of ``make coverage``.

    .venv/bin/python scripts/coverage_report.py                                  # the table
    .venv/bin/python scripts/coverage_report.py --branches serving training/export   # + every uncovered branch there

A branch is an arc ``line -> line`` (``-> exit`` when it leaves the function); "partial" lines took only
some of their branches. ``training/export`` gets its own row under ``training``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("glassbox", "training", "training/export", "serving", "analysis")


def load(data_file: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        subprocess.run([sys.executable, "-m", "coverage", "json", "-q", f"--data-file={data_file}", "-o", str(out)],
                       cwd=ROOT, check=True)
        files = json.loads(out.read_text())["files"]
    return {p: f for p, f in files.items() if "/_generated/" not in p}  # protoc output, not ours


def row(name: str, files: dict) -> str:
    s = {k: sum(f["summary"][k] for f in files.values())
         for k in ("num_statements", "covered_lines", "num_branches", "covered_branches")}
    line = 100.0 * s["covered_lines"] / max(s["num_statements"], 1)
    branch = 100.0 * s["covered_branches"] / max(s["num_branches"], 1)
    return (f"{name:18s} {s['covered_lines']:6d}/{s['num_statements']:<6d} {line:5.1f}%   "
            f"{s['covered_branches']:5d}/{s['num_branches']:<5d} {branch:5.1f}%")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-file", type=Path, default=ROOT / ".coverage")
    ap.add_argument("--branches", nargs="*", default=[], metavar="DIR", help="list uncovered branches under DIR")
    args = ap.parse_args()
    files = load(args.data_file)
    print(f"{'package':18s} {'lines':>13s} {'line%':>6s}   {'branches':>11s} {'branch%':>6s}")
    for pkg in PACKAGES:
        print(row(pkg, {p: f for p, f in files.items() if p.startswith(pkg + "/")}))
    print(row("all", files))
    for d in args.branches:
        print(f"\nuncovered branches under {d}/ (line -> line; -> exit: leaving the function):")
        for path, f in sorted(files.items()):
            if path.startswith(d.rstrip("/") + "/") and f["missing_branches"]:
                arcs = ", ".join(f"{a}->{'exit' if b < 0 else b}" for a, b in f["missing_branches"])
                print(f"  {path}: {arcs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
