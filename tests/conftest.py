"""Shared test fixtures: where the real datasets are.

Tests may read ../shared/data (MNIST, CIFAR-10, LFW) and Debian's Fashion-MNIST; the product never
does. Override with GLASSBOX_TEST_SHARED_DATA / GLASSBOX_TEST_FMNIST.
"""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GLASSBOX_TEST_SHARED_DATA", ROOT.parent / "shared" / "data"))
FMNIST_DIR = Path(os.environ.get("GLASSBOX_TEST_FMNIST", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (set GLASSBOX_TEST_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    if not (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file() and not (FMNIST_DIR / "t10k-images-idx3-ubyte").is_file():
        pytest.fail(f"Fashion-MNIST not found at {FMNIST_DIR}: run 'make data' (apt-get install dataset-fashion-mnist)")
    return FMNIST_DIR
