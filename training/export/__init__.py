"""Export: checkpoints -> ONNX graphs in the model repository, gated by torch parity.

    export runs/quick/lenet                   # one run (its best.pt)
    export runs/quick                         # every run of a train-all output
    export --layout triton --out triton_repo  # exported/ as a Triton model repository (no torch)

    from training.export import export_checkpoint
    from glassbox.manifest import verify_files     # the manifest contract lives in glassbox/

The names below are imported on first use, so the torch-free parts (``training.export.triton``,
``pbtxt``, ``cli`` without checkpoints) import without torch.
"""
from __future__ import annotations

import importlib

_LAZY = {"ExportResult": "exporter", "default_name": "exporter", "export_checkpoint": "exporter",
         "export_model": "exporter", "ParityError": "parity"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
