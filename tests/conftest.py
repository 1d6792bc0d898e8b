"""Session fixtures shared by every area: the real datasets, a briefly trained model repository and a
running server. Helper functions live in tests/helpers/ (import them: ``from tests.helpers.server import ...``).
"""
import shutil
from pathlib import Path

import pytest

from tests.helpers.paths import FMNIST_DIR, SHARED_DATA
from tests.helpers.server import start_server, stop_server
from tests.helpers.shared import built_once


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (set GLASSBOX_TEST_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if not any((FMNIST_DIR / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in (".gz", "")):
        pytest.fail(f"Fashion-MNIST not found at {FMNIST_DIR}: run 'make data' (apt-get install dataset-fashion-mnist)")
    return FMNIST_DIR


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, fmnist_dir):
    """A briefly trained lenet, mlp and cvae on real Fashion-MNIST (a few seconds each)."""
    from training.config import resolve_config
    from training.engine import fit
    data = {"name": "fashion-mnist", "data_dir": str(fmnist_dir), "subset": 12000}
    runs = {"lenet": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.003}},
            "mlp": {"epochs": 1},
            "cvae": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.002, "weight_decay": 0.0}}}

    def build(root):
        for name, over in runs.items():
            fit(resolve_config({"model": name, "dataset": data, **over}), root / name, progress=False,
                log=lambda *_: None)
    return built_once(tmp_path_factory, "runs", build)


@pytest.fixture(scope="session")
def repository(tmp_path_factory, trained_runs, fmnist_dir):
    """exported/ with lenet, mlp, cvae and a deliberately corrupted copy of lenet ("broken")."""
    from training.export import export_checkpoint

    def build(repo):
        for name in ("lenet", "mlp", "cvae"):
            export_checkpoint(trained_runs / name / "best.pt", repo, parity_images=64, data_dir=fmnist_dir)
        shutil.copytree(repo / "lenet", repo / "broken")
        onnx_file = repo / "broken" / "1" / "classifier.onnx"
        data = bytearray(onnx_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        onnx_file.write_bytes(bytes(data))
    return built_once(tmp_path_factory, "exported", build)


@pytest.fixture(scope="session")
def server(repository):
    """A real `serve` subprocess on a free loopback port; yields its address."""
    proc, address = start_server(repository)
    yield address
    stop_server(proc)


@pytest.fixture(scope="session")
def explain_repository(tmp_path_factory, trained_runs, fmnist_dir):
    """exported/ with the briefly trained lenet carrying every explanation method, and lenet-randomized
    (its re-initialised copy), each gated against pytorch-grad-cam and Captum on 64 test images."""
    from training.export import export_checkpoint
    from training.export.explain import METHODS
    return built_once(tmp_path_factory, "explained", lambda repo: export_checkpoint(
        trained_runs / "lenet" / "best.pt", repo, parity_images=64, data_dir=fmnist_dir, explain=list(METHODS),
        randomized=True))
