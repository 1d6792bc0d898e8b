"""The parity figures of a model repository, as recorded by the export gate in each manifest.

    .venv/bin/python benchmarks/parity_table.py [exported]
"""
import json
import sys
from pathlib import Path


def main(root: str = "exported") -> None:
    print(f"{'model':16s} {'graph':10s} {'output':14s} {'max abs':>10s} {'max rel':>10s} {'argmax':>7s} {'images':>6s}")
    for mdir in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        versions = sorted(int(v.name) for v in mdir.iterdir() if v.name.isdigit())
        if not versions:
            continue
        man = json.loads((mdir / str(versions[-1]) / "manifest.json").read_text())
        for graph, rec in man["parity"].items():
            agree = rec.get("argmax_agreement")
            for out, s in rec["outputs"].items():
                print(f"{man['name'] + '/' + str(man['version']):16s} {graph:10s} {out:14s} {s['max_abs']:10.2e} "
                      f"{s['max_rel']:10.2e} {'-' if agree is None else f'{agree:.1%}':>7s} {rec['images']:6d}")


if __name__ == "__main__":
    main(*sys.argv[1:])
