"""The parity figures of a model repository, as recorded by the export gate in each manifest.

    .venv/bin/python benchmarks/parity_table.py [exported]
"""
import json
import sys
from pathlib import Path

from tabulate import tabulate


def main(root: str = "exported") -> None:
    rows = []
    for mdir in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        versions = sorted(int(v.name) for v in mdir.iterdir() if v.name.isdigit())
        if not versions:
            continue
        man = json.loads((mdir / str(versions[-1]) / "manifest.json").read_text())
        for graph, rec in man["parity"].items():
            agree = rec.get("argmax_agreement")
            rows += [[f"{man['name']}/{man['version']}", graph, out, f"{s['max_abs']:.2e}", f"{s['max_rel']:.2e}",
                      "-" if agree is None else f"{agree:.1%}", rec["images"]] for out, s in rec["outputs"].items()]
    print(tabulate(rows, ["model", "graph", "output", "max abs", "max rel", "argmax", "images"],
                   colalign=["left"] * 3 + ["right"] * 4, disable_numparse=True))


if __name__ == "__main__":
    main(*sys.argv[1:])
