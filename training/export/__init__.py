"""Export: checkpoints -> ONNX graphs in the model repository, gated by torch parity.

    export runs/quick/lenet                   # one run (its best.pt)
    export runs/quick                         # every run of a train-all output

    from training.export import export_checkpoint
    from glassbox.manifest import verify_files     # the manifest contract lives in glassbox/
"""
from .exporter import ExportResult, default_name, export_checkpoint, export_model
from .parity import ParityError

__all__ = ["ExportResult", "ParityError", "default_name", "export_checkpoint", "export_model"]
