"""Generate the gRPC stubs from ``protos/`` (the single source of truth) into ``serving/_generated``.

    python -m serving.codegen            # regenerate
    python -m serving.codegen --check    # exit 1 if the committed stubs differ from the .proto files

protoc writes absolute imports (``from inference import model_config_pb2``); they are rewritten to
``serving._generated...`` so the stubs import without touching sys.path.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "serving" / "_generated"
PKG = "serving._generated"


def generate(out: Path) -> None:
    from grpc_tools import protoc
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["grpc_tools.protoc", f"-I{PROTOS}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        raise SystemExit(f"protoc failed with code {rc}")
    for py in out.rglob("*.py"):
        text = re.sub(r"^from (glassbox\.v1|inference) import", lambda m: f"from {PKG}.{m.group(1)} import",
                      py.read_text(), flags=re.M)
        py.write_text(text)
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()


def snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*.py"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            if snapshot(Path(tmp)) != snapshot(OUT):
                print("serving/_generated is stale: run python -m serving.codegen", file=sys.stderr)
                raise SystemExit(1)
        print("stubs match protos/")
        return
    generate(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
