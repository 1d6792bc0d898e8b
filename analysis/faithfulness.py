"""Faithfulness of attribution maps: deletion / insertion curves and the model-randomisation check.

    curves = deletion_insertion(probs_fn, x, maps, targets, steps=16, removed=black, start=blurred)
    auc(curves["deletion"])                      # per image; lower is better for deletion
    rho = randomisation(maps_trained, maps_random)   # per-image Spearman; near 1 = the map ignores the weights

Deletion (Petsiuk et al. 2018, RISE): the pixels are set to ``removed`` in the map's order, most
important first, ``1/steps`` of them at a time; the curve is the target class's probability after
each step and its area (trapezoid rule over the removed fraction 0..1) should be small for a
faithful map. Insertion starts from ``start`` (a blurred copy) and puts the pixels back in the same
order; its area should be large. ``probs_fn(images, targets)`` gives the target's probability (the
served classifier in ``analysis/explain.py``; a known synthetic model in the tests). Ties in a map
are broken by a fixed random order, so a constant map is a random one.

Randomisation (Adebayo et al. 2018): the Spearman rank correlation between a method's map on the
trained model and on the re-initialised copy. A map that barely changes when the weights are
destroyed (an edge detector) does not explain the model.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

RANDOMISATION_FLAG = 0.5  # mean Spearman above this: the maps survive the weights' destruction


def order(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pixel indices [N, H*W] from most to least important; ties in a fixed random order."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    jitter = np.random.default_rng(seed).random(flat.shape[1])  # tie-break only: below any real difference
    return np.lexsort((jitter[None].repeat(len(flat), 0), -flat), axis=1)


def blurred(x: np.ndarray, size: int = 9) -> np.ndarray:
    """Insertion's starting image: a box blur of each channel (RISE blurs; black would reward any
    map that inserts the bright object first)."""
    return uniform_filter(x, size=(1, 1, size, size), mode="nearest").astype(np.float32)


def deletion_insertion(probs_fn, x: np.ndarray, maps: np.ndarray, targets: np.ndarray, *, steps: int = 16,
                       removed: np.ndarray | float = 0.0, start: np.ndarray | None = None,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Both curves [N, steps + 1] of ``maps`` over images ``x`` [N, C, H, W] (input units).
    ``removed``: the value a deleted pixel takes (per channel [C] or scalar); ``start``: insertion's
    first image (default ``blurred(x)``)."""
    n, c, h, w = x.shape
    idx = order(maps, seed)
    start = blurred(x) if start is None else start
    fill = np.broadcast_to(np.asarray(removed, np.float32).reshape(-1, 1), (c, h * w))
    counts = np.round(np.linspace(0, h * w, steps + 1)).astype(int)
    dele, ins = np.empty((n, steps + 1)), np.empty((n, steps + 1))
    flat_x, flat_s = x.reshape(n, c, -1), start.reshape(n, c, -1)
    for j, k in enumerate(counts):
        mask = np.zeros((n, h * w), bool)
        np.put_along_axis(mask, idx[:, :k], True, axis=1)
        d = np.where(mask[:, None], fill[None], flat_x).reshape(x.shape)
        i = np.where(mask[:, None], flat_x, flat_s).reshape(x.shape)
        probs = probs_fn(np.concatenate([d, i]).astype(np.float32), np.concatenate([targets, targets]))
        dele[:, j], ins[:, j] = probs[:n], probs[n:]
    return {"fractions": counts / (h * w), "deletion": dele, "insertion": ins}


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under each curve [N, K] over the fraction 0..1 (trapezoid rule, evenly spaced points)."""
    return np.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), axis=1)


def random_maps(shape: tuple, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def centre_maps(shape: tuple) -> np.ndarray:
    """A Gaussian blob at the image centre (sigma a quarter of the side): the 'object is in the
    middle' prior every map should beat to be worth more than a guess."""
    n, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - (h - 1) / 2) / (h / 4)) ** 2 + ((xx - (w - 1) / 2) / (w / 4)) ** 2) / 2)
    return np.broadcast_to(blob.astype(np.float32), (n, h, w)).copy()


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image Spearman rank correlation of two map stacks [N, H, W] (average ranks for ties; 0
    where either map is constant)."""
    # Imported here: scipy.stats probes torch while it imports, which fails where torch is blocked
    # (sys.modules['torch'] = None, the analysis package's no-torch check).
    from scipy.stats import rankdata
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    return np.divide((ra * rb).sum(1), den, out=np.zeros(len(a)), where=den > 0)


def randomisation(trained: np.ndarray, randomised: np.ndarray) -> dict:
    """The randomisation check of one method: mean Spearman and whether it is flagged."""
    rho = spearman(trained, randomised)
    mean = float(rho.mean()) if len(rho) else float("nan")
    return {"spearman": mean, "spearman_per_image": rho.tolist(), "flagged": bool(mean > RANDOMISATION_FLAG)}


def summarise(aucs: dict[str, dict[str, np.ndarray]], baseline: str = "random") -> dict[str, dict]:
    """Per method: mean deletion and insertion AUC, and the share of images where it beats
    ``baseline``'s map (lower deletion AUC; higher insertion AUC)."""
    base = aucs[baseline]
    out = {}
    for name, a in aucs.items():
        out[name] = {"deletion_auc": float(a["deletion"].mean()), "insertion_auc": float(a["insertion"].mean()),
                     "beats_random_deletion": float(np.mean(a["deletion"] < base["deletion"])),
                     "beats_random_insertion": float(np.mean(a["insertion"] > base["insertion"]))}
    return out


def verdicts(table: dict[str, dict], randomised: dict[str, dict], baselines=("random", "centre")) -> dict[str, str]:
    """One sentence per method that fails a check (and 'passes both checks' otherwise)."""
    words = {}
    for name, row in table.items():
        if name in baselines:
            continue
        fails = []
        rnd, share = table["random"]["deletion_auc"], row["beats_random_deletion"]
        if row["deletion_auc"] >= rnd or share <= 0.5:
            fails.append(f"its deletion curve does not beat the random map (AUC {row['deletion_auc']:.3f} vs "
                         f"{rnd:.3f}; better on {share:.0%} of images)")
        r = randomised.get(name)
        if r and r["flagged"]:
            fails.append(f"its maps barely change when the model's weights are re-initialised (Spearman "
                         f"{r['spearman']:.2f} > {RANDOMISATION_FLAG}): it does not explain this model")
        words[name] = "FAILS: " + "; ".join(fails) if fails else "passes both checks"
    return words
