"""Why ``analyze embeddings`` uses openTSNE and half the cores (analysis/embeddings.py): seconds per
2-D t-SNE of PCA-50 Fashion-MNIST test images for openTSNE (Barnes-Hut, FFT, and 'auto' as the analysis
runs it) and scikit-learn's TSNE, at several sizes and thread counts.

    .venv/bin/python benchmarks/tsne_bench.py                              # 500 and 2,000 points, 1 thread
    .venv/bin/python benchmarks/tsne_bench.py --points 500 2000 10000 --threads 1 2

Spin-waiting OpenMP threads make more threads than free cores much slower, so the thread counts are
worth running on the machine as it is used (busy or idle), not only on an idle one.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from tabulate import tabulate

from glassbox.data import class_balanced_sample, load_dataset


def data(n: int, data_dir: str | None) -> np.ndarray:
    from sklearn.decomposition import PCA
    ds = class_balanced_sample(load_dataset("fashion-mnist", split="test", data_dir=data_dir), n // 10, seed=0)
    x = ds.images.reshape(len(ds), -1).astype(np.float64) / 255.0
    return PCA(n_components=50, random_state=0).fit_transform(x)


def methods(threads: int) -> dict:
    from openTSNE import TSNE
    from sklearn.manifold import TSNE as SkTSNE

    def open_tsne(method):
        return lambda x, p: TSNE(n_components=2, perplexity=p, n_jobs=threads, random_state=0,
                                 negative_gradient_method=method, verbose=False).fit(x)
    return {"openTSNE BH": open_tsne("bh"), "openTSNE FFT": open_tsne("fft"), "openTSNE auto": open_tsne("auto"),
            "scikit-learn BH": lambda x, p: SkTSNE(n_components=2, perplexity=p, random_state=0,
                                                   n_jobs=threads).fit_transform(x)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (else the usual search)")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits
    rows = []
    for n in args.points:
        x = data(n, args.data_dir)
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.5)))  # as analysis/embeddings.py
        for threads in args.threads:
            with threadpool_limits(threads):
                for name, fit in methods(threads).items():
                    t = time.perf_counter()
                    fit(x, perplexity)
                    rows.append([len(x), threads, name, time.perf_counter() - t])
    print(tabulate(rows, ["points", "threads", "method", "seconds"], floatfmt=".1f"))


if __name__ == "__main__":
    main()
