"""Export: checkpoints -> ONNX graphs in the model repository, gated by torch parity.

    export runs/quick/lenet                   # one run (its best.pt)
    export runs/quick                         # every run of a train-all output

    from training.export import export_checkpoint, verify_files
"""
from .exporter import ExportResult, default_name, export_checkpoint, export_model
from .parity import ParityError
from .repository import validate_manifest, verify_files, versions

__all__ = ["ExportResult", "ParityError", "default_name", "export_checkpoint", "export_model", "validate_manifest",
           "verify_files", "versions"]
