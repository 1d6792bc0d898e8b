"""The analysis package imports and computes on a machine without torch (it imports numpy, onnxruntime,
grpc and glassbox, never torch or training).

    .venv/bin/pytest -x -q tests/analysis/test_without_torch.py
"""
import subprocess
import sys


def test_imports_without_torch():
    """The issue's check: with torch made unimportable (sys.modules['torch'] = None), every analysis
    module imports and the CLI answers --help."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import analysis.cli, analysis.common, analysis.embeddings, analysis.gradcam, analysis.accuracy, "
            "analysis.vae, analysis.report, analysis.plots, analysis.metrics\n"
            "from click.testing import CliRunner\n"
            "for cmd in ([], ['embeddings'], ['gradcam'], ['accuracy'], ['vae'], ['report']):\n"
            "    r = CliRunner().invoke(analysis.cli.cli, cmd + ['--help'])\n"
            "    assert r.exit_code == 0 and ('--server' in r.output or not cmd), r.output\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_computes_without_torch_installed():
    """Beyond importing: the numbers and figures are computed with torch absent (an import hook
    refuses it, as if not installed; scipy's probe of sys.modules does not mistake that for torch)."""
    code = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from analysis import embeddings, metrics, plots
x = np.random.default_rng(0).standard_normal((120, 60)); y = np.arange(120) % 3; x[np.arange(120), y] += 6
xy = embeddings.tsne(x, jobs=1)
m = metrics.separation(x, xy, y)
plots.save(plots.embedding_figure("l", embeddings.pca(x)[0], xy, y, ["a", "b", "c"], m), sys.argv[1])
assert "torch" not in sys.modules and m["knn_acc_layer"] > 0.9
print("ok")
"""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run([sys.executable, "-c", code, f"{d}/f.png"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
