"""Where things are for the tests: the checkout, the real datasets, and a prelude that blocks torch.

Tests may read ../shared/data (MNIST, CIFAR-10, LFW) and Debian's Fashion-MNIST; the product never
does. Override with GLASSBOX_TEST_SHARED_DATA / GLASSBOX_TEST_FMNIST.
"""
import os
from pathlib import Path

# Prepended to a subprocess's code: any import of torch fails, as on a machine without it.
BLOCK_TORCH = ("import sys, importlib.abc\n"
               "class _NoTorch(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path, target=None):\n"
               "        if name == 'torch' or name.startswith('torch.'):\n"
               "            raise ImportError('torch is blocked for this test')\n"
               "sys.meta_path.insert(0, _NoTorch())\n")

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("GLASSBOX_TEST_SHARED_DATA", ROOT.parent / "shared" / "data"))
FMNIST_DIR = Path(os.environ.get("GLASSBOX_TEST_FMNIST", "/usr/share/datasets/fashion-mnist"))
