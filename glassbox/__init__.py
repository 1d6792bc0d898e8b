"""Glassbox's torch-free contracts: what training, export, serving and analysis all share.

    from glassbox.data import load_dataset, preprocess      # numpy dataset readers, splits, preprocessing
    from glassbox.manifest import validate_manifest, verify_files   # the exported/ manifest contract
    from glassbox.io import atomic_write, write_json, sha256        # files: all or nothing, integrity
    from glassbox.plots import curves_figure                         # the one training-curves figure

Nothing here imports torch (a test imports this package with ``sys.modules["torch"] = None``), so
the server and the analysis CLI stand on it beside training, and neither imports the other.
"""
