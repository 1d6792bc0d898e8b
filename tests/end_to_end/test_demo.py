"""The demo script end to end (scripts/demo.sh, what ``make demo`` runs): train-all, export, serve, report.

Each area's paths live with their area: ``train``/``train-all`` in tests/training/test_cli.py, CIFAR-10
and LFW training in tests/training/test_datasets.py, JPEG input through the server in
tests/serving/test_images.py, versions and the device fall-back in tests/serving/test_loader.py.

    OMP_NUM_THREADS=1 .venv/bin/pytest -x -q tests/end_to_end/test_demo.py
"""
import os
import subprocess

from tests.helpers.files import tiny_profile
from tests.helpers.paths import ROOT


def test_demo_script_end_to_end(fmnist_dir, tmp_path):
    """scripts/demo.sh (what `make demo` runs) with a tiny profile: train-all trains and exports lenet and cvae,
    the server starts on the exported repository, `analyze report` writes a page with both models, the server is
    stopped and the script prints the report's path. Catches a demo broken by any step's options or paths."""
    profile = tmp_path / "tiny.toml"
    tiny_profile(profile, fmnist_dir, '[[runs]]\nmodel = "lenet"\n[[runs]]\nmodel = "cvae"\n'
                                      'model_args = { latent_dim = 8 }\n')
    env = {**os.environ, "PROFILE": str(profile), "OUT": str(tmp_path / "runs"), "REPOSITORY": str(tmp_path / "repo"),
           "REPORT": str(tmp_path / "report"), "MODELS": "lenet cvae", "REPORT_ARGS": "--per-class 5", "FACES": "0",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(r.stdout)
    page = tmp_path / "report" / "report.html"
    assert f"open {page}" in r.stdout.splitlines()[-1] and "demo finished in" in r.stdout
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["cvae", "lenet"]
    html = page.read_text()
    assert 'id="lenet"' in html and 'id="cvae"' in html
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
