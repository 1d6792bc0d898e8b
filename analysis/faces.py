"""Faces by person name for ``analyze vae``: the option parsers, name lookup and attribute directions.

    analyze vae --model cvae-faces000 --pair-names "Jennifer_Aniston,Tony_Blair" --alphas 0,0.5,1
    analyze vae --model cvae-faces000 --direction "Serena_Williams,Laura_Bush;George_W_Bush,Colin_Powell" \\
        --direction-faces Tony_Blair --strengths -1,0,1

A name is a person of the dataset (LFW's folder names; case is ignored and spaces may stand for
underscores), optionally ``Name:k`` for that person's k-th image in the split (default the first).
An unknown name is one clear error that lists the closest known names (difflib).

A direction ``"A1,A2;B1,B2"`` is the mean latent (encoder mean) of group A minus that of group B;
each person counts once (the mean of their images in the split), so one person with hundreds of
images does not stand for the group. ``strengths`` are the multiples of it added to a face.
"""
from __future__ import annotations

import difflib

import numpy as np

from .common import batched, unit_images
from .errors import BadOption


def parse_floats(value: str, option: str, lo: float | None = None, hi: float | None = None) -> list[float]:
    """``"0,0.25,1"`` -> [0.0, 0.25, 1.0]; every value finite and within [lo, hi]."""
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise BadOption(f"expected comma-separated numbers like 0,0.5,1, got {value!r}",
                        option=option) from None
    if not out or not all(np.isfinite(out)):
        raise BadOption(f"expected finite numbers, got {value!r}", option=option)
    if (lo is not None and min(out) < lo) or (hi is not None and max(out) > hi):
        raise BadOption(f"values must lie in [{lo}, {hi}], got {value!r}", option=option)
    return out


def parse_pair_names(value: str) -> tuple[str, str]:
    """``"A_Name,B_Name"`` -> ("A_Name", "B_Name")."""
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(parts):
        raise BadOption(f"expected two person names like George_W_Bush,Serena_Williams, got {value!r}",
                        option="--pair-names")
    return parts[0], parts[1]


def parse_direction(value: str) -> tuple[list[str], list[str]]:
    """``"A1,A2;B1,B2"`` -> (["A1", "A2"], ["B1", "B2"])."""
    groups = [[n.strip() for n in g.split(",") if n.strip()] for g in value.split(";")]
    if len(groups) != 2 or not all(groups):
        raise BadOption(f"expected two groups of names like 'A1,A2;B1,B2' (group A minus group B), "
                        f"got {value!r}", option="--direction")
    return groups[0], groups[1]


def _key(name: str) -> str:
    return name.strip().replace(" ", "_").lower()


def person(ds, text: str, option: str) -> tuple[str, np.ndarray]:
    """The dataset's spelling of the person ``text`` names and the indices of their images in ``ds``."""
    names = [str(c) for c in ds.classes]
    by_key = {_key(n): i for i, n in enumerate(names)}
    label = by_key.get(_key(text))
    if label is None:
        close = difflib.get_close_matches(text.strip().replace(" ", "_"), names, n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else f"no close match among {len(names)} names"
        raise BadOption(f"unknown person {text!r} in {ds.name}; {hint}", option=option)
    idx = np.flatnonzero(np.asarray(ds.labels) == label)
    if not len(idx):
        raise BadOption(f"{names[label]} has no image in this split of {ds.name} ({len(ds)} images; "
                        f"people with one or two images are all in train): try --split train",
                        option=option)
    return names[label], idx


def face(ds, text: str, option: str) -> tuple[str, int]:
    """``"Name"`` or ``"Name:k"`` -> (label for figures, the image index in ``ds``)."""
    name, _, k = text.partition(":")
    spelled, idx = person(ds, name, option)
    try:
        k = int(k or 0)
    except ValueError:
        raise BadOption(f"{text!r}: the part after ':' must be an image number", option=option) from None
    if not 0 <= k < len(idx):
        raise BadOption(f"{spelled} has {len(idx)} images in this split; {text!r} asks for number {k}",
                        option=option)
    return (f"{spelled}:{k}" if k else spelled), int(idx[k])


def direction(client, man: dict, ds, group_a: list[str], group_b: list[str], progress: bool = False):
    """(mean latent of group A minus group B, {"a": names, "b": names, "images_a", "images_b", "norm"})."""
    def group_mean(names: list[str]) -> tuple[np.ndarray, list[str], int]:
        people = [person(ds, n, "--direction") for n in names]
        means = [batched(client.encode, man["name"], unit_images(man, ds.images[idx]), progress=progress).mean
                 .mean(0) for _, idx in people]
        return np.mean(means, 0), [p for p, _ in people], sum(len(idx) for _, idx in people)
    za, names_a, na = group_mean(group_a)
    zb, names_b, nb = group_mean(group_b)
    d = (za - zb).astype(np.float32)
    return d, {"a": names_a, "b": names_b, "images_a": na, "images_b": nb, "norm": float(np.linalg.norm(d))}
